"""A run folder's files: their names, and reading a finished run folder back for `heartbeat report`.

Every file is checked as it is read: RunFolderError names the file and the problem in one line.
Nothing is read through a link out of the run folder, and nothing is read unbounded.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from heartbeat.fileio import FileRefused, read_regular
from heartbeat.text import error_reason, from_spreadsheet_cell

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_JSON = "confusion_matrix.json"
TRAINING_CURVES_PNG = "training_curves.png"
LR_FIND_PNG = "lr_find.png"
LR_FIND_CSV = "lr_find.csv"  # written by training: the finder's learning rates and losses (columns lr, loss)
RESULTS_PNG = "results.png"
TOP_LOSSES_PNG = "top_losses.png"
REPORT_FILE = "report.md"
REPORT_OUTPUTS = (METRICS_FILE, CONFUSION_PNG, CONFUSION_JSON, TRAINING_CURVES_PNG, LR_FIND_PNG, RESULTS_PNG,
                  TOP_LOSSES_PNG, REPORT_FILE)
CONFIG_FILE = "config.json"  # written by training: classes and majority class
PREDICTIONS_FILE = "predictions.csv"
EPOCH_LOG_FILE = "epochs.csv"
# A Dataset B run's files are under 100 KB; a file far larger is not one a run wrote, and is not read.
MAX_RUN_FILE_BYTES = 16 * 2**20

PREDICTION_COLUMNS = ("recording", "label", "predicted")
EPOCH_LOG_COLUMNS = ("epoch", "train_loss", "valid_loss", "error_rate")
LR_FIND_COLUMNS = ("lr", "loss")
REQUIRED_CONTEXT = ("title", "split", "weights")
PICTURE_KEYS = ("file", "recording", "label", "predicted", "why")  # context["explanations"]["pictures"]


class RunFolderError(ValueError):
    """A run folder `heartbeat report` cannot use; the message names the file and the problem."""


@dataclass(frozen=True)
class SavedRun:
    """What a finished run saved, as `heartbeat report` rereads it."""

    folder: Path  # every link resolved once
    classes: list[str]
    majority_class: str
    spectrograms: str | None
    context: dict
    predictions: pd.DataFrame
    epoch_log: pd.DataFrame | None
    lr_find: pd.DataFrame | None


def read_run(run_dir) -> SavedRun:
    """Read and check every file the report needs from a finished run folder; RunFolderError naming the file."""
    folder = _run_folder(run_dir)
    classes, majority_class, spectrograms = _read_config(folder)
    context = _read_context(folder)
    predictions = _read_predictions(folder, classes)
    return SavedRun(folder, classes, majority_class, spectrograms, context, predictions,
                    epoch_log=_read_epoch_log(folder), lr_find=_read_lr_find(folder))


def _run_folder(run_dir) -> Path:
    """The run folder with every link resolved once (`latest` is a link), so all reads and writes stay in it."""
    path = Path(run_dir)
    try:
        folder = path.resolve(strict=True)
    except FileNotFoundError:
        raise RunFolderError(f"{path}: no such run folder") from None
    except (OSError, RuntimeError) as error:  # a symlink loop: RuntimeError before Python 3.13
        raise RunFolderError(f"{path}: cannot be opened ({error_reason(error)})") from None
    if not folder.is_dir():
        raise RunFolderError(f"{path}: not a folder")
    return folder


def _read_run_file(folder: Path, name: str) -> bytes:
    """The bytes of folder/name: a regular file inside the folder (links followed only within it), bounded in size."""
    try:
        return read_regular(folder / name, MAX_RUN_FILE_BYTES, links_within=folder)
    except FileRefused as refused:
        raise RunFolderError(_run_file_problem(refused)) from None


def _run_file_problem(refused: FileRefused) -> str:
    """read_regular's refusal in this command's words."""
    if refused.kind == "missing":
        return f"{refused.path}: not found (not a complete run folder)"
    if refused.kind == "outside":
        return f"{refused.path}: a link out of the run folder (to {refused.target}), not followed"
    if refused.kind == "too_big":
        return f"{refused.path}: {refused.size} bytes, more than a run writes (limit {MAX_RUN_FILE_BYTES})"
    return str(refused)


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


def _read_config(folder: Path) -> tuple[list[str], str, str | None]:
    """(classes, majority class, spectrograms folder or None) from config.json."""
    config = _read_json_object(folder, CONFIG_FILE)
    path = folder / CONFIG_FILE
    classes, majority_class = config.get("classes"), config.get("majority_class")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(name, str) and name for name in classes)
            or len(set(classes)) != len(classes)):
        raise RunFolderError(f"{path}: 'classes' must list two or more distinct class names, found {classes!r:.200}")
    if majority_class not in classes:
        raise RunFolderError(f"{path}: 'majority_class' {majority_class!r:.100} is not one of the classes {classes}")
    spectrograms = config.get("spectrograms")
    return classes, majority_class, spectrograms if isinstance(spectrograms, str) and spectrograms else None


def _read_context(folder: Path) -> dict:
    """The run's context (title, split, weights, settings, notes...) kept in metrics.json."""
    context = _read_json_object(folder, METRICS_FILE).get("context")
    if not isinstance(context, dict):
        raise RunFolderError(f"{folder / METRICS_FILE}: no 'context' object (the run's title, split and weights)")
    try:
        check_context(context)
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
        raise RunFolderError(f"{folder / name}: not a readable csv ({error_reason(error)})") from None


def _read_predictions(folder: Path, classes: list[str]) -> pd.DataFrame:
    """predictions.csv: one row per validation recording, labels and predictions among the run's classes."""
    path = folder / PREDICTIONS_FILE
    # Every cell as text, empty cells as "": a label is a name, never NaN or a number. The run wrote its text
    # cells spreadsheet-safe (heartbeat.text); the names are read back as they were.
    predictions = _read_table(folder, PREDICTIONS_FILE, dtype=str, keep_default_na=False).map(from_spreadsheet_cell)
    try:
        check_predictions(predictions)
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
    """epochs.csv if the run has one (numeric columns, whole epoch numbers), else None."""
    log = _read_numeric_table(folder, EPOCH_LOG_FILE, EPOCH_LOG_COLUMNS)
    if log is not None and not (np.isfinite(log["epoch"]) & (log["epoch"] == np.round(log["epoch"]))).all():
        raise RunFolderError(f"{folder / EPOCH_LOG_FILE}: column 'epoch' must hold whole numbers")
    return log


def _read_lr_find(folder: Path) -> pd.DataFrame | None:
    """lr_find.csv if the run has one (numeric lr and loss columns), else None."""
    return _read_numeric_table(folder, LR_FIND_CSV, LR_FIND_COLUMNS)


def _read_numeric_table(folder: Path, name: str, columns: Sequence[str]) -> pd.DataFrame | None:
    """folder/name if the run has it, with `columns` as floats (RunFolderError if any is absent or not numeric)."""
    if not os.path.lexists(folder / name):
        return None
    path = folder / name
    frame = _read_table(folder, name)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise RunFolderError(f"{path}: lacks columns {missing}; it has {list(frame.columns)[:10]}")
    for column in columns:
        try:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype(float)
        except (ValueError, TypeError):
            raise RunFolderError(f"{path}: column {column!r} holds values that are not numbers") from None
    return frame


def check_outputs(folder: Path) -> None:
    """The report's files can be renamed into place: none is a folder, and the folder is writable."""
    for name in REPORT_OUTPUTS:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            raise RunFolderError(f"{path}: is a folder, where the report writes a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunFolderError(f"{folder}: not writable; the report cannot be rewritten")


def check_predictions(predictions: pd.DataFrame) -> None:
    missing = [column for column in PREDICTION_COLUMNS if column not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}; they have {list(predictions.columns)}")
    duplicated = predictions["recording"][predictions["recording"].duplicated()].unique().tolist()
    if duplicated:
        # One row per recording: windows must be combined (metrics.combine_windows) before scoring.
        raise ValueError(f"predictions have several rows for recordings {duplicated[:5]}")


def check_context(context: dict) -> None:
    missing_context = [key for key in REQUIRED_CONTEXT if key not in context]
    if missing_context:
        raise ValueError(f"context lacks {missing_context}")
    # The report lists these as tables and bullet points.
    for key, kind in (("settings", dict), ("notes", list)):
        if context.get(key) is not None and not isinstance(context[key], kind):
            raise ValueError(f"context's {key!r} must be a {kind.__name__}, found {type(context[key]).__name__}")
    _check_explanations(context.get("explanations"))


def _check_explanations(explanations) -> None:
    """None, or {"pictures": [{file, recording, label, predicted, why: text}], "note": text or None}."""
    if explanations is None:
        return
    pictures = explanations.get("pictures") if isinstance(explanations, dict) else None
    note = explanations.get("note") if isinstance(explanations, dict) else None
    if not (isinstance(pictures, list) and (note is None or isinstance(note, str))
            and all(isinstance(picture, dict) and all(isinstance(picture.get(key), str) for key in PICTURE_KEYS)
                    for picture in pictures)):
        raise ValueError(f"context's 'explanations' must be {{'pictures': [{{{', '.join(PICTURE_KEYS)}: text}}], "
                         "'note': text or null}")
