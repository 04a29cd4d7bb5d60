"""heartbeat.train.augment: deterministic per seed, shapes and ranges kept, the recording put back together exactly."""

from __future__ import annotations

import numpy as np
import pytest

from heartbeat.data import mel
from heartbeat.train import augment


def band_pixels(frames: int, seed: int = 0, sounding: int | None = None) -> np.ndarray:
    """Random (128, frames) uint8 band pixels; with `sounding`, silent (0) after that many frames, as stage 1 pads."""
    pixels = np.random.default_rng(seed).integers(1, 256, (128, frames)).astype(np.uint8)
    if sounding is not None:
        pixels[:, sounding:] = 0
    return pixels


def test_native_bands_gives_back_the_bands_of_a_stage_one_image_exactly():
    bands = band_pixels(512)
    image = np.repeat(bands, 4, axis=0)  # as mel.mel_image repeats each band
    assert np.array_equal(augment.native_bands(image), bands)
    with pytest.raises(ValueError, match="rows"):
        augment.native_bands(image[:500])


def test_recording_mel_puts_overlapping_windows_back_where_they_were_cut():
    whole = band_pixels(900, seed=1)
    starts = [0, 388]  # frames; stage 1 spreads the windows evenly and they overlap
    windows = [(start / augment.FRAMES_PER_SECOND, whole[:, start:start + 512]) for start in starts]
    assert np.array_equal(augment.recording_mel(windows[::-1]), whole)  # order of the list does not matter


def test_recording_mel_of_a_short_recording_drops_the_padded_silence():
    window = band_pixels(512, seed=2, sounding=300)
    mel = augment.recording_mel([(0.0, window)])
    assert mel.shape == (128, 300)
    assert np.array_equal(mel, window[:, :300])


def test_random_window_of_a_long_recording_is_a_piece_of_it_and_repeats_per_seed():
    mel = band_pixels(900, seed=3)
    first = augment.random_window(mel, np.random.default_rng(7), 512, 0.25)
    again = augment.random_window(mel, np.random.default_rng(7), 512, 0.25)
    assert np.array_equal(first, again)
    offsets = {int(np.flatnonzero((mel[0] == first[0, 0]) & (mel[1] == first[1, 0]))[0])
               for first in [augment.random_window(mel, rng, 512, 0.25) for rng in map(np.random.default_rng, range(20))]}
    assert len(offsets) > 5  # offsets vary between draws
    for seed in range(5):
        window = augment.random_window(mel, np.random.default_rng(seed), 512, 0.25)
        offset = int(np.flatnonzero((mel[0] == window[0, 0]) & (mel[1] == window[1, 0]))[0])
        assert np.array_equal(window, mel[:, offset:offset + 512])


def test_random_window_of_a_short_recording_starts_its_sound_at_frame_zero_and_pads_silence_at_the_end():
    mel = band_pixels(200, seed=4)
    for seed in range(10):
        window = augment.random_window(mel, np.random.default_rng(seed), 512, 0.25)
        assert window.shape == (128, 512) and window.dtype == mel.dtype
        sounding = augment.sounding_width(window)
        offset = 200 - sounding
        assert 0 <= offset <= 50  # at most a quarter of the sound is skipped
        assert np.array_equal(window[:, :sounding], mel[:, offset:])
        assert not window[:, sounding:].any()


AUGMENTATIONS = {
    "time_masks": lambda pixels, rng: augment.time_masks(pixels, rng, 2, 40),
    "frequency_masks": lambda pixels, rng: augment.frequency_masks(pixels, rng, 2, 12),
    "level_shift": lambda pixels, rng: augment.level_shift(pixels, rng, 10.0),
    "spectral_tilt": lambda pixels, rng: augment.spectral_tilt(pixels, rng, 3.0),
    "band_limits": lambda pixels, rng: augment.band_limits(pixels, rng, (20.0, 80.0), (500.0, 2000.0), 12.0),
    "noise_floor": lambda pixels, rng: augment.noise_floor(pixels, rng, (-70.0, -45.0), 3.0),
}


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_augmentation_is_deterministic_per_seed_keeps_shape_and_range_and_leaves_its_input(name):
    augmentation = AUGMENTATIONS[name]
    pixels = band_pixels(512, seed=5, sounding=400)
    before = pixels.copy()
    first = augmentation(pixels, np.random.default_rng(11))
    assert np.array_equal(first, augmentation(pixels, np.random.default_rng(11)))
    assert not np.array_equal(first, augmentation(pixels, np.random.default_rng(12)))
    assert np.array_equal(pixels, before)  # pure: the input is not changed
    assert first.shape == pixels.shape and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 255.0
    assert not first[:, 400:].any()  # the silence padded after the sound stays silent


def test_spectral_tilt_moves_low_and_high_bands_in_opposite_directions():
    pixels = np.full((128, 512), 128, dtype=np.uint8)
    tilted = augment.spectral_tilt(pixels, np.random.default_rng(0), 6.0)
    slope = tilted[0, 0] - tilted[-1, 0]  # row 0 is the highest band
    assert abs(slope) > 1.0
    octaves = augment.band_octaves()[:, 0]
    expected_db = (tilted[:, 0] - 128) / augment.PIXELS_PER_DB
    assert np.allclose(expected_db, expected_db[0] / octaves[0] * octaves, atol=1e-3)  # linear in octaves


def test_band_limits_attenuate_only_outside_the_cut_offs():
    pixels = np.full((128, 512), 200, dtype=np.uint8)
    limited = augment.band_limits(pixels, np.random.default_rng(0), (60.0, 60.0), (500.0, 500.0), 12.0)
    octaves = augment.band_octaves()[:, 0]
    inside = (octaves >= np.log2(0.6)) & (octaves <= np.log2(5.0))
    assert np.all(limited[inside] == 200) and np.all(limited[~inside] < 200)


def test_noise_floor_raises_quiet_pixels_and_leaves_loud_ones():
    pixels = np.full((128, 512), 255, dtype=np.uint8)
    pixels[:, :100] = 10  # about 77 dB below the peak
    noisy = augment.noise_floor(pixels, np.random.default_rng(0), (-50.0, -50.0), 0.0)
    assert noisy[:, :100].min() > 60  # near -50 dB, far above the quiet signal
    assert np.allclose(noisy[:, 100:], 255.0, atol=0.5)


def test_a_waveform_gain_does_not_change_stage_one_images():
    # Why augment has no random gain: images are dB relative to the recording's own peak.
    signal = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    quiet = [image for _, image in mel.recording_images(signal)]
    loud = [image for _, image in mel.recording_images(signal * 8.0)]
    assert all(np.array_equal(a, b) for a, b in zip(quiet, loud))
