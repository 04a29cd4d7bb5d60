"""Mel-spectrogram images of a recording's windows, and the network's view of an image.

A small numpy re-implementation of `librosa.feature.melspectrogram` (Slaney mel scale and area
normalisation, periodic Hann window, centred frames with zero padding); the test suite checks it
against librosa itself. `iter_recording_images` is the one function that turns sound into model
input, for training and prediction alike; `model_input` prepares an image for the network the
same way in both. Only numpy is imported at the top (PIL only when an image must be resized).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np

from heartbeat.data.audio import SETTINGS, AudioError, AudioSettings, window_starts

# librosa.power_to_db's floor: avoids log(0) on padded silence.
POWER_FLOOR = 1e-10
# Sound is read as floats within [-1, 1] (integer formats) or near it (float formats: real
# recordings stay within a few units). Far above that the power spectrum overflows float32
# (from a peak of about 1e17) and the image goes blank, so a louder signal is first scaled by
# an exact power of two. The image does not depend on the level, and ordinary input is never
# scaled, so its images stay byte-identical.
LOUDEST_UNSCALED = 2.0**16
# Recordings of up to 32 windows (2.7 min: every Dataset B and PhysioNet 2016 recording) keep
# their windows' mel powers (256 KB each, 8 MB at most) from finding the reference level until
# the images are made. Longer ones compute them again instead (a second mel pass, about 7 ms
# per window), so memory does not grow with a recording's duration.
KEPT_WINDOWS = 32


def _hz_to_mel(frequencies):
    # Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above.
    frequencies = np.atleast_1d(np.asarray(frequencies, dtype=np.float64))
    f_sp = 200.0 / 3
    mels = frequencies / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_region = frequencies >= min_log_hz
    mels[log_region] = min_log_mel + np.log(frequencies[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels):
    mels = np.atleast_1d(np.asarray(mels, dtype=np.float64))
    f_sp = 200.0 / 3
    frequencies = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_region = mels >= min_log_mel
    frequencies[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return frequencies


def mel_band_edges(settings: AudioSettings = SETTINGS) -> np.ndarray:
    """n_mels + 2 frequencies in Hz, evenly spaced in mels: band i's filter rises from edges[i], peaks at its centre
    edges[i + 1] and falls to edges[i + 2] (low band first)."""
    return _mel_to_hz(np.linspace(_hz_to_mel(settings.fmin)[0], _hz_to_mel(settings.fmax)[0], settings.n_mels + 2))


@functools.lru_cache(maxsize=4)
def mel_filterbank(settings: AudioSettings = SETTINGS) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular filters, Slaney-normalised (= librosa.filters.mel)."""
    fft_frequencies = np.fft.rfftfreq(settings.n_fft, d=1.0 / settings.sample_rate)
    mel_edges = mel_band_edges(settings)
    edge_gaps = np.diff(mel_edges)
    ramps = mel_edges[:, None] - fft_frequencies[None, :]
    lower = -ramps[:-2] / edge_gaps[:-1, None]
    upper = ramps[2:] / edge_gaps[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_edges[2:] - mel_edges[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False  # cached and shared: nobody may change it
    return weights


@functools.lru_cache(maxsize=4)
def _analysis_window(settings: AudioSettings) -> np.ndarray:
    # Periodic Hann (scipy.signal.get_window("hann", fftbins=True)), centred in n_fft.
    n = settings.win_length
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    left = (settings.n_fft - n) // 2
    window = np.zeros(settings.n_fft)
    window[left:left + n] = hann
    window.flags.writeable = False
    return window


def mel_power(signal: np.ndarray, settings: AudioSettings = SETTINGS) -> np.ndarray:
    """Mel power spectrogram (n_mels, 1 + len // hop), as librosa.feature.melspectrogram.

    The FFT runs in float64 (numpy's float32 FFT is several times slower), the mel product
    in float32 (twice as fast as float64; librosa works in float32 too).
    """
    half = settings.n_fft // 2
    padded = np.pad(signal.astype(np.float64), (half, half))
    frames = np.lib.stride_tricks.sliding_window_view(padded, settings.n_fft)[:: settings.hop_length]
    spectrum = np.fft.rfft(frames * _analysis_window(settings), axis=1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
    return mel_filterbank(settings) @ power.T


def mel_image(power: np.ndarray, reference_power: float, settings: AudioSettings = SETTINGS) -> np.ndarray:
    """uint8 (image_size, image_size) image of one window's mel power; low frequencies at the bottom."""
    decibels = 10.0 * np.log10(np.maximum(power, POWER_FLOOR) / max(reference_power, POWER_FLOOR))
    scaled = (decibels + settings.top_db) * (255.0 / settings.top_db)
    pixels = np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
    rows_per_band = settings.image_size // settings.n_mels
    return np.repeat(pixels[::-1], rows_per_band, axis=0)


def iter_recording_images(signal: np.ndarray, settings: AudioSettings = SETTINGS) -> Iterator[tuple[float, np.ndarray]]:
    """Cut a prepared signal into windows; yield (start in seconds, uint8 image) per window.

    The one function that turns sound into model input, for training and prediction alike.
    All windows share one dB scale, referenced to the recording's loudest mel bin, so every
    window's mel power is computed before the first image; the images are made one at a time,
    as they are asked for. Raises AudioError (before the first image) for a signal without
    sound in the mel bands: its images would be blank.
    """
    signal = _safe_level(signal)
    starts = window_starts(signal.size, settings)

    def powers() -> Iterator[np.ndarray]:
        return (_window_power(signal, start, settings) for start in starts)

    kept = list(powers()) if len(starts) <= KEPT_WINDOWS else None
    reference_power = max(float(power.max()) for power in (kept or powers()))
    if not reference_power > POWER_FLOOR:  # at or below the floor every pixel is the same
        raise AudioError(f"has no sound between {settings.fmin:g} and {settings.fmax:g} Hz "
                         f"(its spectrogram would be blank)")
    for start, power in zip(starts, kept or powers()):
        yield start / settings.sample_rate, mel_image(power, reference_power, settings)


def recording_images(signal: np.ndarray, settings: AudioSettings = SETTINGS) -> list[tuple[float, np.ndarray]]:
    """iter_recording_images as a list: every (start in seconds, uint8 image) of a recording."""
    return list(iter_recording_images(signal, settings))


def _window_power(signal: np.ndarray, start: int, settings: AudioSettings) -> np.ndarray:
    width = settings.window_samples
    piece = signal[start:start + width]
    if piece.size < width:
        piece = np.pad(piece, (0, width - piece.size))  # silence after a short recording
    return mel_power(piece, settings)


def _safe_level(signal: np.ndarray) -> np.ndarray:
    """The signal, scaled down by an exact power of two if it is loud enough to overflow (see LOUDEST_UNSCALED)."""
    peak = max(float(signal.max()), -float(signal.min())) if signal.size else 0.0
    if not math.isfinite(peak):
        raise AudioError("contains NaN or infinite samples")
    if peak <= LOUDEST_UNSCALED:
        return signal
    return np.ldexp(signal, -math.frexp(peak)[1]).astype(signal.dtype, copy=False)  # peak now in [0.5, 1)


# ---------------------------------------------------------------- the network's view

BAND_NORM_CENTRE = 128  # band_normalised: a band at its own mean level becomes mid-grey


def band_normalised(image: np.ndarray) -> np.ndarray:
    """Each image row (a mel band) as its level relative to its own mean over the sounding columns, uint8.

    A stethoscope's frequency response adds a fixed dB offset to each band; subtracting the
    band's mean removes it (the heartbeat network's nets.BandNorm does the same inside the
    network; this is the published recipe's input form of it). Sounding columns become
    BAND_NORM_CENTRE + the difference, clipped to 1..255; silent columns (every row 0: stage 1's
    padding after a short recording) stay 0, so the network still sees where the sound ends.
    """
    sounding = image.max(axis=0) > 0
    if not sounding.any():
        return image
    levels = image[:, sounding].astype(np.int16)
    centred = levels - np.rint(levels.mean(axis=1, keepdims=True)).astype(np.int16) + BAND_NORM_CENTRE
    normalised = np.zeros_like(image)
    normalised[:, sounding] = np.clip(centred, 1, 255).astype(np.uint8)
    return normalised


def model_input(image: np.ndarray, image_size: int, band_norm: bool = False) -> np.ndarray:
    """The network's view of a spectrogram image: band-normalised if the model was trained so, then resized to
    image_size (PIL bilinear) if needed.

    Training reads PNGs through this function and predict passes fresh images through it, so
    both prepare images identically. Returns uint8 (image_size, image_size); the three input
    channels the network expects are copies of it.
    """
    if band_norm:
        image = band_normalised(image)
    if image.shape == (image_size, image_size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR))
