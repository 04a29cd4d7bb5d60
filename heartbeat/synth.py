"""Synthetic Dataset-B-shaped folders of heartbeat-like recordings, for tests and `make demo`.

`write_dataset_b(root)` writes `root/set_b.csv` and `root/set_b/*.wav` laid out exactly like
the common download of PASCAL Dataset B, quirks included: the csv's `fname` column names
files that are not on disk (`set_b/Btraining_normal_103_..._B.wav` is the file
`set_b/normal__103_..._B.wav`), the csv has CRLF line endings, and its rows are grouped the
way the real file groups them. The sounds are deliberately simple but keep what tells the
classes apart in a mel spectrogram:

- normal: S1 and S2 as short decaying low-frequency tone bursts, one pair per beat;
- murmur: the same, plus band-limited (150-600 Hz) noise filling each systole;
- extrastole: the normal rhythm with premature beats (early S1/S2 pair, then a
  compensatory pause, louder S1), one every 2-3 beats so every 5 s image window holds one.

Everything is drawn from seeded numpy generators: the same seed gives byte-identical files.
Only numpy and soundfile are imported, so the test suite and the demo stay fast.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from heartbeat.fileio import atomic_path, atomic_write_bytes

SAMPLE_RATE = 4000
CLASSES = ("normal", "murmur", "extrastole")

# Sublabel that marks a noisy recording of a class (only these two exist in Dataset B).
NOISY_SUBLABEL = {"normal": "noisynormal", "murmur": "noisymurmur"}
# Share of normal / murmur recordings that are noisy, close to Dataset B (120/320, 29/95).
NOISY_FRACTION = 0.3
# Background noise of the noisy recordings, relative to the S1 peak (default is 0.02).
NOISY_LEVEL = (0.06, 0.12)
# Per-patient resting heart rate; each recording varies it a little.
HEART_RATE_BPM = (60.0, 95.0)
MURMUR_BAND_HZ = (150.0, 600.0)
# Timestamps: 13-digit milliseconds since 1970, in the real data's range (May-July 2011).
_TIMESTAMP_RANGE = (1_305_000_000_000, 1_311_700_000_000)


# ---------------------------------------------------------------- one recording

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


# ---------------------------------------------------------------- a dataset folder

@dataclass
class _Recording:
    patient: int
    timestamp: int
    position: str
    kind: str  # the class the sound is drawn from (hidden for unlabelled recordings)
    labelled: bool
    noisy: bool
    seconds: float
    heart_rate_bpm: float

    @property
    def sublabel(self) -> str:
        return NOISY_SUBLABEL[self.kind] if self.labelled and self.noisy else ""

    @property
    def tail(self) -> str:
        return f"{self.patient}_{self.timestamp}_{self.position}.wav"

    @property
    def file_name(self) -> str:
        """The name on disk: label_sublabel_tail (empty sublabel -> double underscore)."""
        if not self.labelled:
            return f"Bunlabelledtest__{self.tail}"
        return f"{self.kind}_{self.sublabel}_{self.tail}"

    @property
    def csv_name(self) -> str:
        """The name the download's csv uses, which is not the name on disk."""
        if not self.labelled:
            return f"Bunlabelledtest_{self.tail}"
        sub = f"{self.sublabel}_" if self.sublabel else ""
        return f"Btraining_{self.kind}_{sub}{self.tail}"

    @property
    def csv_group(self) -> int:
        # The real set_b.csv lists extrastole, murmur, normal, unlabelled, then the noisy
        # murmurs and noisy normals, each group sorted by name.
        if not self.labelled:
            return 3
        if self.sublabel:
            return {"murmur": 4, "normal": 5}[self.kind]
        return {"extrastole": 0, "murmur": 1, "normal": 2}[self.kind]


def write_dataset_b(root, *, n_patients: int = 12, recordings_per_patient: tuple[int, int] = (2, 4),
                    class_weights: tuple[float, float, float] = (0.6, 0.25, 0.15), n_unlabelled: int = 6,
                    seconds: tuple[float, float] = (3.0, 8.0), sample_rate: int = SAMPLE_RATE,
                    csv_matches_files: bool = False, seed: int = 0) -> Path:
    """Write root/set_b.csv and root/set_b/*.wav shaped like the real download; return root.

    Each patient (ids 101, 102, ...) has one class, drawn with `class_weights` (in CLASSES
    order), one recording session (a 13-digit timestamp) and a number of recordings drawn
    from the inclusive range `recordings_per_patient`, at positions A, B, C, D, A1, ...
    Every class gets at least 2 patients when n_patients >= 6 (at least 1 when >= 3).
    About 30 % of normal and murmur recordings are noisy (sublabel noisynormal/noisymurmur,
    louder background noise); with 2 or more recordings of such a class, at least one is
    noisy and one is clean. `n_unlabelled` more recordings (empty label, sound of their
    patient's class) go to randomly chosen patients. Durations are uniform in `seconds`.

    The csv's fnames are the download's mismatched ones (`set_b/Btraining_...`) unless
    csv_matches_files is True, in which case they are `set_b/<name on disk>`. Existing files
    of the same names are overwritten (atomically); other files under root are left alone.
    The same arguments give byte-identical files.
    """
    lo, hi = recordings_per_patient
    if n_patients < 1 or not 1 <= lo <= hi or n_unlabelled < 0:
        raise ValueError("need n_patients >= 1, 1 <= recordings_per_patient[0] <= [1], n_unlabelled >= 0")
    if not 0 < seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be a range (low, high) with 0 < low <= high, not {seconds!r}")
    weights = np.asarray(class_weights, dtype=float)
    if weights.shape != (len(CLASSES),) or np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(f"class_weights must be {len(CLASSES)} non-negative numbers, not all 0")

    # Separate streams for the layout and for the sounds: each recording's sound depends
    # only on the seed and its index, not on how many random numbers the layout used.
    layout_seq, sound_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(layout_seq)

    kinds = _patient_classes(n_patients, weights / weights.sum(), rng)
    # Distinct sessions in increasing patient order, like the real ids and dates.
    first, last = _TIMESTAMP_RANGE
    seconds_apart = np.sort(rng.choice((last - first) // 1000, size=n_patients, replace=False))
    timestamps = first + 1000 * seconds_apart + rng.integers(0, 1000, size=n_patients)
    unlabelled_counts = np.bincount(rng.integers(0, n_patients, size=n_unlabelled), minlength=n_patients)

    recordings: list[_Recording] = []
    for p in range(n_patients):
        n_labelled = int(rng.integers(lo, hi + 1))
        n_total = n_labelled + int(unlabelled_counts[p])
        # Real patients skip positions (B, D1, D2, ...): pick from a slightly larger pool.
        pool = _positions(n_total + 2)
        chosen = np.sort(rng.choice(len(pool), size=n_total, replace=False))
        unlabelled = set(rng.choice(n_total, size=int(unlabelled_counts[p]), replace=False).tolist())
        bpm = rng.uniform(*HEART_RATE_BPM)
        for j, position_index in enumerate(chosen):
            recordings.append(_Recording(
                patient=101 + p, timestamp=int(timestamps[p]), position=pool[position_index], kind=kinds[p],
                labelled=j not in unlabelled, noisy=kinds[p] in NOISY_SUBLABEL and rng.random() < NOISY_FRACTION,
                seconds=float(rng.uniform(*seconds)), heart_rate_bpm=float(bpm * rng.uniform(0.95, 1.05))))
    _ensure_noisy_and_clean(recordings, rng)

    root = Path(root)
    audio_dir = root / "set_b"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for rec, sound_rng in zip(recordings, (np.random.default_rng(s) for s in sound_seq.spawn(len(recordings)))):
        noise = sound_rng.uniform(*NOISY_LEVEL) if rec.noisy else 0.02
        signal = heartbeat_signal(rec.kind, rec.seconds, sample_rate, heart_rate_bpm=rec.heart_rate_bpm,
                                  noise_level=noise, rng=sound_rng)
        # Quantise here rather than in libsndfile: the bytes then depend on numpy alone.
        pcm = np.round(signal.astype(np.float64) * 32767).astype(np.int16)
        with atomic_path(audio_dir / rec.file_name) as tmp:
            soundfile.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")  # the download's csv has CRLF line endings
    writer.writerow(["dataset", "fname", "label", "sublabel"])
    for rec in sorted(recordings, key=lambda r: (r.csv_group, r.csv_name)):
        name = rec.file_name if csv_matches_files else rec.csv_name
        writer.writerow(["b", f"set_b/{name}", rec.kind if rec.labelled else "", rec.sublabel])
    atomic_write_bytes(root / "set_b.csv", text.getvalue().encode("utf-8"))
    return root


def _patient_classes(n_patients: int, probabilities: np.ndarray, rng: np.random.Generator) -> list[str]:
    """One class per patient, drawn by weight, then topped up so every class has a minimum."""
    drawn = rng.choice(len(CLASSES), size=n_patients, p=probabilities)
    minimum = 2 if n_patients >= 6 else 1 if n_patients >= 3 else 0
    for c in range(len(CLASSES)):
        while np.sum(drawn == c) < minimum:
            # Take a patient from the currently largest class, which can spare one.
            donor = int(np.argmax(np.bincount(drawn, minlength=len(CLASSES))))
            drawn[rng.choice(np.flatnonzero(drawn == donor))] = c
    return [CLASSES[c] for c in drawn]


def _positions(n: int) -> list[str]:
    """Auscultation positions as Dataset B names them: A, B, C, D, A1, B1, C1, D1, A2, ..."""
    return [letter + (str(i // 4) if i >= 4 else "") for i, letter in ((i, "ABCD"[i % 4]) for i in range(n))]


def _ensure_noisy_and_clean(recordings: list[_Recording], rng: np.random.Generator) -> None:
    # Small datasets would otherwise often lack one of the two csv name forms per class.
    for kind in NOISY_SUBLABEL:
        labelled = [r for r in recordings if r.labelled and r.kind == kind]
        if len(labelled) < 2:
            continue
        for want in (True, False):
            if not any(r.noisy == want for r in labelled):
                labelled[int(rng.integers(len(labelled)))].noisy = want
