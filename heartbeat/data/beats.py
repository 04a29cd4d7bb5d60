"""Beat segmentation: where S1 and S2 are, the heart rate, and how regular the rhythm is.

In the spirit of Springer, Tarassenko and Clifford (2016), "Logistic regression-HSMM-based heart
sound segmentation", the PhysioNet/CinC 2016 baseline:

1. band-pass 25-400 Hz (the magnitude of Springer's zero-phase order-2 Butterworth pair);
2. homomorphic envelope: the log of the Hilbert envelope, low-passed at 8 Hz, at 50 frames/s;
3. heart rate from the envelope's autocorrelation (its highest peak at a lag of 0.3-1.5 s,
   40-200 bpm), and the systolic interval (S1 to S2) from its highest peak below half a cycle;
4. a duration-dependent Viterbi (an explicit-duration HSMM) over the four states S1, systole,
   S2, diastole, with Springer's duration model centred on those two intervals.

Springer's emissions come from a logistic regression trained on annotated recordings, which
this project does not have. Here the emission is the envelope itself: a logistic of the
log envelope between the recording's quiet level (its 20th percentile: heart sounds fill only
a quarter to a third of each cycle) and its loud level (95th percentile) gives P(sound) per frame;
S1 and S2 emit log P(sound), systole and diastole log(1 - P(sound)). Sounds and silences are
told apart by loudness, S1 and S2 by timing alone (systole is shorter than diastole), which is
also what carries most of the weight in Springer's model. Unlike Springer's, the diastole's
duration model has a heavy tail (see DIASTOLE_OFF_RHYTHM), so a premature beat and its
compensatory pause can be decoded instead of being forced onto the regular rhythm.

The result says "no reliable rhythm" (heart_rate_bpm None, no beats) instead of inventing one,
with the reason: non-finite or silent input, an envelope without modulation (a tone, steady
noise), an autocorrelation peak too low to be a rhythm (white noise), too few beats, or beats
whose median interval disagrees with the autocorrelation's period.

Only numpy is imported (scipy.signal costs about 0.6 s to import, and predict must start fast);
the filters are applied in the frequency domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heartbeat.data.audio import SETTINGS

# ---------------------------------------------------------------- settings (why each value)

# Springer's band: heart sounds live above 25 Hz (below it is handling noise and breathing),
# and above 400 Hz there is mostly murmur and noise, which would fill the silences.
BAND_HZ = (25.0, 400.0)
# Springer's feature rate: 20 ms frames, fine enough for S1/S2 (about 100 ms each).
FRAME_RATE = 50
# The homomorphic envelope's low-pass: 8 Hz keeps S1 and S2 (>= 60 ms apart from each other's
# edges) separate while smoothing out the carrier's fluctuations (Springer's value).
ENVELOPE_LOWPASS_HZ = 8.0
# The heart rates we look for (the range): autocorrelation lags of 0.3 to 1.5 s.
MIN_BPM, MAX_BPM = 40.0, 200.0
# The cycle must be seen at least twice for its autocorrelation to mean anything.
MIN_CYCLES_SEEN = 2.0

# Springer's mean durations of S1 and S2 and their spread (seconds); shortened at fast rates
# (see _duration_model) so that both sounds still fit in one cycle.
S1_SECONDS, S2_SECONDS, SOUND_SD_SECONDS = 0.122, 0.094, 0.022
# Systole's spread (Springer: 25 ms), diastole's (Springer: 7 % of its mean + 6 ms).
SYSTOLE_SD_SECONDS = 0.025
DIASTOLE_SD_FRACTION, DIASTOLE_SD_SECONDS = 0.07, 0.006
# The share of diastoles off the regular rhythm: a premature beat shortens the diastole before
# it by about a third of a cycle, the compensatory pause lengthens the one after. Springer's
# Gaussian alone (sd ~40 ms) makes such a beat impossible; a 10 % uniform tail over
# [DIASTOLE_RANGE] of the mean diastole lets the decoder follow it when the sounds say so.
DIASTOLE_OFF_RHYTHM = 0.10
DIASTOLE_RANGE = (0.25, 2.5)
# Systole changes little with the beat (a premature beat's is about 20 % shorter).
SYSTOLE_RANGE = (0.6, 1.4)

# Emission: the log envelope's quiet and loud levels (percentiles), and the logistic's slope
# (P(sound) = 0.12 at the quiet level, 0.88 at the loud one).
QUIET_PERCENTILE, LOUD_PERCENTILE = 20.0, 95.0
EMISSION_SLOPE = 4.0

# ---- reliability (see measure in scripts/beats_survey.py and the tests)
# Loud over quiet level of the envelope, as a ratio: heart sounds stand 10-30 dB above the
# silences between them; a tone or white noise has an envelope within a few dB of constant.
MIN_MODULATION_DB = 6.0
# The autocorrelation's rhythm peak (normalised, 1 at lag 0). White noise gives < 0.2 on a
# 4-s recording; a rhythm with a premature beat every third beat still gives > 0.4.
MIN_PERIODICITY = 0.3
# The median decoded beat interval must be within this share of the autocorrelation's period.
MAX_PERIOD_DISAGREEMENT = 0.2
# A cycle's systolic autocorrelation peak (S1 against S2) must reach this share of the cycle's
# peak. Measured: with the sounds' envelopes overlapping, S1-against-S2 is a local maximum that
# can lie below zero (tone bursts at 120 bpm: -0.11 against 0.95), so only its existence as
# a local maximum is asked for (-1: any height).
SYSTOLIC_SHARE = -1.0
# Half the chosen cycle is preferred when its peak is at least this high relative to it.
HALF_CYCLE_SHARE = 0.8
# A heart rate needs at least this many beat intervals.
MIN_INTERVALS = 2
# Premature beat: its interval is at most 80 % of the median interval (the usual criterion
# for a premature complex), and the next one at least 110 % (the compensatory pause); normal
# beat-to-beat variation at rest stays within a few per cent.
PREMATURE_FRACTION, PAUSE_FRACTION = 0.8, 1.1
# Measured on Dataset B's labelled recordings (scripts/rhythm_search.py's notes; plots of the envelope and the
# decode): this criterion marks no real extrastole. Where an early beat is visible it is a single, quieter
# sound inside a diastole (its S2 unheard); the decoder needs a whole S1-systole-S2 for a beat, so it leaves
# the sound inside the diastole and the beat intervals stay regular. A 30 % off-rhythm diastole tail changed
# nothing. Marking lone diastolic sounds instead would not separate extrastoles either: 47 % of reliable
# extrastole recordings hold one (prominence >= 0.3 of the loud-quiet range), and 38 % of normal ones
# (noise, S3). heartbeat.data.rhythm's beat_extra_sounds measures them, as a feature, not as a verdict.

S1, SYSTOLE, S2, DIASTOLE = 0, 1, 2, 3
STATE_NAMES = ("S1", "systole", "S2", "diastole")
_IMPOSSIBLE = -1e30  # a log probability that is never chosen (finite: -inf - -inf would be NaN)


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


# ---------------------------------------------------------------- features

def homomorphic_envelope(signal: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """Log of the 25-400 Hz Hilbert envelope, averaged per 20 ms frame and low-passed at 8 Hz; None if silent."""
    n = signal.size
    size = 1 << int(math.ceil(math.log2(n + sample_rate // 10)))  # zero padding: no wrap-around of the filter's tail
    spectrum = np.fft.rfft(signal - signal.mean(), size)
    frequencies = np.fft.rfftfreq(size, 1.0 / sample_rate)
    spectrum *= _band_pass_gain(frequencies)
    # Analytic signal from the same spectrum: positive frequencies doubled, negative ones zero.
    analytic = np.zeros(size, dtype=complex)
    analytic[: spectrum.size] = spectrum
    analytic[1: spectrum.size - 1] *= 2.0
    hilbert = np.abs(np.fft.ifft(analytic)[:n])
    frame = int(round(sample_rate / FRAME_RATE))
    frames = n // frame
    framed = hilbert[: frames * frame].reshape(frames, frame).mean(axis=1)
    peak = float(framed.max())
    if not peak > 1e-12 * max(1.0, float(np.abs(signal).max())):
        return None
    # The floor keeps log() finite on digital silence; 80 dB below the peak is inaudible anyway.
    log_frames = np.log(np.maximum(framed, peak * 1e-4))
    return _low_pass(log_frames, FRAME_RATE, ENVELOPE_LOWPASS_HZ)


def _band_pass_gain(frequencies: np.ndarray) -> np.ndarray:
    # |H|^2 of an order-2 Butterworth high-pass and low-pass: their response applied forwards
    # and backwards (filtfilt, zero phase), as Springer filters.
    low, high = BAND_HZ
    with np.errstate(divide="ignore"):
        high_pass = 1.0 / (1.0 + (low / np.maximum(frequencies, 1e-9)) ** 4)
    return high_pass / (1.0 + (frequencies / high) ** 4)


def _low_pass(values: np.ndarray, rate: float, cutoff: float) -> np.ndarray:
    """Zero-phase order-1 Butterworth low-pass, forwards and backwards (Springer's homomorphic filter)."""
    pad = min(values.size, int(rate))  # mirrored edges: no step at the ends
    padded = np.concatenate([values[pad:0:-1], values, values[-2:-pad - 2:-1]]) if pad > 1 else values
    size = 1 << int(math.ceil(math.log2(padded.size + 1)))
    spectrum = np.fft.rfft(padded - padded.mean(), size)
    spectrum /= 1.0 + (np.fft.rfftfreq(size, 1.0 / rate) / cutoff) ** 2
    smooth = np.fft.irfft(spectrum, size)[: padded.size] + padded.mean()
    start = pad - 1 if pad > 1 else 0
    return smooth[start: start + values.size]


def heart_cycle(envelope: np.ndarray) -> tuple[float | None, float]:
    """(the heart cycle in frames, sub-frame precise; the autocorrelation's height there). None when no peak.

    The highest local maximum of the envelope's autocorrelation between 0.3 and 1.5 s (Springer:
    the highest value between 0.5 and 2 s, 30-120 bpm) that looks like a whole cycle: one whose
    autocorrelation also has a systolic peak (S1 to S2, see systolic_interval). Above about
    90 bpm, S1 to S2 is close to half the cycle, so a lag of half the cycle is nearly as
    periodic as the cycle itself; but a half cycle holds one sound, not two, so it has no
    systolic peak of its own. A longer lag is kept only if no peak half as long is nearly as
    high and also passes: a rhythm is also periodic at twice its cycle.
    """
    autocorrelation = _autocorrelation(envelope)
    shortest = int(math.floor(FRAME_RATE * 60.0 / MAX_BPM))
    longest = min(int(math.ceil(FRAME_RATE * 60.0 / MIN_BPM)), int(envelope.size / MIN_CYCLES_SEEN))
    peaks = _local_maxima(autocorrelation, shortest, longest)
    whole = [int(peak) for peak in peaks if _systolic_peak(autocorrelation, peak) is not None]
    if not whole:
        return None, 0.0
    best = max(whole, key=lambda peak: autocorrelation[peak])
    halves = [peak for peak in whole if abs(peak - best / 2) <= 0.1 * best]
    if halves:
        half = max(halves, key=lambda peak: autocorrelation[peak])
        if autocorrelation[half] >= HALF_CYCLE_SHARE * autocorrelation[best]:
            best = half
    return _refined_peak(autocorrelation, best), float(max(0.0, autocorrelation[best]))


def systolic_interval(envelope: np.ndarray, cycle_frames: float) -> float:
    """S1 to S2 in frames: the autocorrelation's highest peak between 0.15 and 0.5 of a cycle (Springer:
    0.2 s to half a cycle); a third of the cycle when it has none."""
    autocorrelation = _autocorrelation(envelope)
    peak = _systolic_peak(autocorrelation, int(round(cycle_frames)))
    return cycle_frames / 3.0 if peak is None else _refined_peak(autocorrelation, peak)


def _systolic_peak(autocorrelation: np.ndarray, cycle: int) -> int | None:
    """The highest local maximum between 0.15 and 0.5 of the cycle (and beyond one sound's own lobe) that
    stands at least SYSTOLIC_SHARE of the cycle's peak high; None when there is none."""
    shortest = max(int(0.15 * cycle), int(0.08 * FRAME_RATE))
    peaks = _local_maxima(autocorrelation, shortest, int(0.5 * cycle) + 1)
    peaks = peaks[autocorrelation[peaks] >= SYSTOLIC_SHARE * autocorrelation[cycle]]
    return int(peaks[np.argmax(autocorrelation[peaks])]) if peaks.size else None


def _autocorrelation(values: np.ndarray) -> np.ndarray:
    """Biased autocorrelation of the mean-removed values, 1 at lag 0 (0 everywhere for a constant)."""
    centred = values - values.mean()
    size = 1 << int(math.ceil(math.log2(2 * centred.size)))
    power = np.abs(np.fft.rfft(centred, size)) ** 2
    autocorrelation = np.fft.irfft(power, size)[: centred.size]
    return autocorrelation / autocorrelation[0] if autocorrelation[0] > 0 else np.zeros_like(autocorrelation)


def _local_maxima(values: np.ndarray, first: int, last: int) -> np.ndarray:
    """Indices i in [first, last] (within values' inner points) where values[i] is a local maximum."""
    first, last = max(first, 1), min(last, values.size - 2)
    if last < first:
        return np.zeros(0, dtype=int)
    inner = values[first:last + 1]
    rising = inner > values[first - 1:last]
    not_falling = inner >= values[first + 1:last + 2]
    return np.flatnonzero(rising & not_falling) + first


def _refined_peak(values: np.ndarray, index: int) -> float:
    """The peak's position to a fraction of a frame: the vertex of the parabola through three points."""
    if not 0 < index < values.size - 1:
        return float(index)
    left, centre, right = values[index - 1], values[index], values[index + 1]
    curvature = left - 2.0 * centre + right
    return float(index) if curvature >= 0 else index + 0.5 * (left - right) / curvature


def sound_probability(log_envelope: np.ndarray, quiet: float, loud: float) -> np.ndarray:
    """P(a heart sound) per frame: a logistic of the log envelope, 0.5 halfway between quiet and loud."""
    spread = max(loud - quiet, 1e-9)
    return 1.0 / (1.0 + np.exp(-EMISSION_SLOPE * (log_envelope - 0.5 * (quiet + loud)) / spread))


# ---------------------------------------------------------------- decoding

def decode(sound: np.ndarray, cycle_frames: float, systole_frames: float) -> np.ndarray:
    """The most likely state per frame (an explicit-duration Viterbi over S1 -> systole -> S2 -> diastole -> S1).

    Each state's segment has a duration drawn from _duration_model and emits log P(sound) (S1,
    S2) or log(1 - P(sound)) (systole, diastole) per frame. The recording starts and ends
    mid-cycle: the first and last segments may be cut short, so their durations are only
    penalised for being longer than usual, never for being short.
    """
    sound = np.clip(sound, 1e-6, 1.0 - 1e-6)
    emission = np.stack([np.log(sound), np.log1p(-sound), np.log(sound), np.log1p(-sound)], axis=1)
    cumulative = np.vstack([np.zeros((1, 4)), np.cumsum(emission, axis=0)])  # (T + 1, 4)
    log_duration = _duration_model(cycle_frames, systole_frames)  # (4, D): durations 1..D
    longest = log_duration.shape[1]
    durations = np.arange(1, longest + 1)
    # A cut segment: only a longer-than-usual duration costs anything (the survival function, roughly).
    cut = np.where(durations >= np.argmax(log_duration, axis=1)[:, None] + 1, log_duration, log_duration.max(axis=1)[:, None])
    previous = np.array([DIASTOLE, S1, SYSTOLE, S2])
    frames = sound.size
    best = np.full((frames + 1, 4), _IMPOSSIBLE)  # best[t, j]: segments cover [0, t), the last one j ends at t
    best[0] = 0.0
    chosen = np.zeros((frames + 1, 4), dtype=np.int64)  # that last segment's duration
    states = np.arange(4)
    for end in range(1, frames + 1):
        length = min(longest, end)
        starts = end - durations[:length]  # (length,)
        if end == frames:  # the last segment may be cut short too
            scores = cut[:, :length].copy()
        else:
            scores = log_duration[:, :length].copy() if end > longest else _first_cut(log_duration, cut, length)
        scores += best[starts][:, previous].T + (cumulative[end] - cumulative[starts]).T
        pick = np.argmax(scores, axis=1)
        best[end] = scores[states, pick]
        chosen[end] = pick + 1
    return _backtrack(best, chosen, previous)


def _first_cut(log_duration: np.ndarray, cut: np.ndarray, length: int) -> np.ndarray:
    scores = log_duration[:, :length].copy()
    scores[:, length - 1] = cut[:, length - 1]  # the segment starting at frame 0 may be the cut first one
    return scores


def _backtrack(best: np.ndarray, chosen: np.ndarray, previous: np.ndarray) -> np.ndarray:
    end = best.shape[0] - 1
    state = int(np.argmax(best[end]))
    states = np.zeros(end, dtype=np.uint8)
    while end > 0:
        duration = int(chosen[end, state])
        states[end - duration:end] = state
        end -= duration
        state = int(previous[state])
    return states


def _duration_model(cycle_frames: float, systole_frames: float) -> np.ndarray:
    """(4, D) log P(duration = 1..D frames) per state: Springer's Gaussians, a heavy tail for diastole."""
    rate = FRAME_RATE
    diastole_interval = cycle_frames - systole_frames  # S2 onset to the next S1 onset
    s1 = min(S1_SECONDS * rate, 0.5 * systole_frames)
    s2 = min(S2_SECONDS * rate, 0.4 * diastole_interval)
    systole, diastole = systole_frames - s1, diastole_interval - s2
    sound_sd = max(SOUND_SD_SECONDS * rate, 1.0)
    longest = int(math.ceil(DIASTOLE_RANGE[1] * diastole)) + 2
    durations = np.arange(1, longest + 1, dtype=float)
    model = np.stack([
        _gaussian(durations, s1, sound_sd, (max(1.0, 0.4 * s1), 2.0 * s1 + 2)),
        _gaussian(durations, systole, max(SYSTOLE_SD_SECONDS * rate, 1.0),
                  (SYSTOLE_RANGE[0] * systole, SYSTOLE_RANGE[1] * systole + 1)),
        _gaussian(durations, s2, sound_sd, (max(1.0, 0.4 * s2), 2.0 * s2 + 2)),
        _gaussian(durations, diastole, max(DIASTOLE_SD_FRACTION * diastole + DIASTOLE_SD_SECONDS * rate, 1.0),
                  (DIASTOLE_RANGE[0] * diastole, DIASTOLE_RANGE[1] * diastole + 1), DIASTOLE_OFF_RHYTHM),
    ])
    return model


def _gaussian(durations: np.ndarray, mean: float, sd: float, bounds: tuple[float, float],
              tail: float = 0.0) -> np.ndarray:
    """log of a Gaussian (weight 1 - tail) plus a uniform (weight tail) over bounds, per frame; impossible outside."""
    low, high = bounds
    inside = (durations >= low) & (durations <= high)
    density = np.exp(-0.5 * ((durations - mean) / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi))
    density = (1.0 - tail) * density + tail / max(high - low, 1.0)
    with np.errstate(divide="ignore"):
        return np.where(inside & (density > 0), np.log(np.maximum(density, 1e-300)), _IMPOSSIBLE)


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
                  irregularity=float(intervals.std() / intervals.mean()),
                  premature_beats=premature_beats(intervals), states=states)


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
