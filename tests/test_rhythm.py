"""heartbeat.data.rhythm: finite features on any input, a premature beat seen, the same numbers every time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_beats import NO_RHYTHM, RATE, heartbeats, readable_bad_inputs

from heartbeat.data import audio
from heartbeat.data.rhythm import BAND_NAMES, FEATURE_NAMES, NEUTRAL, band_features, feature_matrix, rhythm_features


def assert_all_finite(features: dict[str, float]) -> None:
    assert list(features) == FEATURE_NAMES
    assert all(isinstance(value, float) and np.isfinite(value) for value in features.values()), features


@pytest.mark.parametrize("name, signal", NO_RHYTHM + [
    ("empty", np.zeros(0, np.float32)),
    ("one sample", np.ones(1, np.float32)),
("a NaN sample", np.where(np.arange(10 * RATE) == 5, np.nan, 0.1).astype(np.float32)),
    ("an inf sample", np.where(np.arange(10 * RATE) == 5, np.inf, 0.1).astype(np.float32)),
    ("0.76 s of beats", heartbeats(120, seconds=0.76, snr_db=10.0)[0]),
])
def test_features_are_finite_where_there_is_no_rhythm(name, signal):
    features = rhythm_features(signal, RATE)
    assert_all_finite(features)
    if name not in ("0.76 s of beats", "brown noise", "white noise", "short white noise"):
        # nothing to measure: every figure neutral and flagged unreliable
        assert features == NEUTRAL


def test_noise_without_rhythm_is_flagged_unreliable():
    noise = np.random.default_rng(1).standard_normal(10 * RATE).astype(np.float32)
    features = rhythm_features(noise, RATE)
    assert features["beat_unreliable"] == 1.0
    assert features["heart_rate_bpm"] == NEUTRAL["heart_rate_bpm"]


def test_the_bad_input_corpus_fails_at_reading_or_gives_finite_features(tmp_path):
    for signal in readable_bad_inputs(tmp_path):
        assert_all_finite(rhythm_features(signal, audio.SETTINGS.sample_rate))


@pytest.mark.parametrize("bpm", [50, 72, 120])
def test_one_premature_beat_turns_the_premature_features_on(bpm):
    regular = rhythm_features(heartbeats(bpm, snr_db=10.0)[0], RATE)
    premature = rhythm_features(heartbeats(bpm, premature=5, snr_db=10.0)[0], RATE)
    assert_all_finite(regular)
    assert_all_finite(premature)
    assert regular["beat_unreliable"] == 0.0 and premature["beat_unreliable"] == 0.0
    assert abs(regular["heart_rate_bpm"] - bpm) <= 3
    assert regular["beat_premature"] == 0.0 and premature["beat_premature"] == 1.0
    # The decode-free figures see it too: one cycle 30 % short, the alternation of gaps broken.
    assert regular["peak_unreliable"] == 0.0 and premature["peak_unreliable"] == 0.0
    assert regular["peak_cycle_min_ratio"] > 0.9 > 0.8 > premature["peak_cycle_min_ratio"]
    assert regular["peak_alternation_max"] < 0.1 < 0.2 < premature["peak_alternation_max"]
    assert regular["beat_short_long"] < 0.1 < 0.3 < premature["beat_short_long"]


def test_features_are_deterministic():
    signal = heartbeats(72, premature=4, snr_db=10.0, seed=3)[0]
    first, second = rhythm_features(signal, RATE), rhythm_features(signal.copy(), RATE)
    assert first == second
    assert np.array_equal(feature_matrix([signal, signal]), np.array([list(first.values())] * 2))


def test_importing_rhythm_loads_neither_scipy_nor_torch_nor_sklearn():
    code = "import sys, heartbeat.data.rhythm; print(sorted({'scipy', 'torch', 'sklearn'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_band_features_are_finite_and_neutral_without_a_rhythm(tmp_path):
    for _, signal in NO_RHYTHM:
        assert band_features(signal, RATE) == dict.fromkeys(BAND_NAMES, 0.0)
    for signal in readable_bad_inputs(tmp_path):
        assert all(np.isfinite(value) for value in band_features(signal, audio.SETTINGS.sample_rate).values())


def with_systolic_murmur(bpm: float, level: float) -> np.ndarray:
    """heartbeats() with 700-1000 Hz noise (a murmur's upper band, above the segmenter's 25-400 Hz) filling the
    middle of each systole, at `level` of S1's amplitude."""
    signal, onsets = heartbeats(bpm, snr_db=20.0)
    period = 60.0 / bpm
    noise = np.random.default_rng(5).standard_normal(signal.size)
    spectrum = np.fft.rfft(noise)
    frequencies = np.fft.rfftfreq(noise.size, 1.0 / RATE)
    spectrum[(frequencies < 700) | (frequencies > 1000)] = 0.0
    murmur = np.fft.irfft(spectrum, noise.size)
    murmur *= level / murmur.std()
    gate = np.zeros(signal.size)
    for onset in onsets:
        gate[int((onset + 0.07) * RATE): int((onset + period / 3 - 0.02) * RATE)] = 1.0
    return (signal + gate * murmur).astype(np.float32)


def test_a_systolic_murmur_raises_the_systole_over_diastole_level():
    quiet = band_features(with_systolic_murmur(72, 0.0), RATE)
    loud = band_features(with_systolic_murmur(72, 0.05), RATE)
    assert quiet != dict.fromkeys(BAND_NAMES, 0.0) and loud != dict.fromkeys(BAND_NAMES, 0.0)  # decoded, measured
    assert all(np.isfinite(value) for value in {**quiet, **loud}.values())
    assert max(loud.values()) > max(quiet.values()) + 6.0
