"""Stage 1: every recording of a heart-sound collection becomes one or more 512x512 mel-spectrogram PNGs.

The collection is read by heartbeat.data.layouts in any of its layouts (Dataset B's set_b.csv by
default in the Makefile; `--format auto` detects it). Output folder:
    manifest.csv          one row per image (see manifest.MANIFEST_COLUMNS), what training reads
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

The files' names, readers and writers are in heartbeat.data.manifest, the workers in
heartbeat.data.parallel; this module is the stage: its output-folder checks and its order of work.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from heartbeat.data import audio
from heartbeat.data import layouts
from heartbeat.data.manifest import (
    DATASET_NAME, IMAGES_DIR, MANIFEST_NAME, SETTINGS_NAME, Item, current_rows, dataset_description, foreign_files,
    json_text, manifest_text, previous_format, previous_rows, remove_stale_images, sort_old_images, stage_item,
    write_if_changed,
)
from heartbeat.data.parallel import ImageWriteError, run_parallel
from heartbeat.fileio import FolderBusy, exclusive_lock, is_inside, remove_dead_leftovers

# Held while a run writes OUT, so that two runs into one OUT cannot mix their images and manifests.
LOCK_NAME = ".spectrograms.lock"


class OutputError(Exception):
    """The output folder cannot be used (a file, not writable, a linked images/); one-line message."""


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


def _check_foreign_files(out_dir: Path) -> None:
    """OutputError naming the first file of OUT that this stage did not write, unless OUT is its own."""
    foreign = foreign_files(out_dir)
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
    previous, present = _previous_outputs(out_dir, layout.format, summary)
    items, rows_by_recording, to_make = _sort_recordings(recordings, layout.format, previous, present,
                                                         settings.digest(), summary)
    summary.up_to_date = len(rows_by_recording)
    if to_make:
        for recording, rows, error, notes in run_parallel(to_make, out_dir, settings, max_seconds, jobs, progress):
            summary.warnings += [f"{recording.path}: {note}" for note in notes]
            if error is None:
                rows_by_recording[recording.recording] = rows
                summary.made += 1
            else:
                summary.failed.append((str(recording.path), error))
    ordered = [row for item in items for row in rows_by_recording.get(item.recording, [])]
    summary.images = len(ordered)
    _write_outputs(out_dir, settings, layout, data_dir, label_map, ordered)
    if not summary.failed:
        remove_stale_images(present, ordered, out_dir)
    return summary


def _previous_outputs(out_dir: Path, format: str, summary: StageSummary) -> tuple[dict[str, list[dict]], set[str]]:
    """(the previous run's rows by recording, its images that are plain files of images/), with warnings.

    Rows of another layout are not reused (but their images are still removed at the end); rows
    naming anything but a plain file inside images/ are counted and never touched.
    """
    manifest_path = out_dir / MANIFEST_NAME
    previous = previous_rows(manifest_path, summary.warnings)
    present, refused = sort_old_images(previous, out_dir)  # the old images: reused, or removed at the end
    old_format = previous_format(out_dir) if previous else None
    if previous and old_format != format:  # another collection: nothing of it is reused
        summary.warnings.append(f"{manifest_path}: made from another layout ({old_format or 'unknown'}, "
                                f"now {format}); every recording is remade")
        previous = {}
    if refused:
        summary.warnings.append(
            f"{manifest_path}: {refused} row(s) name an image that is not a plain file inside "
            f"{out_dir / IMAGES_DIR}/ (a path leaving it, or a link); ignored, nothing they name is touched"
        )
    return previous, present


def _sort_recordings(recordings: list[layouts.Recording], format: str, previous: dict[str, list[dict]],
                     present: set[str], digest: str, summary: StageSummary
                     ) -> tuple[list[Item], dict[str, list[dict]], list[Item]]:
    """(every usable recording's item, the current rows of those up to date, the items to make).

    A recording whose name cannot go into the manifest, or whose file cannot be checked, is failed.
    """
    rows_by_recording: dict[str, list[dict]] = {}
    to_make = []
    items = []
    for recording in recordings:
        problem = _name_problem(recording)
        if problem:
            summary.failed.append((os.fsdecode(recording.path), problem))
            continue
        item = stage_item(recording, format)
        items.append(item)
        try:
            rows = current_rows(item, previous.get(item.recording), present, digest)
        except OSError as error:
            summary.failed.append((str(item.path), f"cannot be read ({error.strerror})"))
            continue
        if rows is None:
            to_make.append(item)
        else:
            rows_by_recording[item.recording] = rows
    return items, rows_by_recording, to_make


def _write_outputs(out_dir: Path, settings: audio.AudioSettings, layout: layouts.LayoutResult, data_dir, label_map,
                   ordered: list[dict]) -> None:
    """audio_settings.json, dataset.json, then the manifest (last: it is what says the images are there)."""
    manifest_path = out_dir / MANIFEST_NAME
    try:
        write_if_changed(out_dir / SETTINGS_NAME, json_text(settings.to_dict()))
        write_if_changed(out_dir / DATASET_NAME, json_text(dataset_description(layout, data_dir, label_map)))
        write_if_changed(manifest_path, manifest_text(ordered))
    except OSError as error:
        raise OutputError(f"{manifest_path}: cannot be written ({error.strerror})") from None


def _name_problem(recording: layouts.Recording) -> str | None:
    """Why a recording's name cannot go into the UTF-8 manifest, if it cannot."""
    try:
        recording.source.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 text (rename the file)"
    return None
