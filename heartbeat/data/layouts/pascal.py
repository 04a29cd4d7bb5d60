"""PASCAL 2011 heart sounds: Dataset B (through heartbeat.data.dataset) and Dataset A (set_a.csv + set_a/)."""

from __future__ import annotations

import csv
import os
from pathlib import PurePosixPath

from heartbeat.data import dataset
from heartbeat.data.layouts.base import (
    LayoutError, Recording, _audio_names, _data_folder, _leaves, _link_problem, _raise_problems, _read_table, _real,
    _relative_path, _required,
)

PASCAL_A_CSV = "set_a.csv"
PASCAL_A_AUDIO = "set_a"
PASCAL_A_CLASSES = ("artifact", "extrahls", "murmur", "normal")


def read_pascal_b(data_dir: str | os.PathLike) -> list[Recording]:
    """Dataset B through heartbeat.data.dataset.read_dataset, unchanged; group = the patient id."""
    root = _data_folder(data_dir)
    csv_path = root / dataset.CSV_NAME
    try:
        rows = dataset.read_dataset(root)
    except dataset.DatasetError as error:
        raise LayoutError(str(error)) from None
    except UnicodeDecodeError:
        raise LayoutError(f"{csv_path}: not a UTF-8 text file") from None
    except (csv.Error, OSError) as error:
        raise LayoutError(f"{csv_path}: cannot be read ({error})") from None
    real_root = _real(root)
    recordings, problems = [], []
    for row in rows:
        source = row.path.relative_to(root).as_posix()
        if _leaves(real_root, row.path):
            problems.append(f"{source}: refused, a symbolic link leading outside the data folder")
            continue
        recordings.append(Recording(
            path=row.path, label=row.label, group=str(row.patient_id), source=source,
            extra={"sublabel": row.sublabel or "", "timestamp": row.timestamp, "position": row.position}))
    _raise_problems(csv_path, problems)
    return recordings


def read_pascal_a(data_dir: str | os.PathLike) -> list[Recording]:
    """Dataset A: every row of set_a.csv matched exactly to a file in set_a/; group = the recording.

    Rows naming no file, files without a row, duplicates and labels other than PASCAL_A_CLASSES
    (or empty, for the unlabelled `Aunlabelledtest__` recordings) are problems.
    """
    root = _data_folder(data_dir)
    real_root = _real(root)
    csv_path = _required(root, real_root, PASCAL_A_CSV, "pascal-a")
    audio_dir = _required(root, real_root, PASCAL_A_AUDIO, "pascal-a", folder=True)
    _, rows = _read_table(csv_path, ("fname", "label", "sublabel"))
    on_disk = _audio_names(audio_dir)
    recordings, claimed, problems = _pascal_a_rows(rows, on_disk, audio_dir, real_root)
    problems += [f"{PASCAL_A_AUDIO}/{name}: no row in {PASCAL_A_CSV}" for name in sorted(on_disk - set(claimed))]
    _raise_problems(csv_path, problems)
    return recordings


def _pascal_a_rows(rows: list[tuple[int, dict[str, str]]], on_disk: set[str], audio_dir, real_root
                   ) -> tuple[list[Recording], dict[str, int], list[str]]:
    """set_a.csv's rows matched to set_a/'s files: (recordings, {file name: first line naming it}, problems)."""
    problems: list[str] = []
    recordings: list[Recording] = []
    seen: dict[str, int] = {}
    claimed: dict[str, int] = {}
    for line, row in rows:
        fname, label, sublabel = row["fname"], row["label"], row["sublabel"]
        where = f"line {line} ({fname or 'empty fname'})"
        relative = _relative_path(fname) if fname else None
        # The file a row names, even a row with another problem: it then has a row, and is not reported twice.
        named = relative.name if relative is not None and relative.name in on_disk else None
        if not fname:
            problems.append(f"{where}: empty fname")
        elif fname in seen:
            problems.append(f"{where}: duplicate of line {seen[fname]}")
        elif label and label not in PASCAL_A_CLASSES:
            expected = ", ".join(PASCAL_A_CLASSES)
            problems.append(f"{where}: unknown label {label!r} (expected one of {expected} or empty)")
        elif relative is None:
            problems.append(f"{where}: refused, the path leaves the data folder")
        elif relative.parent not in (PurePosixPath(PASCAL_A_AUDIO), PurePosixPath(".")):
            problems.append(f"{where}: not inside {PASCAL_A_AUDIO}/")
        elif relative.name not in on_disk:
            problems.append(f"{where}: no file of that exact name in {PASCAL_A_AUDIO}/")
        elif relative.name in claimed:
            problems.append(f"{where}: names the same file as line {claimed[relative.name]}")
        else:
            path = audio_dir / relative.name
            problem = _link_problem(real_root, path)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                source = f"{PASCAL_A_AUDIO}/{relative.name}"
                recordings.append(Recording(path=path, label=label or None, group=source, source=source,
                                            extra={"sublabel": sublabel}))
        seen.setdefault(fname, line)
        if named:
            claimed.setdefault(named, line)
    return recordings, claimed, problems
