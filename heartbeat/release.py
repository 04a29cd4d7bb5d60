"""Releasing a model into the package: a self-contained bundle folder, and its model card from measured figures.

`write_bundle` turns a training run into what heartbeat/models/builtin/ holds: model.json (the
run's, plus "files": the sha256 of every other file, and "bundled": where it came from),
model.onnx with its weights inlined (one file: package data has no external-data sidecar to
lose), and MODEL_CARD.md. The folder is assembled beside the destination and swapped in, so a
reader sees the old bundle or the new one (or, for the instant between two renames, none, which
predict reports as a missing bundled model).

`model_card` fills the card's template from a CV folder's oof.csv (per-run figures, their
spread, the baselines) and experiments/device_shift.py's csv, so no figure on it is typed by hand.
onnx and pandas are imported inside the functions that need them: this module is for the
release script and the tests, never for predict.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from heartbeat.bundled import CARD_FILE, FILES_KEY, sha256_file
from heartbeat.predict import MODEL_FILE, ONNX_FILE

MAX_BUNDLE_BYTES = 5 * 1024 * 1024  # the limit for the repository


def inline_onnx(source: Path, destination: Path) -> None:
    """Write `source` (an ONNX graph, its weights possibly in external data beside it) as one self-contained file."""
    import onnx

    graph = onnx.load(str(source), load_external_data=True)
    onnx.save_model(graph, str(destination), save_as_external_data=False)


def weight_count(onnx_path: Path) -> int:
    """The number of weights in an ONNX graph's initializers (its external data loaded)."""
    import math

    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=True).graph
    return sum(math.prod(tensor.dims) for tensor in graph.initializer)


def write_bundle(run_dir: Path, destination: Path, card: str, provenance: dict, *,
                 max_bytes: int = MAX_BUNDLE_BYTES) -> dict:
    """Make `destination` the bundle of `run_dir`'s model; returns the bundle's model.json.

    Raises ValueError if the bundle would exceed max_bytes (nothing is replaced then).
    """
    run_dir, destination = Path(run_dir), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    try:
        info = json.loads((run_dir / MODEL_FILE).read_text(encoding="utf-8"))
        inline_onnx(run_dir / ONNX_FILE, staging / ONNX_FILE)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        info.pop("weights_file", None)  # the torch weights stay in the run: predict needs the ONNX file only
        info[FILES_KEY] = {name: sha256_file(staging / name) for name in (ONNX_FILE, CARD_FILE)}
        info["bundled"] = provenance
        info["model_id"] = provenance.get("model_id", info["model_id"])  # the run's folder name says nothing here
        (staging / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        size = sum(path.stat().st_size for path in staging.iterdir())
        if size > max_bytes:
            raise ValueError(f"the bundle would be {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.1f} MiB limit")
        for path in staging.iterdir():
            path.chmod(0o644)
        staging.chmod(0o755)
        _swap_in(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful swap
    return info


def _swap_in(staging: Path, destination: Path) -> None:
    """Rename staging onto destination; an old destination is moved aside first and removed after."""
    old = None
    if destination.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", suffix=".tmp", dir=destination.parent))
        os.replace(destination, old / destination.name)
    os.replace(staging, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- the card's figures

def run_figures(oof, classes: list[str], predicted_column: str) -> list[dict]:
    """One dict of figures per (seed, fold) run of a CV's out-of-fold table, for the given prediction column."""
    from heartbeat.data import layouts
    from heartbeat.report.metrics import classification_metrics

    majority = oof["label"].value_counts().idxmax()
    normal = layouts.normal_class(classes)
    rows = []
    for _, run in oof.groupby(["seed", "fold"], sort=True):
        figures = classification_metrics(run["label"].tolist(), run[predicted_column].tolist(), classes,
                                         majority_class=majority, normal_class=normal)
        row = {"balanced_accuracy": figures["balanced_accuracy"]}
        row.update({f"recall {name}": figures["per_class"][name]["recall"] for name in classes})
        problem = figures["heart_problem"] or {}
        row.update({key: problem.get(key) for key in ("sensitivity", "specificity", "youden")})
        rows.append(row)
    return rows


def mean_sd(values: list) -> str:
    """`0.588 ± 0.056` (sample sd over runs); `n/a` when no run has the figure."""
    import numpy as np

    values = [float(v) for v in values if v is not None]
    if not values:
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


def cv_table(oof, classes: list[str]) -> str:
    """Markdown: each figure's mean ± sd over the CV's runs for the model, the classical and the majority baseline."""
    majority = oof["label"].value_counts().idxmax()
    columns = {"this model": run_figures(oof, classes, "predicted"),
               "classical baseline": run_figures(oof, classes, "classical_predicted"),
               f"majority baseline (always {majority})": run_figures(oof.assign(majority=majority), classes, "majority")}
    names = list(next(iter(columns.values()))[0])
    lines = ["| figure | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = [mean_sd([row[name] for row in rows]) for rows in columns.values()]
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def device_shift_table(table) -> str:
    """Markdown from experiments/device_shift.py's csv (one CV): per shift, mean ± sd over runs and the paired change."""
    import numpy as np

    lines = ["| figure | " + " | ".join(table["shift"].unique()) + " |", "|---|" + "---|" * table["shift"].nunique()]
    for figure in ("balanced_accuracy", "youden"):
        by_shift = table.pivot(index="run", columns="shift", values=figure)
        cells = []
        for shift in table["shift"].unique():
            cell = mean_sd(by_shift[shift].tolist())
            if shift != "clean":
                change = by_shift[shift] - by_shift["clean"]
                cell += f" ({change.mean():+.3f} ± {change.std(ddof=1) / np.sqrt(len(change)):.3f} s.e.)"
            cells.append(cell)
        lines.append(f"| {figure.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_counts(split_table) -> dict:
    """Recordings, patients and per-class counts of the recordings a model was trained on."""
    trained = split_table[split_table["split"] == "train"]
    return {"recordings": int(len(trained)), "patients": int(trained["patient_id"].nunique()),
            "classes": {str(k): int(v) for k, v in trained["label"].value_counts().sort_index().items()}}


def model_card(template: str, *, counts: dict, cv_summary: dict, cv_markdown: str, shift_markdown: str,
               provenance: dict, command: str) -> str:
    """The template with its {fields} filled from measured values only."""
    classes = ", ".join(f"{name} {count}" for name, count in counts["classes"].items())
    return template.format(
        weights=f"{provenance['weights']:,}", class_names=", ".join(counts["classes"]),
        sample_rate=provenance["sample_rate"], recordings=counts["recordings"], patients=counts["patients"],
        class_counts=classes,
        recipe=provenance["recipe"], seed=provenance["seed"], git_commit=provenance["git_commit"],
        training=provenance["training"], cv_runs=cv_summary["n_runs"],
        cv_seeds=", ".join(map(str, cv_summary["seeds"])), cv_folds=cv_summary["folds"],
        cv_recordings=cv_summary["n_recordings"], cv_table=cv_markdown, shift_table=shift_markdown, command=command,
    )
