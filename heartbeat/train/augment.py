"""Training-time augmentation of mel images at their native resolution (the `heartbeat` recipe).

Every function is small and pure: it takes band-by-frame pixels and, where it is random, a
seeded numpy Generator passed in, and returns new pixels (the input is never changed). The
pixels are stage 1's: dB relative to the recording's loudest mel bin, 0..255 for -80..0 dB
(audio.AudioSettings.top_db), in image orientation (row 0 is the HIGHEST mel band, as in the
PNG), one row per band (`native_bands` undoes the 4x row repetition exactly). Augmented pixels
are float32 within [0, 255]; 0 stays "below the floor": silence padded after a short
recording's end, or sound more than 80 dB under the peak.

A waveform gain is no augmentation here: every image is in dB relative to its own recording's
peak, so multiplying the sound by any gain gives the same pixels. What a level change can do
is move the 80 dB floor, which `level_shift` does.

Only numpy (and heartbeat.data.audio for the band frequencies) is imported.
"""

from __future__ import annotations

import functools

import numpy as np

from heartbeat.data import audio
from heartbeat.data import mel

PIXELS_PER_DB = 255.0 / audio.SETTINGS.top_db  # the image's dB scale (3.19 pixel values per dB)
DB_TO_LN = np.float32(np.log(10.0) / 10.0)  # power = exp(dB * DB_TO_LN): float32 exp/log, faster than 10 ** x
FRAMES_PER_SECOND = audio.SETTINGS.sample_rate / audio.SETTINGS.hop_length  # 100: one image column per 10 ms


def native_bands(image: np.ndarray, settings: audio.AudioSettings = audio.SETTINGS) -> np.ndarray:
    """(n_mels, frames) pixels of a stage-1 image: every band's first row (the bands are repeated, not interpolated).

    Exact: stage 1 repeats each band to image_size / n_mels identical rows, so one row per band is the band.
    """
    rows_per_band = settings.image_size // settings.n_mels
    if image.shape[0] != settings.n_mels * rows_per_band:
        raise ValueError(f"expected {settings.n_mels * rows_per_band} image rows, got {image.shape[0]}")
    return image[::rows_per_band]


def sounding_width(pixels: np.ndarray) -> int:
    """Frames up to a window's last sounding one: stage 1 pads a short recording with all-zero (silent) frames."""
    sounding = np.flatnonzero(pixels.max(axis=0) > 0)
    return int(sounding[-1]) + 1 if sounding.size else 0


def recording_mel(windows: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """A recording's whole (n_mels, frames) mel image put back together from its windows.

    `windows`: (start in seconds, (n_mels, frames) band pixels) for each of the recording's
    windows. Every window of a recording shares its dB reference, so they join without a seam;
    each window is placed at its start frame (stage 1's starts are whole samples, so a window
    may sit up to half a hop from the frame grid: 5 ms, within one column), later windows
    overwriting the overlap. The image ends at the last sounding frame: the silence stage 1
    padded after a recording shorter than one window is dropped (`random_window` adds it back).
    """
    placed = [(int(round(start_s * FRAMES_PER_SECOND)), pixels) for start_s, pixels in sorted(windows, key=lambda w: w[0])]
    frames = max(first + sounding_width(pixels) for first, pixels in placed)
    mel = np.zeros((placed[0][1].shape[0], max(frames, 1)), dtype=placed[0][1].dtype)
    for first, pixels in placed:
        width = min(pixels.shape[1], mel.shape[1] - first)
        if width > 0:
            mel[:, first:first + width] = pixels[:, :width]
    return mel


def random_window(mel: np.ndarray, rng: np.random.Generator, width: int, short_shift: float) -> np.ndarray:
    """A `width`-frame window from a random place in a recording's whole mel image (a new one every epoch).

    Stage 1's fixed windows show the network every recording at the same few offsets; a random
    offset gives it beats at every phase. A recording longer than the window: any window
    inside it. A shorter one: its sound starts at a random frame within its first `short_shift`
    fraction (0..1) and the rest of the window is silence at the end, as stage 1 pads it at
    test time (the sound is never moved later in the window, which test images never show).
    """
    frames = mel.shape[1]
    if frames >= width:
        offset = int(rng.integers(0, frames - width + 1))
        return mel[:, offset:offset + width].copy()
    offset = int(rng.integers(0, int(frames * short_shift) + 1))
    window = np.zeros((mel.shape[0], width), dtype=mel.dtype)
    window[:, :frames - offset] = mel[:, offset:]
    return window


def time_masks(pixels: np.ndarray, rng: np.random.Generator, count: int, max_frames: int) -> np.ndarray:
    """SpecAugment time masking: `count` spans of up to `max_frames` frames set to silence (0).

    The network must not rest its answer on any one beat: a premature beat or a murmur shows in
    several, so hiding a few tenths of a second at random teaches it to use them all.
    """
    masked = pixels.astype(np.float32, copy=True)
    for _ in range(count):
        span = int(rng.integers(0, max_frames + 1))
        start = int(rng.integers(0, max(1, masked.shape[1] - span + 1)))
        masked[:, start:start + span] = 0.0
    return masked


def frequency_masks(pixels: np.ndarray, rng: np.random.Generator, count: int, max_bands: int) -> np.ndarray:
    """SpecAugment frequency masking: `count` runs of up to `max_bands` adjacent mel bands set to silence (0).

    A murmur spreads over many bands and a heart sound over most of the low ones: hiding a few
    keeps the network from keying on one narrow band (which a different stethoscope may lack).
    """
    masked = pixels.astype(np.float32, copy=True)
    for _ in range(count):
        span = int(rng.integers(0, max_bands + 1))
        start = int(rng.integers(0, max(1, masked.shape[0] - span + 1)))
        masked[start:start + span, :] = 0.0
    return masked


def shift_sounding(pixels: np.ndarray, decibels: np.ndarray | float) -> np.ndarray:
    """Add `decibels` (a scalar, or one value per band as an (n_mels, 1) column) to every pixel above the floor.

    Pixels at 0 are below the floor (or padding): their true level is unknown, so they stay 0;
    the rest move and are clipped to the image's 0..255.
    """
    shifted = pixels.astype(np.float32) + np.asarray(decibels, dtype=np.float32) * np.float32(PIXELS_PER_DB)
    return np.where(pixels > 0, np.clip(shifted, 0.0, 255.0), 0.0).astype(np.float32)


def level_shift(pixels: np.ndarray, rng: np.random.Generator, max_db: float) -> np.ndarray:
    """Lower the whole image by up to `max_db` dB: the 80 dB floor then cuts the quiet detail at another level.

    (A raise would put the peak above 0 dB, which no stage-1 image has; a waveform gain is a
    no-op, see the module's docstring.)
    """
    return shift_sounding(pixels, -float(rng.uniform(0.0, max_db)))


@functools.lru_cache(maxsize=4)
def band_octaves(settings: audio.AudioSettings = audio.SETTINGS) -> np.ndarray:
    """(n_mels, 1) column: each band's centre frequency in octaves above 100 Hz, in image orientation (highest first)."""
    centres = mel.mel_band_edges(settings)[1:-1]
    octaves = np.log2(centres / 100.0)[::-1, None].astype(np.float32)
    octaves.flags.writeable = False  # cached and shared: nobody may change it
    return octaves


def spectral_tilt(pixels: np.ndarray, rng: np.random.Generator, max_db_per_octave: float) -> np.ndarray:
    """A random frequency-response slope (uniform in +-max_db_per_octave dB per octave, 0 dB at 100 Hz).

    Stethoscopes differ most in how they weight low against high frequencies (bell against
    diaphragm, chest piece, microphone): a model that learnt one device's colour fails on the
    next, so the colour is randomised.
    """
    slope = float(rng.uniform(-max_db_per_octave, max_db_per_octave))
    return shift_sounding(pixels, slope * band_octaves())


def band_limits(pixels: np.ndarray, rng: np.random.Generator, low_hz: tuple[float, float],
                high_hz: tuple[float, float], db_per_octave: float) -> np.ndarray:
    """A random band-pass: bands below a low cut-off (drawn in `low_hz`) and above a high one (in `high_hz`)
    are attenuated by `db_per_octave` per octave beyond the cut-off.

    Other devices (and recordings through lower sample rates) lose the lowest or the highest
    bands; the network should still answer from what is left.
    """
    octaves = band_octaves()
    low = np.log2(float(rng.uniform(*low_hz)) / 100.0)
    high = np.log2(float(rng.uniform(*high_hz)) / 100.0)
    attenuation = db_per_octave * (np.maximum(low - octaves, 0.0) + np.maximum(octaves - high, 0.0))
    return shift_sounding(pixels, -attenuation)


def noise_floor(pixels: np.ndarray, rng: np.random.Generator, level_db: tuple[float, float],
                spread_db: float) -> np.ndarray:
    """Add stethoscope-like background noise: power-summed with noise at a random level (dB re the peak, drawn
    in `level_db`), with a random tilt and `spread_db` of pixel-to-pixel fluctuation.

    Devices and rooms differ in their noise floor (handling, friction, hum); adding noise in the
    power domain (not the dB one) is what a real noise floor does to the quiet parts, and leaves
    the loud ones. Padded silence (all-zero frames after a short recording) stays silent.
    """
    level = float(rng.uniform(*level_db))
    slope = float(rng.uniform(-3.0, 3.0))
    noise_db = (level + slope * band_octaves()) + np.float32(spread_db) * rng.standard_normal(pixels.shape, np.float32)
    signal_db = pixels.astype(np.float32) / np.float32(PIXELS_PER_DB) - np.float32(audio.SETTINGS.top_db)
    power = np.where(pixels > 0, np.exp(signal_db * DB_TO_LN), 0.0) + np.exp(noise_db * DB_TO_LN)
    noisy = np.clip((np.log(power) / DB_TO_LN + audio.SETTINGS.top_db) * PIXELS_PER_DB, 0.0, 255.0)
    sounding_frames = (pixels > 0).any(axis=0, keepdims=True)
    return np.where(sounding_frames, noisy, 0.0).astype(np.float32)
