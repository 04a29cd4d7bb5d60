"""Dataset layouts: read any supported heart-sound collection into one kind of record.

Each public collection lays out its files and labels its own way. One reader per layout turns
a data folder into a list of `Recording`s (path, label or None, group, source, the layout's own
extra columns), so the stages need not know which collection they run on:

- pascal-b       PASCAL 2011 Dataset B: `set_b.csv` + `set_b/`, read by heartbeat.data.dataset
                 (the download's name quirks, the patient id from the file name). Group: patient.
- pascal-a       PASCAL 2011 Dataset A (iStethoscope, 44.1 kHz): `set_a.csv` + `set_a/`; names
                 matched exactly. Group: the recording (no patient is given).
- physionet2016  PhysioNet/CinC 2016: `training-a/` ... `training-f/`, each with a header-less
                 `REFERENCE.csv` (`a0001,-1`: -1 normal, 1 abnormal) and `a0001.wav` (2 kHz).
                 Group: the recording; the subset letter is kept (leave-one-source-out splits).
- circor2022     CirCor DigiScope (PhysioNet 2022): `training_data.csv` (one row per patient) +
                 `training_data/<id>_<location>[_<n>].wav` (4 kHz). Label per recording:
                 present / absent / unknown (`circor_label`). Group: the patient.
- folders        `DIR/<class>/**/*.wav`, as fastai's and Keras's from-folder loaders. Group: the
                 recording, or the patient a `group_regex` reads from the file name.
- csv            `DIR/labels.csv` with the header `file,label[,patient]` (more columns are kept as
                 extra). Group: the patient column, else the recording.

Every reader collects all the problems it finds and raises one LayoutError naming the file and
each problem. A reader only reads: it never writes, and it never returns a path that leaves the
data folder (`..`, absolute paths, symbolic links pointing out are refused). Hidden files and
folders (`.DS_Store`, macOS's `._name.wav` copies, `.ipynb_checkpoints/`) are not recordings
and are skipped wherever a reader lists a folder.

Only the standard library and heartbeat.data.dataset are imported: the stages and predict import
this module, and must stay quick to start.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from heartbeat.data import dataset

FORMATS = ("pascal-b", "pascal-a", "physionet2016", "circor2022", "folders", "csv")
AUDIO_SUFFIX = ".wav"  # every supported collection ships WAV files

PASCAL_A_CSV = "set_a.csv"
PASCAL_A_AUDIO = "set_a"
PASCAL_A_CLASSES = ("artifact", "extrahls", "murmur", "normal")
PHYSIONET_REFERENCE = "REFERENCE.csv"
PHYSIONET_LABELS = {"-1": "normal", "1": "abnormal"}
CIRCOR_CSV = "training_data.csv"
CIRCOR_AUDIO = "training_data"
CIRCOR_COLUMNS = ("Patient ID", "Recording locations:", "Murmur", "Murmur locations", "Outcome")
CIRCOR_MURMUR = ("Present", "Absent", "Unknown")
LABELS_CSV = "labels.csv"
LABELS_COLUMNS = ("file", "label")  # plus an optional "patient"; any other column is kept as extra
PATIENT_COLUMN = "patient"

DROP = "drop"  # --label-map's word for "remove recordings of this label"
# A label becomes a class name in model.json, a column of predictions.csv and a word of
# --label-map, so it must be short, printable, free of the map's separators, and never look
# like a path (a later stage may name files after it).
_MAX_LABEL_LENGTH = 64
_LABEL_FORBIDDEN = set("/\\,=")
_PHYSIONET_SUBSET = re.compile(r"^training-(?P<subset>[a-z])$")
# A record name is a plain file stem (a0001): nothing in REFERENCE.csv may name a path.
_PHYSIONET_RECORD = re.compile(r"^[A-Za-z0-9_-]+$")
# <patient>_<location>.wav or <patient>_<location>_<n>.wav (a location recorded more than once).
_CIRCOR_FILE = re.compile(r"^(?P<patient>[^_]+)_(?P<location>[A-Za-z]+)(?:_(?P<n>\d+))?\.wav$")
_CIRCOR_EMPTY = ("", "nan")  # the csv writes a missing value as "nan"
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
    try:
        return {entry.name for entry in os.scandir(folder)
                if not entry.name.startswith(".") and entry.name.lower().endswith(AUDIO_SUFFIX)}
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


# ---------------------------------------------------------------- pascal-b

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


# ---------------------------------------------------------------- pascal-a

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
    problems += [f"{PASCAL_A_AUDIO}/{name}: no row in {PASCAL_A_CSV}" for name in sorted(on_disk - set(claimed))]
    _raise_problems(csv_path, problems)
    return recordings


# ---------------------------------------------------------------- physionet2016

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


# ---------------------------------------------------------------- circor2022

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

    recordings: list[Recording] = []
    recorded: set[str] = set()
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
            recorded.add(match["patient"])
    problems += [f"{CIRCOR_CSV} line {lines[patient]} ({patient}): no recordings in {CIRCOR_AUDIO}/"
                 for patient in patients if patient not in recorded]
    _raise_problems(root, problems)
    return recordings


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
    files: list[tuple[str, Path]] = []  # (label, path)
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
    if not files and not problems:
        raise LayoutError(f"{root}: no class folders holding {AUDIO_SUFFIX} files (expected DIR/<class>/**/*.wav)")

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
    if unmatched:
        problems.append(f"--group-regex {group_regex!r} finds no patient id in {len(unmatched)} file name(s): "
                        + ", ".join(unmatched[:_MAX_LISTED]) + (", ..." if len(unmatched) > _MAX_LISTED else ""))
    _raise_problems(root, problems)
    return sorted(recordings, key=lambda recording: recording.source)


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    try:
        return [entry for entry in os.scandir(folder) if not entry.name.startswith(".")]
    except OSError as error:
        raise LayoutError(f"{folder}: cannot be listed ({error.strerror})") from None


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


# ---------------------------------------------------------------- choosing a layout

READERS = {
    "pascal-b": read_pascal_b,
    "pascal-a": read_pascal_a,
    "physionet2016": read_physionet2016,
    "circor2022": read_circor2022,
    "folders": read_folders,
    "csv": read_csv,
}
_PATIENT_LAYOUTS = ("pascal-b", "circor2022")  # the layouts whose data always name the patient
_LOOKED_FOR = (f"{dataset.CSV_NAME}, {PASCAL_A_CSV}, training-?/{PHYSIONET_REFERENCE}, "
               f"{CIRCOR_CSV} with {CIRCOR_AUDIO}/, {LABELS_CSV}, or class folders holding {AUDIO_SUFFIX} files")


def detect_format(data_dir: str | os.PathLike) -> tuple[str, str]:
    """(format, one-line reason) from the folder's marker files; LayoutError if none or several.

    Markers: set_b.csv, set_a.csv, training-?/REFERENCE.csv, training_data.csv with training_data/,
    labels.csv; with none of them, sub-folders holding .wav files mean the folders layout.
    """
    root = _data_folder(data_dir)
    found: list[tuple[str, str]] = []
    # A marker that exists but is not a file (a folder, a broken link) still names the layout: its reader says
    # what is wrong.
    if os.path.lexists(root / dataset.CSV_NAME):
        found.append(("pascal-b", f"found {dataset.CSV_NAME}"))
    if os.path.lexists(root / PASCAL_A_CSV):
        found.append(("pascal-a", f"found {PASCAL_A_CSV}"))
    references = sorted(entry.name for entry in _visible_entries(root)
                        if _PHYSIONET_SUBSET.match(entry.name) and (Path(entry.path) / PHYSIONET_REFERENCE).is_file())
    if references:
        found.append(("physionet2016", f"found {PHYSIONET_REFERENCE} in {', '.join(references)}"))
    if (root / CIRCOR_CSV).is_file() and (root / CIRCOR_AUDIO).is_dir():
        found.append(("circor2022", f"found {CIRCOR_CSV} and {CIRCOR_AUDIO}/"))
    if os.path.lexists(root / LABELS_CSV):
        found.append(("csv", f"found {LABELS_CSV}"))
    if len(found) > 1:
        markers = " and ".join(f"{reason.removeprefix('found ')} ({layout})" for layout, reason in found)
        raise LayoutError(f"{root}: ambiguous layout: found {markers}; choose one with --format")
    if found:
        return found[0]
    classes = _class_folders(root)
    if classes:
        shown = ", ".join(name + "/" for name in classes[:_MAX_LISTED])
        shown += ", ..." if len(classes) > _MAX_LISTED else ""
        return "folders", f"no marker file; found class folders holding {AUDIO_SUFFIX} files: {shown}"
    raise LayoutError(f"{root}: no known layout (looked for {_LOOKED_FOR})")


def _class_folders(root: Path) -> list[str]:
    """Visible sub-folders with a .wav file somewhere below (each walk stops at its first one)."""
    classes = []
    for entry in sorted(_visible_entries(root), key=lambda entry: entry.name):
        if not entry.is_dir(follow_symlinks=False):
            continue
        for _, dirs, names in os.walk(entry.path):
            dirs[:] = [name for name in dirs if not name.startswith(".")]
            if any(not name.startswith(".") and name.lower().endswith(AUDIO_SUFFIX) for name in names):
                classes.append(entry.name)
                break
    return classes


# ---------------------------------------------------------------- labels

def parse_label_map(text: str) -> dict[str, str | None]:
    """`--label-map` text `old=new,old2=drop` -> {"old": "new", "old2": None}; None means drop.

    Malformed text raises LayoutError naming --label-map and every bad entry.
    """
    problems: list[str] = []
    mapping: dict[str, str | None] = {}
    entries = [entry.strip() for entry in text.split(",")]
    for entry in entries:
        old, separator, new = (part.strip() for part in entry.partition("="))
        if not separator or "=" in new or not old or not new:
            problems.append(f"{entry!r} is not old=new or old={DROP}")
        elif old in mapping:
            problems.append(f"{old!r} is mapped twice")
        elif new != DROP and new.lower() == DROP:  # a class called DROP is surely a mistyped drop
            problems.append(f"{entry!r}: write {DROP!r} in lowercase to drop a label ({new!r} would be a class)")
        elif new != DROP and label_problem(new):
            problems.append(label_problem(new))
        else:
            mapping[old] = None if new == DROP else new
    if problems:
        raise LayoutError(f"--label-map: {'; '.join(problems)}")
    return mapping


def check_label_map(mapping: dict[str, str | None], labels, where, noun: str = "recording") -> None:
    """LayoutError if the map names a label that `labels` (of `where`) lack: a typo would silently change nothing."""
    labels = sorted(set(labels))
    unknown = sorted(set(mapping) - set(labels))
    if unknown:
        raise LayoutError(f"--label-map: {where} has no {noun} labelled {', '.join(unknown)} "
                          f"(its labels: {', '.join(labels) or 'none'})")


def apply_label_map(recordings: list[Recording], mapping: dict[str, str | None]) -> list[Recording]:
    """Recordings with their labels renamed by `mapping`; those mapped to None are left out."""
    mapped = []
    for recording in recordings:
        if recording.label is None or recording.label not in mapping:
            mapped.append(recording)
        elif mapping[recording.label] is not None:
            mapped.append(dataclasses.replace(recording, label=mapping[recording.label]))
    return mapped


def case_clashes(classes: list[str], where) -> list[str]:
    """One warning line per group of classes that differ only in case (`Murmur`, `murmur`): likely one class.

    They stay distinct classes (a label is case-sensitive); --label-map can merge them.
    """
    by_folded: dict[str, list[str]] = {}
    for name in classes:
        by_folded.setdefault(name.casefold(), []).append(name)
    return [f"{where}: labels {', '.join(repr(name) for name in sorted(names))} differ only in case; they stay "
            f"separate classes (merge them with --label-map {sorted(names)[1]}={sorted(names)[0]})"
            for names in by_folded.values() if len(names) > 1]


def normal_class(classes: list[str]) -> str | None:
    """The class the heart-problem figures compare against: "normal" if the data has it."""
    return "normal" if "normal" in classes else None


def read_recordings(data_dir: str | os.PathLike, format: str = "auto", *,
                    label_map: dict[str, str | None] | None = None, group_regex: str | None = None) -> LayoutResult:
    """A data folder in any layout (`format` one of FORMATS, or "auto" to detect it), label map applied.

    A label map naming a label the data does not have is refused (a typo would silently change
    nothing); group_regex applies to the folders layout only.
    """
    if format == "auto":
        format, reason = detect_format(data_dir)
    elif format in FORMATS:
        reason = "chosen with --format"
    else:
        raise LayoutError(f"--format: unknown layout {format!r} (expected auto or one of {', '.join(FORMATS)})")
    if group_regex is not None and format != "folders":
        raise LayoutError(f"--group-regex: only the folders layout reads patient ids from file names, not {format}")

    if format == "folders":
        recordings, groups_are_patients = read_folders(data_dir, group_regex), group_regex is not None
    elif format == "csv":
        recordings, groups_are_patients = _read_labels_csv(data_dir)
    else:
        recordings, groups_are_patients = READERS[format](data_dir), format in _PATIENT_LAYOUTS

    if label_map:
        labels = [recording.label for recording in recordings if recording.label is not None]
        check_label_map(label_map, labels, data_dir)
        recordings = apply_label_map(recordings, label_map)
    classes = sorted({recording.label for recording in recordings if recording.label is not None})
    return LayoutResult(format=format, reason=reason, recordings=recordings,
                        groups_are_patients=groups_are_patients, classes=classes)
