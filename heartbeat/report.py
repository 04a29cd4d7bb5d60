"""The run report: metrics.json, confusion matrix (PNG and JSON), training curves, report.md.

Every figure is shown beside the majority-class baseline, because on Dataset B always
answering "normal" is already right about 70% of the time. Every file is written atomically
and the whole report can be rewritten over an existing run folder (`heartbeat report RUN`).

A report is made in memory first (figures, tables, images) and written after: every file is
staged as a temporary beside its destination and the renames happen only once all are staged,
so a failure leaves the earlier report as it was. `heartbeat report` checks everything it reads
before that (RunFolderError names the file) and never reads a file through a link out of the
run folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import stat
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from heartbeat.fileio import atomic_path, remove_dead_leftovers
from heartbeat.metrics import classification_metrics

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_JSON = "confusion_matrix.json"
TRAINING_CURVES_PNG = "training_curves.png"
LR_FIND_PNG = "lr_find.png"
REPORT_FILE = "report.md"
REPORT_OUTPUTS = (METRICS_FILE, CONFUSION_PNG, CONFUSION_JSON, TRAINING_CURVES_PNG, REPORT_FILE)
CONFIG_FILE = "config.json"  # written by training: classes and majority class
PREDICTIONS_FILE = "predictions.csv"
EPOCH_LOG_FILE = "epochs.csv"
# A Dataset B run's files are under 100 KB; a file far larger is not one a run wrote, and is not read.
MAX_RUN_FILE_BYTES = 16 * 2**20

PREDICTION_COLUMNS = ("recording", "label", "predicted")
EPOCH_LOG_COLUMNS = ("epoch", "train_loss", "valid_loss", "error_rate")
REQUIRED_CONTEXT = ("title", "split", "weights")
NORMAL_CLASS = "normal"  # every other class is a heart problem


class RunFolderError(ValueError):
    """A run folder `heartbeat report` cannot use; the message names the file and the problem."""


def plot_confusion_matrix(matrix, classes: Sequence[str], title: str, path) -> None:
    """PNG of the counts: true class on rows, predicted class on columns, count in each cell."""
    _save_png(confusion_matrix_figure(matrix, classes, title), path)


def confusion_matrix_figure(matrix, classes: Sequence[str], title: str) -> Figure:
    """The figure plot_confusion_matrix saves."""
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
    return figure


def plot_training_curves(epoch_log: pd.DataFrame, path) -> None:
    """Two panels over epochs: train/valid loss, and validation error rate (NaN values skipped)."""
    _save_png(training_curves_figure(epoch_log), path)


def training_curves_figure(epoch_log: pd.DataFrame) -> Figure:
    """The figure plot_training_curves saves."""
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
    return figure


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
    and report.md into run_dir, overwriting earlier ones; return the metrics (with "context").

    Everything is made in memory before the first file is written; a ValueError (bad
    predictions, context or epoch log) therefore leaves run_dir as it was.
    """
    run_dir = Path(run_dir)
    classes = list(classes)
    _check_predictions(predictions)
    _check_context(context)

    metrics = classification_metrics(
        predictions["label"].tolist(), predictions["predicted"].tolist(), classes,
        majority_class=majority_class, normal_class=NORMAL_CLASS,
    )
    metrics["context"] = _plain(context)

    split, weights = str(context["split"]), str(context["weights"])
    matrix = metrics["confusion_matrix"]["matrix"]
    files = {
        METRICS_FILE: _json_bytes(metrics),
        CONFUSION_PNG: _png_bytes(
            confusion_matrix_figure(matrix, classes, f"Validation recordings, {split} split, weights: {weights}")
        ),
        CONFUSION_JSON: _json_bytes({"classes": classes, "matrix": matrix, "split": split, "weights": weights}),
    }
    if epoch_log is not None and not epoch_log.empty:
        files[TRAINING_CURVES_PNG] = _png_bytes(training_curves_figure(epoch_log))

    n_valid_patients = metrics["context"].get("n_valid_patients")
    if n_valid_patients is None and "patient_id" in predictions.columns:
        n_valid_patients = int(predictions["patient_id"].nunique())
    # Images written by training (curves, lr_find) stay in the folder when the report is
    # rewritten later without the epoch log, so link whatever is there.
    images = {name: name in files or (run_dir / name).exists() for name in (TRAINING_CURVES_PNG, LR_FIND_PNG)}
    markdown = _render_markdown(metrics, metrics["context"], n_valid_patients=n_valid_patients, images=images)
    files[REPORT_FILE] = markdown.encode("utf-8")
    _write_all(run_dir, files)
    return metrics


def rewrite_report(run_dir) -> dict:
    """`heartbeat report RUN`: recompute a finished run's report from the files it saved.

    Reads predictions.csv (one row per validation recording), config.json (classes, majority
    class), the context stored in metrics.json and epochs.csv if there is one; needs no model
    and no torch. Every file is read and checked before anything is written: a folder that is
    not a complete run raises RunFolderError (naming the file) and is left unchanged.
    """
    folder = _run_folder(run_dir)
    classes, majority_class = _read_config(folder)
    context = _read_context(folder)
    predictions = _read_predictions(folder, classes)
    epoch_log = _read_epoch_log(folder)
    _check_outputs(folder)
    for name in REPORT_OUTPUTS:  # what an earlier `heartbeat report` killed while staging left behind
        remove_dead_leftovers(folder, prefix=f".{Path(name).stem}.")
    return write_report(folder, predictions, classes, majority_class=majority_class, context=context,
                        epoch_log=epoch_log)


# ---------------------------------------------------------------- reading a run folder back

def _run_folder(run_dir) -> Path:
    """The run folder with every link resolved once (`latest` is a link), so all reads and writes stay in it."""
    path = Path(run_dir)
    try:
        folder = path.resolve(strict=True)
    except FileNotFoundError:
        raise RunFolderError(f"{path}: no such run folder") from None
    except (OSError, RuntimeError) as error:  # a symlink loop: RuntimeError before Python 3.13
        raise RunFolderError(f"{path}: cannot be opened ({_reason(error)})") from None
    if not folder.is_dir():
        raise RunFolderError(f"{path}: not a folder")
    return folder


def _read_run_file(folder: Path, name: str) -> bytes:
    """The bytes of folder/name: a regular file inside the folder (links followed only within it), bounded in size."""
    path = folder / name
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        raise RunFolderError(f"{path}: not found (not a complete run folder)") from None
    except (OSError, RuntimeError) as error:
        raise RunFolderError(f"{path}: cannot be opened ({_reason(error)})") from None
    if folder not in target.parents:
        raise RunFolderError(f"{path}: a link out of the run folder (to {target}), not followed")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the target was resolved above.
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise RunFolderError(f"{path}: cannot be read ({_reason(error)})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunFolderError(f"{path}: not a regular file")
        if info.st_size > MAX_RUN_FILE_BYTES:
            raise RunFolderError(f"{path}: {info.st_size} bytes, more than a run writes (limit {MAX_RUN_FILE_BYTES})")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_RUN_FILE_BYTES + 1)
    except OSError as error:
        raise RunFolderError(f"{path}: cannot be read ({_reason(error)})") from None
    finally:
        os.close(fd)


def _read_json_object(folder: Path, name: str) -> dict:
    data = _read_run_file(folder, name)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFolderError(f"{folder / name}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{folder / name}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except ValueError:  # valid JSON that Python will not read: an integer of more than 4300 digits
        raise RunFolderError(f"{folder / name}: not usable JSON (a number too long to read)") from None
    except RecursionError:
        raise RunFolderError(f"{folder / name}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{folder / name}: expected a JSON object, found {type(value).__name__}")
    return value


def _read_config(folder: Path) -> tuple[list[str], str]:
    """(classes, majority class) from config.json."""
    config = _read_json_object(folder, CONFIG_FILE)
    path = folder / CONFIG_FILE
    classes, majority_class = config.get("classes"), config.get("majority_class")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(name, str) and name for name in classes)
            or len(set(classes)) != len(classes)):
        raise RunFolderError(f"{path}: 'classes' must list two or more distinct class names, found {classes!r:.200}")
    if NORMAL_CLASS not in classes:
        raise RunFolderError(f"{path}: 'classes' {classes} lack {NORMAL_CLASS!r}, which the heart-problem figures need")
    if majority_class not in classes:
        raise RunFolderError(f"{path}: 'majority_class' {majority_class!r:.100} is not one of the classes {classes}")
    return classes, majority_class


def _read_context(folder: Path) -> dict:
    """The run's context (title, split, weights, settings, notes...) kept in metrics.json."""
    context = _read_json_object(folder, METRICS_FILE).get("context")
    if not isinstance(context, dict):
        raise RunFolderError(f"{folder / METRICS_FILE}: no 'context' object (the run's title, split and weights)")
    try:
        _check_context(context)
    except ValueError as error:
        raise RunFolderError(f"{folder / METRICS_FILE}: {error}") from None
    return context


def _read_table(folder: Path, name: str, **options) -> pd.DataFrame:
    data = _read_run_file(folder, name)
    try:
        return pd.read_csv(io.BytesIO(data), encoding="utf-8", **options)
    except UnicodeDecodeError:
        raise RunFolderError(f"{folder / name}: not UTF-8 text") from None
    except (ValueError, pd.errors.ParserError) as error:  # EmptyDataError is a ValueError
        raise RunFolderError(f"{folder / name}: not a readable csv ({_reason(error)})") from None


def _read_predictions(folder: Path, classes: list[str]) -> pd.DataFrame:
    """predictions.csv: one row per validation recording, labels and predictions among the run's classes."""
    path = folder / PREDICTIONS_FILE
    # Every cell as text, empty cells as "": a label is a name, never NaN or a number.
    predictions = _read_table(folder, PREDICTIONS_FILE, dtype=str, keep_default_na=False)
    try:
        _check_predictions(predictions)
    except ValueError as error:
        raise RunFolderError(f"{path}: {error}") from None
    if predictions.empty:
        raise RunFolderError(f"{path}: no recordings")
    for column in ("label", "predicted"):
        unknown = sorted(set(predictions[column]) - set(classes))
        if unknown:
            raise RunFolderError(f"{path}: column {column!r} holds {unknown[:5]!r:.200}, "
                                 f"not among the run's classes {classes} (config.json)")
    return predictions


def _read_epoch_log(folder: Path) -> pd.DataFrame | None:
    """epochs.csv if the run has one (numeric columns), else None."""
    if not os.path.lexists(folder / EPOCH_LOG_FILE):
        return None
    path = folder / EPOCH_LOG_FILE
    log = _read_table(folder, EPOCH_LOG_FILE)
    missing = [column for column in EPOCH_LOG_COLUMNS if column not in log.columns]
    if missing:
        raise RunFolderError(f"{path}: lacks columns {missing}; it has {list(log.columns)[:10]}")
    for column in EPOCH_LOG_COLUMNS:
        try:
            values = pd.to_numeric(log[column], errors="raise").astype(float)
        except (ValueError, TypeError):
            raise RunFolderError(f"{path}: column {column!r} holds values that are not numbers") from None
        if column == "epoch" and not (np.isfinite(values) & (values == np.round(values))).all():
            raise RunFolderError(f"{path}: column 'epoch' must hold whole numbers")
        log[column] = values
    return log


def _check_outputs(folder: Path) -> None:
    """The report's files can be renamed into place: none is a folder, and the folder is writable."""
    for name in REPORT_OUTPUTS:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            raise RunFolderError(f"{path}: is a folder, where the report writes a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunFolderError(f"{folder}: not writable; the report cannot be rewritten")


def _reason(error: BaseException) -> str:
    """The first line of an error's message, without the path it may repeat."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return (str(error).splitlines() or [type(error).__name__])[0]


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


def _check_context(context: dict) -> None:
    missing_context = [key for key in REQUIRED_CONTEXT if key not in context]
    if missing_context:
        raise ValueError(f"context lacks {missing_context}")
    # The report lists these as tables and bullet points.
    for key, kind in (("settings", dict), ("notes", list)):
        if context.get(key) is not None and not isinstance(context[key], kind):
            raise ValueError(f"context's {key!r} must be a {kind.__name__}, found {type(context[key]).__name__}")


def _save_png(figure: Figure, path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _json_bytes(value) -> bytes:
    # allow_nan=False: _plain has made NaN and infinity None, so the file is strict JSON.
    return (json.dumps(value, indent=2, allow_nan=False) + "\n").encode("utf-8")


def _write_all(folder: Path, files: dict[str, bytes]) -> None:
    """Write every file atomically, renaming none until all are staged: a failure while staging
    (disk full, an interrupt) leaves every earlier file as it was."""
    with contextlib.ExitStack() as staged:
        for name, data in files.items():
            staged.enter_context(atomic_path(folder / name)).write_bytes(data)


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
    """A JSON-ready copy: numpy scalars/arrays to Python, paths to strings, NaN and infinity to None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return str(value)
    return value
