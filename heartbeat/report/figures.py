"""Every plot of the report, drawn with matplotlib's Figure API on the Agg canvas.

No pyplot and no matplotlib.use: importing this module changes no global state. The confusion
matrix, the training curves, the learning-rate finder (from lr_find.csv), the CV folds, and two
pictures of validation spectrograms like fastai's show_results and plot_top_losses (results.png,
top_losses.png), made from predictions.csv and the window images in the spectrograms folder.
matplotlib is imported here only: import this module where a figure is drawn, not at the top of
anything `heartbeat --help` or predict loads.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from heartbeat.data.manifest import MANIFEST_NAME, ManifestError, is_own_image, read_manifest
from heartbeat.fileio import FileRefused, atomic_path, read_regular
from heartbeat.report.run_files import EPOCH_LOG_COLUMNS, RESULTS_PNG, TOP_LOSSES_PNG

LR_FIND_SKIP_END = 5  # as fastai's plot_lr_find: the last losses, where training diverges, would squash the curve
GRID_TILES = 9  # pictures per grid (3 x 3), as a fastai show_results batch
# Stage 1's windows are 512 px; an image far larger is not one of its own, and is not decoded.
MAX_WINDOW_SIDE = 4096
# Bytes read for one: a MAX_WINDOW_SIDE RGBA PNG stored uncompressed fits, so only the side check refuses an image.
MAX_WINDOW_BYTES = 4 * MAX_WINDOW_SIDE**2 + 2**20


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
            pixels = read_window_image(folder, image) if image else None
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


def read_window_image(folder: Path, image: str) -> np.ndarray | None:
    """A window's pixels (uint8, as stored), or None if it is not a regular file inside folder/images/
    (no links followed), is too large, or cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    images_dir = folder / Path(image).parent
    if images_dir.is_symlink() or not images_dir.is_dir():
        return None
    try:
        data = read_regular(folder / image, MAX_WINDOW_BYTES)
        with Image.open(io.BytesIO(data)) as png:  # reads the header only: the size is checked before decoding
            if max(png.size) > MAX_WINDOW_SIDE:
                return None
            return np.asarray(png.convert("L"))
    except (FileRefused, OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def _save_png(figure: Figure, path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
