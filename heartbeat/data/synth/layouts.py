"""Small synthetic data folders in every other layout heartbeat.data.layouts reads, each with its quirks.

Dataset A, PhysioNet 2016, CirCor 2022, class folders and labels.csv (Dataset B is dataset_b's),
at each collection's native sample rate, with the extra sounds Dataset A has (extrahls, artifact).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartbeat.data.synth.dataset_b import _positions, write_dataset_b
from heartbeat.data.synth.sound import (
    CLASSES, HEART_RATE_BPM, SAMPLE_RATE, _band_noise, heartbeat_signal, write_pcm16,
)
from heartbeat.fileio import atomic_write_bytes

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
        write_pcm16(root / item.path, signal, sample_rate)
    for relative, text in texts.items():
        atomic_write_bytes(root / relative, text.encode("utf-8"))
    return root


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
