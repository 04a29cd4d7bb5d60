"""Selection (SEEDS 1 AND 2 ONLY): do ensembles or an out-of-fold class bias improve the `heartbeat` recipe?

For each run of the 5-fold patient-grouped CV (seed 1 or 2), on the same outer folds as
`heartbeat cv` and experiments/recipe_search.py:
- full:    the recipe (heartbeat.train.recipes.heartbeat_recipe.RECIPE) trained on all training folds, seed s;
- seedens: full and two more models of seeds s+100, s+200; window probabilities averaged;
- inner:   3 models, each trained on 2 of 3 patient-grouped inner folds of the training folds
           (a "fold ensemble"); probabilities averaged;
- inner1:  the first of those alone.
The inner models' out-of-fold predictions on the training folds (never the outer validation fold)
choose a class bias (probabilities x exp(bias), normal's bias 0, a grid of -2..2 in steps of
0.25) that maximises either balanced accuracy ("bacc") or the mean of balanced accuracy and
heart-problem Youden ("mix"). Every variant is scored on the outer fold without a bias and with
each chosen bias. Seeds 3-5 are the README's final table and are refused here, except with
--fresh: issue 17 asks whether the bundled model should be an ensemble, measured on seeds the
selection did not use. --fresh SEED (3-5) answers that question once; nothing is tuned on it.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/ensemble_search.py SPECTROGRAMS_DIR SEED OUT.csv
    OMP_NUM_THREADS=1 .venv/bin/python experiments/ensemble_search.py --fresh SPECTROGRAMS_DIR 3 OUT.csv
    .venv/bin/python experiments/ensemble_search.py --summary OUT.csv [OUT2.csv ...]

One seed per process (two processes on two cores); each takes ~14 min on one thread.
"""

from __future__ import annotations

import itertools
import sys
import time

import numpy as np
import pandas as pd
from recipe_search import fit_windows, run_figures

SELECTION_SEEDS = (1, 2)
FRESH_SEEDS = (3, 4, 5)  # --fresh: a confirmation for the bundled model (issue 17), never a selection
FOLDS = 5
INNER_FOLDS = 3
MEMBERS = 3
BIAS_GRID = np.arange(-2.0, 2.01, 0.25)
FIGURES = ["balanced_accuracy", "macro_f1", "youden", "recall_extrastole", "recall_murmur", "recall_normal"]


def scored(labels, probabilities, classes, bias=None) -> dict:
    """recipe_search.run_figures of the argmax of probabilities x exp(bias)."""
    if bias is not None:
        probabilities = probabilities * np.exp(bias)
    return run_figures(labels, [classes[i] for i in probabilities.argmax(axis=1)], classes)


def choose_bias(labels, probabilities, classes, objective: str) -> np.ndarray:
    """The grid's bias (normal's fixed at 0) with the best objective on these predictions; ties to the smallest."""
    normal = classes.index("normal")
    best, best_score = None, -np.inf
    for values in itertools.product(BIAS_GRID, repeat=len(classes) - 1):
        bias = np.insert(np.array(values), normal, 0.0)
        figures = scored(labels, probabilities, classes, bias)
        score = figures["balanced_accuracy"]
        if objective == "mix":
            score = (score + figures["youden"]) / 2
        score -= 1e-6 * np.abs(bias).sum()
        if score > best_score:
            best, best_score = bias, score
    return best


def scored_variants(variants: dict, oof_labels, oof_probabilities, per_recording, classes, *, seed: int,
                    fold: int) -> list[dict]:
    """One row per variant and bias (none, and those chosen on the inner models' out-of-fold predictions)."""
    biases = {"none": None, **{objective: choose_bias(oof_labels, oof_probabilities, classes, objective)
                               for objective in ("bacc", "mix")}}
    rows = []
    for variant, probabilities in variants.items():
        labels, recording_probabilities = per_recording(probabilities)
        for bias_name, bias in biases.items():
            rows.append({"variant": f"{variant}+{bias_name}", "seed": seed, "fold": fold,
                         **scored(labels, recording_probabilities, classes, bias),
                         "bias": "" if bias is None else " ".join(f"{v:+.2f}" for v in bias)})
    return rows


def inner_models(windows, is_valid, training, seed: int, trained):
    """Yield (held-out window mask, network) for each of the INNER_FOLDS patient-grouped inner folds of the training side."""
    from heartbeat.train import split

    inner_fold = split.patient_folds(training, INNER_FOLDS, seed).to_numpy()
    for k in range(INNER_FOLDS):
        held_out = windows["recording"].isin(training.loc[inner_fold == k, "recording"]).to_numpy()
        frame = windows[~is_valid].assign(is_valid=held_out[~is_valid]).reset_index(drop=True)
        yield held_out, trained(frame, seed + 10 * k)


def run_seed(spectrograms_dir: str, seed: int, out_csv: str) -> None:
    import torch

    from heartbeat.report import cv
    from heartbeat.train import split
    from heartbeat.train import run as train
    from heartbeat.train import training_windows
    from heartbeat.train.inputs import read_spectrograms
    from heartbeat.train.recipes.heartbeat_recipe import RECIPE

    torch.set_num_threads(1)
    windows = read_spectrograms(spectrograms_dir)
    recordings = split.recordings_table(windows)
    classes = sorted(set(windows["label"]))
    pixels = training_windows.read_band_pixels(spectrograms_dir, windows["image"])

    def window_probabilities(network, rows):
        batch = torch.from_numpy(np.stack([pixels[i] for i in rows]).astype(np.float32) / 255.0)[:, None]
        with torch.no_grad():
            return torch.softmax(network(batch), dim=1).numpy()

    def per_recording(rows, probabilities):
        table = train.recording_predictions(windows.iloc[rows].reset_index(drop=True), probabilities, classes)
        return table["label"].to_numpy(), table[[f"prob_{name}" for name in classes]].to_numpy()

    def trained(frame, member_seed):
        return fit_windows(frame, classes, spectrograms_dir, RECIPE, member_seed).network

    rows_out = []
    for _, fold, table in cv.fold_splits(recordings, "patient", FOLDS, [seed], 0.3):
        started = time.time()
        is_valid = windows["recording"].isin(table.loc[table["split"] == "valid", "recording"]).to_numpy()
        valid_rows = np.flatnonzero(is_valid)
        full = [window_probabilities(trained(windows.assign(is_valid=is_valid), seed + 100 * k), valid_rows)
                for k in range(MEMBERS)]
        training = table[table["split"] == "train"].reset_index(drop=True)
        oof_labels, oof_probabilities, inner = [], [], []
        for held_out, network in inner_models(windows, is_valid, training, seed, trained):
            labels, probabilities = per_recording(np.flatnonzero(held_out),
                                                  window_probabilities(network, np.flatnonzero(held_out)))
            oof_labels.append(labels)
            oof_probabilities.append(probabilities)
            inner.append(window_probabilities(network, valid_rows))
        variants = {"full": full[0], "seedens": np.mean(full, axis=0), "inner": np.mean(inner, axis=0),
                    "inner1": inner[0]}
        rows_out += scored_variants(variants, np.concatenate(oof_labels), np.concatenate(oof_probabilities),
                                    lambda probabilities: per_recording(valid_rows, probabilities), classes,
                                    seed=seed, fold=fold)
        pd.DataFrame(rows_out).to_csv(out_csv, index=False)
        print(f"seed {seed} fold {fold}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)


def summary(paths) -> str:
    """Mean of every figure per variant, and each variant's paired difference from full+none (mean +- s.e.)."""
    runs = pd.concat([pd.read_csv(path) for path in paths])
    means = runs.groupby("variant")[FIGURES].mean()
    reference = runs[runs["variant"] == "full+none"].set_index(["seed", "fold"])
    lines = ["| variant | " + " | ".join(FIGURES) + " | paired bal.acc vs full+none | paired Youden |",
             "|---" * (len(FIGURES) + 3) + "|"]
    for variant, row in means.sort_values("balanced_accuracy", ascending=False).iterrows():
        own = runs[runs["variant"] == variant].set_index(["seed", "fold"])
        cells = []
        for figure in ("balanced_accuracy", "youden"):
            difference = own[figure] - reference.loc[own.index, figure]
            cells.append(f"{difference.mean():+.3f} ± {difference.std(ddof=1) / np.sqrt(len(difference)):.3f}")
        lines.append(f"| {variant} | " + " | ".join(f"{row[f]:.3f}" for f in FIGURES) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv) -> int:
    if argv[:1] == ["--summary"] and len(argv) > 1:
        print(summary(argv[1:]))
        return 0
    fresh = argv[:1] == ["--fresh"]
    argv = argv[1:] if fresh else argv
    if len(argv) != 3 or not argv[1].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    seed = int(argv[1])
    if seed not in (FRESH_SEEDS if fresh else SELECTION_SEEDS):
        print(f"seed {seed} is not a selection seed ({SELECTION_SEEDS}): seeds 3-5 are the final table's", file=sys.stderr)
        return 2
    run_seed(argv[0], seed, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
