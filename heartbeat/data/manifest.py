"""Stage 1's files in OUT: their names, the manifest's columns and rows, and reading and writing them.

manifest.csv (one row per image, MANIFEST_COLUMNS), audio_settings.json, dataset.json and the
names of images/<stem>_w<window>.png. Reads are bounded and never follow a link: a file that is
not one this stage wrote is a ManifestError, never trusted. Writes are atomic, and skipped when
the file already holds the same bytes (make then sees nothing new). Deleting old images touches
only plain files directly inside images/.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from heartbeat.data import layouts
from heartbeat.fileio import TEMP_NAME, FileRefused, atomic_write_bytes, entry_kind, read_regular

MANIFEST_NAME = "manifest.csv"
SETTINGS_NAME = "audio_settings.json"
DATASET_NAME = "dataset.json"
IMAGES_DIR = "images"
MANIFEST_COLUMNS = (
    "image",  # path relative to the output folder
    "recording",  # Dataset B: the wav's file name; other layouts: its path inside the data folder
    "label",  # empty for unlabelled recordings
    # The group that splits keep on one side: the patient where the layout names one, else the
    # recording itself (dataset.json's groups_are_patients says which).
    "patient_id",
    "extra",  # the layout's own columns (Dataset B: sublabel, timestamp, position), a JSON object
    "window",  # 0, 1, ... within the recording
    "start_s",  # where the window starts in the recording
    "duration_s",  # of the whole recording
    "native_sample_rate",
    "source_size",  # with source_mtime_ns and settings_hash: what makes an image up to date
    "source_mtime_ns",
    "settings_hash",
)
# The only images a manifest row may name: a plain PNG file name directly inside images/
# (so never `..`, an absolute path or a sub-folder), which is all this stage ever writes.
_OWN_IMAGE = re.compile(rf"^{IMAGES_DIR}/(?P<name>[^/\x00]+\.png)$")
# Dataset B's manifest is about 200 KB; a file far bigger is not one of ours and is not read into memory.
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_DATASET_BYTES = 2**20  # dataset.json is a few hundred bytes
# Settings every version of this stage wrote into audio_settings.json: a file with them marks OUT as this stage's own.
_OWN_SETTINGS_KEYS = {"sample_rate", "n_fft", "hop_length", "n_mels"}


class ManifestError(ValueError):
    """An old manifest.csv that is not one this stage wrote (foreign, corrupt, binary)."""


# Other layouts' images are named <stem>-<hash of the recording's path>: physionet's training-a/a0001.wav and a
# folders layout's normal/x.wav and murmur/x.wav must not share images. The stem is cut to stay within
# file-name limits (255 bytes) with room for the hash and window suffix.
_STEM_CHARACTERS = 100
_PATH_HASH_CHARACTERS = 10


@dataclass(frozen=True)
class Item:
    """One recording as this stage handles it: where it is, its manifest identity, its images' stem."""
    path: Path
    recording: str  # the manifest's `recording`
    image_stem: str  # images/<image_stem>_w<window>.png
    label: str  # "" when unlabelled
    group: str
    extra: str  # JSON object text of the layout's own columns


def stage_item(recording: layouts.Recording, format: str) -> Item:
    """The stage's view of a layout's recording; Dataset B's recordings keep the study's names."""
    if format == "pascal-b":
        name, stem = recording.path.name, recording.path.stem
    else:
        digest = hashlib.sha256(recording.source.encode("utf-8", "surrogateescape")).hexdigest()[:_PATH_HASH_CHARACTERS]
        name, stem = recording.source, f"{recording.path.stem[:_STEM_CHARACTERS]}-{digest}"
    return Item(recording.path, name, stem, recording.label or "", recording.group,
                json.dumps(recording.extra, sort_keys=True, ensure_ascii=False))


def image_name(image_stem: str, window: int) -> str:
    return f"{IMAGES_DIR}/{image_stem}_w{window:02d}.png"


def source_signature(path: Path) -> tuple[str, str]:
    info = path.stat()
    return str(info.st_size), str(info.st_mtime_ns)


def recording_columns(recording: Item) -> dict:
    """The manifest columns that describe the recording, not its images: rewritten on every run."""
    return {"label": recording.label, "patient_id": recording.group, "extra": recording.extra}


def is_own_image(image: str) -> bool:
    """Whether a manifest's `image` is a plain PNG file name directly inside images/ (and not a temporary)."""
    match = _OWN_IMAGE.match(image)
    return match is not None and not TEMP_NAME.match(match["name"])


def read_manifest(path: Path) -> list[dict]:
    """The rows of a manifest this stage wrote. Raises ManifestError for anything else.

    Never follows a link and never blocks (a FIFO is refused, not read), reads at most
    MAX_MANIFEST_BYTES, and accepts only this stage's exact columns with every field present.
    """
    data = _read_own_file(path, MAX_MANIFEST_BYTES, "a manifest")
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ManifestError("is not a manifest of this stage (other columns)")
        rows = list(reader)
    except UnicodeDecodeError:
        raise ManifestError("is not UTF-8 text") from None
    except csv.Error as error:
        raise ManifestError(f"is not a readable csv ({error})") from None
    if any(None in row or None in row.values() for row in rows):
        raise ManifestError("has rows with a wrong number of fields")
    return rows


def _read_own_file(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of one of this stage's files (fileio.read_regular: never follows a link, never blocks on a FIFO,
    bounded even if the file grows); ManifestError if it is a link, not a regular file, or over max_bytes."""
    try:
        return read_regular(path, max_bytes)
    except FileRefused as refused:
        raise ManifestError(_own_file_problem(refused, what)) from None


def _own_file_problem(refused: FileRefused, what: str) -> str:
    """read_regular's refusal in this stage's words (the path is added by whoever prints it)."""
    if refused.kind == "link":
        return "is a link, not a file"
    if refused.kind == "not_regular":
        return "is not a regular file"
    if refused.kind == "too_big":
        return f"is {refused.size} bytes, more than {what} of this stage can be"
    if refused.kind == "missing":
        return f"cannot be read ({os.strerror(errno.ENOENT)})"
    return refused.problem  # "cannot be read (<reason>)"


def previous_rows(manifest_path: Path, warnings: list[str]) -> dict[str, list[dict]]:
    """The previous run's rows by recording; {} if there is none, or (with a warning) if it is not ours.

    Only in a folder that is this stage's own (see foreign_files): elsewhere a manifest that
    is not ours has already been refused.
    """
    if not os.path.lexists(manifest_path):
        return {}
    try:
        rows = read_manifest(manifest_path)
    except ManifestError as error:
        warnings.append(f"{manifest_path}: {error}; ignored, every recording is remade")
        return {}
    previous: dict[str, list[dict]] = {}
    for row in rows:
        previous.setdefault(row["recording"], []).append(row)
    return previous


def sort_old_images(previous: dict[str, list[dict]], out_dir: Path) -> tuple[set[str], int]:
    """(the old manifest's images that are plain files of images/, the number of rows naming anything else).

    Only the former may be reused or deleted; the latter are never touched. One lstat per row,
    the same as checking that the images exist.
    """
    present: set[str] = set()
    refused = 0
    folder = str(out_dir)  # os.path.join: a Path per row costs more than the lstat
    for rows in previous.values():
        for row in rows:
            kind = entry_kind(os.path.join(folder, row["image"])) if is_own_image(row["image"]) else "other"
            if kind == "file":
                present.add(row["image"])
            elif kind == "other":
                refused += 1
    return present, refused


def current_rows(recording: Item, rows: list[dict] | None, present: set[str], digest: str):
    """The previous run's rows for this recording if its images are still current, else None.

    A row is trusted only if it names exactly the image this stage would write for it, and
    that image is a plain file (see sort_old_images). What shapes an image is the sound file
    and the settings; the label, group and extra columns are taken from this run's reading of
    the data (a --label-map change relabels, it does not remake the images).
    """
    if not rows:
        return None
    size, mtime_ns = source_signature(recording.path)
    current = all(
        row["image"] == image_name(recording.image_stem, window)
        and row["image"] in present
        and row["window"] == str(window)
        and row["source_size"] == size
        and row["source_mtime_ns"] == mtime_ns
        and row["settings_hash"] == digest
        for window, row in enumerate(rows)
    )
    return [{**row, **recording_columns(recording)} for row in rows] if current else None


def foreign_files(out_dir: Path) -> list[tuple[Path, str]]:
    """(file, why it is not ours) for each of OUT's manifest.csv, audio_settings.json and dataset.json that
    this stage did not write; [] if OUT is this stage's own (one of the three is ours: a rerun may replace
    the others). Bounded reads that never follow a link (_read_own_file)."""
    manifest, settings, dataset = (out_dir / name for name in (MANIFEST_NAME, SETTINGS_NAME, DATASET_NAME))
    foreign, own = [], False
    for path, is_ours in ((manifest, _is_own_manifest), (settings, _is_own_settings), (dataset, _is_own_dataset)):
        if not os.path.lexists(path):
            continue
        problem = is_ours(path)
        if problem is None:
            own = True
        else:
            foreign.append((path, problem))
    return [] if own else foreign


def _is_own_manifest(path: Path) -> str | None:
    try:
        read_manifest(path)
    except ManifestError as error:
        return str(error)
    return None


def _is_own_settings(path: Path) -> str | None:
    try:
        saved = json.loads(_read_own_file(path, MAX_DATASET_BYTES, "an audio_settings.json"))
    except (ManifestError, ValueError) as error:
        return str(error) if isinstance(error, ManifestError) else "is not JSON"
    return None if isinstance(saved, dict) and _OWN_SETTINGS_KEYS <= set(saved) else "is not this stage's settings"


def _is_own_dataset(path: Path) -> str | None:
    return None if read_dataset_description(path.parent) is not None else "is not this stage's dataset description"


def dataset_description(layout: layouts.LayoutResult, data_dir, label_map: dict | None) -> dict:
    """dataset.json: which collection the images are of, so that training can say what its groups are."""
    return {
        "format": layout.format, "format_reason": layout.reason, "data": os.fsdecode(Path(data_dir).resolve()),
        "classes": layout.classes, "groups_are_patients": layout.groups_are_patients,
        "label_map": {old: (new if new is not None else layouts.DROP) for old, new in (label_map or {}).items()},
    }


def read_dataset_description(out_dir: Path) -> dict | None:
    """The folder's dataset.json as a dict, or None if it is absent or not one of ours (never follows a link)."""
    try:
        description = json.loads(_read_own_file(Path(out_dir) / DATASET_NAME, MAX_DATASET_BYTES, "a dataset.json"))
    except (ManifestError, ValueError):  # absent, a link, a FIFO, too big, not JSON
        return None
    return description if isinstance(description, dict) and isinstance(description.get("format"), str) else None


def previous_format(out_dir: Path) -> str | None:
    description = read_dataset_description(out_dir)
    return description["format"] if description else None


def json_text(value: dict) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write_if_changed(path: Path, text: str) -> None:
    """Write `text` atomically unless the file (a regular file, not a link) already holds exactly it.

    A rerun with nothing changed then leaves the outputs' modification times alone, so that
    make's next stage does not think them new.
    """
    data = text.encode("utf-8")
    if entry_kind(path) == "file":
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return
        except OSError:
            pass  # unreadable: rewrite it
    atomic_write_bytes(path, data)


def manifest_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def remove_stale_images(present: set[str], rows: list[dict], out_dir: Path) -> None:
    """Delete images the previous manifest listed and this one does not.

    `present` holds only plain files directly inside images/ (see sort_old_images); each is
    checked again just before it goes, so a link put in its place meanwhile is left alone.
    """
    keep = {row["image"] for row in rows}
    for image in sorted(present - keep):
        if entry_kind(out_dir / image) == "file":
            (out_dir / image).unlink(missing_ok=True)
