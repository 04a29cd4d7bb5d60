"""The run report: metrics.json, confusion matrix (PNG and JSON), training curves, report.md.

Every figure is shown beside the majority-class baseline, because on Dataset B always
answering "normal" is already right about 70% of the time. Every file is written atomically
and the whole report can be rewritten over an existing run folder (`heartbeat report RUN`).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from heartbeat.fileio import atomic_path, atomic_write_json, atomic_write_text
from heartbeat.metrics import classification_metrics

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_JSON = "confusion_matrix.json"
TRAINING_CURVES_PNG = "training_curves.png"
LR_FIND_PNG = "lr_find.png"
REPORT_FILE = "report.md"

PREDICTION_COLUMNS = ("recording", "label", "predicted")
EPOCH_LOG_COLUMNS = ("epoch", "train_loss", "valid_loss", "error_rate")
REQUIRED_CONTEXT = ("title", "split", "weights")
NORMAL_CLASS = "normal"  # every other class is a heart problem


def plot_confusion_matrix(matrix, classes: Sequence[str], title: str, path) -> None:
    """PNG of the counts: true class on rows, predicted class on columns, count in each cell."""
    counts = np.asarray(matrix, dtype=int)
    classes = list(classes)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {len(classes)} classes")

    side = 1.6 + 1.1 * len(classes)
    figure = Figure(figsize=(side + 1.2, side), dpi=120)
    FigureCanvasAgg(figure)  # draw with Agg whatever backend the caller's pyplot uses
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ticks = np.arange(len(classes))
    axes.set_xticks(ticks, labels=classes, rotation=30, ha="right")
    axes.set_yticks(ticks, labels=classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(textwrap.fill(title, width=48), fontsize=10)
    # Dark text on light cells, white text on dark cells.
    threshold = counts.max() / 2 if counts.max() > 0 else 1
    for row in range(len(classes)):
        for column in range(len(classes)):
            count = counts[row, column]
            axes.text(
                column, row, str(count), ha="center", va="center", fontsize=12,
                color="white" if count > threshold else "black",
            )
    figure.tight_layout()
    _save_png(figure, path)


def plot_training_curves(epoch_log: pd.DataFrame, path) -> None:
    """Two panels over epochs: train/valid loss, and validation error rate (NaN values skipped)."""
    missing = [column for column in EPOCH_LOG_COLUMNS if column not in epoch_log.columns]
    if missing:
        raise ValueError(f"epoch log lacks columns {missing}; it has {list(epoch_log.columns)}")
    if epoch_log.empty:
        raise ValueError("epoch log is empty: there are no epochs to plot")
    log = epoch_log.sort_values("epoch")
    epochs = log["epoch"].to_numpy(dtype=float)

    figure = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(figure)
    loss_axes, error_axes = figure.subplots(1, 2, sharex=True)
    for column, label in (("train_loss", "train loss"), ("valid_loss", "validation loss")):
        values = log[column].to_numpy(dtype=float)
        known = np.isfinite(values)  # join the epochs that have a value across NaN gaps
        if known.any():
            loss_axes.plot(epochs[known], values[known], marker="o", label=label)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("Losses")
    if loss_axes.get_legend_handles_labels()[0]:
        loss_axes.legend()

    error_rates = log["error_rate"].to_numpy(dtype=float)
    known = np.isfinite(error_rates)
    if known.any():
        error_axes.plot(epochs[known], error_rates[known], marker="o", color="tab:red")
    else:
        error_axes.text(0.5, 0.5, "no validation error rate recorded", ha="center", va="center",
                        transform=error_axes.transAxes)
    error_axes.set_xlabel("epoch")
    error_axes.set_ylabel("error rate")
    error_axes.set_title("Validation error rate")
    for axes in (loss_axes, error_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    _save_png(figure, path)


def write_report(
    run_dir,
    predictions: pd.DataFrame,
    classes: Sequence[str],
    *,
    majority_class: str,
    context: dict,
    epoch_log: pd.DataFrame | None = None,
) -> dict:
    """Write metrics.json, confusion_matrix.png/.json, training_curves.png (if epoch_log has rows)
    and report.md into run_dir, overwriting earlier ones; return the metrics (with "context")."""
    run_dir = Path(run_dir)
    classes = list(classes)
    _check_predictions(predictions)
    missing_context = [key for key in REQUIRED_CONTEXT if key not in context]
    if missing_context:
        raise ValueError(f"context lacks {missing_context}")

    metrics = classification_metrics(
        predictions["label"].tolist(), predictions["predicted"].tolist(), classes,
        majority_class=majority_class, normal_class=NORMAL_CLASS,
    )
    metrics["context"] = _plain(context)
    atomic_write_json(run_dir / METRICS_FILE, metrics)

    split, weights = str(context["split"]), str(context["weights"])
    matrix = metrics["confusion_matrix"]["matrix"]
    plot_confusion_matrix(
        matrix, classes, f"Validation recordings, {split} split, weights: {weights}", run_dir / CONFUSION_PNG
    )
    atomic_write_json(
        run_dir / CONFUSION_JSON, {"classes": classes, "matrix": matrix, "split": split, "weights": weights}
    )

    if epoch_log is not None and not epoch_log.empty:
        plot_training_curves(epoch_log, run_dir / TRAINING_CURVES_PNG)

    n_valid_patients = metrics["context"].get("n_valid_patients")
    if n_valid_patients is None and "patient_id" in predictions.columns:
        n_valid_patients = int(predictions["patient_id"].nunique())
    # Images written by training (curves, lr_find) stay in the folder when the report is
    # rewritten later without the epoch log, so link whatever is there.
    images = {name: (run_dir / name).exists() for name in (TRAINING_CURVES_PNG, LR_FIND_PNG)}
    markdown = _render_markdown(metrics, metrics["context"], n_valid_patients=n_valid_patients, images=images)
    atomic_write_text(run_dir / REPORT_FILE, markdown)
    return metrics


def rewrite_report(run_dir) -> dict:
    """`heartbeat report RUN`: recompute a finished run's report from the files it saved.

    Reads predictions.csv (one row per validation recording), config.json (classes, majority
    class), the context stored in metrics.json and epochs.csv; needs no model and no torch.
    """
    import json

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    context = json.loads((run_dir / METRICS_FILE).read_text())["context"]
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"label": str, "predicted": str})
    epochs_path = run_dir / "epochs.csv"
    epoch_log = pd.read_csv(epochs_path) if epochs_path.is_file() else None
    return write_report(run_dir, predictions, config["classes"], majority_class=config["majority_class"],
                        context=context, epoch_log=epoch_log)


def _render_markdown(metrics: dict, context: dict, *, n_valid_patients=None, images: dict | None = None) -> str:
    """report.md text from the metrics dict and the run context."""
    images = images or {}
    baseline = metrics["majority_baseline"]
    baseline_header = f"majority baseline (always {baseline['class']})"
    lines: list[str] = [f"# {context['title']}", ""]

    lines += [_summary_paragraph(metrics, context, n_valid_patients), ""]

    lines += ["## Figures", "", *_table(
        ["figure", "model", baseline_header],
        [[name, _fmt(model_value), _fmt(baseline_value)]
         for name, model_value, baseline_value in _figure_rows(metrics)],
    ), ""]
    problem_classes = " or ".join(name for name in metrics["per_class"] if name != NORMAL_CLASS)
    lines += [
        f"Heart problem = any class other than {NORMAL_CLASS} ({problem_classes}), against {NORMAL_CLASS}; "
        "Youden index = sensitivity + specificity − 1. Balanced accuracy is the mean recall over "
        "the classes present among the validation recordings.",
        "",
    ]

    lines += ["## Per class", "", *_table(
        ["class", "precision", "recall", "F1", "support"],
        [[name, _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]), str(row["support"])]
         for name, row in metrics["per_class"].items()],
    ), ""]

    confusion = metrics["confusion_matrix"]
    lines += ["## Confusion matrix", "", f"![confusion matrix]({CONFUSION_PNG})", ""]
    lines += [*_table(
        ["true \\ predicted", *confusion["classes"]],
        [[name, *(str(count) for count in row)] for name, row in zip(confusion["classes"], confusion["matrix"])],
    ), "", "Rows are the true class, columns the predicted class; counts are recordings.", ""]

    if images.get(TRAINING_CURVES_PNG):
        lines += ["## Training curves", "", f"![training curves]({TRAINING_CURVES_PNG})", ""]
    if images.get(LR_FIND_PNG):
        lines += ["## Learning-rate finder", "", f"![learning-rate finder]({LR_FIND_PNG})", ""]

    lines += ["## Run", "", *_table(["item", "value"], [
        ["split", str(context["split"])],
        ["weights", str(context["weights"])],
        ["training mode", str(context.get("training_mode", "n/a"))],
        ["suggested learning rate (lr_find)", _fmt_setting(context.get("lr_suggestion"))],
    ]), ""]

    settings = context.get("settings") or {}
    if settings:
        lines += ["## Settings", "", *_table(
            ["setting", "value"], [[str(key), _fmt_setting(value)] for key, value in settings.items()]
        ), ""]

    lines += ["## Split sizes", "", *_table(["", "recordings", "patients"], [
        ["train", _fmt_count(context.get("n_train_recordings")), _fmt_count(context.get("n_train_patients"))],
        ["validation", _fmt_count(metrics["n_recordings"]), _fmt_count(n_valid_patients)],
    ]), ""]

    notes = context.get("notes") or []
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]

    return "\n".join(lines)


def _summary_paragraph(metrics: dict, context: dict, n_valid_patients) -> str:
    baseline = metrics["majority_baseline"]
    patients = f" from {n_valid_patients} patients" if n_valid_patients is not None else ""
    difference = baseline["error_rate"] - metrics["error_rate"]
    if abs(difference) < 5e-4:
        comparison = "the same as the baseline's"
    elif difference > 0:
        comparison = f"{_fmt(difference)} lower than the baseline's"
    else:
        comparison = f"{_fmt(-difference)} higher than the baseline's"
    return (
        f"On {metrics['n_recordings']} validation recordings{patients} ({context['split']} split, "
        f"weights: {context['weights']}), the model's error rate is **{_fmt(metrics['error_rate'])}**; "
        f"a majority baseline that always answers \"{baseline['class']}\" has an error rate of "
        f"**{_fmt(baseline['error_rate'])}**, so the model's is {comparison}. "
        f"Balanced accuracy is {_fmt(metrics['balanced_accuracy'])} "
        f"(baseline {_fmt(baseline['balanced_accuracy'])}) and macro-F1 {_fmt(metrics['macro_f1'])} "
        f"(baseline {_fmt(baseline['macro_f1'])})."
    )


def _figure_rows(metrics: dict):
    baseline = metrics["majority_baseline"]
    model_heart, baseline_heart = metrics["heart_problem"], baseline["heart_problem"]
    return [
        ("error rate", metrics["error_rate"], baseline["error_rate"]),
        ("accuracy", metrics["accuracy"], baseline["accuracy"]),
        ("balanced accuracy", metrics["balanced_accuracy"], baseline["balanced_accuracy"]),
        ("macro-F1", metrics["macro_f1"], baseline["macro_f1"]),
        ("heart-problem sensitivity", model_heart["sensitivity"], baseline_heart["sensitivity"]),
        ("heart-problem specificity", model_heart["specificity"], baseline_heart["specificity"]),
        ("heart-problem Youden index", model_heart["youden"], baseline_heart["youden"]),
    ]


def _check_predictions(predictions: pd.DataFrame) -> None:
    missing = [column for column in PREDICTION_COLUMNS if column not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}; they have {list(predictions.columns)}")
    duplicated = predictions["recording"][predictions["recording"].duplicated()].unique().tolist()
    if duplicated:
        # One row per recording: windows must be combined (metrics.combine_windows) before scoring.
        raise ValueError(f"predictions have several rows for recordings {duplicated[:5]}")


def _save_png(figure: Figure, path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def _fmt_count(value) -> str:
    return "n/a" if value is None else str(value)


def _fmt_setting(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(values):
        # A "|" inside a cell would end the cell early.
        return "| " + " | ".join(str(value).replace("|", "\\|") for value in values) + " |"

    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(row) for row in rows)]


def _plain(value):
    """A JSON-ready copy: numpy scalars/arrays to Python, paths to strings, NaN to None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, os.PathLike):
        return str(value)
    return value
