"""The classical baseline: log-mel band statistics and beat regularity into logistic regression.

A CNN is worth its cost only if it beats what a few hundred hand-made numbers per recording
can do. `recording_features` reads stage 1's images (nothing else: the same pixels the network
sees) and describes each recording by per-band level statistics and by how regular its beat
is; `classical_predictions` fits scikit-learn's scaled logistic regression on one training
fold and returns class probabilities for the validation recordings. Both take seconds on
Dataset B, so every CV report carries this baseline beside the majority one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from heartbeat.data import audio
from heartbeat.data.manifest import is_own_image

# Per band: the 10th/50th/90th percentiles over frames give the band's quiet floor, typical
# level and beat peaks (murmurs fill the gaps between beats, raising the floor in their bands).
PERCENTILES = (10, 50, 90)
# Beat-to-beat intervals of a heart at 30-200 beats per minute: the envelope's autocorrelation
# is searched for its highest peak between these lags (an S1-S2 gap, ~0.3 s, is the shortest).
MIN_BEAT_LAG_S = 0.3
MAX_BEAT_LAG_S = 2.0
# Many features (128 bands x 5 statistics) for a few hundred recordings: a much stronger L2
# penalty than scikit-learn's default C=1. Chosen on Dataset B's 5-fold patient CV, seeds 1-2
# only: mean balanced accuracy 0.472 at C=1, 0.504 at 0.1, 0.534 at 0.01, 0.547 at 0.003,
# 0.505 at 0.001 (spread across runs about 0.07).
REGULARISATION_C = 0.003
# lbfgs on ~650 standardised features converges within a few hundred steps; the margin keeps
# a convergence warning from ever cutting a fit short.
MAX_ITERATIONS = 5000
RHYTHM_FEATURES = ["beat_autocorrelation", "beat_lag_s", "beat_autocorrelation_2x"]


def feature_names(settings: audio.AudioSettings = audio.SETTINGS) -> list[str]:
    """The feature matrix's column names, band 0 being the lowest mel band."""
    statistics = ["mean", "std", *(f"p{p}" for p in PERCENTILES)]
    return [f"band{band:03d}_{name}" for name in statistics for band in range(settings.n_mels)] + RHYTHM_FEATURES


def band_frames(image: np.ndarray, settings: audio.AudioSettings = audio.SETTINGS) -> np.ndarray:
    """(frames, n_mels) float array of one window's pixels: one image row per band, low band first."""
    if image.shape != (settings.image_size, settings.image_size):
        raise ValueError(f"is {image.shape[1]}x{image.shape[0]} pixels, not stage 1's "
                         f"{settings.image_size}x{settings.image_size}")
    rows_per_band = settings.image_size // settings.n_mels
    return image[::rows_per_band][::-1].T.astype(np.float64)  # rows repeat each band; the lowest is at the bottom


def sounding_frames(frames: np.ndarray) -> np.ndarray:
    """The frames without the silence padded after a short recording's end (every band 0); all if none sound."""
    sounding = frames[frames.max(axis=1) > 0]
    return sounding if len(sounding) else frames


def band_statistics(frames: np.ndarray) -> np.ndarray:
    """Per band: mean and std (overall level and how much it swings with the beat), then the percentiles."""
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0), *np.percentile(frames, PERCENTILES, axis=0)])


def beat_regularity(frames: np.ndarray, frame_seconds: float) -> np.ndarray:
    """[highest envelope autocorrelation between MIN_ and MAX_BEAT_LAG_S, its lag in s, autocorrelation at twice it].

    A regular rhythm repeats its envelope at one beat's lag and again at two; an extrastole's
    premature beat lowers both peaks. The envelope is the frame's mean level in dB (pixels).
    """
    envelope = frames.mean(axis=1)
    envelope = envelope - envelope.mean()
    energy = float(envelope @ envelope)
    first = max(1, int(round(MIN_BEAT_LAG_S / frame_seconds)))
    last = min(len(envelope) - 1, int(round(MAX_BEAT_LAG_S / frame_seconds)))
    if energy <= 0 or last < first:  # flat, or too short for one beat interval: no rhythm to measure
        return np.array([0.0, 0.0, 0.0])
    padded = np.fft.rfft(envelope, 2 * len(envelope))
    autocorrelation = np.fft.irfft(padded * np.conj(padded))[: len(envelope)] / energy  # 1 at lag 0
    lag = first + int(np.argmax(autocorrelation[first:last + 1]))
    twice = autocorrelation[2 * lag] if 2 * lag < len(envelope) else 0.0
    return np.array([float(autocorrelation[lag]), lag * frame_seconds, float(twice)])


def read_window(spectrograms_dir: Path, image: str) -> np.ndarray:
    """One of stage 1's images as uint8 pixels; a name that is not its own image is refused (no path leaves the folder)."""
    from PIL import Image

    if not is_own_image(image):
        raise ValueError(f"{image!r} is not one of stage 1's own images (images/<name>.png)")
    path = Path(spectrograms_dir) / image
    try:
        with Image.open(path) as png:
            return np.asarray(png.convert("L"))
    except (OSError, ValueError) as error:  # truncated or not a PNG: name the file, never a traceback
        raise ValueError(f"{path}: not a readable image ({error})") from None


def recording_features(spectrograms_dir: str | Path, windows: pd.DataFrame,
                       settings: audio.AudioSettings = audio.SETTINGS) -> tuple[list[str], np.ndarray]:
    """(recording names, sorted; float matrix with one row each, columns as feature_names).

    `windows` is the manifest (columns recording, window, image): a recording's windows are
    joined in window order, so its statistics cover all of its sound.
    """
    frame_seconds = settings.hop_length / settings.sample_rate
    names, rows = [], []
    for recording, group in windows.groupby("recording", sort=True):
        ordered = group.sort_values("window", key=lambda column: pd.to_numeric(column, errors="coerce")) \
            if "window" in group else group  # stage 1 writes windows in order; the column makes it explicit
        frames = sounding_frames(np.concatenate([band_frames(read_window(spectrograms_dir, image), settings)
                                                 for image in ordered["image"]]))
        names.append(recording)
        rows.append(np.concatenate([band_statistics(frames), beat_regularity(frames, frame_seconds)]))
    return names, np.vstack(rows) if rows else np.empty((0, len(feature_names(settings))))


def classical_predictions(features_train: np.ndarray, labels_train, features_valid: np.ndarray,
                          classes: list[str], seed: int) -> np.ndarray:
    """(validation recordings, classes) probabilities of a StandardScaler + LogisticRegression fit on the training fold.

    Classes are weighted by inverse frequency (as --balance weights does for the network), so
    the rare extrastoles are not ignored. A class absent from the training fold gets probability 0.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels_train = np.asarray(labels_train)
    probabilities = np.zeros((len(features_valid), len(classes)))
    if len(set(labels_train)) == 1:  # nothing to tell apart: the one class seen is the answer
        probabilities[:, classes.index(labels_train[0])] = 1.0
        return probabilities
    model = make_pipeline(StandardScaler(), LogisticRegression(C=REGULARISATION_C, class_weight="balanced",
                                                               max_iter=MAX_ITERATIONS, random_state=seed))
    model.fit(features_train, labels_train)
    fitted = list(model.classes_)
    if len(features_valid):
        known = model.predict_proba(features_valid)
        for column, name in enumerate(classes):
            if name in fitted:
                probabilities[:, column] = known[:, fitted.index(name)]
    return probabilities
