"""Train/validation splits of recordings: grouped by patient (the honest default) or at random.

Dataset B has 461 labelled recordings from 165 patients. A split by recording (the published
protocol) puts recordings of one patient on both sides, so the model is partly tested on
patients it has heard: `random_split` reproduces that, `patient_split` does not allow it.
Functions take a table of recordings (`recording`, `patient_id`, `label`) and return the
same rows with a `split` column ("train" / "valid").
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def recordings_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled recording from the image manifest (which has one row per window)."""
    labelled = manifest[manifest["label"].fillna("") != ""]
    table = labelled.groupby("recording", sort=True).agg(patient_id=("patient_id", "first"), label=("label", "first"))
    return table.reset_index()


def random_split(recordings: pd.DataFrame, valid_fraction: float, seed: int) -> pd.DataFrame:
    """The published protocol: a seeded random valid_fraction of recordings, patients ignored."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(recordings))
    n_valid = int(round(valid_fraction * len(recordings)))
    split = np.full(len(recordings), "train", dtype=object)
    split[order[:n_valid]] = "valid"
    return recordings.assign(split=split)


def _patients_largest_first(recordings: pd.DataFrame, seed: int):
    """(patient ids, per-patient class counts, the order to place them in) for the greedy splits.

    The order is seeded random, then stably sorted largest patient first: the largest are the
    hardest to place.
    """
    counts = pd.crosstab(recordings["patient_id"], recordings["label"])
    class_counts = counts.to_numpy()
    shuffled = np.random.default_rng(seed).permutation(len(counts))
    order = shuffled[np.argsort(-class_counts.sum(axis=1)[shuffled], kind="stable")]
    return counts.index.to_numpy(), class_counts, order


def patient_split(recordings: pd.DataFrame, valid_fraction: float, seed: int) -> pd.DataFrame:
    """Grouped by patient (no patient on both sides), stratified by class, ~valid_fraction of recordings.

    Greedy: patients in a seeded random order, larger ones first (they are the hardest to
    place), each goes to the side that brings the validation side's per-class counts closer
    to valid_fraction of each class's total.
    """
    patients, class_counts, order = _patients_largest_first(recordings, seed)
    target = class_counts.sum(axis=0) * valid_fraction
    valid_counts = np.zeros(class_counts.shape[1])
    valid_patients = set()
    for index in order:
        patient_counts = class_counts[index]
        # relative deviation per class, so that the rare classes weigh as much as "normal"
        before = np.sum(((valid_counts - target) / np.maximum(target, 1)) ** 2)
        after = np.sum(((valid_counts + patient_counts - target) / np.maximum(target, 1)) ** 2)
        if after < before:
            valid_counts += patient_counts
            valid_patients.add(patients[index])
    split = np.where(recordings["patient_id"].isin(valid_patients), "valid", "train")
    return recordings.assign(split=split)


def patient_folds(recordings: pd.DataFrame, n_folds: int, seed: int) -> pd.Series:
    """Stratified group k-fold: a fold number per recording, no patient in two folds.

    Greedy, as patient_split: patients in a seeded random order, larger ones first, each to
    the fold where it leaves all folds' per-class counts closest to their share (1/n_folds of
    each class), ties to the smaller fold.
    """
    patients, class_counts, order = _patients_largest_first(recordings, seed)
    if len(patients) < n_folds:
        raise ValueError(f"{n_folds} folds need at least {n_folds} patients, there are {len(patients)}")
    target = class_counts.sum(axis=0) / n_folds
    fold_counts = np.zeros((n_folds, class_counts.shape[1]))
    fold_of_patient = {}
    for index in order:
        patient_counts = class_counts[index]
        # cost of each choice: squared relative deviation from the per-fold target, over all folds
        costs = []
        for fold in range(n_folds):
            trial = fold_counts.copy()
            trial[fold] += patient_counts
            costs.append(np.sum(((trial - target) / np.maximum(target, 1)) ** 2) + 1e-9 * trial[fold].sum())
        best = int(np.argmin(costs))
        fold_counts[best] += patient_counts
        fold_of_patient[patients[index]] = best
    return recordings["patient_id"].map(fold_of_patient).astype(int)


def make_split(recordings: pd.DataFrame, kind: str, valid_fraction: float, seed: int) -> pd.DataFrame:
    if kind == "patient":
        return patient_split(recordings, valid_fraction, seed)
    if kind == "random":
        return random_split(recordings, valid_fraction, seed)
    raise ValueError(f"unknown split {kind!r} (expected 'patient' or 'random')")


def leaked_patients(split: pd.DataFrame) -> int:
    """How many patients have recordings on both sides of the split."""
    sides = split.groupby("patient_id")["split"].nunique()
    return int((sides > 1).sum())
