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

`write_layout(root, format)` writes a small folder in any layout heartbeat.data.layouts reads
(Dataset A, PhysioNet 2016, CirCor 2022, class folders, labels.csv), each with its quirks.

Everything is drawn from seeded numpy generators: the same seed gives byte-identical files.
Only numpy and soundfile are imported (soxr too, when a layout asks for 44.1 kHz), so the
test suite and the demo stay fast.
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


# ---------------------------------------------------------------- the other layouts (heartbeat.data.layouts)

# Each collection's native sample rate, so that every reader and stage 1 meet them all:
# Dataset A's iStethoscope app records at 44.1 kHz, PhysioNet 2016 is stored at 2 kHz,
# CirCor at 4 kHz; the generic layouts use Dataset B's 4 kHz.
LAYOUT_SAMPLE_RATES = {"pascal-b": SAMPLE_RATE, "pascal-a": 44100, "physionet2016": 2000, "circor2022": 4000,
                       "folders": SAMPLE_RATE, "csv": SAMPLE_RATE}
LAYOUT_SOUNDS = CLASSES + ("extrahls", "artifact")  # what layout_sound can draw
# The file names the folders layout gets (p<patient>_<position>.wav), and the --group-regex reading them.
FOLDERS_GROUP_REGEX = r"^p(?P<patient>\d+)_"
CIRCOR_LOCATIONS = ("AV", "PV", "TV", "MV")  # aortic, pulmonary, tricuspid, mitral valve areas
# Dataset A's recordings are named by their minute, in the challenge's collection period.
_PASCAL_A_START = (2010, 12, 1)
_PASCAL_A_MINUTES = 270 * 24 * 60  # about nine months
_CIRCOR_COLUMNS = (
    "Patient ID", "Recording locations:", "Age", "Sex", "Height", "Weight", "Pregnancy status", "Murmur",
    "Murmur locations", "Most audible location", "Systolic murmur timing", "Systolic murmur shape",
    "Systolic murmur grading", "Systolic murmur pitch", "Systolic murmur quality", "Diastolic murmur timing",
    "Diastolic murmur shape", "Diastolic murmur grading", "Diastolic murmur pitch", "Diastolic murmur quality",
    "Outcome", "Campaign", "Additional ID",
)


def layout_sound(kind: str, seconds: float, sample_rate: int, *, heart_rate_bpm: float = 72.0,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """A recording of one of LAYOUT_SOUNDS: float32 mono, peak 0.4-0.9, round(seconds * sample_rate) samples.

    normal, murmur and extrastole are heartbeat_signal's. extrahls (Dataset A's extra heart
    sound) is a normal rhythm plus a quieter, lower echo of each sound 120-180 ms later (an
    S3-like third sound after S2). artifact is no heartbeat at all: broadband noise whose
    loudness wanders slowly, like rubbing and handling noise.
    """
    if kind not in LAYOUT_SOUNDS:
        raise ValueError(f"kind must be one of {LAYOUT_SOUNDS}, not {kind!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    if sample_rate > SAMPLE_RATE:
        # Heart sounds hold nothing above 2 kHz: draw at 4 kHz and resample (soxr, as audio.py),
        # which is several times faster than drawing 44.1 kHz noise with long FFTs.
        import soxr

        low_rate = layout_sound(kind, seconds, SAMPLE_RATE, heart_rate_bpm=heart_rate_bpm, rng=rng)
        signal = soxr.resample(low_rate, SAMPLE_RATE, sample_rate)[:int(round(seconds * sample_rate))]
        return np.clip(signal, -1.0, 1.0).astype(np.float32)
    if kind in CLASSES:
        return heartbeat_signal(kind, seconds, sample_rate, heart_rate_bpm=heart_rate_bpm, rng=rng)
    n = int(round(seconds * sample_rate))
    if kind == "extrahls":
        beat = heartbeat_signal("normal", seconds, sample_rate, heart_rate_bpm=heart_rate_bpm, rng=rng).astype(float)
        delay = int(round(rng.uniform(0.12, 0.18) * sample_rate))
        low = np.fft.rfft(beat)
        low[np.fft.rfftfreq(n, 1.0 / sample_rate) > 80.0] = 0.0  # a third sound is dull and low
        echo = np.zeros(n)
        echo[delay:] = np.fft.irfft(low, n)[:n - delay]
        signal = beat + rng.uniform(0.5, 0.8) * echo / max(np.max(np.abs(echo)), 1e-9) * np.max(np.abs(beat))
    else:
        # Loudness drifting at 0.3-3 Hz over broadband noise up to 1.5 kHz (below Nyquist at 2 kHz).
        drift = np.abs(_band_noise(n, 0.3, 3.0, sample_rate, rng)) + 0.3
        signal = drift * _band_noise(n, 30.0, min(1500.0, 0.45 * sample_rate), sample_rate, rng)
    peak = np.max(np.abs(signal)) if n else 0.0
    if peak > 0:
        signal = signal * rng.uniform(0.4, 0.9) / peak
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Planned:
    path: str  # relative to the data folder
    sound: str  # one of LAYOUT_SOUNDS
    seconds: float
    heart_rate_bpm: float


def write_layout(out_dir, format: str, *, seed: int = 0, n_patients: int = 6,
                 recordings_per_patient: tuple[int, int] = (1, 3), seconds: tuple[float, float] = (2.0, 4.0)) -> Path:
    """Write a small synthetic data folder in one of heartbeat.data.layouts.FORMATS; return out_dir.

    `n_patients` people, each with one class and a number of recordings drawn from the inclusive
    range `recordings_per_patient` (layouts that name no patient simply do not say whose a
    recording is); every class gets a patient when n_patients allows. Durations are uniform in
    `seconds`, at the layout's native rate (LAYOUT_SAMPLE_RATES). Each layout's quirks are kept:

    - pascal-b: write_dataset_b's folder (two unlabelled recordings);
    - pascal-a: set_a.csv + set_a/<class>__<YYYYMMDDhhmm>.wav for artifact, extrahls, murmur,
      normal, and two unlabelled `Aunlabelledtest__` rows with an empty label;
    - physionet2016: training-a/ and training-b/, each with -1 and 1 rows in its header-less
      REFERENCE.csv (when n_patients >= 4), a RECORDS file and a .hea per recording;
    - circor2022: training_data.csv (the real columns; "nan" for missing values) with Present,
      Absent and Unknown patients; training_data/<id>_<loc>.wav with .hea/.tsv/<id>.txt beside
      them; the first Present patient has a location recorded twice (<id>_<loc>_1.wav, _2) and
      a location without the murmur;
    - folders: <class>/p<id>_<pos>.wav for extrastole, murmur, normal, every other patient's
      files one folder deeper (<class>/clinic-2/); FOLDERS_GROUP_REGEX reads the patient;
    - csv: labels.csv with the columns file,label,patient; files in recordings/.

    The same arguments give byte-identical files; existing files of the same names are
    overwritten (atomically), other files under out_dir are left alone.
    """
    planners = {"pascal-a": _plan_pascal_a, "physionet2016": _plan_physionet2016, "circor2022": _plan_circor2022,
                "folders": _plan_folders, "csv": _plan_csv}
    if format not in (*planners, "pascal-b"):
        raise ValueError(f"format must be one of pascal-b, {', '.join(planners)}; not {format!r}")
    lo, hi = recordings_per_patient
    if n_patients < 1 or not 1 <= lo <= hi:
        raise ValueError("need n_patients >= 1 and 1 <= recordings_per_patient[0] <= [1]")
    if not 0 < seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be a range (low, high) with 0 < low <= high, not {seconds!r}")
    if format == "pascal-b":
        return write_dataset_b(out_dir, n_patients=n_patients, recordings_per_patient=recordings_per_patient,
                               n_unlabelled=2, seconds=seconds, seed=seed)

    # Separate streams for the layout and for the sounds, as in write_dataset_b.
    layout_seq, sound_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(layout_seq)
    sample_rate = LAYOUT_SAMPLE_RATES[format]
    planned, texts = planners[format](n_patients, recordings_per_patient, seconds, sample_rate, rng)
    root = Path(out_dir)
    for item, sound_rng in zip(planned, (np.random.default_rng(s) for s in sound_seq.spawn(len(planned)))):
        signal = layout_sound(item.sound, item.seconds, sample_rate, heart_rate_bpm=item.heart_rate_bpm, rng=sound_rng)
        _write_pcm16(root / item.path, signal, sample_rate)
    for relative, text in texts.items():
        atomic_write_bytes(root / relative, text.encode("utf-8"))
    return root


def _write_pcm16(path: Path, signal: np.ndarray, sample_rate: int) -> None:
    # Quantise here rather than in libsndfile: the bytes then depend on numpy alone.
    pcm = np.round(signal.astype(np.float64) * 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")


def _people(n_patients: int, classes: tuple[str, ...], recordings_per_patient: tuple[int, int],
            rng: np.random.Generator) -> list[tuple[str, int, float]]:
    """(class, number of recordings, resting heart rate) per patient; classes dealt round, then shuffled."""
    dealt = [classes[i % len(classes)] for i in range(n_patients)]
    kinds = [dealt[i] for i in rng.permutation(n_patients)]
    lo, hi = recordings_per_patient
    return [(kind, int(rng.integers(lo, hi + 1)), float(rng.uniform(*HEART_RATE_BPM))) for kind in kinds]


def _recording(path: str, sound: str, bpm: float, seconds: tuple[float, float], rng: np.random.Generator) -> _Planned:
    # Each recording of a person varies the resting rate a little, as in write_dataset_b.
    return _Planned(path, sound, float(rng.uniform(*seconds)), bpm * float(rng.uniform(0.95, 1.05)))


def _wfdb_header(record: str, sample_rate: int, samples: int, description: str) -> str:
    """The .hea file PhysioNet puts beside each recording (one 16-bit channel stored in the .wav)."""
    return f"{record} 1 {sample_rate} {samples}\n{record}.wav 16+44 1 16 0 0 0 0 {description}\n"


def _csv_text(rows: list[list[str]], line_end: str = "\n") -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator=line_end).writerows(rows)
    return text.getvalue()


def _plan_pascal_a(n_patients, recordings_per_patient, seconds, sample_rate, rng):
    import datetime

    from heartbeat.data.layouts import PASCAL_A_AUDIO, PASCAL_A_CLASSES, PASCAL_A_CSV

    labelled = [(kind, bpm) for kind, count, bpm in _people(n_patients, PASCAL_A_CLASSES, recordings_per_patient, rng)
                for _ in range(count)]
    unlabelled = [(str(rng.choice(PASCAL_A_CLASSES)), float(rng.uniform(*HEART_RATE_BPM))) for _ in range(2)]
    start = datetime.datetime(*_PASCAL_A_START)
    minutes = rng.choice(_PASCAL_A_MINUTES, size=len(labelled) + len(unlabelled), replace=False)
    stamps = [(start + datetime.timedelta(minutes=int(m))).strftime("%Y%m%d%H%M") for m in minutes]
    planned, rows = [], []
    for (kind, bpm), stamp, is_labelled in zip(labelled + unlabelled, stamps,
                                               [True] * len(labelled) + [False] * len(unlabelled)):
        name = f"{kind}__{stamp}.wav" if is_labelled else f"Aunlabelledtest__{stamp}.wav"
        planned.append(_recording(f"{PASCAL_A_AUDIO}/{name}", kind, bpm, seconds, rng))
        rows.append(["a", f"{PASCAL_A_AUDIO}/{name}", kind if is_labelled else "", ""])
    # The download lists the classes in turn, then the unlabelled recordings, each sorted by name.
    rows.sort(key=lambda row: (row[2] == "", row[2], row[1]))
    header = ["dataset", "fname", "label", "sublabel"]
    return planned, {PASCAL_A_CSV: _csv_text([header] + rows, "\r\n")}


def _plan_physionet2016(n_patients, recordings_per_patient, seconds, sample_rate, rng):
    from heartbeat.data.layouts import PHYSIONET_REFERENCE

    by_subset: dict[str, list[tuple[str, str, float]]] = {"a": [], "b": []}
    people = _people(n_patients, ("normal",), recordings_per_patient, rng)
    for i, (_, count, bpm) in enumerate(people):
        # Patients alternate between the two subsets, and between normal and abnormal within
        # each, so both subsets hold both labels from 4 patients on.
        abnormal = (i // 2) % 2 == 1
        subset = "ab"[i % 2]
        for _ in range(count):
            sound = str(rng.choice(("murmur", "extrastole"))) if abnormal else "normal"
            by_subset[subset].append(("1" if abnormal else "-1", sound, bpm))
    planned, texts = [], {}
    for subset, items in by_subset.items():
        folder = f"training-{subset}"
        names, rows = [], []
        for number, index in enumerate(rng.permutation(len(items)), start=1):
            value, sound, bpm = items[index]
            record = f"{subset}{number:04d}"
            item = _recording(f"{folder}/{record}.wav", sound, bpm, seconds, rng)
            planned.append(item)
            names.append(record)
            rows.append([record, value])
            samples = int(round(item.seconds * sample_rate))
            texts[f"{folder}/{record}.hea"] = _wfdb_header(record, sample_rate, samples, "PCG")
        if names:
            texts[f"{folder}/{PHYSIONET_REFERENCE}"] = _csv_text(rows)
            texts[f"{folder}/RECORDS"] = "".join(name + "\n" for name in names)
    return planned, texts


def _plan_circor2022(n_patients, recordings_per_patient, seconds, sample_rate, rng):
    from heartbeat.data.layouts import CIRCOR_AUDIO, CIRCOR_CSV

    people = _people(n_patients, ("Present", "Absent", "Unknown"), recordings_per_patient, rng)
    ids = np.sort(rng.choice(np.arange(2530, 85350), size=n_patients, replace=False))
    first_present = next((i for i, (murmur, _, _) in enumerate(people) if murmur == "Present"), None)
    planned, rows, texts = [], [], {}
    for i, ((murmur, count, bpm), patient) in enumerate(zip(people, ids)):
        quirky = i == first_present  # a location recorded twice, and one without the murmur
        n_locations = min(max(count, 2 if quirky else 1), len(CIRCOR_LOCATIONS))
        chosen = np.sort(rng.choice(len(CIRCOR_LOCATIONS), size=n_locations, replace=False))
        locations = [CIRCOR_LOCATIONS[c] for c in chosen]
        heard: list[str] = []
        if murmur == "Present":
            # Heard at some of the recorded locations, not at all of them when there are several.
            size = int(rng.integers(1, len(locations))) if len(locations) > 1 else 1
            picked = set(rng.choice(locations, size=size, replace=False).tolist())
            if quirky:  # the twice-recorded location has the murmur, the last location has not
                picked = (picked - {locations[-1]}) | {locations[0]}
            heard = [loc for loc in locations if loc in picked]
        recorded = [locations[0], locations[0]] + locations[1:] if quirky else locations
        names = [f"{patient}_{loc}_{recorded[:k].count(loc) + 1}" if recorded.count(loc) > 1 else f"{patient}_{loc}"
                 for k, loc in enumerate(recorded)]
        for name, loc in zip(names, recorded):
            if murmur == "Unknown":
                sound = str(rng.choice(("normal", "murmur")))
            else:
                sound = "murmur" if loc in heard else "normal"
            item = _recording(f"{CIRCOR_AUDIO}/{name}.wav", sound, bpm, seconds, rng)
            planned.append(item)
            samples = int(round(item.seconds * sample_rate))
            texts[f"{CIRCOR_AUDIO}/{name}.hea"] = _wfdb_header(name, sample_rate, samples, loc)
            texts[f"{CIRCOR_AUDIO}/{name}.tsv"] = f"0.0\t{item.seconds:.3f}\t0\n"  # segmentation: unannotated
        outcome = "Abnormal" if murmur == "Present" or rng.random() < 0.3 else "Normal"
        texts[f"{CIRCOR_AUDIO}/{patient}.txt"] = (
            f"{patient} {len(names)} {sample_rate}\n"
            + "".join(f"{name}.hea {name}.wav {name}.tsv\n" for name in names)
            + f"#Murmur: {murmur}\n#Outcome: {outcome}\n")
        systolic = ["Holosystolic", "Plateau", "II/VI", "Medium", "Harsh"] if murmur == "Present" else ["nan"] * 5
        rows.append([str(patient), "+".join(recorded), str(rng.choice(("Infant", "Child", "Adolescent"))),
                     str(rng.choice(("Female", "Male"))), "nan", "nan", "False", murmur, "+".join(heard) or "nan",
                     heard[0] if heard else "nan", *systolic, *["nan"] * 5, outcome, "CC2015", "nan"])
    return planned, {**texts, CIRCOR_CSV: _csv_text([list(_CIRCOR_COLUMNS)] + rows)}


def _plan_folders(n_patients, recordings_per_patient, seconds, sample_rate, rng):
    planned = []
    for i, (kind, count, bpm) in enumerate(_people(n_patients, tuple(sorted(CLASSES)), recordings_per_patient, rng)):
        folder = f"{kind}/clinic-2" if i % 2 else kind  # every other patient one folder deeper
        planned += [_recording(f"{folder}/p{101 + i}_{position}.wav", kind, bpm, seconds, rng)
                    for position in _positions(count)]
    return planned, {}


def _plan_csv(n_patients, recordings_per_patient, seconds, sample_rate, rng):
    from heartbeat.data.layouts import LABELS_CSV

    planned, rows = [], [["file", "label", "patient"]]
    for i, (kind, count, bpm) in enumerate(_people(n_patients, tuple(sorted(CLASSES)), recordings_per_patient, rng)):
        for position in _positions(count):
            item = _recording(f"recordings/P{101 + i}_{position}.wav", kind, bpm, seconds, rng)
            planned.append(item)
            rows.append([item.path, kind, f"P{101 + i}"])
    return planned, {LABELS_CSV: _csv_text(rows)}
