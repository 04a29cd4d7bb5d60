"""Read Dataset B (`set_b.csv` + `set_b/*.wav`) as the common download lays it out.

The download's csv names files that are not on disk: `set_b/Btraining_normal_103_..._B.wav`
is `set_b/normal__103_..._B.wav`, `Btraining_normal_noisynormal_...` is
`normal_noisynormal_...`, `Bunlabelledtest_101_...` is `Bunlabelledtest__101_...`. We
reconcile them by rule (never by fuzzy matching), and accept a csv whose names already match.
Every problem with the csv is collected and reported in one message.

The file name's tail `_<patient>_<timestamp>_<position>.wav` says who was recorded: one
patient has several recordings (positions A, B, C1, ...), which is why the honest split
groups recordings by patient.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from heartbeat.fileio import FileRefused, read_regular

CSV_NAME = "set_b.csv"
AUDIO_DIR = "set_b"
CLASSES = ("extrastole", "murmur", "normal")  # sorted, the order fastai's vocabulary uses
REQUIRED_COLUMNS = ("fname", "label", "sublabel")

# <anything>_<patient>_<timestamp>_<position>.wav; the position may hold an underscore (B_1).
_TAIL = re.compile(r"^(?P<prefix>.+?)_(?P<patient>\d+)_(?P<timestamp>\d+)_(?P<position>[A-Za-z0-9_]+)\.wav$")
_MAX_LISTED = 12  # problems named one by one in an error message before "and N more"
# Dataset B's csv is about 30 KB; a file far bigger is not one, and is not read into memory.
MAX_CSV_BYTES = 16 * 2**20
# Control characters other than tab and line ends: a file holding them is binary, not a text csv
# (and echoing them in an error message would garble the terminal).
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class DatasetError(ValueError):
    """The dataset folder or its csv is not usable; the message lists every problem."""


@dataclass(frozen=True)
class Recording:
    path: Path  # the wav on disk
    fname: str  # as written in the csv
    label: str | None  # None for the unlabelled test recordings
    sublabel: str | None  # noisynormal / noisymurmur, or None
    patient_id: int
    timestamp: str
    position: str
    duration_s: float | None = None  # filled by read_dataset(..., audio_info=True)
    sample_rate: int | None = None

    @property
    def name(self) -> str:
        return self.path.name


def disk_name_candidates(csv_name: str, label: str, sublabel: str) -> list[str]:
    """File names the csv's `fname` may stand for: itself, then the download's rule."""
    candidates = [csv_name]
    if csv_name.startswith("Bunlabelledtest_") and not csv_name.startswith("Bunlabelledtest__"):
        candidates.append("Bunlabelledtest__" + csv_name[len("Bunlabelledtest_"):])
    elif csv_name.startswith("Btraining_") and label:
        rest = csv_name[len("Btraining_"):]
        if rest.startswith(label + "_"):
            rest = rest[len(label) + 1:]
            if sublabel and rest.startswith(sublabel + "_"):
                rest = rest[len(sublabel) + 1:]
            candidates.append(f"{label}_{sublabel}_{rest}")
    return candidates


def parse_tail(file_name: str) -> tuple[int, str, str]:
    """(patient_id, timestamp, position) from `..._<patient>_<timestamp>_<position>.wav`."""
    match = _TAIL.match(file_name)
    if not match:
        raise ValueError("name does not end in _<patient>_<timestamp>_<position>.wav")
    return int(match["patient"]), match["timestamp"], match["position"]


def _safe_relative(fname: str) -> PurePosixPath | None:
    """The csv path as a relative path inside the data folder, or None if it would leave it."""
    path = PurePosixPath(fname.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", fname):
        return None
    return path


def read_dataset(data_dir: str | Path, *, audio_info: bool = False) -> list[Recording]:
    """All rows of `data_dir/set_b.csv` resolved to files in `data_dir/set_b/`.

    Raises DatasetError listing every unmatched row, file without a row, duplicate,
    unknown label, unsafe path or missing column. With audio_info, each recording's
    duration and sample rate are read from its header (None when unreadable).
    """
    data_dir = Path(data_dir)
    csv_path = data_dir / CSV_NAME
    audio_dir = data_dir / AUDIO_DIR
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: no such data folder (it should hold {CSV_NAME} and {AUDIO_DIR}/)")
    if not csv_path.is_file():
        problem = "not a regular file" if csv_path.exists() else "not found"
        raise DatasetError(f"{csv_path}: {problem} (the data folder should hold {CSV_NAME} and {AUDIO_DIR}/)")
    if not audio_dir.is_dir():
        raise DatasetError(f"{audio_dir}: not found (the data folder should hold {CSV_NAME} and {AUDIO_DIR}/)")

    columns, rows = _read_csv(csv_path)
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise DatasetError(
            f"{csv_path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns) or 'no header'})"
        )

    disk_files = {path.name for path in audio_dir.iterdir() if path.suffix.lower() == ".wav"}
    problems: list[str] = []
    recordings: list[Recording] = []
    seen_fnames: dict[str, int] = {}
    claimed_files: dict[str, int] = {}
    for line_number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"line {line_number} ({row['fname'] or 'empty fname'})"
        result = _row_recording(row, line_number, audio_dir, disk_files, seen_fnames, claimed_files)
        if isinstance(result, str):
            problems.append(f"{where}: {result}")
        else:
            recordings.append(result)
    problems += [f"{AUDIO_DIR}/{name}: no row in {CSV_NAME}" for name in sorted(disk_files - set(claimed_files))]
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DatasetError(f"{csv_path}: {len(problems)} problem(s): {listed}{more}")
    if audio_info:
        recordings = [_with_audio_info(recording) for recording in recordings]
    return recordings


def _row_recording(row: dict[str, str], line_number: int, audio_dir: Path, disk_files: set[str],
                   seen_fnames: dict[str, int], claimed_files: dict[str, int]) -> Recording | str:
    """The recording one csv row names, or what is wrong with the row (a phrase for the error list).

    Records the row's fname and file in seen_fnames / claimed_files, so that later rows naming
    them again are reported as duplicates.
    """
    fname, label, sublabel = row["fname"], row["label"], row["sublabel"]
    if not fname:
        return "empty fname"
    if fname in seen_fnames:
        return f"duplicate of line {seen_fnames[fname]}"
    seen_fnames[fname] = line_number
    if label and label not in CLASSES:
        return f"unknown label {label!r} (expected one of {', '.join(CLASSES)} or empty)"
    relative = _safe_relative(fname)
    if relative is None:
        return "refused, the path leaves the data folder"
    if relative.parent not in (PurePosixPath(AUDIO_DIR), PurePosixPath(".")):
        return f"not inside {AUDIO_DIR}/"
    file_name = next((name for name in disk_name_candidates(relative.name, label, sublabel) if name in disk_files), None)
    if file_name is None:
        return f"no matching file in {AUDIO_DIR}/"
    if file_name in claimed_files:
        return f"names the same file as line {claimed_files[file_name]} ({file_name})"
    claimed_files[file_name] = line_number
    try:
        patient_id, timestamp, position = parse_tail(file_name)
    except ValueError as error:
        return str(error)
    return Recording(path=audio_dir / file_name, fname=fname, label=label or None, sublabel=sublabel or None,
                     patient_id=patient_id, timestamp=timestamp, position=position)


def _read_csv(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows with stripped keys and values); DatasetError if it is not a UTF-8 text csv."""
    try:
        data = read_regular(csv_path, MAX_CSV_BYTES, links_within=csv_path.parent)
    except FileRefused as refused:
        raise DatasetError(_csv_problem(refused)) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{csv_path}: not a UTF-8 text csv (it holds bytes that are not UTF-8)") from None
    binary = _BINARY.search(text)
    if binary:
        raise DatasetError(f"{csv_path}: not a text csv (it holds the control character {binary.group()!r})")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [name.strip() for name in (reader.fieldnames or [])]
        rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    except csv.Error as error:  # a field past csv's size limit, say
        raise DatasetError(f"{csv_path}: not a readable csv ({error})") from None
    return columns, rows


def _csv_problem(refused: FileRefused) -> str:
    """read_regular's refusal in the words of the data folder's other checks."""
    if refused.kind == "too_big":
        return f"{refused.path}: too big for a Dataset B csv (more than {MAX_CSV_BYTES} bytes)"
    if refused.kind == "outside":
        return f"{refused.path}: refused, a symbolic link leading outside the data folder"
    return str(refused)


def _with_audio_info(recording: Recording) -> Recording:
    import dataclasses

    import soundfile

    try:
        info = soundfile.info(str(recording.path))
    except Exception:  # unreadable: the spectrogram stage reports it with its reason
        return recording
    return dataclasses.replace(recording, duration_s=info.frames / info.samplerate, sample_rate=info.samplerate)
