"""Heartbeat-like sounds: S1/S2 thumps, murmurs as band-limited noise in systole, premature beats.

The sounds are deliberately simple but keep what tells the classes apart in a mel spectrogram:

- normal: S1 and S2 as short decaying low-frequency tone bursts, one pair per beat;
- murmur: the same, plus band-limited (150-600 Hz) noise filling each systole;
- extrastole: the normal rhythm with premature beats (early S1/S2 pair, then a
  compensatory pause, louder S1), one every 2-3 beats so every 5 s image window holds one.

Everything is drawn from the numpy generator passed in. Only numpy and soundfile are imported.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile

from heartbeat.fileio import atomic_path

SAMPLE_RATE = 4000
CLASSES = ("normal", "murmur", "extrastole")

# Per-patient resting heart rate; each recording varies it a little.
HEART_RATE_BPM = (60.0, 95.0)
MURMUR_BAND_HZ = (150.0, 600.0)


def heartbeat_signal(kind: str, seconds: float, sample_rate: int = SAMPLE_RATE, *, heart_rate_bpm: float = 72.0,
                     noise_level: float = 0.02, rng: np.random.Generator | None = None) -> np.ndarray:
    """A heartbeat-like recording: float32 mono in [-1, 1], round(seconds * sample_rate) samples.

    kind is one of CLASSES. noise_level is the standard deviation of the white background
    noise relative to the S1 peak. Phase, S1/S2 pitch and timing, beat-to-beat jitter,
    murmur loudness and shape and the overall gain are drawn from `rng`; without one a
    generator seeded with 0 is used, so a bare call is reproducible.
    """
    if kind not in CLASSES:
        raise ValueError(f"kind must be one of {CLASSES}, not {kind!r}")
    if not seconds > 0 or not heart_rate_bpm > 0 or not sample_rate > 0 or not noise_level >= 0:
        raise ValueError("seconds, sample_rate and heart_rate_bpm must be positive, noise_level non-negative")
    rng = np.random.default_rng(0) if rng is None else rng
    n = int(round(seconds * sample_rate))
    period = 60.0 / heart_rate_bpm

    # Systole (S1 to S2) is ~0.3 s at 72 bpm and shortens a little as the heart speeds up;
    # the cap keeps S2 clear of the next S1 at very high rates.
    systole = min(0.3 * math.sqrt(period / (60.0 / 72.0)) * rng.uniform(0.93, 1.07), 0.45 * period)
    s1_hz, s1_len = rng.uniform(45.0, 75.0), rng.uniform(0.09, 0.12)
    s2_hz, s2_len = rng.uniform(70.0, 110.0), rng.uniform(0.06, 0.09)
    s2_gain = rng.uniform(0.5, 0.8)
    premature_s1_gain = rng.uniform(1.4, 1.8)  # drawn for every kind: same rng stream layout
    beats = _beat_times(kind, seconds, period, systole, s2_len, rng)

    # Render into a buffer with a margin on both sides, so beats that start before the
    # recording or run past its end are cut off naturally (recordings start mid-cycle).
    margin = int(math.ceil(max(period, 0.5) * 2 * sample_rate))
    buffer = np.zeros(n + 2 * margin)
    for onset, premature in beats:
        # A premature beat has a shorter systole, a louder S1 (the valve closes from wide
        # open) and a weaker S2 (less filling): marks a CNN can see locally, not only as rhythm.
        beat_systole = systole * (0.8 if premature else 1.0)
        loudness = rng.uniform(0.9, 1.1)
        s1 = loudness * (premature_s1_gain if premature else 1.0) * _thump(s1_hz, s1_len, sample_rate, rng)
        s2 = loudness * s2_gain * (0.6 if premature else 1.0) * _thump(s2_hz, s2_len, sample_rate, rng)
        _add(buffer, margin + int(round(onset * sample_rate)), s1)
        _add(buffer, margin + int(round((onset + beat_systole) * sample_rate)), s2)

    if kind == "murmur":
        buffer += _systolic_murmur(beats, systole, s1_len, len(buffer), margin, sample_rate, rng)

    signal = buffer[margin:margin + n] + noise_level * rng.standard_normal(n)
    # Stethoscope gain differs between devices and positions: peak anywhere in 0.4-0.9.
    peak = np.max(np.abs(signal)) if n else 0.0
    if peak > 0:
        signal *= rng.uniform(0.4, 0.9) / peak
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


def _beat_times(kind: str, seconds: float, period: float, systole: float, s2_len: float,
                rng: np.random.Generator) -> list[tuple[float, bool]]:
    """(S1 onset in seconds, is premature) for every beat overlapping [0, seconds)."""
    # Regular rhythm with ~2 % beat-to-beat jitter, starting at a random phase before 0.
    onsets = [-rng.uniform(0.0, period)]
    while onsets[-1] < seconds:
        onsets.append(onsets[-1] + period * (1.0 + float(np.clip(rng.normal(0.0, 0.02), -0.06, 0.06))))
    premature = [False] * len(onsets)
    if kind != "extrastole":
        return list(zip(onsets, premature))

    # The premature S1 comes at 45-60 % of the interval, but never before the previous S2
    # has faded; it replaces the next regular beat, and the one after that keeps its place
    # (a full compensatory pause), which is what an extrasystole sounds like.
    offset = min(max(rng.uniform(0.45, 0.6) * period, systole + s2_len + 0.06), 0.8 * period)
    # Beats whose premature follower starts inside the recording, at least 0.1 s before its end.
    candidates = [i for i, t in enumerate(onsets) if 0.0 <= t + offset <= seconds - 0.1]
    if not candidates:  # recordings shorter than about a second may have none
        return list(zip(onsets, premature))
    # First one within the first two usable beats, then one every 2-3 beats: any 5 s window
    # (the spectrogram image width) then holds at least one premature beat.
    i = candidates[int(rng.integers(0, min(2, len(candidates))))]
    while i <= candidates[-1]:
        if i in candidates:
            replaced = i + 1
            if replaced == len(onsets):
                onsets.append(0.0)
                premature.append(False)
            onsets[replaced] = onsets[i] + offset
            premature[replaced] = True
        i += int(rng.integers(2, 4))
    return list(zip(onsets, premature))


def _thump(freq: float, length: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A heart sound: a slightly falling low-frequency tone under a fast-attack, decaying envelope."""
    t = np.arange(int(round(length * sample_rate))) / sample_rate
    rise = 0.2 * length
    # (t/rise)^2 * exp(2 (1 - t/rise)) peaks at 1 after `rise` and is < 1 % by the end.
    envelope = (t / rise) ** 2 * np.exp(2.0 * (1.0 - t / rise))
    # Pitch falls by up to 30 % over the sound (valve tension relaxing); phase integrates it.
    inst_freq = freq * (1.0 - 0.3 * t / length)
    phase = 2.0 * np.pi * np.cumsum(inst_freq) / sample_rate + rng.uniform(0.0, 2.0 * np.pi)
    return envelope * np.sin(phase)


def _add(buffer: np.ndarray, start: int, sound: np.ndarray) -> None:
    end = min(start + len(sound), len(buffer))
    if start < end:
        buffer[start:end] += sound[:end - start]


def _band_noise(n: int, low: float, high: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """White noise with every FFT bin outside [low, high] Hz zeroed, scaled to unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    noise = np.fft.irfft(spectrum, n)
    rms = np.sqrt(np.mean(noise ** 2))
    return noise / rms if rms > 0 else noise


def _systolic_murmur(beats, systole: float, s1_len: float, n: int, margin: int, sample_rate: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise gated to each systole (end of S1's attack to S2), zero elsewhere."""
    # RMS 0.15-0.3 of the S1 peak: plainly audible (peaks reach about the S1 level).
    level = rng.uniform(0.15, 0.3)
    # Holosystolic (flat) or crescendo-decrescendo (diamond): the two common shapes.
    diamond = rng.random() < 0.5
    gate = np.zeros(n)
    for onset, _ in beats:
        start = margin + int(round((onset + 0.4 * s1_len) * sample_rate))
        length = int(round((systole - 0.4 * s1_len) * sample_rate))
        if length <= 0:
            continue
        x = np.linspace(0.0, 1.0, length)
        if diamond:
            shape = 1.0 - np.abs(2.0 * x - 1.0)
        else:  # flat with 20 ms raised-cosine edges, so the gate itself adds no clicks
            ramp = min(int(0.02 * sample_rate), length // 2)
            shape = np.ones(length)
            if ramp:
                edge = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
                shape[:ramp], shape[length - ramp:] = edge, edge[::-1]
        _add(gate, start, shape)
    low, high = MURMUR_BAND_HZ
    high = min(high, 0.45 * sample_rate)  # stay below Nyquist at low sample rates
    return level * np.minimum(gate, 1.0) * _band_noise(n, low, high, sample_rate, rng)


def write_pcm16(path: Path, signal: np.ndarray, sample_rate: int) -> None:
    """Write `signal` (floats in [-1, 1]) as a 16-bit WAV file, atomically, making its folder (atomic_path does)."""
    # Quantise here rather than in libsndfile: the bytes then depend on numpy alone.
    pcm = np.round(signal.astype(np.float64) * 32767).astype(np.int16)
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")
