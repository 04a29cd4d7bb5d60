"""The run report: metrics.json, confusion matrix (PNG and JSON), training curves, report.md.

Every plot of a run is drawn here, with matplotlib's Figure API on the Agg canvas (no pyplot
and no matplotlib.use: importing this module changes no global state): the confusion matrix,
the training curves, the learning-rate finder (from lr_find.csv), and two pictures of
validation spectrograms like fastai's show_results and plot_top_losses (results.png,
top_losses.png), made from predictions.csv and the window images in the spectrograms folder.

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

from heartbeat.data import layouts
from heartbeat.fileio import atomic_path, remove_dead_leftovers
from heartbeat.report.metrics import classification_metrics
from heartbeat.data.manifest import MANIFEST_NAME, ManifestError, is_own_image, read_manifest
from heartbeat.text import from_spreadsheet_cell, printable

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
LR_FIND_SKIP_END = 5  # as fastai's plot_lr_find: the last losses, where training diverges, would squash the curve
GRID_TILES = 9  # pictures per grid (3 x 3), as a fastai show_results batch
# Stage 1's windows are 512 px; an image far larger is not one of its own, and is not decoded.
MAX_WINDOW_SIDE = 4096
REQUIRED_CONTEXT = ("title", "split", "weights")
NORMAL_CLASS = "normal"  # where the classes have it, every other class is a heart problem (layouts.normal_class)


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


def plot_cv_folds(per_fold: pd.DataFrame, path) -> None:
    """The CV report's bars: error rate and balanced accuracy per run (seed/fold) beside the majority baseline's."""
    _save_png(cv_folds_figure(per_fold), path)


def cv_folds_figure(per_fold: pd.DataFrame) -> Figure:
    """The figure plot_cv_folds saves; per_fold has seed, fold, error_rate, balanced_accuracy and baseline_<both>."""
    figure = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    labels = [f"s{seed}/f{fold}" for seed, fold in zip(per_fold["seed"], per_fold["fold"])]
    positions = np.arange(len(per_fold))
    for axes, name, title in zip(figure.subplots(1, 2), ["error_rate", "balanced_accuracy"],
                                 ["Error rate", "Balanced accuracy"]):
        axes.bar(positions, per_fold[name].astype(float), color="tab:blue", label="model")
        axes.plot(positions, per_fold[f"baseline_{name}"].astype(float), "o--", color="tab:red", label="majority baseline")
        axes.set_xticks(positions, labels, rotation=45, fontsize=8)
        axes.set_ylim(0, 1)
        axes.set_title(title)
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_lr_find(lrs, losses, suggestion, path) -> None:
    """The learning-rate finder's curve: loss against learning rate (log scale), the suggestion as a dashed line."""
    _save_png(lr_find_figure(lrs, losses, suggestion), path)


def lr_find_figure(lrs, losses, suggestion) -> Figure:
    """The figure plot_lr_find saves; as fastai's plot_lr_find, without the last LR_FIND_SKIP_END points."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if lrs.shape != losses.shape:
        raise ValueError(f"{lrs.size} learning rates but {losses.size} losses")
    keep = lrs.size - LR_FIND_SKIP_END if lrs.size > LR_FIND_SKIP_END + 1 else lrs.size
    lrs, losses = lrs[:keep], losses[:keep]
    known = np.isfinite(lrs) & (lrs > 0) & np.isfinite(losses)  # a log axis has no place for 0 or NaN

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if known.any():
        axes.plot(lrs[known], losses[known])
        axes.set_xscale("log")
    else:
        axes.text(0.5, 0.5, "no finite losses recorded", ha="center", va="center", transform=axes.transAxes)
    if suggestion is not None and math.isfinite(suggestion) and suggestion > 0:
        axes.axvline(suggestion, color="tab:red", linestyle="--", label=f"valley {suggestion:.2e}")
        axes.legend()
    axes.set_xlabel("learning rate")
    axes.set_ylabel("loss")
    axes.set_title("Learning-rate finder")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def probability_table(predictions: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """(n_recordings, n_classes) probabilities from the prob_<class> columns; None if any is absent or not finite."""
    columns = [f"prob_{name}" for name in classes]
    if any(column not in predictions.columns for column in columns):
        return None
    values = predictions[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return values if np.isfinite(values).all() else None


def results_choice(predictions: pd.DataFrame, classes: Sequence[str], limit: int = GRID_TILES) -> list[int]:
    """Row positions for the results grid: recordings taken in turn from each true class present (in class
    order, each class's by recording name), so every class shows, until `limit` are chosen."""
    queues = [sorted(np.flatnonzero(predictions["label"].to_numpy() == name),
                     key=lambda row: str(predictions["recording"].iloc[row]))
              for name in classes]
    chosen: list[int] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(int(queue.pop(0)))
    return chosen


def top_losses(predictions: pd.DataFrame, probabilities: np.ndarray, classes: Sequence[str],
               limit: int = GRID_TILES) -> list[int]:
    """Row positions of the wrong predictions, the highest probability on a wrong class (the predicted one)
    first; ties by the higher loss (the lower probability on the true class), then by recording name; at most
    `limit`."""
    classes = list(classes)
    rows = np.arange(len(predictions))
    confidence = probabilities[rows, [classes.index(name) for name in predictions["predicted"]]]
    true_probability = probabilities[rows, [classes.index(name) for name in predictions["label"]]]
    wrong = np.flatnonzero(predictions["label"].to_numpy() != predictions["predicted"].to_numpy())
    order = sorted(wrong, key=lambda row: (-confidence[row], true_probability[row], str(predictions["recording"].iloc[row])))
    return [int(row) for row in order[:limit]]


def prediction_pictures(predictions: pd.DataFrame, classes: Sequence[str], spectrograms) -> tuple[dict, str | None]:
    """({results.png, top_losses.png: PNG bytes}, None), or ({}, a one-line note saying why they are not drawn).

    Each tile is the first window of a validation recording, read from the spectrograms folder
    through its manifest; only stage 1's own images (images/<name>.png, regular files, no links)
    are read. A missing folder or manifest is a note in the report, never an error.
    """
    classes = list(classes)
    not_drawn = f"{RESULTS_PNG} and {TOP_LOSSES_PNG} were not drawn"
    probabilities = probability_table(predictions, classes)
    if probabilities is None:
        return {}, f"The predictions have no finite prob_<class> columns: {not_drawn}."
    if spectrograms is None:
        return {}, f"No spectrograms folder is recorded for this run: {not_drawn}."
    folder = Path(spectrograms)
    if not folder.is_dir():
        return {}, f"The spectrograms folder {folder} is gone: {not_drawn}."
    try:
        first_windows = _first_windows(read_manifest(folder / MANIFEST_NAME))
    except ManifestError as error:
        return {}, f"{folder / MANIFEST_NAME} {error}: {not_drawn}."

    def tiles(rows: list[int]) -> list[tuple]:
        result = []
        for row in rows:
            record = predictions.iloc[row]
            image = first_windows.get(str(record["recording"]))
            pixels = _read_window_image(folder, image) if image else None
            p_true = probabilities[row, classes.index(record["label"])]
            p_predicted = probabilities[row, classes.index(record["predicted"])]
            title = f"true: {record['label']}\npredicted: {record['predicted']} ({p_predicted:.2f})"
            result.append((pixels, title, record["label"] == record["predicted"], -math.log(max(p_true, 1e-12))))
        return result

    results = prediction_grid_figure(tiles(results_choice(predictions, classes)), "Results on validation recordings",
                                     empty_text="no validation recordings")
    wrong = tiles(top_losses(predictions, probabilities, classes))
    losses = prediction_grid_figure([(pixels, f"{title}\nloss {loss:.2f}", right, loss)
                                     for pixels, title, right, loss in wrong],
                                    "Most confidently wrong recordings", empty_text="no wrong predictions")
    return {RESULTS_PNG: png_bytes(results), TOP_LOSSES_PNG: png_bytes(losses)}, None


def prediction_grid_figure(tiles: list[tuple], title: str, *, empty_text: str) -> Figure:
    """A grid of window images, each (pixels or None, title, right?, loss): titled green when right, red when wrong."""
    columns = max(1, min(3, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / columns))
    title_lines = max((tile[1].count("\n") + 1 for tile in tiles), default=1)
    # a 2.5-inch image per tile plus room for its title's lines, so a title never runs into the row above
    figure = Figure(figsize=(2.6 * columns, (2.5 + 0.2 * title_lines) * rows + 0.5), dpi=100)
    FigureCanvasAgg(figure)
    heading = figure.suptitle(title)
    if not tiles:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=12, transform=axes.transAxes)
        axes.set_axis_off()
        _widen_to(figure, heading)
        return figure
    for index, (pixels, tile_title, right, _loss) in enumerate(tiles):
        axes = figure.add_subplot(rows, columns, index + 1)
        if pixels is None:
            axes.text(0.5, 0.5, "image not available", ha="center", va="center", transform=axes.transAxes)
        else:
            axes.imshow(pixels, cmap="gray", vmin=0, vmax=255)  # as stored: low frequencies at the bottom
        axes.set_title(tile_title, fontsize=9, color="tab:green" if right else "tab:red")
        axes.set_axis_off()
    figure.tight_layout()
    _widen_to(figure, heading)
    return figure


def _widen_to(figure: Figure, heading) -> None:
    """Widen the figure until its title fits: one 2.6-inch tile is narrower than "Most confidently wrong recordings"."""
    needed = heading.get_window_extent(figure.canvas.get_renderer()).width / figure.dpi + 0.3  # a margin each side
    if needed > figure.get_figwidth():
        figure.set_figwidth(needed)
        figure.tight_layout()


def _first_windows(manifest_rows: list[dict]) -> dict[str, str]:
    """recording -> the image of its first window, among the manifest's own images only."""
    first: dict[str, tuple[int, str]] = {}
    for row in manifest_rows:
        if not is_own_image(row["image"]) or not row["window"].isdigit():
            continue
        window = int(row["window"])
        if row["recording"] not in first or window < first[row["recording"]][0]:
            first[row["recording"]] = (window, row["image"])
    return {recording: image for recording, (_, image) in first.items()}


def _read_window_image(folder: Path, image: str) -> np.ndarray | None:
    """A window's pixels (uint8, as stored), or None if it is not a regular file inside folder/images/
    (no links followed), is too large, or cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    images_dir = folder / Path(image).parent
    if images_dir.is_symlink() or not images_dir.is_dir():
        return None
    try:
        # O_NOFOLLOW: a link is never followed out; O_NONBLOCK: a FIFO does not wait for a writer.
        fd = os.open(folder / image, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            with Image.open(handle) as png:  # reads the header only: the size is checked before decoding
                if max(png.size) > MAX_WINDOW_SIDE:
                    return None
                return np.asarray(png.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def write_report(
    run_dir,
    predictions: pd.DataFrame,
    classes: Sequence[str],
    *,
    majority_class: str,
    context: dict,
    epoch_log: pd.DataFrame | None = None,
    lr_find: pd.DataFrame | None = None,
    spectrograms=None,
) -> dict:
    """Write metrics.json, confusion_matrix.png/.json, training_curves.png (if epoch_log has rows),
    lr_find.png (if lr_find, columns lr and loss, has rows), results.png and top_losses.png (from
    the predictions' prob_<class> columns and the window images of the `spectrograms` folder,
    if it is there) and report.md into run_dir, overwriting earlier ones; return the metrics
    (with "context").

    Everything is made in memory before the first file is written; a ValueError (bad
    predictions, context or epoch log) therefore leaves run_dir as it was.
    """
    run_dir = Path(run_dir)
    classes = list(classes)
    _check_predictions(predictions)
    _check_context(context)

    metrics = classification_metrics(
        predictions["label"].tolist(), predictions["predicted"].tolist(), classes,
        majority_class=majority_class, normal_class=layouts.normal_class(classes),
    )
    metrics["context"] = plain(context)

    split, weights = str(context["split"]), str(context["weights"])
    matrix = metrics["confusion_matrix"]["matrix"]
    files = {
        METRICS_FILE: json_bytes(metrics),
        CONFUSION_PNG: png_bytes(
            confusion_matrix_figure(matrix, classes, f"Validation recordings, {split} split, weights: {weights}")
        ),
        CONFUSION_JSON: json_bytes({"classes": classes, "matrix": matrix, "split": split, "weights": weights}),
    }
    if epoch_log is not None and not epoch_log.empty:
        files[TRAINING_CURVES_PNG] = png_bytes(training_curves_figure(epoch_log))
    if lr_find is not None and not lr_find.empty:
        files[LR_FIND_PNG] = png_bytes(lr_find_figure(lr_find["lr"], lr_find["loss"], context.get("lr_suggestion")))
    pictures, pictures_note = prediction_pictures(predictions, classes, spectrograms)
    files.update(pictures)

    n_valid_patients = metrics["context"].get("n_valid_patients")
    if n_valid_patients is None and "patient_id" in predictions.columns:
        n_valid_patients = int(predictions["patient_id"].nunique())
    # Images written by training (curves, lr_find) stay in the folder when the report is
    # rewritten later without the epoch log, so link whatever is there.
    images = {name: name in files or (run_dir / name).exists()
              for name in (TRAINING_CURVES_PNG, LR_FIND_PNG, RESULTS_PNG, TOP_LOSSES_PNG)}
    markdown = _render_markdown(metrics, metrics["context"], n_valid_patients=n_valid_patients, images=images,
                                pictures_note=pictures_note)
    files[REPORT_FILE] = markdown.encode("utf-8")
    write_all(run_dir, files)
    return metrics


def rewrite_report(run_dir) -> dict:
    """`heartbeat report RUN`: recompute a finished run's report from the files it saved.

    Reads predictions.csv (one row per validation recording), config.json (classes, majority
    class, spectrograms folder), the context stored in metrics.json, epochs.csv and lr_find.csv
    if there are, and the window images for results.png and top_losses.png if the spectrograms
    folder is still there (the report says so when it is not); needs no model and no torch. Every file is read and checked before anything is written: a folder that is
    not a complete run raises RunFolderError (naming the file) and is left unchanged.
    """
    folder = _run_folder(run_dir)
    classes, majority_class, spectrograms = _read_config(folder)
    context = _read_context(folder)
    predictions = _read_predictions(folder, classes)
    epoch_log = _read_epoch_log(folder)
    lr_find = _read_lr_find(folder)
    _check_outputs(folder)
    for name in REPORT_OUTPUTS:  # what an earlier `heartbeat report` killed while staging left behind
        remove_dead_leftovers(folder, prefix=f".{Path(name).stem}.")
    return write_report(folder, predictions, classes, majority_class=majority_class, context=context,
                        epoch_log=epoch_log, lr_find=lr_find, spectrograms=spectrograms)


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
    # Every cell as text, empty cells as "": a label is a name, never NaN or a number. The run wrote its text
    # cells spreadsheet-safe (heartbeat.text); the names are read back as they were.
    predictions = _read_table(folder, PREDICTIONS_FILE, dtype=str, keep_default_na=False).map(from_spreadsheet_cell)
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


def _render_markdown(metrics: dict, context: dict, *, n_valid_patients=None, images: dict | None = None,
                     pictures_note: str | None = None) -> str:
    """report.md text from the metrics dict and the run context."""
    images = images or {}
    baseline = metrics["majority_baseline"]
    baseline_header = f"majority baseline (always {baseline['class']})"
    lines: list[str] = [f"# {context['title']}", ""]

    lines += [_summary_paragraph(metrics, context, n_valid_patients), ""]

    lines += ["## Figures", "", *markdown_table(
        ["figure", "model", baseline_header],
        [[name, format_number(model_value), format_number(baseline_value)]
         for name, model_value, baseline_value in _figure_rows(metrics)],
    ), ""]
    lines += [heart_problem_sentence(list(metrics["per_class"])) + " Balanced accuracy is the mean recall over "
              "the classes present among the scored recordings.", ""]

    lines += ["## Per class", "", *markdown_table(
        ["class", "precision", "recall", "F1", "support"],
        [[name, format_number(row["precision"]), format_number(row["recall"]), format_number(row["f1"]), str(row["support"])]
         for name, row in metrics["per_class"].items()],
    ), ""]

    confusion = metrics["confusion_matrix"]
    lines += ["## Confusion matrix", "", f"![confusion matrix]({CONFUSION_PNG})", ""]
    lines += [*markdown_table(
        ["true \\ predicted", *confusion["classes"]],
        [[name, *(str(count) for count in row)] for name, row in zip(confusion["classes"], confusion["matrix"])],
    ), "", "Rows are the true class, columns the predicted class; counts are recordings.", ""]

    lines += ["## Results on validation recordings", ""]
    if images.get(RESULTS_PNG):
        lines += [f"![results on validation recordings]({RESULTS_PNG})", "",
                  "One window per recording, several of each true class: its true class, the predicted class and "
                  "the predicted class's probability (the recording's windows combined); green when right, red when "
                  "wrong. Low frequencies at the bottom.", ""]
    if images.get(TOP_LOSSES_PNG):
        lines += [f"![most confidently wrong recordings]({TOP_LOSSES_PNG})", "",
                  "The most confidently wrong recordings, the highest probability on a wrong class first, with the "
                  "loss (−log of the true class's probability).", ""]
    if pictures_note:
        lines += [pictures_note, ""]

    if images.get(TRAINING_CURVES_PNG):
        lines += ["## Training curves", "", f"![training curves]({TRAINING_CURVES_PNG})", ""]
    if images.get(LR_FIND_PNG):
        lines += ["## Learning-rate finder", "", f"![learning-rate finder]({LR_FIND_PNG})", ""]

    lines += ["## Run", "", *markdown_table(["item", "value"], [
        ["split", str(context["split"])],
        ["weights", str(context["weights"])],
        ["training mode", str(context.get("training_mode", "n/a"))],
        ["suggested learning rate (lr_find)", _fmt_setting(context.get("lr_suggestion"))],
    ]), ""]

    settings = context.get("settings") or {}
    if settings:
        lines += ["## Settings", "", *markdown_table(
            ["setting", "value"], [[str(key), _fmt_setting(value)] for key, value in settings.items()]
        ), ""]

    lines += ["## Split sizes", "", *markdown_table(["", "recordings", "patients"], [
        ["train", _fmt_count(context.get("n_train_recordings")), _fmt_count(context.get("n_train_patients"))],
        ["validation", _fmt_count(metrics["n_recordings"]), _fmt_count(n_valid_patients)],
    ]), ""]

    notes = context.get("notes") or []
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]

    return markdown_text(lines)


def _summary_paragraph(metrics: dict, context: dict, n_valid_patients) -> str:
    baseline = metrics["majority_baseline"]
    patients = f" from {n_valid_patients} patients" if n_valid_patients is not None else ""
    difference = baseline["error_rate"] - metrics["error_rate"]
    if abs(difference) < 5e-4:
        comparison = "the same as the baseline's"
    elif difference > 0:
        comparison = f"{format_number(difference)} lower than the baseline's"
    else:
        comparison = f"{format_number(-difference)} higher than the baseline's"
    return (
        f"On {metrics['n_recordings']} validation recordings{patients} ({context['split']} split, "
        f"weights: {context['weights']}), the model's error rate is **{format_number(metrics['error_rate'])}**; "
        f"a majority baseline that always answers \"{baseline['class']}\" has an error rate of "
        f"**{format_number(baseline['error_rate'])}**, so the model's is {comparison}. "
        f"Balanced accuracy is {format_number(metrics['balanced_accuracy'])} "
        f"(baseline {format_number(baseline['balanced_accuracy'])}) and macro-F1 {format_number(metrics['macro_f1'])} "
        f"(baseline {format_number(baseline['macro_f1'])})."
    )


def recording_groups_sentence(format: str) -> str:
    """The one sentence a report carries when its split groups are recordings, not patients."""
    return (f"Groups are recordings, not patients: the {format} layout names no patient, so a person with several "
            "recordings can be on both sides of a split, and these figures may be optimistic.")


def heart_problem_sentence(classes: Sequence[str]) -> str:
    """What the heart-problem figures mean for these classes, or why there are none."""
    if layouts.normal_class(classes) is None:
        return (f"No heart-problem sensitivity, specificity or Youden index: the classes ({', '.join(classes)}) have "
                f"no {NORMAL_CLASS!r} class to compare the others against (rename one with --label-map).")
    problem_classes = " or ".join(name for name in classes if name != NORMAL_CLASS)
    return (f"Heart problem = any class other than {NORMAL_CLASS} ({problem_classes}), against {NORMAL_CLASS}; "
            "Youden index = sensitivity + specificity − 1.")


def _figure_rows(metrics: dict):
    baseline = metrics["majority_baseline"]
    rows = [
        ("error rate", metrics["error_rate"], baseline["error_rate"]),
        ("accuracy", metrics["accuracy"], baseline["accuracy"]),
        ("balanced accuracy", metrics["balanced_accuracy"], baseline["balanced_accuracy"]),
        ("macro-F1", metrics["macro_f1"], baseline["macro_f1"]),
    ]
    model_heart, baseline_heart = metrics["heart_problem"], baseline["heart_problem"]
    if model_heart is None:  # no normal class: heart_problem_sentence says why
        return rows
    return rows + [
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


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def json_bytes(value) -> bytes:
    # allow_nan=False: plain has made NaN and infinity None, so the file is strict JSON.
    return (json.dumps(value, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_all(folder: Path, files: dict[str, bytes]) -> None:
    """Write every file atomically, renaming none until all are staged: a failure while staging
    (disk full, an interrupt) leaves every earlier file as it was."""
    with contextlib.ExitStack() as staged:
        for name, data in files.items():
            staged.enter_context(atomic_path(folder / name)).write_bytes(data)


def format_number(value) -> str:
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


def markdown_text(lines: list[str]) -> str:
    """report.md's text from its lines, each with its control characters escaped (heartbeat.text): a title or
    a cell holds file and folder names, and a newline or ESC in one must not break the page or a terminal."""
    return "\n".join(printable(line) for line in lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(values):
        # A "|" inside a cell would end the cell early.
        return "| " + " | ".join(str(value).replace("|", "\\|") for value in values) + " |"

    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(row) for row in rows)]


def plain(value):
    """A JSON-ready copy: numpy scalars/arrays to Python, paths to strings, NaN and infinity to None."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return str(value)
    return value
