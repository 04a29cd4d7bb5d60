"""What a model heard in a recording: its spectrogram, its answer window by window, and occlusion saliency.

`explain_signal` runs a loaded model (predict.Predictor) on a prepared signal as predict does
(mel.iter_recording_images -> Predictor.model_input -> the network -> metrics.combine_windows)
and, for each window, hides one time-frequency patch at a time and runs the hidden versions
through the same ONNX session: a patch's saliency is how much hiding it lowers the window's
log-odds of the explained class (by default the recording's answer). Occlusion needs only
the forward pass, so predict stays free of torch; it treats every model alike (the published
ResNet, the heartbeat CNN, an ensemble graph). `explain_images` does the same from a recording's
window images and their start times (stage 1's PNGs, for the training report): explain_signal is
it on the images predict would make.

Log-odds, log(p / (1 - p)), not the probability itself: a confident model's probability
saturates, and when its evidence repeats (a murmur in each of a recording's twelve systoles)
hiding one patch moved p(murmur) = 0.99999 by 1e-5, a blank map. Log-odds keep counting
evidence there, and in the middle (p near 0.5) they are 4 x the probability's change.

The patch (PATCH_FRAMES x PATCH_BANDS) is hidden by setting it to each band's mean level over
the window's sounding frames: the band "at its usual level", which carries no event. Not 0:
a black patch is silence at -80 dB, a sharp edge the network never saw in training (and in
a band-normalised view, the most extreme value there is); the band's mean is exactly what
band normalisation (nets.BandNorm inside the heartbeat network, mel.band_normalised before
the published one) maps to neutral. Silent frames (the padding after a short recording) are
never hidden: they hold nothing, and filling them would invent sound.

`draw_explanation` draws the picture (three panels sharing the time axis) and
`write_explanation` writes it atomically. Importing this module loads numpy only; matplotlib
(and the report module's PNG helper) are imported when a picture is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from heartbeat.data import audio
from heartbeat.data import mel
from heartbeat.report import metrics
from heartbeat.fileio import atomic_write_bytes
from heartbeat.text import printable

# 24 frames of 10 ms = 0.24 s: shorter than systole (about 0.3 s at 72 bpm; S1 to S2), so a
# murmur between S1 and S2 and the silence of diastole fall in different patches, yet long
# enough to hide a whole S1 or S2 (60-120 ms). 22 patches across a 5.11-s window.
PATCH_FRAMES = 24
# 16 of the 128 mel bands (8 patches from 20 Hz to 2 kHz): about 200 Hz each below 1 kHz,
# so heart sounds (20-200 Hz) and a murmur's band (150-600 Hz) are told apart.
PATCH_BANDS = 16
# Figure size: 10 x 8 inches at 100 dpi, a 1000 x 800 PNG (three panels of a readable height).
FIGURE_INCHES = (10.0, 8.0)
FIGURE_DPI = 100
# Below 1 kHz the mel scale is linear (about 13 Hz a band): ticks closer than 100 Hz would overlap.
FREQUENCY_TICKS_HZ = (100, 200, 400, 700, 1000, 1500)
PANELS = ("spectrogram", "probabilities", "saliency")  # the panels' axes labels (matplotlib's, not drawn)


@dataclass(frozen=True)
class Explanation:
    """One recording as the model saw it. Arrays over (mel band, frame) have the lowest band first."""

    spectrogram: np.ndarray  # uint8 (n_mels, n_frames): the recording's mel image over its whole length
    frame_seconds: float  # the time between frames (frame i is centred on i * frame_seconds)
    window_starts: np.ndarray  # (n_windows,) seconds
    window_seconds: float  # every window's span (the last may run past the recording's end: padding)
    window_probabilities: np.ndarray  # (n_windows, n_classes) float
    probabilities: np.ndarray  # (n_classes,) the recording's: metrics.combine_windows of the windows'
    target: int  # the class index the saliency is for (by default the answer, argmax of probabilities)
    saliency: np.ndarray  # float32 (n_mels, n_frames): drop in the target's window log-odds when hidden

    @property
    def duration(self) -> float:
        return self.spectrogram.shape[1] * self.frame_seconds

    @property
    def window_ends(self) -> np.ndarray:
        return self.window_starts + self.window_seconds


def explain_signal(predictor, signal: np.ndarray, *, target: int | None = None,
                   patch: tuple[int, int] = (PATCH_FRAMES, PATCH_BANDS),
                   settings: audio.AudioSettings = audio.SETTINGS) -> Explanation:
    """A prepared signal (audio.load_audio's output) -> its Explanation under `predictor`.

    Its windows are made as predict makes them (mel.recording_images) and explained by explain_images.
    Raises audio.AudioError as predict does (no sound in the mel bands; only blank windows).
    """
    windows = mel.recording_images(signal, settings)
    return explain_images(predictor, windows, signal.size / settings.sample_rate, target=target, patch=patch,
                          settings=settings)


def explain_images(predictor, windows: Sequence[tuple[float, np.ndarray]], duration: float, *,
                   target: int | None = None, patch: tuple[int, int] = (PATCH_FRAMES, PATCH_BANDS),
                   settings: audio.AudioSettings = audio.SETTINGS) -> Explanation:
    """A recording's windows, (start in seconds, uint8 image as stage 1 writes it), -> its Explanation.

    The training report explains validation recordings from stage 1's images (a run has no wav
    files); explain_signal passes the images it makes. duration: the recording's, in seconds
    (manifest.csv's duration_s): the picture's time axis, without the last window's padding.
    target: the class index to explain (default: the recording's answer). patch: (frames,
    bands) of one hidden patch; patches tile each window without overlap. Windows are handled
    one at a time and their hidden versions run through Predictor.window_probabilities a few
    at a time, so memory follows the recording's length (its image and map), not the patch count.
    Raises audio.AudioError if every image is blank, ValueError for images or times that are not a recording's.
    """
    patch_frames, patch_bands = patch
    if patch_frames < 1 or patch_bands < 1:
        raise ValueError(f"patch must be at least 1 frame x 1 band, got {patch}")
    n_frames = _frame_count(windows, duration, settings)
    rows_per_band = settings.image_size // settings.n_mels
    spectrogram = np.zeros((settings.n_mels, n_frames), np.uint8)
    saliency_sum = np.zeros((settings.n_mels, n_frames), np.float64)
    saliency_count = np.zeros(n_frames, np.int64)  # windows covering each frame (overlaps are averaged)
    images = [image for _, image in windows]
    if not any(image.any() for image in images):
        raise audio.AudioError("gives only blank spectrogram images (nothing to predict from)")
    baseline = predictor.window_probabilities(predictor.model_input(image) for image in images)
    probabilities = metrics.combine_windows(baseline)
    target = int(np.argmax(probabilities)) if target is None else target
    if not 0 <= target < baseline.shape[1]:
        raise ValueError(f"target class {target} is not one of the model's {baseline.shape[1]} classes")

    for (start_seconds, image), window_baseline in zip(windows, baseline):
        bands = image[::rows_per_band][::-1]  # (n_mels, frames), lowest band first; a band's rows are copies
        window_map = _window_saliency(predictor, image, float(log_odds(window_baseline[None], target)[0]), target,
                                      patch, rows_per_band)
        first = round(start_seconds * settings.sample_rate / settings.hop_length)
        last = min(first + bands.shape[1], n_frames)
        # Overlapping windows hold the same sound (one dB scale per recording): the later one's pixels are kept.
        spectrogram[:, first:last] = bands[:, :last - first]
        saliency_sum[:, first:last] += window_map[:, :last - first]
        saliency_count[first:last] += 1
    saliency = (saliency_sum / np.maximum(saliency_count, 1)).astype(np.float32)
    return Explanation(
        spectrogram=spectrogram, frame_seconds=settings.hop_length / settings.sample_rate,
        window_starts=np.array([float(start) for start, _ in windows]), window_seconds=settings.window_seconds,
        window_probabilities=baseline, probabilities=probabilities, target=target, saliency=saliency,
    )


def _frame_count(windows: Sequence[tuple[float, np.ndarray]], duration: float, settings: audio.AudioSettings) -> int:
    """The recording's frames (as mel.mel_power counts them: 1 + samples // hop); ValueError unless every window
    is an (image_size, image_size) image starting within the recording."""
    if not windows:
        raise ValueError("no windows to explain")
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"the recording's duration must be a positive number of seconds, got {duration}")
    side = settings.image_size
    for start, image in windows:
        if image.shape != (side, side) or image.dtype != np.uint8:
            raise ValueError(f"a window image is {image.dtype} {image.shape}, not uint8 ({side}, {side}) as stage 1's")
        if not (math.isfinite(start) and 0 <= start < duration):
            raise ValueError(f"a window starts at {start} s, outside the {duration:g}-s recording")
    return 1 + round(duration * settings.sample_rate) // settings.hop_length


def log_odds(probabilities: np.ndarray, target: int) -> np.ndarray:
    """(n, n_classes) probabilities -> (n,) natural log-odds of class `target`: log p - log(sum of the others).

    The others are summed rather than taken as 1 - p, which float32 rounds to 0 above p = 1 - 6e-8;
    probabilities are floored at float32's smallest normal number, so a 0 gives a large finite value.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    floor = float(np.finfo(np.float32).tiny)
    others = np.delete(probabilities, target, axis=1).sum(axis=1)
    return np.log(np.maximum(probabilities[:, target], floor)) - np.log(np.maximum(others, floor))


def patch_grid(n_bands: int, n_frames: int, patch: tuple[int, int]) -> list[tuple[slice, slice]]:
    """(band slice, frame slice) of every patch tiling a window without overlap (the last ones cut at the edges)."""
    patch_frames, patch_bands = patch
    return [(slice(band, min(band + patch_bands, n_bands)), slice(frame, min(frame + patch_frames, n_frames)))
            for band in range(0, n_bands, patch_bands) for frame in range(0, n_frames, patch_frames)]


def _window_saliency(predictor, image: np.ndarray, baseline: float, target: int, patch: tuple[int, int],
                     rows_per_band: int) -> np.ndarray:
    """(n_mels, frames) float: the target's log-odds minus those with each patch hidden (0 where never hidden)."""
    n_bands, n_frames = image.shape[0] // rows_per_band, image.shape[1]
    sounding = image.max(axis=0) > 0
    window_map = np.zeros((n_bands, n_frames))
    if not sounding.any():
        return window_map
    # Each image row's mean over the sounding frames: the neutral level that hides a patch (see the module's docstring).
    neutral = np.rint(image[:, sounding].mean(axis=1)).astype(np.uint8)
    hidden = [(bands, frames) for bands, frames in patch_grid(n_bands, n_frames, patch) if sounding[frames].any()]

    def hidden_inputs() -> Iterator[np.ndarray]:
        for bands, frames in hidden:
            # Band b (lowest first) is image rows (n_bands - 1 - b) * rows_per_band onwards: the image has low at the bottom.
            rows = slice((n_bands - bands.stop) * rows_per_band, (n_bands - bands.start) * rows_per_band)
            occluded = image.copy()
            columns = np.flatnonzero(sounding[frames]) + frames.start
            occluded[rows, columns] = neutral[rows, None]
            yield predictor.model_input(occluded)

    if hidden:
        drops = baseline - log_odds(predictor.window_probabilities(hidden_inputs()), target)
        for (bands, frames), drop in zip(hidden, drops):
            window_map[bands, frames] = drop
    return window_map


# ---------------------------------------------------------------- the picture

def printable_name(name: str | os.PathLike | bytes) -> str:
    """A file name as one line of text a picture can show: text.printable's escapes, and undecodable bytes as `\\xNN`.

    A terminal gets a name's undecodable bytes back as they were; a PNG title cannot, so they are escaped here.
    """
    return printable(os.fsencode(name).decode("utf-8", "backslashreplace"))


def explanation_title(name: str | os.PathLike | bytes, explanation: Explanation, classes: Sequence[str]) -> str:
    """The picture's title: the file's name and the answer, e.g. `a.wav: murmur (p = 0.83)`."""
    answer = int(np.argmax(explanation.probabilities))
    return f"{printable_name(name)}: {classes[answer]} (p = {explanation.probabilities[answer]:.2f})"


def draw_explanation(explanation: Explanation, classes: Sequence[str], title: str) -> bytes:
    """The explanation as PNG bytes (1000 x 800 px): see explanation_figure."""
    from heartbeat.report.figures import png_bytes  # matplotlib and pandas: loaded only when a picture is drawn

    return png_bytes(explanation_figure(explanation, classes, title))


def write_explanation(path: str | os.PathLike, explanation: Explanation, classes: Sequence[str], title: str) -> None:
    """Draw the explanation and write it to `path` atomically (a reader never sees half a PNG)."""
    atomic_write_bytes(path, draw_explanation(explanation, classes, title))


def explanation_figure(explanation: Explanation, classes: Sequence[str], title: str,
                       settings: audio.AudioSettings = audio.SETTINGS):
    """A matplotlib Figure of three panels sharing the time axis (seconds), each with its colour bar or legend:
    the mel spectrogram (dB re the recording's peak; Hz, low at the bottom), the classes' probabilities window by
    window, and the saliency for the target class over the spectrogram in grey (red: hiding it lowers the class's
    log-odds, so it is evidence for it; blue: evidence against).
    """
    from matplotlib.figure import Figure

    if len(classes) != explanation.probabilities.size:
        raise ValueError(f"{len(classes)} class names for {explanation.probabilities.size} probabilities")
    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    # A narrow second column holds the colour bars, so the three panels keep the same width and times line up.
    grid = figure.add_gridspec(3, 2, height_ratios=(3, 2, 3), width_ratios=(1, 0.02))
    spectrum_axes = figure.add_subplot(grid[0, 0], label=PANELS[0])
    probability_axes = figure.add_subplot(grid[1, 0], sharex=spectrum_axes, label=PANELS[1])
    saliency_axes = figure.add_subplot(grid[2, 0], sharex=spectrum_axes, label=PANELS[2])
    figure.suptitle(title, parse_math=False)  # a file name's `$` is not mathtext

    half_frame = explanation.frame_seconds / 2
    extent = (-half_frame, explanation.duration - half_frame, 0, explanation.spectrogram.shape[0])
    decibels = explanation.spectrogram.astype(np.float32) * (settings.top_db / 255.0) - settings.top_db
    shown = spectrum_axes.imshow(decibels, origin="lower", aspect="auto", extent=extent, cmap="magma",
                                 interpolation="nearest")
    figure.colorbar(shown, cax=figure.add_subplot(grid[0, 1]), label="dB re peak")
    spectrum_axes.set_title("mel spectrogram", loc="left", fontsize="medium")

    _draw_probabilities(probability_axes, explanation, classes)

    saliency_axes.imshow(decibels, origin="lower", aspect="auto", extent=extent, cmap="gray", interpolation="nearest")
    limit = max(float(np.abs(explanation.saliency).max()), 1e-3)
    # Opacity follows the size of the effect: where hiding changes nothing, the grey spectrogram shows through.
    opacity = np.clip(np.abs(explanation.saliency) / limit, 0.0, 1.0) * 0.85
    overlay = saliency_axes.imshow(explanation.saliency, origin="lower", aspect="auto", extent=extent, cmap="RdBu_r",
                                   vmin=-limit, vmax=limit, alpha=opacity, interpolation="nearest")
    target = classes[explanation.target]
    figure.colorbar(overlay, cax=figure.add_subplot(grid[2, 1]), label=f"drop in log-odds of {target}")
    saliency_axes.set_title(f"what moved the answer: occlusion saliency for {target} (red: evidence for it, "
                            f"blue: against)", loc="left", fontsize="medium")

    for axes in (spectrum_axes, saliency_axes):
        _frequency_axis(axes, settings)
    for axes in (spectrum_axes, probability_axes):
        axes.tick_params(labelbottom=False)
    saliency_axes.set_xlabel("time (s)")
    spectrum_axes.set_xlim(extent[0], extent[1])
    return figure


def _draw_probabilities(axes, explanation: Explanation, classes: Sequence[str]) -> None:
    """Each class's probability as a step per window; overlapping windows meet halfway through their overlap."""
    starts, ends = explanation.window_starts, np.minimum(explanation.window_ends, explanation.duration)
    edges = np.concatenate([[0.0], (starts[1:] + ends[:-1]) / 2, [explanation.duration]])
    for index, name in enumerate(classes):
        axes.stairs(explanation.window_probabilities[:, index], edges, label=name, linewidth=2,
                    baseline=None, linestyle="-" if index == explanation.target else "--")
    for edge in edges[1:-1]:
        axes.axvline(edge, color="0.8", linewidth=0.8, zorder=0)  # where one window's answer hands over to the next
    axes.set_ylim(-0.02, 1.02)
    axes.set_ylabel("probability")
    axes.set_title(f"class probabilities, window by window ({starts.size} window{'s' * (starts.size != 1)})",
                   loc="left", fontsize="medium")
    # Above the panel's top right, beside its title: inside, it would hide a probability near 1.
    axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize="small", ncols=len(classes), frameon=False,
                borderaxespad=0.1)


def _frequency_axis(axes, settings: audio.AudioSettings) -> None:
    """Label a band axis in Hz: a tick at the band whose filter peaks nearest each of FREQUENCY_TICKS_HZ."""
    centres = mel.mel_band_edges(settings)[1:-1]  # band i peaks at edges[i + 1]
    ticks = [hz for hz in FREQUENCY_TICKS_HZ if centres[0] <= hz <= centres[-1]]
    axes.set_yticks(np.interp(ticks, centres, np.arange(centres.size)) + 0.5, [f"{hz:g}" for hz in ticks])
    axes.set_ylabel("frequency (Hz)")
