"""Stage 1: every recording of a heart-sound collection becomes one or more 512x512 mel-spectrogram PNGs.

The collection is read by heartbeat.data.layouts in any of its layouts (Dataset B's set_b.csv by
default in the Makefile; `--format auto` detects it). Output folder:
    manifest.csv          one row per image (see MANIFEST_COLUMNS), what training reads
    audio_settings.json   the AudioSettings the images were made with
    dataset.json          which collection: its layout, why, its classes, whether its groups are patients
    images/<recording stem>_w<window>.png           (Dataset B: names as in the study)
    images/<recording stem>-<path hash>_w<window>.png  (other layouts: two folders may hold the same file name)

The stage is incremental (a recording's images are redone only when its wav's size or
modification time or the audio settings changed; a new label or group only rewrites its rows;
another --format starts afresh), parallel across cores, atomic (temp file then rename:
a killed run never leaves a truncated PNG or manifest) and deterministic (same input,
byte-identical PNGs). A recording that cannot be read is listed with its reason and the
others go on; earlier outputs are never deleted by a run that had failures.

The stage only ever creates, replaces or deletes files inside OUT/images/ (and its own
manifest.csv and audio_settings.json). An old manifest is input like any other: a row whose
image is not a plain file name directly inside images/ (`..`, an absolute path, a sub-folder,
a link) is ignored and reported, never deleted or reused. A manifest.csv, dataset.json or
audio_settings.json that is not one of ours (foreign, corrupt, binary) is refused, naming it,
unless OUT is clearly this stage's own (another of the three is ours): then it is ignored with a
warning and every recording is remade. OUT may not be, or lie inside, the data folder; a run
holds fileio.exclusive_lock on OUT (a second run into it is refused); zero recordings is an error
and a write failure in OUT stops the run: either way the earlier outputs stay as they were. What a
killed run left behind (temporary files whose writer is dead) is removed at the next start;
the worker processes die with the parent.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import stat
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from heartbeat.data import audio
from heartbeat.data import layouts
from heartbeat.fileio import (TEMP_NAME, FolderBusy, atomic_write_bytes, entry_kind, exclusive_lock, is_inside,
                              remove_dead_leftovers)
from heartbeat.workers import worker_count

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
# Held while a run writes OUT, so that two runs into one OUT cannot mix their images and manifests.
LOCK_NAME = ".spectrograms.lock"
# Settings every version of this stage wrote into audio_settings.json: a file with them marks OUT as this stage's own.
_OWN_SETTINGS_KEYS = {"sample_rate", "n_fft", "hop_length", "n_mels"}


class OutputError(Exception):
    """The output folder cannot be used (a file, not writable, a linked images/); one-line message."""


class ManifestError(ValueError):
    """An old manifest.csv that is not one this stage wrote (foreign, corrupt, binary)."""


class ImageWriteError(Exception):
    """An image could not be written into OUT (a full disk, say): a problem of OUT, not of the recording."""


@dataclass
class StageSummary:
    format: str = ""  # the layout read
    format_reason: str = ""  # one line: why that layout (detected from which file, or chosen)
    recordings: int = 0
    images: int = 0
    made: int = 0  # recordings whose images were (re)made in this run
    up_to_date: int = 0  # recordings skipped because their images were current
    failed: list[tuple[str, str]] = field(default_factory=list)  # (wav path, reason)
    warnings: list[str] = field(default_factory=list)  # one line each: what of the old outputs was ignored
    manifest: Path | None = None

    def line(self) -> str:
        return (
            f"spectrograms: {self.recordings} recordings, {self.images} images; "
            f"{self.made} made, {self.up_to_date} skipped as up to date, {len(self.failed)} failed"
            f" -> {self.manifest}"
        )


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


def _source_signature(path: Path) -> tuple[str, str]:
    info = path.stat()
    return str(info.st_size), str(info.st_mtime_ns)


def _make_images(recording: Item, out_dir: Path, settings: audio.AudioSettings, max_seconds: float,
                 notes: list[str]) -> list[dict]:
    """Worker: turn one recording into PNGs written atomically; return its manifest rows, warnings into `notes`.

    ImageWriteError if OUT cannot take an image: that stops the run, where a bad recording does not.
    """
    import soundfile

    size, mtime_ns = _source_signature(recording.path)
    signal = audio.load_audio(recording.path, settings, max_seconds=max_seconds, notes=notes)
    native_rate = soundfile.info(str(recording.path)).samplerate
    duration_s = signal.size / settings.sample_rate
    rows = []
    for window, (start_s, image) in enumerate(audio.iter_recording_images(signal, settings)):
        name = image_name(recording.image_stem, window)
        _write_image(out_dir / name, audio.encode_png(image))
        rows.append(
            {
                "image": name,
                "recording": recording.recording,
                **_recording_columns(recording),
                "window": str(window),
                "start_s": f"{start_s:.4f}",
                "duration_s": f"{duration_s:.4f}",
                "native_sample_rate": str(native_rate),
                "source_size": size,
                "source_mtime_ns": mtime_ns,
                "settings_hash": settings.digest(),
            }
        )
    return rows


def _write_image(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise ImageWriteError(f"{path.parent.parent}: cannot be written ({error.strerror or error}); "
                              "the earlier manifest is kept") from None


def _recording_columns(recording: Item) -> dict:
    """The manifest columns that describe the recording, not its images: rewritten on every run."""
    return {"label": recording.label, "patient_id": recording.group, "extra": recording.extra}


def _worker(task):
    """(recording, its rows or None, why it failed or None, its warnings); ImageWriteError passes: it ends the run."""
    recording, out_dir, settings, max_seconds = task
    notes: list[str] = []
    try:
        return recording, _make_images(recording, out_dir, settings, max_seconds, notes), None, notes
    except ImageWriteError:
        raise
    except audio.AudioError as error:
        return recording, None, str(error), notes
    except Exception as error:  # one bad file must not stop the batch: report it and go on
        return recording, None, f"{type(error).__name__}: {error}", notes


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
    """The bytes of one of this stage's files; ManifestError if it is a link, not a regular file, or over max_bytes.

    Never follows a link and never blocks (a FIFO is refused, not read); bounded even if the
    file grows after it was checked.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        problem = "is a link, not a file" if os.path.islink(path) else f"cannot be read ({error.strerror})"
        raise ManifestError(problem) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError("is not a regular file")
        data = handle.read(max_bytes + 1)
        if max(info.st_size, len(data)) > max_bytes:
            raise ManifestError(f"is {max(info.st_size, len(data))} bytes, more than {what} of this stage can be")
    return data


def _previous_rows(manifest_path: Path, warnings: list[str]) -> dict[str, list[dict]]:
    """The previous run's rows by recording; {} if there is none, or (with a warning) if it is not ours.

    Only in a folder that is this stage's own (see _check_foreign_files): elsewhere a manifest that
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


def _sort_old_images(previous: dict[str, list[dict]], out_dir: Path) -> tuple[set[str], int]:
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


def _current_rows(recording: Item, rows: list[dict] | None, present: set[str], digest: str):
    """The previous run's rows for this recording if its images are still current, else None.

    A row is trusted only if it names exactly the image this stage would write for it, and
    that image is a plain file (see _sort_old_images). What shapes an image is the sound file
    and the settings; the label, group and extra columns are taken from this run's reading of
    the data (a --label-map change relabels, it does not remake the images).
    """
    if not rows:
        return None
    size, mtime_ns = _source_signature(recording.path)
    current = all(
        row["image"] == image_name(recording.image_stem, window)
        and row["image"] in present
        and row["window"] == str(window)
        and row["source_size"] == size
        and row["source_mtime_ns"] == mtime_ns
        and row["settings_hash"] == digest
        for window, row in enumerate(rows)
    )
    return [{**row, **_recording_columns(recording)} for row in rows] if current else None


def _foreign_files(out_dir: Path) -> list[tuple[Path, str]]:
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


def _check_foreign_files(out_dir: Path) -> None:
    """OutputError naming the first file of OUT that this stage did not write, unless OUT is its own."""
    foreign = _foreign_files(out_dir)
    if foreign:
        path, problem = foreign[0]
        raise OutputError(f"{path}: {problem}; not written by 'heartbeat spectrograms', so it is not replaced "
                          "(move it away, or choose another --out)")


def _check_output_folder(out_dir: Path, data_dir: Path) -> None:
    """Raise OutputError if OUT cannot hold this stage's outputs. Creates nothing: called before any work.

    OUT must not be the data folder or inside it (the data's own files are never replaced). OUT
    itself may be a link to a folder (the user's choice); images/ inside it may not, since
    writes through it would land outside OUT.
    """
    if is_inside(out_dir, data_dir):
        raise OutputError(f"{out_dir}: inside the data folder {data_dir}; spectrograms never writes there "
                          "(choose another --out)")
    existing = out_dir
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing != out_dir:
        if not existing.is_dir():
            raise OutputError(f"{out_dir}: cannot be created, {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"{out_dir}: cannot be created, {existing} is not writable (permission denied)")
        return  # a new folder holds nothing yet
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: is {'a broken link' if out_dir.is_symlink() else 'a file'}, not a folder")
    images_dir = out_dir / IMAGES_DIR
    if os.path.lexists(images_dir) and (images_dir.is_symlink() or not images_dir.is_dir()):
        raise OutputError(f"{images_dir}: is a link or a file, not a folder; refused, "
                          f"the images must stay inside {out_dir}")
    for folder in (out_dir, images_dir):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{folder}: cannot be written (permission denied)")
    for name in (MANIFEST_NAME, SETTINGS_NAME, DATASET_NAME):
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            raise OutputError(f"{path}: is a folder, not this stage's {name}")


def _prepare_output_folder(out_dir: Path) -> None:
    """Create OUT/images/ and remove what a killed run of this stage left there (never a live run's files)."""
    try:
        (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{out_dir}: cannot be created ({error.strerror})") from None
    remove_dead_leftovers(out_dir / IMAGES_DIR)
    for name in (MANIFEST_NAME, SETTINGS_NAME, DATASET_NAME):  # only this stage's own temporaries in OUT
        remove_dead_leftovers(out_dir, prefix=f".{Path(name).stem}.")


def build_spectrograms(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    format: str = "auto",
    label_map: dict[str, str | None] | None = None,
    group_regex: str | None = None,
    jobs: int | None = None,
    include_unlabelled: bool = False,
    settings: audio.AudioSettings = audio.SETTINGS,
    max_seconds: float = audio.DEFAULT_MAX_SECONDS,
    progress: bool = True,
) -> StageSummary:
    """Run the stage on DATA in layout `format` (layouts.FORMATS, or "auto"); return its summary.

    Raises OutputError when OUT cannot hold the outputs (checked before any work) and
    layouts.LayoutError when the data cannot be read in that layout. A recording longer than
    max_seconds is listed as failed (refused from its header, before it is read).
    """
    out_dir = Path(out_dir)
    _check_output_folder(out_dir, Path(data_dir))
    layout = layouts.read_recordings(data_dir, format, label_map=label_map, group_regex=group_regex)
    recordings = [recording for recording in layout.recordings if include_unlabelled or recording.label]
    if not recordings:  # an empty run would replace the earlier manifest with an empty one
        what = "recordings" if include_unlabelled else "labelled recordings"
        mapped = " after --label-map" if label_map else ""
        raise layouts.LayoutError(f"{data_dir}: no {what}{mapped} ({len(layout.recordings)} found); "
                                  f"nothing to do, {out_dir} is left as it was")
    _check_foreign_files(out_dir)  # before anything is created: a refused OUT stays as it was
    with contextlib.ExitStack() as locked:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            locked.enter_context(exclusive_lock(out_dir, out_dir / LOCK_NAME))
        except FolderBusy as error:
            raise OutputError(str(error)) from None
        except OSError as error:  # OUT or its lock file cannot be created
            raise OutputError(f"{out_dir}: cannot be written ({error.strerror or error})") from None
        _check_foreign_files(out_dir)  # again, now that no other run of this stage can be writing
        try:
            return _build_locked(recordings, layout, data_dir, out_dir, label_map=label_map, jobs=jobs,
                                 settings=settings, max_seconds=max_seconds, progress=progress)
        except ImageWriteError as error:  # one line about OUT, not one per recording; nothing else was replaced
            raise OutputError(str(error)) from None


def _build_locked(recordings: list[layouts.Recording], layout: layouts.LayoutResult, data_dir, out_dir: Path, *,
                  label_map, jobs, settings: audio.AudioSettings, max_seconds: float, progress: bool) -> StageSummary:
    """The stage's work in OUT, once OUT is locked: images, then settings, dataset.json and the manifest."""
    manifest_path = out_dir / MANIFEST_NAME
    summary = StageSummary(format=layout.format, format_reason=layout.reason, recordings=len(recordings),
                           manifest=manifest_path)
    summary.warnings += layouts.case_clashes(layout.classes, data_dir)
    _prepare_output_folder(out_dir)
    previous = _previous_rows(manifest_path, summary.warnings)
    present, refused = _sort_old_images(previous, out_dir)  # the old images: reused, or removed at the end
    previous_format = _previous_format(out_dir) if previous else None
    if previous and previous_format != layout.format:  # another collection: nothing of it is reused
        summary.warnings.append(f"{manifest_path}: made from another layout ({previous_format or 'unknown'}, "
                                f"now {layout.format}); every recording is remade")
        previous = {}
    if refused:
        summary.warnings.append(
            f"{manifest_path}: {refused} row(s) name an image that is not a plain file inside "
            f"{out_dir / IMAGES_DIR}/ (a path leaving it, or a link); ignored, nothing they name is touched"
        )

    digest = settings.digest()
    rows_by_recording: dict[str, list[dict]] = {}
    to_make = []
    items = []
    for recording in recordings:
        problem = _name_problem(recording)
        if problem:
            summary.failed.append((os.fsdecode(recording.path), problem))
            continue
        item = stage_item(recording, layout.format)
        items.append(item)
        try:
            rows = _current_rows(item, previous.get(item.recording), present, digest)
        except OSError as error:
            summary.failed.append((str(item.path), f"cannot be read ({error.strerror})"))
            continue
        if rows is None:
            to_make.append(item)
        else:
            rows_by_recording[item.recording] = rows
    summary.up_to_date = len(rows_by_recording)

    if to_make:
        for recording, rows, error, notes in _run_parallel(to_make, out_dir, settings, max_seconds, jobs, progress):
            summary.warnings += [f"{recording.path}: {note}" for note in notes]
            if error is None:
                rows_by_recording[recording.recording] = rows
                summary.made += 1
            else:
                summary.failed.append((str(recording.path), error))

    ordered = [row for item in items for row in rows_by_recording.get(item.recording, [])]
    summary.images = len(ordered)
    try:
        _write_if_changed(out_dir / SETTINGS_NAME, _json_text(settings.to_dict()))
        _write_if_changed(out_dir / DATASET_NAME, _json_text(dataset_description(layout, data_dir, label_map)))
        _write_if_changed(manifest_path, _manifest_text(ordered))
    except OSError as error:
        raise OutputError(f"{manifest_path}: cannot be written ({error.strerror})") from None
    if not summary.failed:
        _remove_stale_images(present, ordered, out_dir)
    return summary


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


def _previous_format(out_dir: Path) -> str | None:
    description = read_dataset_description(out_dir)
    return description["format"] if description else None


def _name_problem(recording: layouts.Recording) -> str | None:
    """Why a recording's name cannot go into the UTF-8 manifest, if it cannot."""
    try:
        recording.source.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 text (rename the file)"
    return None


def _worker_setup(parent_pid: int):
    _die_with_parent(parent_pid)
    # Each worker process owns one core: a multi-threaded BLAS inside it (the mel matrix
    # product) would fight the other workers for the cores and halve the throughput.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _reuse_freed_memory()


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies, however it dies (Linux; no-op elsewhere).

    A parent killed with SIGKILL cannot shut its pool down: without this its workers would
    finish their queued recordings and then wait for more forever.
    """
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1  # from linux/prctl.h
    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        return  # no prctl: not Linux
    if armed and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the signal was armed: nobody else will stop this worker


def _reuse_freed_memory():
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    Every window allocates a few arrays of 1-2 MB. By default glibc maps each one fresh and
    unmaps it on free, so every page is faulted in again: that kernel time was about a third
    of the stage. Measured: 5.6 s -> 3.6 s for all 656 recordings on 2 cores. No-op elsewhere.
    """
    import ctypes
    import ctypes.util

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 256 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 512 * 2**20)
    except (OSError, AttributeError):
        pass  # not glibc: keep its defaults


def _run_parallel(recordings, out_dir, settings, max_seconds, jobs, progress):
    import multiprocessing

    from tqdm import tqdm

    tasks = [(recording, out_dir, settings, max_seconds) for recording in recordings]
    jobs = worker_count(jobs, len(tasks))
    bar = tqdm(total=len(tasks), desc="spectrograms", unit="rec", disable=not progress, file=sys.stderr)
    try:
        if jobs == 1 or len(tasks) == 1:
            from threadpoolctl import threadpool_limits

            _reuse_freed_memory()
            with threadpool_limits(1):  # one job means one core; BLAS threads would only spin
                for task in tasks:
                    yield _worker(task)
                    bar.update()
        else:
            # fork: the workers are this process's children (what _die_with_parent checks), started at once
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_setup,
                                     initargs=(os.getpid(),)) as pool:
                # chunks amortise inter-process traffic; small enough to keep the bar moving
                chunksize = max(1, min(16, len(tasks) // (jobs * 8)))
                try:
                    for result in pool.map(_worker, tasks, chunksize=chunksize):
                        yield result
                        bar.update()
                except BaseException:  # OUT cannot be written, or the run was stopped: queued work is pointless
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()


def _json_text(value: dict) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
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


def _manifest_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _remove_stale_images(present: set[str], rows: list[dict], out_dir: Path) -> None:
    """Delete images the previous manifest listed and this one does not.

    `present` holds only plain files directly inside images/ (see _sort_old_images); each is
    checked again just before it goes, so a link put in its place meanwhile is left alone.
    """
    keep = {row["image"] for row in rows}
    for image in sorted(present - keep):
        if entry_kind(out_dir / image) == "file":
            (out_dir / image).unlink(missing_ok=True)
