"""CirCor DigiScope 2022: training_data.csv (one row per patient) + training_data/<id>_<location>[_<n>].wav."""

from __future__ import annotations

import os
import re
from pathlib import Path

from heartbeat.data.layouts.base import (
    Recording, _audio_names, _data_folder, _link_problem, _raise_problems, _read_table, _real, _required,
)

CIRCOR_CSV = "training_data.csv"
CIRCOR_AUDIO = "training_data"
CIRCOR_COLUMNS = ("Patient ID", "Recording locations:", "Murmur", "Murmur locations", "Outcome")
CIRCOR_MURMUR = ("Present", "Absent", "Unknown")
# <patient>_<location>.wav or <patient>_<location>_<n>.wav (a location recorded more than once).
_CIRCOR_FILE = re.compile(r"^(?P<patient>[^_]+)_(?P<location>[A-Za-z]+)(?:_(?P<n>\d+))?\.wav$")
_CIRCOR_EMPTY = ("", "nan")  # the csv writes a missing value as "nan"


def circor_label(murmur: str, murmur_locations: set[str], location: str) -> str:
    """A CirCor recording's label from its patient's `Murmur` and `Murmur locations` and its own location.

    Unknown patient -> "unknown"; murmur present and heard at this location -> "present";
    otherwise (no murmur, or a murmur heard elsewhere) -> "absent".
    """
    if murmur == "Unknown":
        return "unknown"
    if murmur == "Present" and location in murmur_locations:
        return "present"
    return "absent"


def _locations(text: str) -> set[str]:
    """`AV+PV+MV` -> {"AV", "PV", "MV"}; empty or nan -> empty set."""
    if text in _CIRCOR_EMPTY:
        return set()
    return {part.strip() for part in text.split("+") if part.strip()}


def read_circor2022(data_dir: str | os.PathLike) -> list[Recording]:
    """CirCor 2022: one row per patient in training_data.csv, recordings in training_data/.

    Every `<patient>_<location>[_<n>].wav` is labelled with `circor_label`; group = the patient;
    extra: location, outcome. Other files (.hea, .tsv, .txt) are ignored. A file of an unlisted
    patient or location, a patient without recordings, a duplicate patient or a Murmur value
    other than Present/Absent/Unknown is a problem.
    """
    root = _data_folder(data_dir)
    real_root = _real(root)
    csv_path = _required(root, real_root, CIRCOR_CSV, "circor2022")
    audio_dir = _required(root, real_root, CIRCOR_AUDIO, "circor2022", folder=True)
    _, rows = _read_table(csv_path, CIRCOR_COLUMNS)
    patients, lines, problems = _circor_patients(rows)
    recordings = _circor_recordings(audio_dir, real_root, patients, lines, problems)
    recorded = {recording.group for recording in recordings}
    problems += [f"{CIRCOR_CSV} line {lines[patient]} ({patient}): no recordings in {CIRCOR_AUDIO}/"
                 for patient in patients if patient not in recorded]
    _raise_problems(root, problems)
    return recordings


def _circor_patients(rows: list[tuple[int, dict[str, str]]]
                     ) -> tuple[dict[str, dict[str, str]], dict[str, int], list[str]]:
    """(usable rows by patient, every named patient's line, problems) from training_data.csv's rows."""
    problems: list[str] = []
    patients: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    for line, row in rows:
        patient, murmur = row["Patient ID"], row["Murmur"]
        where = f"{CIRCOR_CSV} line {line} ({patient or 'empty Patient ID'})"
        if not patient:
            problems.append(f"{where}: empty Patient ID")
        elif patient in lines:
            problems.append(f"{where}: duplicate of line {lines[patient]}")
        elif murmur not in CIRCOR_MURMUR:
            problems.append(f"{where}: Murmur {murmur!r} is not one of {', '.join(CIRCOR_MURMUR)}")
            lines[patient] = line
        else:
            patients[patient], lines[patient] = row, line
    return patients, lines, problems


def _circor_recordings(audio_dir: Path, real_root: Path, patients: dict[str, dict[str, str]], lines: dict[str, int],
                       problems: list[str]) -> list[Recording]:
    """The recordings of training_data/ whose patient and location the csv lists; the others go to `problems`."""
    recordings: list[Recording] = []
    for name in sorted(_audio_names(audio_dir)):
        where = f"{CIRCOR_AUDIO}/{name}"
        match = _CIRCOR_FILE.match(name)
        row = patients.get(match["patient"]) if match else None
        if not match:
            problems.append(f"{where}: name is not <patient>_<location>[_<n>].wav")
        elif row is None:
            if match["patient"] not in lines:  # a patient whose row has its own problem is not reported twice
                problems.append(f"{where}: patient {match['patient']} has no row in {CIRCOR_CSV}")
        elif match["location"] not in _locations(row["Recording locations:"]):
            problems.append(f"{where}: location {match['location']} is not among the patient's recording "
                            f"locations ({row['Recording locations:'] or 'none'})")
        else:
            path = audio_dir / name
            problem = _link_problem(real_root, path)
            if problem:
                problems.append(f"{where}: {problem}")
                continue
            label = circor_label(row["Murmur"], _locations(row["Murmur locations"]), match["location"])
            recordings.append(Recording(path=path, label=label, group=match["patient"], source=where,
                                        extra={"location": match["location"], "outcome": row["Outcome"]}))
    return recordings
