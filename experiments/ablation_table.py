"""Print the README's ablation table from finished `heartbeat cv` folders.

    python experiments/ablation_table.py "published (64 px)=data/ablation/published" "heartbeat, no levers=..." ...

Each argument is `row name=CV folder`. A row's figures are the mean ± standard deviation over
the folder's runs (folds x seeds) of balanced accuracy, macro-F1, heart-problem Youden and each
class's recall (per run, from oof.csv), and the CV's wall time (summary.json). The classical and
majority baselines are added once, from the first folder; every folder must hold the same
recordings, folds and seeds (checked), so that all rows are measured on the same runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from heartbeat.text import from_spreadsheet_cell

FIGURES = (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"), ("youden", "heart-problem Youden"))


def read_cv(folder: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    summary = json.loads((folder / "summary.json").read_text())
    folds = pd.read_csv(folder / "folds.csv")
    names = ("label", "predicted", "classical_predicted")  # written spreadsheet-safe: read back as they were
    oof = pd.read_csv(folder / "oof.csv", dtype=dict.fromkeys(names, str))
    return summary, folds, oof.assign(**{name: oof[name].map(from_spreadsheet_cell) for name in names})


def per_run_recall(oof: pd.DataFrame, classes: list[str], column: str) -> dict[str, np.ndarray]:
    """Each class's recall in every run (seed, fold) of the CV, from the out-of-fold predictions in `column`."""
    recalls = {name: [] for name in classes}
    for _, run in oof.groupby(["seed", "fold"]):
        for name in classes:
            truth = run["label"] == name
            recalls[name].append(float((run.loc[truth, column] == name).mean()) if truth.any() else np.nan)
    return {name: np.asarray(values) for name, values in recalls.items()}


def spread(values) -> str:
    values = np.asarray([value for value in values if value is not None and not pd.isna(value)], dtype=float)
    if values.size == 0:
        return "n/a"
    return f"{values.mean():.3f} ± {values.std(ddof=1) if values.size > 1 else 0.0:.3f}"


def row(name: str, folds: pd.DataFrame, recalls: dict, classes: list[str], prefix: str, minutes: str) -> str:
    cells = [spread(folds[prefix + key]) for key, _ in FIGURES]
    cells += [spread(recalls[name_]) for name_ in classes]
    return f"| {name} | " + " | ".join(cells) + f" | {minutes} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", metavar="NAME=FOLDER")
    args = parser.parse_args()
    table, reference = [], None
    for argument in args.rows:
        name, _, folder = argument.rpartition("=")  # a row name may hold "="
        try:
            summary, folds, oof = read_cv(Path(folder))
        except (OSError, ValueError, KeyError) as error:
            print(f"{argument}: not a finished cv folder ({error})", file=sys.stderr)
            return 2
        classes = summary["classes"]
        runs = sorted(zip(oof["seed"], oof["fold"], oof["recording"]))
        if reference is None:
            reference = (runs, summary, folds, oof, classes)
        elif runs != reference[0]:
            print(f"{folder}: other recordings, folds or seeds than {args.rows[0]}: not comparable", file=sys.stderr)
            return 2
        recalls = per_run_recall(oof, classes, "predicted")
        table.append(row(name, folds, recalls, classes, "", f"{summary['seconds'] / 60:.1f}"))
    _, summary, folds, oof, classes = reference
    header = ["row", *(title for _, title in FIGURES), *(f"recall {name}" for name in classes), "wall time (min)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(table))
    print(row("classical baseline", folds, per_run_recall(oof, classes, "classical_predicted"), classes, "classical_", "< 1"))
    majority = {name: np.full(len(folds), float(name == summary["pooled_oof"]["majority_baseline"]["class"]))
                for name in classes}
    print(row("majority baseline", folds, majority, classes, "baseline_", "0"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
