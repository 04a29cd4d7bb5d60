"""Choosing a layout: detect_format from a folder's marker files, and read_recordings in any layout."""

from __future__ import annotations

import os
from pathlib import Path

from heartbeat.data import dataset
from heartbeat.data.layouts.base import (
    _MAX_LISTED, AUDIO_SUFFIX, FORMATS, LayoutError, LayoutResult, _data_folder, _visible_entries,
)
from heartbeat.data.layouts.circor import CIRCOR_AUDIO, CIRCOR_CSV, read_circor2022
from heartbeat.data.layouts.generic import LABELS_CSV, _read_labels_csv, read_csv, read_folders
from heartbeat.data.layouts.labels import apply_label_map, check_label_map
from heartbeat.data.layouts.pascal import PASCAL_A_CSV, read_pascal_a, read_pascal_b
from heartbeat.data.layouts.physionet import _PHYSIONET_SUBSET, PHYSIONET_REFERENCE, read_physionet2016

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
