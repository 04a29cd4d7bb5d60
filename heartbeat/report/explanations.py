"""The training report's explanations: a few validation recordings as `heartbeat predict --explain` draws them.

A run folder has no wav files, so each chosen recording's windows are read back from stage 1's
images (manifest.csv's image, window, start_s and duration_s; figures.read_window_image reads only
the stage's own images, never through a link) and explained by explain.explain_images through the
run's exported ONNX model (predict.load_predictor), so a picture shows what predict computes.

Occlusion runs the network about 180 times per window: about 0.8 s per 10-s recording for the
heartbeat recipe's network, but minutes for the published recipe's 512-px ResNet-34 on a CPU.
So only EXPLAINED_RECIPES get pictures (the published recipe's report says why, and how to draw
one), at most one per class and one more, each of a recording of at most MAX_RECORDING_WINDOWS.
A failure to draw never fails the run: it becomes the report's note and the train command's warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from heartbeat.data.audio import AudioError
from heartbeat.data.manifest import MANIFEST_NAME, is_own_image, read_manifest
from heartbeat.text import first_line

EXPLANATIONS_DIR = "explanations"
EXPLAINED_RECIPES = ("heartbeat",)
# About 70 s of sound: one longer recording alone would take several seconds of occlusion.
MAX_RECORDING_WINDOWS = 24
# The pictures' names: <n>-<the recording's stem, these characters only>.png, so every link in report.md is plain.
UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
NAME_CHARACTERS = 60
PICTURE_FILE = re.compile(rf"{EXPLANATIONS_DIR}/[A-Za-z0-9._-]+\.png")  # what report.md links, and nothing else
RECIPE_NOTE = ("No explanations for the {recipe} recipe: occlusion runs its network about 180 times per window, "
               "minutes per recording for a 512-px ResNet-34 on a CPU. `heartbeat predict --model RUN --explain DIR "
               "RECORDING.wav` draws one for a chosen recording.")
NOT_ASKED_NOTE = ("No explanations: a cross-validation fold's run does not draw them. `heartbeat predict --model RUN "
                  "--explain DIR RECORDING.wav` draws one for a chosen recording.")


@dataclass(frozen=True)
class Explanations:
    """The pictures and what report.md says of them (`record`, kept in metrics.json's context)."""
    files: dict[str, bytes] = field(default_factory=dict)  # "explanations/<name>.png" -> PNG bytes
    pictures: list[dict] = field(default_factory=list)  # per file: file, recording, label, predicted, why
    note: str | None = None  # why some or all pictures are missing; None when every chosen one was drawn
    failed: bool = False  # the note reports a failure (worth a warning), not a rule

    def record(self) -> dict:
        return {"pictures": self.pictures, "note": self.note}


def choose_recordings(predictions: pd.DataFrame, probabilities: np.ndarray, classes: Sequence[str]) -> list[tuple[int, str]]:
    """(row position, why chosen) of the recordings to explain, among those of at most MAX_RECORDING_WINDOWS.

    For each class in turn, the right answer the model was surest of: what it takes as that class's evidence.
    Then the most confidently wrong answer (top_losses.png's first tile): where that evidence misleads it.
    """
    from heartbeat.report.figures import top_losses

    classes = list(classes)
    short = predictions["windows"].to_numpy() <= MAX_RECORDING_WINDOWS
    right = predictions["label"].to_numpy() == predictions["predicted"].to_numpy()
    chosen = []
    for index, name in enumerate(classes):
        candidates = np.flatnonzero(short & right & (predictions["label"].to_numpy() == name))
        if candidates.size:
            row = int(candidates[np.argmax(probabilities[candidates, index])])
            chosen.append((row, f"the surest right {name}"))
    wrong = [row for row in top_losses(predictions, probabilities, classes, limit=len(predictions)) if short[row]]
    if wrong:
        chosen.append((wrong[0], "the most confidently wrong"))
    return chosen


def explain_validation(model_dir: Path, predictions: pd.DataFrame, classes: Sequence[str], spectrograms,
                       recipe: str) -> Explanations:
    """The chosen validation recordings' pictures, drawn from the run's model (model_dir) and stage 1's images.

    Never raises for a picture that cannot be drawn: the result's note says why (failed=True when it is a
    failure, not the recipe rule); an interrupt still interrupts.
    """
    from heartbeat.report.figures import probability_table

    if recipe not in EXPLAINED_RECIPES:
        return Explanations(note=RECIPE_NOTE.format(recipe=recipe))
    probabilities = probability_table(predictions, list(classes))
    if probabilities is None:
        return Explanations(note="No explanations: the predictions have no finite prob_<class> columns.", failed=True)
    if spectrograms is None or not Path(spectrograms).is_dir():
        return Explanations(note=f"No explanations: the spectrograms folder {spectrograms} is not there.", failed=True)
    try:
        return _draw(model_dir, predictions, list(classes), Path(spectrograms),
                     choose_recordings(predictions, probabilities, classes))
    except Exception as error:  # any failure: the pictures are an extra, the run is not
        return Explanations(note=f"The explanations were not drawn: {first_line(error)}", failed=True)


def _draw(model_dir: Path, predictions: pd.DataFrame, classes: list[str], folder: Path,
          chosen: list[tuple[int, str]]) -> Explanations:
    from heartbeat.explain import explain_images, draw_explanation, explanation_title
    from heartbeat.predict import load_predictor

    predictor = load_predictor(model_dir)
    manifest = read_manifest(folder / MANIFEST_NAME)
    files, pictures, left_out = {}, [], []
    for number, (row, why) in enumerate(chosen, start=1):
        record = predictions.iloc[row]
        recording = str(record["recording"])
        windows = recording_windows(folder, manifest, recording)
        if windows is None:
            left_out.append(f"{recording} (its window images in {folder} could not be read)")
            continue
        try:
            explanation = explain_images(predictor, *windows)
        except (AudioError, ValueError) as error:  # this recording's images or times, not the model
            left_out.append(f"{recording} ({error})")
            continue
        title = f"{explanation_title(recording, explanation, classes)}; true class: {record['label']}"
        file = f"{EXPLANATIONS_DIR}/{number}-{picture_stem(recording)}.png"
        files[file] = draw_explanation(explanation, classes, title)
        pictures.append({"file": file, "recording": recording, "label": str(record["label"]),
                         "predicted": str(record["predicted"]), "why": why})
    note = f"Not explained: {'; '.join(left_out)}." if left_out else None
    return Explanations(files, pictures, note, failed=bool(left_out))


def recording_windows(folder: Path, manifest: list[dict], recording: str) -> tuple[list, float] | None:
    """([(start in seconds, uint8 image)] in window order, the recording's duration) from stage 1's files, or
    None if any of its windows is not one of the stage's own images or cannot be read."""
    from heartbeat.report.figures import read_window_image

    rows = sorted((row for row in manifest if row["recording"] == recording), key=lambda row: _number(row["window"]))
    if not rows or not all(is_own_image(row["image"]) for row in rows):
        return None
    windows = []
    for row in rows:
        image = read_window_image(folder, row["image"])
        if image is None:
            return None
        windows.append((_number(row["start_s"]), image))
    return windows, _number(rows[0]["duration_s"])


def picture_stem(recording: str) -> str:
    """The recording's file stem in plain characters (a link never needs escaping), cut to NAME_CHARACTERS."""
    stem = Path(recording.replace("\\", "/")).stem
    return UNSAFE_NAME_CHARACTERS.sub("_", stem)[:NAME_CHARACTERS] or "recording"


def _number(text: str) -> float:
    """A manifest field as a number; NaN when it is not one (explain_images then refuses the window)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")
