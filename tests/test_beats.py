"""heartbeat.data.beats on synthesised recordings: heart rate, beats, premature beats, and no rhythm where there is none."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from heartbeat.data import audio
from heartbeat.data.beats import Rhythm, segment

RATE = 4000


def burst(frequency: float, seconds: float) -> np.ndarray:
    """A heart sound: a tone under a fast-decaying envelope."""
    t = np.arange(int(round(seconds * RATE))) / RATE
    return np.sin(2 * np.pi * frequency * t) * np.exp(-t / (seconds / 4))


def heartbeats(bpm: float, seconds: float = 10.0, *, snr_db: float | None = None, premature: int | None = None,
               seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """S1 (50 ms, 60 Hz) and S2 (35 ms, 90 Hz, 60 % as loud) at a third of the cycle; (signal, S1 onsets).

    premature: that beat comes 30 % of a cycle early and the next one keeps its place (a
    compensatory pause). snr_db: white noise at that signal-to-noise ratio.
    """
    period = 60.0 / bpm
    onsets = list(np.arange(0.1, seconds, period))
    if premature is not None:
        onsets[premature] -= 0.3 * period
    signal = np.zeros(int(seconds * RATE))
    for onset in onsets:
        for start, sound in ((onset, burst(60, 0.05)), (onset + period / 3, 0.6 * burst(90, 0.035))):
            index = int(start * RATE)
            if index < signal.size:
                signal[index:index + sound.size] += sound[: signal.size - index]
    if snr_db is not None:
        noise = np.random.default_rng(seed).standard_normal(signal.size)
        signal += noise * np.sqrt(np.mean(signal ** 2) / 10 ** (snr_db / 10))
    return signal.astype(np.float32), onsets


def assert_finite(rhythm: Rhythm) -> None:
    for value in (rhythm.heart_rate_bpm, rhythm.irregularity, rhythm.periodicity):
        assert value is None or np.isfinite(value)
    for array in (rhythm.s1_times, rhythm.s2_times, rhythm.systoles, rhythm.diastoles, rhythm.beat_intervals):
        assert np.isfinite(array).all()


# 200 bpm: S1 to S2 is 0.10 s (5 frames); in the 8 Hz envelope's autocorrelation the S1-to-S2 term is only a
# shoulder of the lag-0 lobe, not a peak, so heart_cycle's two-sound check rejects the true cycle and 100 bpm
# is found. A 10-12 Hz envelope resolves it but doubles real rates (Dataset B: 7-8 recordings rise > 10 %,
# normals at 93-100 bpm become 192-204), so the trade-off is not taken.
TWO_HUNDRED = pytest.param(200, marks=pytest.mark.xfail(strict=True, reason="the 8 Hz envelope cannot resolve "
                                                                           "S1 from S2 0.10 s apart"))


@pytest.mark.parametrize("snr_db", [None, 10.0])
@pytest.mark.parametrize("bpm", [50, 72, 120, 150, 180, TWO_HUNDRED])
def test_heart_rate_within_3_bpm(bpm, snr_db):
    signal, onsets = heartbeats(bpm, snr_db=snr_db)
    rhythm = segment(signal, RATE)
    assert rhythm.reliable, rhythm.reason
    assert abs(rhythm.heart_rate_bpm - bpm) <= 3
    # Every whole beat is found once, S1 before its S2, the rhythm regular.
    assert abs(rhythm.beats - len(onsets)) <= 2
    assert np.all(np.diff(rhythm.s1_times) > 0)
    assert rhythm.irregularity < 0.05
    assert rhythm.premature_beats.size == 0
    assert_finite(rhythm)


@pytest.mark.parametrize("bpm", [50, 72, 120])
def test_a_premature_beat_is_found_at_its_time(bpm):
    signal, onsets = heartbeats(bpm, premature=5, snr_db=10.0)
    rhythm = segment(signal, RATE)
    assert rhythm.reliable, rhythm.reason
    assert abs(rhythm.heart_rate_bpm - bpm) <= 3
    assert rhythm.premature_beats.size == 1
    assert abs(rhythm.premature_times[0] - onsets[5]) < 0.1
    assert rhythm.irregularity > 0.05


def test_s1_is_told_from_s2_by_timing():
    signal, onsets = heartbeats(72, snr_db=10.0)
    rhythm = segment(signal, RATE)
    period = 60 / 72
    # Each S1 lies at an onset (within 60 ms), each S2 a third of a cycle later.
    assert all(np.min(np.abs(np.array(onsets) - time)) < 0.06 for time in rhythm.s1_times)
    assert all(np.min(np.abs(np.array(onsets) + period / 3 - time)) < 0.06 for time in rhythm.s2_times)


NO_RHYTHM = [  # (name, signal): recordings without a heart rhythm
    ("silence", np.zeros(10 * RATE, np.float32)),
    ("digital near-silence", np.full(10 * RATE, 1e-30, np.float32)),
    ("white noise", np.random.default_rng(1).standard_normal(10 * RATE).astype(np.float32)),
    ("short white noise", np.random.default_rng(2).standard_normal(2 * RATE).astype(np.float32)),
    ("brown noise", np.cumsum(np.random.default_rng(3).standard_normal(10 * RATE)).astype(np.float32)),
    ("pure tone", (0.5 * np.sin(2 * np.pi * 100 * np.arange(10 * RATE) / RATE)).astype(np.float32)),
]


@pytest.mark.parametrize("name, signal", NO_RHYTHM)
def test_no_rhythm_is_invented(name, signal):
    rhythm = segment(signal, RATE)
    assert rhythm.heart_rate_bpm is None and not rhythm.reliable and rhythm.reason
    assert rhythm.beats == 0 and rhythm.irregularity is None
    assert_finite(rhythm)


@pytest.mark.parametrize("seconds", [0.0, 0.01, 0.5, 0.76])
def test_short_recordings_do_not_crash(seconds):
    signal, _ = heartbeats(180, seconds=seconds, snr_db=10.0) if seconds else (np.zeros(0, np.float32), [])
    assert_finite(segment(signal, RATE))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_give_no_rhythm_and_no_nan(value):
    signal, _ = heartbeats(72, snr_db=10.0)
    signal[1000] = value
    rhythm = segment(signal, RATE)
    assert rhythm.heart_rate_bpm is None and "NaN" in rhythm.reason
    assert_finite(rhythm)


def test_a_huge_level_gives_the_same_rhythm():
    signal, _ = heartbeats(72, snr_db=10.0)
    ordinary, huge = segment(signal, RATE), segment(signal * np.float32(2.0**60), RATE)
    assert huge.heart_rate_bpm == pytest.approx(ordinary.heart_rate_bpm)
    assert np.array_equal(huge.s1_times, ordinary.s1_times)


def readable_bad_inputs(tmp_path):
    """The signals of the bad-input corpus's recordings that audio.load_audio accepts (predict refuses the rest)."""
    from test_bad_input_predict import RECORDINGS

    for name, make, _ in RECORDINGS:
        path = tmp_path / name
        make(path)
        try:
            yield audio.load_audio(path, max_seconds=30)
        except audio.AudioError:
            continue  # refused at reading, as predict does today


def test_the_bad_input_corpus_fails_at_reading_or_gives_finite_figures(tmp_path):
    for signal in readable_bad_inputs(tmp_path):
        assert_finite(segment(signal, audio.SETTINGS.sample_rate))


def test_importing_beats_loads_neither_scipy_nor_torch_nor_librosa():
    code = "import sys, heartbeat.data.beats; print(sorted({'scipy', 'torch', 'librosa'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
