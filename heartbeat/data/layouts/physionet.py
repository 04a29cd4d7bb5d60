"""PhysioNet/CinC 2016: training-<x>/REFERENCE.csv (`a0001,-1`) beside each subset's .wav files."""

from __future__ import annotations

import os
import re
from pathlib import Path

from heartbeat.data.layouts.base import (
    AUDIO_SUFFIX, LayoutError, Recording, _audio_names, _data_folder, _leaves, _link_problem, _raise_problems,
    _read_csv, _real,
)

PHYSIONET_REFERENCE = "REFERENCE.csv"
PHYSIONET_LABELS = {"-1": "normal", "1": "abnormal"}
_PHYSIONET_SUBSET = re.compile(r"^training-(?P<subset>[a-z])$")
# A record name is a plain file stem (a0001): nothing in REFERENCE.csv may name a path.
_PHYSIONET_RECORD = re.compile(r"^[A-Za-z0-9_-]+$")


def read_physionet2016(data_dir: str | os.PathLike) -> list[Recording]:
    """PhysioNet/CinC 2016: each training-<x>/REFERENCE.csv row (record,-1|1) and its <record>.wav.

    Labels: -1 -> normal, 1 -> abnormal. Group = the recording; extra["subset"] = the letter.
    Cells after the second are ignored (some copies add a signal-quality column).
    """
    root = _data_folder(data_dir)
    real_root = _real(root)
    subsets = sorted(path for path in root.iterdir() if _PHYSIONET_SUBSET.match(path.name) and path.is_dir())
    if not any((folder / PHYSIONET_REFERENCE).is_file() for folder in subsets):
        raise LayoutError(f"{root}: no training-<letter>/{PHYSIONET_REFERENCE} (a physionet2016 data folder holds "
                          "training-a/ ... training-f/, each with its REFERENCE.csv)")
    problems: list[str] = []
    recordings: list[Recording] = []
    for folder in subsets:
        reference = folder / PHYSIONET_REFERENCE
        if not reference.is_file():
            problems.append(f"{folder.name}/: no {PHYSIONET_REFERENCE}")
            continue
        if _leaves(real_root, folder) or _leaves(real_root, reference):
            problems.append(f"{folder.name}/: refused, a symbolic link leading outside the data folder")
            continue
        subset = _PHYSIONET_SUBSET.match(folder.name)["subset"]
        rows = _read_csv(reference)
        recordings += _physionet_subset(folder, subset, rows, real_root, problems)
    _raise_problems(root, problems)
    return recordings


def _physionet_subset(folder: Path, subset: str, rows: list[tuple[int, list[str]]], real_root: Path,
                      problems: list[str]) -> list[Recording]:
    on_disk = _audio_names(folder)
    seen: dict[str, int] = {}
    recordings = []
    for line, cells in rows:
        record = cells[0]
        where = f"{folder.name}/{PHYSIONET_REFERENCE} line {line} ({record})"
        if len(cells) < 2:
            problems.append(f"{where}: expected <record>,<-1 or 1>")
        elif not _PHYSIONET_RECORD.match(record):
            problems.append(f"{where}: not a record name (letters, digits, - and _ only)")
        elif record in seen:
            problems.append(f"{where}: duplicate of line {seen[record]}")
        elif cells[1] not in PHYSIONET_LABELS:
            problems.append(f"{where}: label {cells[1]!r} is neither -1 (normal) nor 1 (abnormal)")
        elif record + AUDIO_SUFFIX not in on_disk:
            problems.append(f"{where}: no {record}{AUDIO_SUFFIX} in {folder.name}/")
        else:
            path = folder / (record + AUDIO_SUFFIX)
            problem = _link_problem(real_root, path)
            if problem:
                problems.append(f"{folder.name}/{path.name}: {problem}")
            else:
                source = f"{folder.name}/{path.name}"
                recordings.append(Recording(path=path, label=PHYSIONET_LABELS[cells[1]], group=source, source=source,
                                            extra={"subset": subset}))
        seen.setdefault(record, line)
    listed = {record + AUDIO_SUFFIX for record in seen}
    problems += [f"{folder.name}/{name}: no row in {PHYSIONET_REFERENCE}" for name in sorted(on_disk - listed)]
    return recordings
