"""A synthetic Dataset B: `set_b.csv` + `set_b/*.wav` laid out exactly like the common download.

Quirks included: the csv's `fname` column names files that are not on disk
(`set_b/Btraining_normal_103_..._B.wav` is the file `set_b/normal__103_..._B.wav`), the csv has
CRLF line endings, and its rows are grouped the way the real file groups them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartbeat.data.synth.sound import CLASSES, HEART_RATE_BPM, SAMPLE_RATE, heartbeat_signal, write_pcm16
from heartbeat.fileio import atomic_write_bytes

# Sublabel that marks a noisy recording of a class (only these two exist in Dataset B).
NOISY_SUBLABEL = {"normal": "noisynormal", "murmur": "noisymurmur"}
# Share of normal / murmur recordings that are noisy, close to Dataset B (120/320, 29/95).
NOISY_FRACTION = 0.3
# Background noise of the noisy recordings, relative to the S1 peak (default is 0.02).
NOISY_LEVEL = (0.06, 0.12)
# Timestamps: 13-digit milliseconds since 1970, in the real data's range (May-July 2011).
_TIMESTAMP_RANGE = (1_305_000_000_000, 1_311_700_000_000)


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
    weights = _checked_weights(n_patients, recordings_per_patient, class_weights, n_unlabelled, seconds)
    # Separate streams for the layout and for the sounds: each recording's sound depends
    # only on the seed and its index, not on how many random numbers the layout used.
    layout_seq, sound_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(layout_seq)
    recordings = _plan_recordings(n_patients, weights / weights.sum(), recordings_per_patient, n_unlabelled, seconds,
                                  rng)
    root = Path(root)
    audio_dir = root / "set_b"
    audio_dir.mkdir(parents=True, exist_ok=True)
    _write_wavs(audio_dir, recordings, sound_seq, sample_rate)
    atomic_write_bytes(root / "set_b.csv", _set_b_csv(recordings, csv_matches_files))
    return root


def _checked_weights(n_patients: int, recordings_per_patient: tuple[int, int], class_weights, n_unlabelled: int,
                     seconds: tuple[float, float]) -> np.ndarray:
    """class_weights as an array, once every argument of write_dataset_b is known to be usable (else ValueError)."""
    lo, hi = recordings_per_patient
    if n_patients < 1 or not 1 <= lo <= hi or n_unlabelled < 0:
        raise ValueError("need n_patients >= 1, 1 <= recordings_per_patient[0] <= [1], n_unlabelled >= 0")
    if not 0 < seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be a range (low, high) with 0 < low <= high, not {seconds!r}")
    weights = np.asarray(class_weights, dtype=float)
    if weights.shape != (len(CLASSES),) or np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(f"class_weights must be {len(CLASSES)} non-negative numbers, not all 0")
    return weights


def _plan_recordings(n_patients: int, probabilities: np.ndarray, recordings_per_patient: tuple[int, int],
                     n_unlabelled: int, seconds: tuple[float, float], rng: np.random.Generator) -> list[_Recording]:
    """Every recording's patient, session, position, class and sound settings, drawn from `rng`.

    The order of the draws is the files' bytes: change it and every seed writes other files.
    """
    lo, hi = recordings_per_patient
    kinds = _patient_classes(n_patients, probabilities, rng)
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
    return recordings


def _write_wavs(audio_dir: Path, recordings: list[_Recording], sound_seq: np.random.SeedSequence,
                sample_rate: int) -> None:
    """Each recording's sound, from its own child of `sound_seq` (its index in `recordings`)."""
    for rec, sound_rng in zip(recordings, (np.random.default_rng(s) for s in sound_seq.spawn(len(recordings)))):
        noise = sound_rng.uniform(*NOISY_LEVEL) if rec.noisy else 0.02
        signal = heartbeat_signal(rec.kind, rec.seconds, sample_rate, heart_rate_bpm=rec.heart_rate_bpm,
                                  noise_level=noise, rng=sound_rng)
        write_pcm16(audio_dir / rec.file_name, signal, sample_rate)


def _set_b_csv(recordings: list[_Recording], csv_matches_files: bool) -> bytes:
    """set_b.csv's bytes: the download's columns, row groups and CRLF line endings."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")  # the download's csv has CRLF line endings
    writer.writerow(["dataset", "fname", "label", "sublabel"])
    for rec in sorted(recordings, key=lambda r: (r.csv_group, r.csv_name)):
        name = rec.file_name if csv_matches_files else rec.csv_name
        writer.writerow(["b", f"set_b/{name}", rec.kind if rec.labelled else "", rec.sublabel])
    return text.getvalue().encode("utf-8")


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
