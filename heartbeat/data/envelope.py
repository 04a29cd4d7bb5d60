"""The heart sounds' envelope and its rhythm: the homomorphic envelope, the heart cycle and the systolic interval.

Steps 1-3 of heartbeat.data.beats' segmentation, after Springer, Tarassenko and Clifford (2016):

1. band-pass 25-400 Hz (the magnitude of Springer's zero-phase order-2 Butterworth pair);
2. homomorphic envelope: the log of the Hilbert envelope, low-passed at 8 Hz, at 50 frames/s;
3. heart rate from the envelope's autocorrelation (its highest peak at a lag of 0.3-1.5 s,
   40-200 bpm), and the systolic interval (S1 to S2) from its highest peak below half a cycle.

Only numpy is imported (scipy.signal costs about 0.6 s to import, and predict must start fast);
the filters are applied in the frequency domain.
"""

from __future__ import annotations

import math

import numpy as np

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
# A cycle's systolic autocorrelation peak (S1 against S2) must reach this share of the cycle's
# peak. Measured: with the sounds' envelopes overlapping, S1-against-S2 is a local maximum that
# can lie below zero (tone bursts at 120 bpm: -0.11 against 0.95), so only its existence as
# a local maximum is asked for (-1: any height).
SYSTOLIC_SHARE = -1.0
# Half the chosen cycle is preferred when its peak is at least this high relative to it.
HALF_CYCLE_SHARE = 0.8

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
