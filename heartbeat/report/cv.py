"""Cross-validation: the spread that one split cannot show.

461 recordings are too few for one validation split to say much. `cross_validate` trains one
run per fold with `heartbeat.train.run.train` and the same settings (the frozen body's outputs
are cached, so they are computed once for all folds), collects every out-of-fold prediction
and summarises each figure over folds (mean, standard deviation, 95 % t-interval) beside the
majority baseline's and the classical baseline's (heartbeat.report.baseline: log-mel band statistics
and logistic regression, fit on the same training recordings of every run).

Protocols:
- "patient" (default): stratified group k-fold by patient; every labelled recording is
  predicted exactly once per seed, by a model that never saw its patient.
- "published": the blog's protocol, one random 70:30 split by recording per seed; patients
  leak across the split, and the report says how many.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from heartbeat.data import layouts
from heartbeat.train import split
from heartbeat.report.baseline import classical_predictions, recording_features
from heartbeat.train.device import resolve_device
from heartbeat.fileio import (atomic_directory, atomic_write_json, atomic_write_text, exclusive_lock,
                              remove_dead_leftovers)
from heartbeat.report.metrics import classification_metrics, summarise_folds
from heartbeat.report.figures import plot_cv_folds
from heartbeat.report.outputs import markdown_text
from heartbeat.report.run_report import heart_problem_sentence, recording_groups_sentence
from heartbeat.train.runfolder import prepare_output_folder
from heartbeat.data.manifest import MANIFEST_NAME
from heartbeat.text import spreadsheet_frame
from heartbeat.train.contract import Study
from heartbeat.train.inputs import read_study
from heartbeat.train.recipes.features import feature_cache_dir, uses_feature_cache
from heartbeat.train.run import train
from heartbeat.train.settings import TrainError, TrainSettings

SUMMARY_FIGURES = {  # summary key -> how to read it from a metrics dict
    "error_rate": lambda m: m["error_rate"],
    "balanced_accuracy": lambda m: m["balanced_accuracy"],
    "macro_f1": lambda m: m["macro_f1"],
    "youden": lambda m: (m["heart_problem"] or {}).get("youden"),  # None without a normal class
}
CLASSICAL_TITLE = "classical baseline (log-mel band statistics + logistic regression)"
PER_RUN = "per run"  # a resolved setting that differs between runs (the seed; lr_find's rate): see the per-run table


def fold_splits(recordings: pd.DataFrame, protocol: str, folds: int, seeds: list[int], valid_fraction: float):
    """Yield (seed, fold, split table) for every run of the protocol."""
    for seed in seeds:
        if protocol == "patient":
            fold_of = split.patient_folds(recordings, folds, seed)
            for fold in range(folds):
                yield seed, fold, recordings.assign(split=np.where(fold_of == fold, "valid", "train"))
        elif protocol == "published":
            yield seed, 0, split.random_split(recordings, valid_fraction, seed)
        else:
            raise ValueError(f"unknown protocol {protocol!r} (expected 'patient' or 'published')")


def cross_validate(spectrograms_dir: str | Path, out_dir: str | Path, settings: TrainSettings, *, folds: int = 5,
                   seeds: list[int] | None = None, protocol: str = "patient", progress: bool = True) -> dict:
    """Run every fold, write the CV folder (appears only when complete); return the summary.

    Settings, folds, seeds, the manifest, the feature cache, every fold's split and the output
    folder are all checked before the first fold trains.
    """
    started = time.time()
    spectrograms_dir, out_dir = Path(spectrograms_dir), Path(out_dir)
    settings.validate()
    resolve_device(settings.device)  # a device that is not there is refused before any fold
    if protocol not in ("patient", "published"):
        raise ValueError(f"--protocol must be one of patient, published, not {protocol!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"--folds must be a whole number of at least 2, not {folds!r}")
    seeds = list(seeds) if seeds else [settings.seed]
    for seed in seeds:
        dataclasses.replace(settings, seed=seed).validate()  # the same range as --seed
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds must not repeat a seed (each seed's runs get their own folders), not {seeds}")
    study = read_study(spectrograms_dir, settings.label_map)  # once: every fold's run trains on it
    windows = study.windows
    recordings = split.recordings_table(windows)
    try:
        runs = list(fold_splits(recordings, protocol, folds, seeds, settings.valid_fraction))
    except ValueError as error:  # more folds than patients
        raise TrainError(f"{spectrograms_dir / MANIFEST_NAME}: {error}") from None
    for seed, fold, split_table in runs:
        if split_table["split"].nunique() < 2:
            raise TrainError(f"seed {seed}, fold {fold}: the split leaves one side empty ({len(recordings)} recordings "
                             "are too few for it)")
    if uses_feature_cache(settings):
        feature_cache_dir(spectrograms_dir)
    prepare_output_folder(out_dir.parent, out_dir)
    with exclusive_lock(out_dir):  # FolderBusy while another command writes this folder
        if os.path.lexists(out_dir):  # a dangling link too: the finished folder would be renamed onto it
            raise TrainError(f"{out_dir}: already exists (choose another --out)")
        features = classical_features(spectrograms_dir, windows)  # once per CV: every run picks its recordings' rows
        remove_dead_leftovers(out_dir.parent, prefix=f".{out_dir.name}.")  # a killed cv's, once its writer is dead
        with atomic_directory(out_dir) as work_dir:
            results = [_train_fold(work_dir, study, settings, seed=seed, fold=fold, split_table=split_table,
                                   features=features, progress=progress) for seed, fold, split_table in runs]
            return _write_summary(work_dir, recordings, results, protocol=protocol, folds=folds, seeds=seeds,
                                  dataset=study.dataset, started=started)


def classical_features(spectrograms_dir: Path, windows: pd.DataFrame) -> pd.DataFrame:
    """The classical baseline's features, one row per recording (indexed by name); TrainError for an unreadable image."""
    try:
        names, matrix = recording_features(spectrograms_dir, windows)
    except ValueError as error:  # the message names the image
        raise TrainError(str(error)) from None
    return pd.DataFrame(matrix, index=names)


def classical_run(features: pd.DataFrame, split_table: pd.DataFrame, classes: list[str], seed: int) -> pd.DataFrame:
    """The classical baseline's prediction for every validation recording of one run, fit on its training side only."""
    train_side = split_table[split_table["split"] == "train"]
    valid_side = split_table[split_table["split"] == "valid"]
    probabilities = classical_predictions(features.loc[train_side["recording"]].to_numpy(), train_side["label"].tolist(),
                                          features.loc[valid_side["recording"]].to_numpy(), classes, seed)
    return pd.DataFrame({"recording": valid_side["recording"].to_numpy(),
                         "classical_predicted": np.asarray(classes)[probabilities.argmax(axis=1)]})


def _train_fold(work_dir: Path, study: Study, settings: TrainSettings, *, seed: int, fold: int,
                split_table: pd.DataFrame, features: pd.DataFrame, progress: bool) -> dict:
    """One run of the protocol in work_dir/runs/seed<seed>-fold<fold>: its out-of-fold predictions and summary row."""
    result = train(study.spectrograms_dir, work_dir / "runs" / f"seed{seed}-fold{fold}",
                   dataclasses.replace(settings, seed=seed), split_table=split_table, progress=progress, explain=False,
                   study=study)
    metrics = result.metrics
    row = {"seed": seed, "fold": fold, "n_recordings": metrics["n_recordings"],
           "leaked_patients": split.leaked_patients(split_table), "lr": result.settings["lr"]}
    classical = classical_run(features, split_table, result.classes, seed)
    oof = result.predictions.assign(fold=fold, seed=seed).merge(classical, on="recording", how="left")
    classical_metrics = classification_metrics(oof["label"].tolist(), oof["classical_predicted"].tolist(), result.classes,
                                               majority_class=metrics["majority_baseline"]["class"],
                                               normal_class=layouts.normal_class(result.classes))
    for name, read in SUMMARY_FIGURES.items():
        row[name] = read(metrics)
        row[f"baseline_{name}"] = read(metrics["majority_baseline"])
        row[f"classical_{name}"] = read(classical_metrics)
    return {"oof": oof, "row": row, "classes": result.classes, "settings": result.settings}


def _write_summary(work_dir: Path, recordings: pd.DataFrame, results: list[dict], *, protocol: str, folds: int,
                   seeds: list[int], dataset: dict, started: float) -> dict:
    """oof.csv, folds.csv, summary.json, the pooled confusion matrix, folds.png and report.md; returns the summary."""
    classes = results[0]["classes"]
    columns = ["recording", "patient_id", "label", "fold", "seed", "predicted", "windows"]
    oof = pd.concat([result["oof"] for result in results], ignore_index=True)[
        columns + [f"prob_{name}" for name in classes] + ["classical_predicted"]]
    # Both are for people (a spreadsheet): text cells that would open as formulas are quoted (heartbeat.text).
    atomic_write_text(work_dir / "oof.csv", spreadsheet_frame(oof).to_csv(index=False))
    per_fold = pd.DataFrame([result["row"] for result in results])
    atomic_write_text(work_dir / "folds.csv", spreadsheet_frame(per_fold).to_csv(index=False))

    summary = summarise(per_fold)
    majority = recordings["label"].value_counts().idxmax()
    normal = layouts.normal_class(classes)
    pooled = classification_metrics(oof["label"].tolist(), oof["predicted"].tolist(), classes, majority_class=majority,
                                    normal_class=normal)
    classical_pooled = classification_metrics(oof["label"].tolist(), oof["classical_predicted"].tolist(), classes,
                                              majority_class=majority, normal_class=normal)
    settings = common_settings([result["settings"] for result in results])
    summary.update({
        "protocol": protocol, "folds": folds if protocol == "patient" else 1, "seeds": seeds,
        "n_runs": len(per_fold), "n_recordings": int(len(recordings)), "n_oof_predictions": int(len(oof)),
        "leaked_patients_per_run": per_fold["leaked_patients"].tolist(), "settings": settings, "dataset": dataset,
        "classes": classes,
        "pooled_oof": pooled, "classical_pooled_oof": classical_pooled,
        "seconds": round(time.time() - started, 1),  # the whole CV's wall time, every run and the baselines
    })
    atomic_write_json(work_dir / "summary.json", summary)
    matrix = pooled["confusion_matrix"]["matrix"]
    atomic_write_json(work_dir / "confusion_matrix.json", {"classes": classes, "matrix": matrix, "protocol": protocol})
    from heartbeat.report.figures import plot_confusion_matrix

    plot_confusion_matrix(matrix, classes, f"All out-of-fold predictions ({len(oof)}), {_protocol_name(protocol)}",
                          work_dir / "confusion_matrix.png")
    plot_cv_folds(per_fold, work_dir / "folds.png")
    atomic_write_text(work_dir / "report.md", _markdown(summary, per_fold, protocol, settings))
    return summary


def common_settings(runs: list[dict]) -> dict:
    """The settings that ran, over all runs: a value where every run had the same, else "per run" (seed, lr)."""
    return {key: value if all(run.get(key) == value for run in runs) else PER_RUN for key, value in runs[0].items()}


def summarise(per_fold: pd.DataFrame) -> dict:
    """Mean, std and 95 % interval over runs of every figure, of its majority baseline and of its classical baseline."""
    summary = {}
    for name in SUMMARY_FIGURES:
        for key in (name, f"baseline_{name}", f"classical_{name}"):
            values = [float(value) for value in per_fold[key] if value is not None and not pd.isna(value)]
            summary[key] = summarise_folds(values) if values else None
    return summary


def classical_verdict(summary: dict) -> str:
    """One sentence: whether the CNN's mean balanced accuracy is above the classical baseline's."""
    model, classical = summary["balanced_accuracy"], summary["classical_balanced_accuracy"]
    if model is None or classical is None:
        return "The CNN and the classical baseline cannot be compared: balanced accuracy is missing."
    verb = "beats" if model["mean"] > classical["mean"] else "does not beat"
    return (f"The CNN {verb} the classical baseline on balanced accuracy (mean {model['mean']:.3f} against "
            f"{classical['mean']:.3f}).")


def _protocol_name(protocol: str) -> str:
    return "patient-grouped k-fold" if protocol == "patient" else "published protocol (random 70:30 by recording)"


def _markdown(summary: dict, per_fold: pd.DataFrame, protocol: str, settings: dict) -> str:
    def interval(entry):
        if entry is None:
            return "n/a"
        low, high = entry["ci95"]
        return f"{entry['mean']:.3f} ± {entry['std']:.3f} (95 % CI {low:.3f}–{high:.3f})"

    lines = [f"# Cross-validation: {_protocol_name(protocol)}", ""]
    lines.append(f"{summary['n_runs']} runs (seeds {', '.join(map(str, summary['seeds']))}), "
                 f"{summary['n_recordings']} labelled recordings, {summary['n_oof_predictions']} out-of-fold predictions. "
                 "Each figure: mean ± standard deviation over runs, and a 95 % t-interval of the mean. "
                 f"Wall time {summary['seconds'] / 60:.1f} min.")
    lines.append("")
    if protocol == "published":
        leaked = summary["leaked_patients_per_run"]
        lines.append(f"**Patient leakage**: the published protocol splits recordings at random, so {min(leaked)}–{max(leaked)} "
                     "patients per run have recordings on both sides; its figures are optimistic.")
    elif summary["dataset"]["groups_are_patients"]:
        lines.append("Folds are grouped by patient: no patient is in two folds, and every recording is predicted once per "
                     "seed by a model that never heard its patient.")
    else:
        lines.append(recording_groups_sentence(summary["dataset"]["format"]))
    lines += ["", f"| figure | model | majority baseline | {CLASSICAL_TITLE} |", "|---|---|---|---|"]
    for name, title in [("error_rate", "error rate"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"),
                        ("youden", "heart-problem Youden index")]:
        lines.append(f"| {title} | {interval(summary[name])} | {interval(summary['baseline_' + name])} | "
                     f"{interval(summary['classical_' + name])} |")
    lines += ["", heart_problem_sentence(summary["classes"]), "", classical_verdict(summary)]
    lines += ["", "## Per run", "", "| seed | fold | recordings | error rate | balanced accuracy | macro-F1 | Youden | "
              "baseline error rate | leaked patients | learning rate |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in per_fold.itertuples():
        youden = "n/a" if row.youden is None or pd.isna(row.youden) else f"{row.youden:.3f}"
        lines.append(f"| {row.seed} | {row.fold} | {row.n_recordings} | {row.error_rate:.3f} | {row.balanced_accuracy:.3f} | "
                     f"{row.macro_f1:.3f} | {youden} | {row.baseline_error_rate:.3f} | {row.leaked_patients} | {row.lr:.3g} |")
    lines += ["", "![per-run figures](folds.png)", "", "## All out-of-fold predictions", "",
              "![confusion matrix](confusion_matrix.png)", "",
              f"Settings that ran: {', '.join(f'{key}={value}' for key, value in settings.items())}.",
              "Each run's folder (runs/) holds its own report, split and model.", ""]
    return markdown_text(lines)
