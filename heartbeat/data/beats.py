"""Beat segmentation: where S1 and S2 are, the heart rate, and how regular the rhythm is.

In the spirit of Springer, Tarassenko and Clifford (2016), "Logistic regression-HSMM-based heart
sound segmentation", the PhysioNet/CinC 2016 baseline, in three modules:

- heartbeat.data.envelope: band-pass 25-400 Hz, the homomorphic envelope at 50 frames/s, and
  from its autocorrelation the heart cycle (40-200 bpm) and the systolic interval (S1 to S2);
- heartbeat.data.hsmm: P(sound) per frame from the envelope, and a duration-dependent Viterbi
  (an explicit-duration HSMM) over S1, systole, S2, diastole, centred on those two intervals;
- this module: segment() and analyse() run the two, turn the decoded states into beats, the
  heart rate, the rhythm's irregularity and its premature beats, and judge whether to trust them.

The result says "no reliable rhythm" (heart_rate_bpm None, no beats) instead of inventing one,
with the reason: non-finite or silent input, an envelope without modulation (a tone, steady
noise), an autocorrelation peak too low to be a rhythm (white noise), too few beats, or beats
whose median interval disagrees with the autocorrelation's period.

Only numpy is imported (scipy.signal costs about 0.6 s to import, and predict must start fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heartbeat.data.audio import SETTINGS
from heartbeat.data.envelope import (BAND_HZ, FRAME_RATE, MAX_BPM, MIN_BPM, heart_cycle, homomorphic_envelope,
                                     systolic_interval)
from heartbeat.data.hsmm import DIASTOLE, S1, S2, SYSTOLE, decode, sound_probability

# ---------------------------------------------------------------- settings (why each value)

# The log envelope's quiet and loud levels (percentiles), between which heartbeat.data.hsmm's
# logistic gives P(sound); they also measure the envelope's modulation.
QUIET_PERCENTILE, LOUD_PERCENTILE = 20.0, 95.0
# The background level lies at most this far below the loud level. A real recording's silences hold
# noise 10-30 dB below its sounds (Dataset B: median 17 dB, 99th percentile 27 dB); a noiseless one's
# fall to the envelope's floor, 80 dB down, where the log turns each sound's decaying tail into a ramp
# about 0.1 s long. At 150-180 bpm S1's tail then reaches S2 (0.11-0.13 s later), the autocorrelation
# shows no S1-to-S2 peak, heart_cycle rejects the true cycle as one without two sounds, and half the
# rate is found. 25 dB cuts those tails and changes no heart rate and no reliability verdict on Dataset B
# (experiments/beats_survey.py).
MAX_BACKGROUND_DEPTH_DB = 25.0

# ---- reliability (see measure in experiments/beats_survey.py and the tests)
# Loud over quiet level of the envelope, as a ratio: heart sounds stand 10-30 dB above the
# silences between them; a tone or white noise has an envelope within a few dB of constant.
MIN_MODULATION_DB = 6.0
# The autocorrelation's rhythm peak (normalised, 1 at lag 0). White noise gives < 0.2 on a
# 4-s recording; a rhythm with a premature beat every third beat still gives > 0.4.
MIN_PERIODICITY = 0.3
# The median decoded beat interval must be within this share of the autocorrelation's period.
MAX_PERIOD_DISAGREEMENT = 0.2
# A heart rate needs at least this many beat intervals.
MIN_INTERVALS = 2
# Premature beat: its interval is at most 80 % of the median interval (the usual criterion
# for a premature complex), and the next one at least 110 % (the compensatory pause); normal
# beat-to-beat variation at rest stays within a few per cent.
PREMATURE_FRACTION, PAUSE_FRACTION = 0.8, 1.1
# Measured on Dataset B's labelled recordings (experiments/rhythm_search.py's notes; plots of the envelope and the
# decode): this criterion marks no real extrastole. Where an early beat is visible it is a single, quieter
# sound inside a diastole (its S2 unheard); the decoder needs a whole S1-systole-S2 for a beat, so it leaves
# the sound inside the diastole and the beat intervals stay regular. A 30 % off-rhythm diastole tail changed
# nothing. Marking lone diastolic sounds instead would not separate extrastoles either: 47 % of reliable
# extrastole recordings hold one (prominence >= 0.3 of the loud-quiet range), and 38 % of normal ones
# (noise, S3). heartbeat.data.rhythm's beat_extra_sounds measures them, as a feature, not as a verdict.


@dataclass(frozen=True)
class Rhythm:
    """What segment() found. Times are seconds from the recording's start; all figures finite."""

    heart_rate_bpm: float | None  # None: no reliable rhythm (see reason)
    reliable: bool
    reason: str  # "" when reliable, else why not, in words
    periodicity: float  # the autocorrelation's rhythm peak, 0..1 (0 when there was nothing to measure)
    s1_times: np.ndarray  # the loudest frame of each S1 (empty when not reliable)
    s2_times: np.ndarray
    systoles: np.ndarray  # (k, 2) start and end of each systole (end of S1 to start of S2)
    diastoles: np.ndarray  # (k, 2) end of S2 to start of the next S1
    beat_intervals: np.ndarray  # differences of s1_times
    irregularity: float | None  # coefficient of variation of beat_intervals; None when not reliable
    premature_beats: np.ndarray  # indices into s1_times of beats that come early and are followed by a pause
    states: np.ndarray  # uint8 state per FRAME_RATE frame (S1, SYSTOLE, S2, DIASTOLE); empty when not reliable

    @property
    def beats(self) -> int:
        return int(self.s1_times.size)

    @property
    def premature_times(self) -> np.ndarray:
        return self.s1_times[self.premature_beats]


@dataclass(frozen=True)
class Analysis:
    """segment()'s result with the envelope it decoded: rhythm features that need no decode use it too."""

    rhythm: Rhythm
    envelope: np.ndarray  # per frame, log loudness above the quiet level (>= 0); empty when there was none
    loudness_range: float  # the loud level above the quiet one, in the envelope's log units (0 when none)


def segment(signal: np.ndarray, sample_rate: int = SETTINGS.sample_rate) -> Rhythm:
    """Segment a mono recording into S1, systole, S2 and diastole; never raises on its content."""
    return analyse(signal, sample_rate).rhythm


def analyse(signal: np.ndarray, sample_rate: int = SETTINGS.sample_rate) -> Analysis:
    """segment(), keeping the envelope: one band-pass and Hilbert transform for both (heartbeat.data.rhythm)."""
    rhythm, envelope, loudness_range = _analyse(signal, sample_rate)
    return Analysis(rhythm, np.zeros(0) if envelope is None else envelope, float(loudness_range))


def _analyse(signal: np.ndarray, sample_rate: int) -> tuple[Rhythm, np.ndarray | None, float]:
    signal = np.asarray(signal, dtype=np.float64).ravel()
    if not np.isfinite(signal).all():
        return _unreliable("the recording holds NaN or infinite samples"), None, 0.0
    frame = int(round(sample_rate / FRAME_RATE))
    if signal.size < 2 * frame or sample_rate < 2 * BAND_HZ[1]:
        return _unreliable("the recording is too short or its sample rate too low to segment"), None, 0.0
    log_envelope = homomorphic_envelope(signal, sample_rate)
    if log_envelope is None:
        return _unreliable(f"no sound between {BAND_HZ[0]:g} and {BAND_HZ[1]:g} Hz"), None, 0.0
    quiet, loud = np.percentile(log_envelope, [QUIET_PERCENTILE, LOUD_PERCENTILE])
    modulation_db = 20.0 * (loud - quiet) / math.log(10.0)
    if modulation_db < MIN_MODULATION_DB:
        return _unreliable(f"the envelope is nearly steady ({modulation_db:.1f} dB between loud and quiet): "
                           f"a tone or noise, no beats"), None, 0.0
    quiet = max(quiet, loud - MAX_BACKGROUND_DEPTH_DB * math.log(10.0) / 20.0)  # a noiseless recording's floor
    # Loudness above the background, in log units: S2 (often half S1's amplitude) counts nearly
    # as much as S1 in the autocorrelation, which must see both (heart_cycle), and the
    # silences' noise, clipped at the quiet level, counts for nothing.
    envelope = np.maximum(log_envelope, quiet) - quiet
    cycle_frames, periodicity = heart_cycle(envelope)
    if cycle_frames is None:
        return _unreliable(f"no repeating S1-S2 rhythm between {MIN_BPM:g} and {MAX_BPM:g} bpm in "
                           f"{signal.size / sample_rate:.2f} s (a cycle must be seen twice)"), envelope, loud - quiet
    if periodicity < MIN_PERIODICITY:
        return _unreliable(f"no repeating rhythm (autocorrelation peak {periodicity:.2f} < {MIN_PERIODICITY})",
                           periodicity), envelope, loud - quiet
    systole_frames = systolic_interval(envelope, cycle_frames)
    sound = sound_probability(log_envelope, quiet, loud)
    states = decode(sound, cycle_frames, systole_frames)
    return _rhythm(states, envelope, cycle_frames, periodicity), envelope, loud - quiet


# ---------------------------------------------------------------- from states to beats

def _rhythm(states: np.ndarray, envelope: np.ndarray, cycle_frames: float, periodicity: float) -> Rhythm:
    segments = _segments(states)
    inner = [(state, start, end) for state, start, end in segments if start > 0 and end < states.size]
    s1 = np.array([_loudest(envelope, start, end) for state, start, end in inner if state == S1])
    s2 = np.array([_loudest(envelope, start, end) for state, start, end in inner if state == S2])
    intervals = np.diff(s1)
    if intervals.size < MIN_INTERVALS:
        return _unreliable(f"fewer than {MIN_INTERVALS + 1} whole beats found", periodicity)
    period = cycle_frames / FRAME_RATE
    median = float(np.median(intervals))
    if abs(median - period) > MAX_PERIOD_DISAGREEMENT * period:
        return _unreliable(f"the beats found ({60 / median:.0f} bpm) disagree with the rhythm's period "
                           f"({60 / period:.0f} bpm)", periodicity)
    systoles = _spans(segments, SYSTOLE)
    diastoles = _spans(segments, DIASTOLE)
    return Rhythm(heart_rate_bpm=60.0 / period, reliable=True, reason="", periodicity=periodicity,
                  s1_times=s1, s2_times=s2, systoles=systoles, diastoles=diastoles, beat_intervals=intervals,
                  irregularity=irregularity(intervals),
                  premature_beats=premature_beats(intervals), states=states)


def irregularity(intervals: np.ndarray) -> float:
    """The beat intervals' coefficient of variation (std / mean): 0 for a perfectly steady rhythm."""
    return float(intervals.std() / intervals.mean())


def premature_beats(intervals: np.ndarray) -> np.ndarray:
    """Indices (into the beats, of which intervals are the differences) of early beats followed by a pause."""
    if intervals.size < 2:
        return np.zeros(0, dtype=int)
    typical = np.median(intervals)
    early = intervals[:-1] <= PREMATURE_FRACTION * typical
    pause = intervals[1:] >= PAUSE_FRACTION * typical
    return np.flatnonzero(early & pause) + 1  # interval i ends at beat i + 1


def _segments(states: np.ndarray) -> list[tuple[int, int, int]]:
    """(state, first frame, end frame) of each run of one state."""
    edges = np.flatnonzero(np.diff(states)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [states.size]])
    return [(int(states[start]), int(start), int(end)) for start, end in zip(starts, ends)]


def _loudest(envelope: np.ndarray, start: int, end: int) -> float:
    return (start + int(np.argmax(envelope[start:end])) + 0.5) / FRAME_RATE  # the frame's centre


def _spans(segments, state: int) -> np.ndarray:
    spans = [(start / FRAME_RATE, end / FRAME_RATE) for kind, start, end in segments if kind == state]
    return np.array(spans, dtype=float).reshape(-1, 2)


def _unreliable(reason: str, periodicity: float = 0.0) -> Rhythm:
    empty = np.zeros(0)
    return Rhythm(heart_rate_bpm=None, reliable=False, reason=reason, periodicity=float(periodicity),
                  s1_times=empty, s2_times=empty, systoles=empty.reshape(0, 2), diastoles=empty.reshape(0, 2),
                  beat_intervals=empty, irregularity=None, premature_beats=np.zeros(0, dtype=int),
                  states=np.zeros(0, dtype=np.uint8))
