"""Which frames are S1, systole, S2 and diastole: a duration-dependent Viterbi (an explicit-duration HSMM).

Step 4 of heartbeat.data.beats' segmentation, after Springer, Tarassenko and Clifford (2016): a
Viterbi over the four states S1, systole, S2, diastole, with Springer's duration model centred
on the heart cycle and the systolic interval (heartbeat.data.envelope).

Springer's emissions come from a logistic regression trained on annotated recordings, which
this project does not have. Here the emission is the envelope itself: a logistic of the
log envelope between the recording's quiet level (its 20th percentile: heart sounds fill only
a quarter to a third of each cycle) and its loud level (95th percentile; both measured in
heartbeat.data.beats) gives P(sound) per frame; S1 and S2 emit log P(sound), systole and
diastole log(1 - P(sound)). Sounds and silences are told apart by loudness, S1 and S2 by
timing alone (systole is shorter than diastole), which is also what carries most of the weight
in Springer's model. Unlike Springer's, the diastole's duration model has a heavy tail (see
DIASTOLE_OFF_RHYTHM), so a premature beat and its compensatory pause can be decoded instead of
being forced onto the regular rhythm.

Only numpy is imported, as in heartbeat.data.envelope.
"""

from __future__ import annotations

import math

import numpy as np

from heartbeat.data.envelope import FRAME_RATE

# ---------------------------------------------------------------- settings (why each value)

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

# Emission: the logistic's slope between the log envelope's quiet and loud levels
# (P(sound) = 0.12 at the quiet level, 0.88 at the loud one).
EMISSION_SLOPE = 4.0

S1, SYSTOLE, S2, DIASTOLE = 0, 1, 2, 3
STATE_NAMES = ("S1", "systole", "S2", "diastole")
_IMPOSSIBLE = -1e30  # a log probability that is never chosen (finite: -inf - -inf would be NaN)


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
