"""Rhythm features of one recording, for a model: finite numbers whatever the recording holds.

An extrastole is a rhythm event (a premature beat, then a pause), which a CNN that hears about
one second at a time cannot see. On the real Dataset B, heartbeat.data.beats' decoder rarely marks
an extrastole's beat as premature: its duration model, centred on the autocorrelation's cycle,
prefers to relabel the early sound as S2 (and the rest of the recording as shifted by half a
cycle) over one short diastole. So most features here do not trust the decode:

- `peak_*`: the envelope's sound peaks (S1 and S2 alike, from a simple peak picker). In a
  regular rhythm the intervals between successive sounds alternate systole, diastole,
  systole, ...; an early or missing sound breaks the alternation and changes the length of
  the two-interval sums (one cycle each);
- `acf_*`: how periodic the envelope is (its autocorrelation at one and at two cycles);
- `beat_*`: the decoded beats' interval statistics, used only when beats.segment calls the
  rhythm reliable.

Every value is finite: when a figure cannot be measured it takes a fixed neutral value (that
of a perfectly regular rhythm) and its `*_unreliable` indicator is 1.
"""

from __future__ import annotations

import numpy as np

from heartbeat.data import mel
from heartbeat.data import beats
from heartbeat.data.audio import SETTINGS
from heartbeat.data.envelope import FRAME_RATE, _autocorrelation, _local_maxima, heart_cycle
from heartbeat.data.hsmm import DIASTOLE, SYSTOLE

# A sound peak: a local maximum of the envelope standing this share of the loud-quiet range above
# the lower of its two neighbouring minima (S2 is often half S1's loudness; smaller bumps are noise).
PEAK_PROMINENCE = 0.3
# Two sounds closer than this are one (S1's two components are ~30 ms apart; S1 to S2 is >= 0.2 s).
PEAK_MIN_SECONDS = 0.12
# Sounds needed before interval statistics mean anything: two whole cycles and one more sound.
MIN_PEAKS = 5
# A sound peak within this of a decoded S1 or S2 is that sound (S1 and S2 last about 0.1 s).
EXPLAINED_SECONDS = 0.08

# name -> the neutral value taken when the figure cannot be measured (that of a regular rhythm)
NEUTRAL = {
    "beat_unreliable": 1.0,
    "heart_rate_bpm": 80.0,
    "beat_irregularity": 0.0,
    "beat_min_ratio": 1.0,
    "beat_max_ratio": 1.0,
    "beat_short_long": 0.0,
    "beat_premature": 0.0,
    "systole_cv": 0.0,
    "beat_extra_sounds": 0.0,
    "acf_periodicity": 0.0,
    "acf_two_cycles": 0.0,
    "peak_unreliable": 1.0,
    "peak_cycle_cv": 0.0,
    "peak_cycle_min_ratio": 1.0,
    "peak_cycle_max_ratio": 1.0,
    "peak_short_long": 0.0,
    "peak_alternation": 0.0,
    "peak_alternation_max": 0.0,
    "peak_height_cv": 0.0,
    "clean_short_cycle": 0.0,
    "clean_alternation": 0.0,
}
FEATURE_NAMES = list(NEUTRAL)
# Beat-synchronous band levels (band_features; measured, not in rhythm_features: they added nothing to the
# stacked CNN on seeds 1-2 and cost ~12 ms per 10 s): stage 1's mel bands in BAND_GROUPS groups of equal
# width on the mel scale, each group's mean log power in the decoded systoles minus that in the diastoles
# (dB). A systolic murmur raises it, a diastolic one lowers it; 0 (neutral) without a reliable decode.
BAND_GROUPS = 8
BAND_NAMES = [f"band{group}_systole_minus_diastole_db" for group in range(BAND_GROUPS)]


def rhythm_features(signal: np.ndarray, sample_rate: int = SETTINGS.sample_rate) -> dict[str, float]:
    """The FEATURE_NAMES of one mono recording, every one finite; never raises on the recording's content."""
    analysis = beats.analyse(signal, sample_rate)
    features = dict(NEUTRAL)
    features.update(_beat_features(analysis.rhythm))
    features.update(_acf_features(analysis.envelope, analysis.rhythm))
    peaks = sound_peaks(analysis.envelope, analysis.loudness_range)
    features.update(_peak_features(analysis.envelope, peaks))
    features.update(_extra_sounds(analysis.rhythm, peaks))
    features.update(_clean_irregularity(features))
    return {name: _finite(features[name], NEUTRAL[name]) for name in FEATURE_NAMES}


def _finite(value: float, neutral: float) -> float:
    value = float(value)
    return value if np.isfinite(value) else neutral


def _beat_features(rhythm: beats.Rhythm) -> dict[str, float]:
    """From the decoded beats, when beats.segment calls the rhythm reliable."""
    if not rhythm.reliable:
        return {}
    intervals = rhythm.beat_intervals
    median = float(np.median(intervals))
    systoles = np.diff(rhythm.systoles, axis=1).ravel()
    return {
        "beat_unreliable": 0.0,
        "heart_rate_bpm": rhythm.heart_rate_bpm,
        "beat_irregularity": rhythm.irregularity,
        "beat_min_ratio": intervals.min() / median,
        "beat_max_ratio": intervals.max() / median,
        "beat_short_long": _largest_short_long(intervals, median),
        "beat_premature": float(rhythm.premature_beats.size > 0),
        "systole_cv": systoles.std() / systoles.mean() if systoles.size > 1 and systoles.mean() > 0 else 0.0,
    }


def _largest_short_long(intervals: np.ndarray, typical: float) -> float:
    """The largest lengthening from one interval to the next, in typical intervals: a premature beat's early
    interval followed by its compensatory pause gives about 0.5-0.7, a steady rhythm a few hundredths."""
    if intervals.size < 2 or typical <= 0:
        return 0.0
    return float(max(0.0, np.max(np.diff(intervals)) / typical))


def _acf_features(envelope: np.ndarray, rhythm: beats.Rhythm) -> dict[str, float]:
    """The envelope's autocorrelation at the rhythm's cycle and at twice it (a regular rhythm repeats at both)."""
    if envelope.size == 0:
        return {}
    features = {"acf_periodicity": rhythm.periodicity}
    cycle, _ = heart_cycle(envelope) if rhythm.heart_rate_bpm is None else (
        FRAME_RATE * 60.0 / rhythm.heart_rate_bpm, None)
    if cycle is not None and 2 * cycle < envelope.size - 1:
        autocorrelation = _autocorrelation(envelope)
        features["acf_two_cycles"] = float(np.interp(2 * cycle, np.arange(envelope.size), autocorrelation))
    return features


def sound_peaks(envelope: np.ndarray, loudness_range: float) -> np.ndarray:
    """Frame indices of the envelope's sound peaks (S1 and S2 alike): prominent local maxima, PEAK_MIN_SECONDS apart."""
    if envelope.size < 3 or loudness_range <= 0:
        return np.zeros(0, dtype=int)
    candidates = _local_maxima(envelope, 1, envelope.size - 2)
    kept: list[int] = []
    minimum_gap = PEAK_MIN_SECONDS * FRAME_RATE
    for index in candidates[np.argsort(-envelope[candidates], kind="stable")]:  # loudest first
        if all(abs(index - other) >= minimum_gap for other in kept) and \
                _prominence(envelope, index) >= PEAK_PROMINENCE * loudness_range:
            kept.append(int(index))
    return np.sort(np.array(kept, dtype=int))


def _prominence(envelope: np.ndarray, index: int) -> float:
    """How far the peak stands above the higher of the lowest points on each side before a higher sample."""
    height = envelope[index]
    left = envelope[:index][::-1]
    right = envelope[index + 1:]
    bases = []
    for side in (left, right):
        higher = np.flatnonzero(side > height)
        stretch = side[: higher[0]] if higher.size else side
        bases.append(stretch.min() if stretch.size else height)
    return float(height - max(bases))


def _peak_features(envelope: np.ndarray, peaks: np.ndarray) -> dict[str, float]:
    """Interval statistics of the sound peaks, which need no decode."""
    if peaks.size < MIN_PEAKS:
        return {}
    gaps = np.diff(peaks).astype(float)  # alternately systole and diastole in a regular rhythm
    cycles = gaps[:-1] + gaps[1:]  # each pair of successive gaps spans one heart cycle
    typical = float(np.median(cycles))
    alternation = np.abs(gaps[2:] - gaps[:-2]) / typical  # 0 when the alternation holds
    heights = envelope[peaks]
    return {
        "peak_unreliable": 0.0,
        "peak_cycle_cv": cycles.std() / cycles.mean(),
        "peak_cycle_min_ratio": cycles.min() / typical,
        "peak_cycle_max_ratio": cycles.max() / typical,
        "peak_short_long": _largest_short_long(cycles[::2], typical) if cycles.size >= 4 else 0.0,
        "peak_alternation": float(np.median(alternation)),
        "peak_alternation_max": float(alternation.max()),
        "peak_height_cv": heights.std() / heights.mean() if heights.mean() > 0 else 0.0,
    }


def _extra_sounds(rhythm: beats.Rhythm, peaks: np.ndarray) -> dict[str, float]:
    """The share of sound peaks, between the first and last decoded S1, that are neither a decoded S1 nor S2.

    On real extrastoles the decoder keeps its regular cycle and leaves an early beat inside a
    systole or diastole (or relabels it); the sound is still there for the peak picker.
    """
    if not rhythm.reliable or peaks.size == 0:
        return {}
    times = (peaks + 0.5) / FRAME_RATE  # frame centres, as beats' S1 and S2 times
    decoded = np.concatenate([rhythm.s1_times, rhythm.s2_times])
    inside = times[(times > rhythm.s1_times.min() - EXPLAINED_SECONDS) & (times < rhythm.s1_times.max() + EXPLAINED_SECONDS)]
    if inside.size == 0:
        return {}
    distance = np.abs(inside[:, None] - decoded[None, :]).min(axis=1)
    return {"beat_extra_sounds": float(np.mean(distance > EXPLAINED_SECONDS))}


def _clean_irregularity(features: dict[str, float]) -> dict[str, float]:
    """Peak irregularity weighted by periodicity: in noisy recordings missed and spurious peaks make any rhythm
    look irregular (measured on Dataset B: only where the autocorrelation peak exceeds 0.4 are extrastoles'
    shortest cycles shorter than normals'), so a linear model needs the product to trust it where it is clean."""
    periodicity = features["acf_periodicity"]
    return {"clean_short_cycle": (1.0 - features["peak_cycle_min_ratio"]) * periodicity,
            "clean_alternation": features["peak_alternation_max"] * periodicity}


def band_features(signal: np.ndarray, sample_rate: int = SETTINGS.sample_rate) -> dict[str, float]:
    """BAND_NAMES: systole minus diastole mean log mel power per band group, on the decoded states; finite."""
    neutral = dict.fromkeys(BAND_NAMES, 0.0)
    rhythm = beats.segment(signal, sample_rate)
    if not rhythm.reliable or sample_rate != SETTINGS.sample_rate:
        return neutral
    power = mel.mel_power(np.asarray(signal, dtype=np.float32).ravel())  # (n_mels, frames) at the 10 ms hop
    frames_per_state = SETTINGS.sample_rate / SETTINGS.hop_length / FRAME_RATE  # 2 mel frames per state frame
    state_of_frame = (np.arange(power.shape[1]) / frames_per_state).astype(int)
    inside = state_of_frame < rhythm.states.size
    states = np.full(power.shape[1], 255, dtype=np.uint8)
    states[inside] = rhythm.states[state_of_frame[inside]]
    systole, diastole = states == SYSTOLE, states == DIASTOLE
    if not systole.any() or not diastole.any():
        return neutral
    groups = np.array_split(np.arange(power.shape[0]), BAND_GROUPS)
    decibels = 10.0 * np.log10(np.maximum(np.stack([power[group].sum(axis=0) for group in groups]), 1e-20))
    difference = decibels[:, systole].mean(axis=1) - decibels[:, diastole].mean(axis=1)
    return {name: _finite(value, 0.0) for name, value in zip(BAND_NAMES, difference)}


def feature_matrix(signals) -> np.ndarray:
    """(recordings, FEATURE_NAMES) for an iterable of mono signals at SETTINGS.sample_rate."""
    rows = [[features[name] for name in FEATURE_NAMES] for features in map(rhythm_features, signals)]
    return np.array(rows, dtype=float).reshape(-1, len(FEATURE_NAMES))
