"""The layouts of no particular collection: class folders (`DIR/<class>/**/*.wav`) and `DIR/labels.csv`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from heartbeat.data.layouts.base import (
    _MAX_LISTED, AUDIO_SUFFIX, LayoutError, Recording, _data_folder, _leaves, _link_problem, _raise_problems,
    _read_table, _real, _relative_path, _required, _visible_entries, label_problem,
)

LABELS_CSV = "labels.csv"
LABELS_COLUMNS = ("file", "label")  # plus an optional "patient"; any other column is kept as extra
PATIENT_COLUMN = "patient"


# ---------------------------------------------------------------- folders

def compile_group_regex(text: str) -> tuple[re.Pattern, str | int]:
    """`--group-regex` text -> (pattern, the group holding the patient: "patient", else 1)."""
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise LayoutError(f"--group-regex: {text!r} is not a regular expression ({error})") from None
    if PATIENT_COLUMN in pattern.groupindex:
        return pattern, PATIENT_COLUMN
    if pattern.groups:
        return pattern, 1
    raise LayoutError(f"--group-regex: {text!r} has no group; mark the patient id with (?P<patient>...) or (...)")


def read_folders(data_dir: str | os.PathLike, group_regex: str | None = None) -> list[Recording]:
    """`DIR/<class>/**/*.wav`: label = the top folder's name, at any depth below it.

    Group = the recording, or, with `group_regex`, the patient id it finds (re.search) in each
    file name; a file name it does not match is a problem. Symbolic links to folders are not
    followed (a link inside would count files twice, one outside leaves the data folder);
    .wav files directly in DIR have no class and are a problem. Sorted by source.
    """
    root = _data_folder(data_dir)
    real_root = _real(root)
    pattern, patient_group = compile_group_regex(group_regex) if group_regex is not None else (None, None)
    problems: list[str] = []
    files = _class_files(root, real_root, problems)
    if not files and not problems:
        raise LayoutError(f"{root}: no class folders holding {AUDIO_SUFFIX} files (expected DIR/<class>/**/*.wav)")
    recordings, unmatched = _grouped(files, root, real_root, pattern, patient_group, problems)
    if unmatched:
        problems.append(f"--group-regex {group_regex!r} finds no patient id in {len(unmatched)} file name(s): "
                        + ", ".join(unmatched[:_MAX_LISTED]) + (", ..." if len(unmatched) > _MAX_LISTED else ""))
    _raise_problems(root, problems)
    return sorted(recordings, key=lambda recording: recording.source)


def _class_files(root: Path, real_root: Path, problems: list[str]) -> list[tuple[str, Path]]:
    """(label, path) of every .wav below a usable class folder of root; what cannot be used goes to `problems`."""
    files: list[tuple[str, Path]] = []
    for entry in sorted(_visible_entries(root), key=lambda entry: entry.name):
        if entry.is_symlink() and entry.is_dir():
            problems.append(f"{entry.name}/: {_folder_link_problem(real_root, Path(entry.path))}")
        elif entry.is_dir(follow_symlinks=False):
            class_files = _audio_below(root, Path(entry.path), problems)
            problem = label_problem(entry.name)
            if class_files and problem:
                problems.append(f"{entry.name}/: {problem}")
            elif class_files:
                files += [(entry.name, path) for path in class_files]
        elif entry.name.lower().endswith(AUDIO_SUFFIX):
            problems.append(f"{entry.name}: not inside a class folder (DIR/<class>/...)")
    return files


def _grouped(files: list[tuple[str, Path]], root: Path, real_root: Path, pattern: re.Pattern | None,
             patient_group: str | int | None, problems: list[str]) -> tuple[list[Recording], list[str]]:
    """(recordings, sources whose name `pattern` finds no patient in): each file once, inside the data folder."""
    recordings: list[Recording] = []
    unmatched: list[str] = []
    claimed: dict[Path, str] = {}
    for label, path in files:
        source = path.relative_to(root).as_posix()
        problem = _link_problem(real_root, path)
        if problem:
            problems.append(f"{source}: {problem}")
            continue
        real = _real(path)
        if real in claimed:
            problems.append(f"{source}: the same file as {claimed[real]}")
            continue
        claimed[real] = source
        group = source
        if pattern is not None:
            match = pattern.search(path.name)
            group = match[patient_group] if match else None
            if not group:
                unmatched.append(source)
                continue
        recordings.append(Recording(path=path, label=label, group=group, source=source, extra={}))
    return recordings, unmatched


def _folder_link_problem(real_root: Path, path: Path) -> str:
    if _leaves(real_root, path):
        return "refused, a symbolic link leading outside the data folder"
    return "a symbolic link to a folder, not followed (its files would be counted twice)"


def _audio_below(root: Path, class_dir: Path, problems: list[str]) -> list[Path]:
    """Visible .wav files at any depth below class_dir, without following folder links; sorted."""
    found: list[Path] = []

    def unreadable(error: OSError) -> None:
        problems.append(f"{Path(error.filename).relative_to(root).as_posix()}/: cannot be listed ({error.strerror})")

    for folder, dirs, names in os.walk(class_dir, onerror=unreadable):  # followlinks=False
        folder = Path(folder)
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in list(dirs):
            if (folder / name).is_symlink():
                problems.append(f"{(folder / name).relative_to(root).as_posix()}/: "
                                f"{_folder_link_problem(_real(root), folder / name)}")
                dirs.remove(name)
        found += [folder / name for name in sorted(names)
                  if not name.startswith(".") and name.lower().endswith(AUDIO_SUFFIX)]
    return found


# ---------------------------------------------------------------- csv

def read_csv(data_dir: str | os.PathLike) -> list[Recording]:
    """`DIR/labels.csv` (file,label[,patient], more columns kept as extra); paths relative to DIR."""
    return _read_labels_csv(data_dir)[0]


def _read_labels_csv(data_dir: str | os.PathLike) -> tuple[list[Recording], bool]:
    """(recordings, whether the csv has a patient column). An empty label means unlabelled.

    Absolute paths, `..` and symbolic links leading out of DIR are refused; missing files,
    duplicate rows, two rows naming one file, empty patients and unusable labels are problems.
    """
    root = _data_folder(data_dir)
    real_root = _real(root)
    csv_path = _required(root, real_root, LABELS_CSV, "csv")
    columns, rows = _read_table(csv_path, LABELS_COLUMNS)
    has_patient = PATIENT_COLUMN in columns
    extra_columns = [name for name in columns if name and name not in (*LABELS_COLUMNS, PATIENT_COLUMN)]
    problems: list[str] = []
    recordings: list[Recording] = []
    seen: dict[str, int] = {}
    claimed: dict[Path, int] = {}
    for line, row in rows:
        text, label, patient = row["file"], row["label"], row.get(PATIENT_COLUMN, "")
        where = f"line {line} ({text or 'empty file'})"
        relative = _relative_path(text) if text else None
        path = root / relative if relative is not None else None
        if not text:
            problems.append(f"{where}: empty file")
        elif relative is None:
            problems.append(f"{where}: refused, the path leaves the data folder")
        elif relative.as_posix() in seen:
            problems.append(f"{where}: duplicate of line {seen[relative.as_posix()]}")
        elif _leaves(real_root, path):
            problems.append(f"{where}: refused, a symbolic link leading outside the data folder")
        elif not path.is_file():
            problems.append(f"{where}: no such file")
        elif _real(path) in claimed:
            problems.append(f"{where}: names the same file as line {claimed[_real(path)]}")
        elif label and label_problem(label):
            problems.append(f"{where}: {label_problem(label)}")
        elif has_patient and not patient:
            problems.append(f"{where}: empty {PATIENT_COLUMN}")
        else:
            source = relative.as_posix()
            claimed[_real(path)] = line
            recordings.append(Recording(path=path, label=label or None, group=patient if has_patient else source,
                                        source=source, extra={name: row[name] for name in extra_columns}))
        if relative is not None:
            seen.setdefault(relative.as_posix(), line)
    _raise_problems(csv_path, problems)
    return recordings, has_patient
