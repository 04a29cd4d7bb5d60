"""What every layout reader shares: the record types, LayoutError, the folder and csv checks, label_problem.

A reader only reads: it never writes, and it never returns a path that leaves the data folder
(`..`, absolute paths, symbolic links pointing out are refused). Standard library only.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

FORMATS = ("pascal-b", "pascal-a", "physionet2016", "circor2022", "folders", "csv")
AUDIO_SUFFIX = ".wav"  # every supported collection ships WAV files

# A label becomes a class name in model.json, a column of predictions.csv and a word of
# --label-map, so it must be short, printable, free of the map's separators, and never look
# like a path (a later stage may name files after it).
_MAX_LABEL_LENGTH = 64
_LABEL_FORBIDDEN = set("/\\,=")
_MAX_LISTED = 12  # problems named one by one in an error message before "and N more", as dataset.py


class LayoutError(ValueError):
    """A data folder that cannot be read in the asked layout; one line naming the file and every problem."""


@dataclass(frozen=True)
class Recording:
    path: Path  # the audio file, inside the data folder
    label: str | None  # None for an unlabelled recording
    group: str  # the patient where the layout knows it, else the recording itself (its source)
    source: str  # the recording's name in reports: its path relative to the data folder
    extra: dict[str, str] = field(default_factory=dict)  # the layout's own columns, the same keys for every recording


@dataclass(frozen=True)
class LayoutResult:
    format: str  # one of FORMATS
    reason: str  # one line: why this format ("found set_b.csv", "chosen with --format")
    recordings: list[Recording]
    groups_are_patients: bool  # False: each group is one recording (the layout names no patient)
    classes: list[str]  # sorted labels of the labelled recordings, after the label map


# ---------------------------------------------------------------- shared checks

def _problems_error(where: str | Path, problems: list[str]) -> LayoutError:
    listed = "; ".join(problems[:_MAX_LISTED])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return LayoutError(f"{where}: {len(problems)} problem(s): {listed}{more}")


def _raise_problems(where: str | Path, problems: list[str]) -> None:
    if problems:
        raise _problems_error(where, problems)


def _data_folder(data_dir: str | os.PathLike) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LayoutError(f"{data_dir}: no such data folder")
    return data_dir


def _real(path: Path) -> Path:
    # os.path.realpath, unlike Path.resolve on Python < 3.13, does not raise on a symlink loop.
    return Path(os.path.realpath(path))


def _leaves(real_root: Path, path: Path) -> bool:
    """True if `path`, every symbolic link on the way followed, is not inside `real_root`."""
    return not _real(path).is_relative_to(real_root)


def _required(root: Path, real_root: Path, name: str, layout: str, *, folder: bool = False) -> Path:
    """root/name, which the layout needs as a file (or a folder), and which must not lead outside the data folder."""
    path = root / name
    if not (path.is_dir() if folder else path.is_file()):
        what = f"the folder {name}/" if folder else "it"
        raise LayoutError(f"{path}: not found (the {layout} layout needs {what})")
    if _leaves(real_root, path):
        raise LayoutError(f"{path}: refused, a symbolic link leading outside the data folder")
    return path


def _audio_names(folder: Path) -> set[str]:
    """Names of the visible .wav entries of one folder (links included; they are checked later)."""
    return {entry.name for entry in _visible_entries(folder) if entry.name.lower().endswith(AUDIO_SUFFIX)}


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    try:
        return [entry for entry in os.scandir(folder) if not entry.name.startswith(".")]
    except OSError as error:
        raise LayoutError(f"{folder}: cannot be listed ({error.strerror})") from None


def _link_problem(real_root: Path, path: Path) -> str | None:
    """Why a listed audio file cannot be used, or None: it must stay inside the folder and exist."""
    if _leaves(real_root, path):
        return "refused, a symbolic link leading outside the data folder"
    if not path.is_file():
        return "not a readable file (a broken link or a folder)"
    return None


def _read_csv(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) for every non-blank row; a BOM is ignored."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = []
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    rows.append((reader.line_num, [cell.strip() for cell in cells]))
            return rows
    except UnicodeDecodeError:
        raise LayoutError(f"{path}: not a UTF-8 text file") from None
    except csv.Error as error:  # NUL bytes, a field over the csv module's size limit
        raise LayoutError(f"{path}: not a readable csv file ({error})") from None
    except OSError as error:
        raise LayoutError(f"{path}: cannot be read ({error.strerror})") from None


def _read_table(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A csv with a header: its column names and (line number, {column: cell}) per row."""
    rows = _read_csv(path)
    columns = rows[0][1] if rows else []
    missing = [name for name in required if name not in columns]
    if missing:
        raise LayoutError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns) or 'no header'})")
    table = [(line, {name: cells[i] if i < len(cells) else "" for i, name in enumerate(columns) if name})
             for line, cells in rows[1:]]
    return columns, table


def _relative_path(text: str) -> PurePosixPath | None:
    """A path written in a csv as a relative path inside the data folder, or None if it would leave it."""
    path = PurePosixPath(text.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", text) or not path.parts:
        return None
    return path


def label_problem(label: str) -> str | None:
    """Why `label` cannot be a class name, or None when it can."""
    if len(label) > _MAX_LABEL_LENGTH:
        return f"label {label[:20]!r}... is longer than {_MAX_LABEL_LENGTH} characters"
    if label.startswith(".") or not label.isprintable() or _LABEL_FORBIDDEN & set(label):
        return f"label {label!r} is not a usable class name (no / \\ , = or control characters, no leading dot)"
    return None


def first_label_problem(labels) -> str | None:
    """label_problem of the first label that is not a usable class name, or None when all are (a model's classes)."""
    return next(filter(None, map(label_problem, labels)), None)
