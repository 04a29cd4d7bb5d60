"""experiments/device_shift.py: each simulated device shift changes a recording as its name says (synthetic tones)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import device_shift  # noqa: E402

RATE = 4000  # audio.SETTINGS.sample_rate
SECONDS = 2.0


def tone(hz: float) -> np.ndarray:
    time = np.arange(int(RATE * SECONDS)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * time)).astype(np.float32)


def level_db(signal: np.ndarray) -> float:
    settled = signal[RATE // 2:]  # past the filters' start-up
    return 10 * np.log10(np.mean(settled.astype(np.float64) ** 2))


def change_db(shift: str, hz: float) -> float:
    return level_db(device_shift.shifted(tone(hz), shift, RATE, seed=0)) - level_db(tone(hz))


def test_clean_is_the_recording_itself():
    signal = tone(100.0)
    assert device_shift.shifted(signal, "clean", RATE, seed=0) is signal


def test_lowpass_keeps_the_heart_sounds_band_and_cuts_high_frequencies():
    assert abs(change_db("lowpass400", 60.0)) < 0.5
    assert change_db("lowpass400", 1600.0) < -20  # two octaves above the corner, 12 dB/octave


def test_highpass_cuts_the_lowest_sounds_and_keeps_the_rest():
    assert change_db("highpass150", 40.0) < -20
    assert abs(change_db("highpass150", 1000.0)) < 0.5


def test_tilt_brightens_by_about_six_db_per_octave():
    per_octave = change_db("tilt+6", 800.0) - change_db("tilt+6", 400.0)
    assert 4.0 < per_octave < 7.0


def test_noise_is_twenty_db_below_the_signal_and_repeats_per_seed():
    signal = tone(200.0)
    noisy = device_shift.shifted(signal, "noise20", RATE, seed=3)
    noise = noisy - signal
    assert 10 * np.log10(np.mean(signal.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)) == \
        pytest.approx(20.0, abs=0.3)
    assert np.array_equal(noisy, device_shift.shifted(signal, "noise20", RATE, seed=3))
    assert not np.array_equal(noisy, device_shift.shifted(signal, "noise20", RATE, seed=4))
    assert noisy.dtype == np.float32


def test_an_unknown_shift_is_refused():
    with pytest.raises(ValueError, match="unknown shift"):
        device_shift.shifted(tone(100.0), "underwater", RATE, seed=0)
