"""A run's inputs from stage 1's folder: the manifest's labelled rows and dataset.json, checked before any training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from heartbeat.data import audio
from heartbeat.data import layouts
from heartbeat.data.manifest import DATASET_NAME, MANIFEST_NAME, SETTINGS_NAME, read_dataset_description
from heartbeat.fileio import entry_kind
from heartbeat.text import first_line
from heartbeat.train.contract import Study
from heartbeat.train.settings import TrainError

# The manifest columns training reads: the split and report (recording, patient_id, label), the images,
# and what identifies an image's content for the feature cache.
MANIFEST_COLUMNS_USED = ("image", "recording", "label", "patient_id", "settings_hash", "source_size", "source_mtime_ns")
# Stage 1 names every image images/<plain name>.png; any other path (../, absolute, a subfolder) is not its own.
IMAGE_PATH = re.compile(r"images/[^/\\\x00]+\.png")


def read_study(spectrograms_dir: str | Path, label_map: str = "") -> Study:
    """The labelled windows (read_spectrograms), their sorted classes and dataset.json: what every run of them reads."""
    spectrograms_dir = Path(spectrograms_dir)
    windows = read_spectrograms(spectrograms_dir, label_map=label_map)
    return Study(spectrograms_dir, windows, sorted(set(windows["label"])), read_dataset(spectrograms_dir))


def read_spectrograms(spectrograms_dir: Path, label_map: str = "") -> pd.DataFrame:
    """Stage 1's manifest, labelled rows only (label_map, --label-map's text, applied), checked before any training.

    The folder must have been made with this code's audio settings; the manifest must be UTF-8
    csv with the columns training reads, name only stage 1's own images (images/<name>.png,
    regular files, never a path or a link out of the folder), and hold at least two classes.
    Anything else is a TrainError naming the file and the problem.
    """
    spectrograms_dir = Path(spectrograms_dir)
    manifest_path = spectrograms_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise TrainError(f"{manifest_path}: not found (run 'make spectrograms' or 'heartbeat spectrograms' first)")
    settings_path = spectrograms_dir / SETTINGS_NAME
    try:
        audio.check_settings(json.loads(settings_path.read_text()))
    except (OSError, ValueError) as error:
        raise TrainError(f"{settings_path}: {error} (rerun the spectrogram stage)") from None
    manifest = _read_manifest(manifest_path)
    _check_image_paths(manifest_path, manifest)
    labelled = manifest[manifest["label"] != ""]
    if label_map:
        labelled = _map_labels(manifest_path, labelled, layouts.parse_label_map(label_map))
    labelled = labelled.reset_index(drop=True)
    if labelled.empty:
        raise TrainError(f"{manifest_path}: no labelled images")
    _check_classes(manifest_path, labelled["label"])
    missing = [name for name in labelled["image"] if entry_kind(spectrograms_dir / name) != "file"]
    if missing:
        raise TrainError(f"{manifest_path}: {len(missing)} image(s) missing or not regular files, e.g. {missing[0]} "
                         "(rerun the spectrogram stage)")
    return labelled


def _read_manifest(manifest_path: Path) -> pd.DataFrame:
    """The manifest as a table with the columns training reads; TrainError if it is not such a csv."""
    problem = None
    try:
        manifest = pd.read_csv(manifest_path, dtype={"label": str, "sublabel": str, "image": str},
                               keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        problem = f"not a readable csv ({first_line(error)})"
    except OSError as error:
        problem = f"cannot be read ({error.strerror or error})"
    if problem:
        raise TrainError(f"{manifest_path}: {problem} (rerun the spectrogram stage)")
    absent = [column for column in MANIFEST_COLUMNS_USED if column not in manifest.columns]
    if absent:
        raise TrainError(f"{manifest_path}: no {', '.join(absent)} column{'s' if len(absent) > 1 else ''} "
                         "(not a manifest of this version's spectrogram stage; rerun it)")
    return manifest


def _check_image_paths(manifest_path: Path, manifest: pd.DataFrame) -> None:
    """TrainError naming the first row whose image is not images/<plain name>.png: nothing else is stage 1's."""
    for index, image in enumerate(manifest["image"]):
        if not IMAGE_PATH.fullmatch(image):
            # line 1 is the header
            raise TrainError(f"{manifest_path}: line {index + 2}: image {image!r} is not images/<name>.png inside the "
                             "spectrograms folder (rerun the spectrogram stage)")


def _map_labels(manifest_path: Path, labelled: pd.DataFrame, label_map: dict[str, str | None]) -> pd.DataFrame:
    """The rows with their labels renamed, those mapped to drop left out; TrainError for a label the manifest lacks."""
    try:
        layouts.check_label_map(label_map, labelled["label"], manifest_path, noun="image")
    except layouts.LayoutError as error:
        raise TrainError(str(error)) from None
    mapped = labelled["label"].map(lambda label: label_map.get(label, label))
    return labelled.assign(label=mapped)[mapped.notna()]


def _check_classes(manifest_path: Path, labels: pd.Series) -> None:
    """TrainError unless the labels are usable class names, at least two of them (names the classes found)."""
    found = sorted(set(labels))
    unusable = [label for label in found if layouts.label_problem(label)]
    if unusable:  # a class name becomes a column of predictions.csv and a word of model.json
        raise TrainError(f"{manifest_path}: {layouts.label_problem(unusable[0])} (rerun the spectrogram stage)")
    if len(found) < 2:
        raise TrainError(f"{manifest_path}: the labelled images hold only one class ({found[0]}); "
                         "a classifier needs at least two")


def read_dataset(spectrograms_dir: Path) -> dict:
    """Stage 1's dataset.json (the layout, whether its groups are patients); TrainError if it is missing or not ours."""
    description = read_dataset_description(spectrograms_dir)
    if description is None or not isinstance(description.get("groups_are_patients"), bool):
        raise TrainError(f"{Path(spectrograms_dir) / DATASET_NAME}: missing or not this version's (rerun the "
                         "spectrogram stage)")
    return description
