"""Predict: run a trained model on recordings, without torch.

A model folder (a training run) holds model.json (classes, image size, audio settings, id)
and model.onnx (the network with its ImageNet normalisation and softmax, exported at the end
of training; its weights are in model.onnx.data beside it). Predict reads only these: JSON,
an ONNX graph and raw tensor data, none of which can run code when loaded (onnxruntime also
refuses external data outside the model's folder). Nothing here unpickles (no pickle, no torch.load), so a model folder from
an untrusted source cannot run code through predict, whatever other files it holds.

Each recording goes through the same functions as in training: audio.load_audio (any rate,
mono or stereo, resampled to the model's) -> mel.iter_recording_images (the training
windows) -> mel.model_input (the training resize) -> the network -> metrics.combine_windows
(the report's rule for a recording's probabilities). Windows are made and run through the
network a few at a time, so memory does not grow with a recording's length.

Only numpy, the standard library, onnxruntime, threadpoolctl and the light heartbeat modules
are imported: torch, fastai, pandas and librosa each take a second or more to import, and
predict must start in well under a second.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from heartbeat.data import audio
from heartbeat.data import beats
from heartbeat.data import mel
from heartbeat.data import layouts
from heartbeat.report import metrics
from heartbeat.fileio import FileRefused, read_regular
from heartbeat.text import first_line, printable
from heartbeat.workers import worker_count

# The model folder's file names, as heartbeat.train.model writes them (that module imports torch,
# so the names are repeated here; a test checks that they agree).
MODEL_FILE = "model.json"
ONNX_FILE = "model.onnx"
INPUT_NAME = "image"  # the ONNX contract: float32 (n, 1, S, S) in [0, 1] -> "probabilities" (n, n_classes)
OUTPUT_NAME = "probabilities"
# Windows per network call: a long recording's windows are made and run in chunks, so memory
# stays bounded (a 512-px window's activations are tens of MB); batching more gains little on a CPU.
WINDOWS_PER_RUN = 4
# A model.json is a few kB (the bundled model's: 1.7 kB); one far larger is not one training wrote, and is not read.
MAX_MODEL_JSON_BYTES = 1 << 20
# How far a row of probabilities may sum from 1: float32 softmax rounding is about 1e-7 per class.
PROBABILITY_SUM_TOLERANCE = 1e-3
# beats.segment's arrays grow with the recording (its FFTs, the Viterbi's tables): a 10-minute recording
# lifted predict's peak RSS by 160 MB. A longer recording is segmented this much at a time (the segmenter's
# tested range is 0.76-30 s), and the parts' figures are combined (recording_rhythm).
RHYTHM_PART_SECONDS = 30.0
# Predict's table says this once, before its header (the JSON lines do not: they are for programs).
INTENDED_USE = "heartbeat: for research and teaching only, not for diagnosis (see 'heartbeat predict --about')"


class ModelError(RuntimeError):
    """A model folder that cannot be used (missing, incomplete, mismatched); the message says why."""


@dataclass(frozen=True)
class Prediction:
    file: str  # as the user gave it
    label: str  # the class with the highest probability
    probabilities: dict[str, float]  # per class, in the model's class order; sums to 1
    windows: int  # image windows the recording was cut into
    model_id: str
    # Added after the first five: the JSON keeps those keys and only gains these.
    model: str = ""  # which model answered, as resolved: "builtin" or the model folder
    heart_rate_bpm: float | None = None  # beats.segment's; None when it finds no reliable rhythm
    beats: int = 0
    beat_irregularity: float | None = None  # coefficient of variation of the beat intervals; None when unreliable

    @property
    def heart_problem(self) -> float | None:
        """1 - p(normal): the probability of any heart problem; None for a model without a normal class."""
        return heart_problem(self.probabilities)

    def to_json(self) -> str:
        # allow_nan=False: a NaN would print as `NaN`, which is not JSON (predict_file refuses
        # non-finite probabilities first; this is the last guard). ensure_ascii (the default)
        # escapes a file name that is not valid UTF-8, so the line stays valid JSON.
        return json.dumps({"file": self.file, "label": self.label, "probabilities": self.probabilities,
                           "windows": self.windows, "model_id": self.model_id, "model": self.model,
                           "heart_problem": self.heart_problem, "heart_rate_bpm": self.heart_rate_bpm,
                           "beats": self.beats, "beat_irregularity": self.beat_irregularity}, allow_nan=False)


def heart_problem(probabilities: dict[str, float]) -> float | None:
    """1 - p(normal), the report's heart-problem rule (layouts.normal_class); None without a normal class."""
    normal = layouts.normal_class(list(probabilities))
    return None if normal is None else max(0.0, 1.0 - probabilities[normal])  # never -0.0000 from rounding


@dataclass(frozen=True)
class Failure:
    file: str
    problem: str  # one line, e.g. "is silent (no sample above one 16-bit step)"


class Predictor:
    """A loaded model: classes, image size and an onnxruntime session."""

    def __init__(self, run_dir: Path, info: dict, session, name: str | None = None):
        self.run_dir = run_dir
        self.name = os.fsdecode(run_dir) if name is None else name  # Prediction.model: which model answered
        self.classes: list[str] = list(info["classes"])
        self.image_size: int = int(info["image_size"])
        self.band_norm: bool = info.get("input_band_norm", False)  # absent in models trained before it existed
        self.model_id: str = str(info["model_id"])
        self._session = session
        self._blas = ThreadpoolController()  # finds the BLAS libraries once (a few ms), not per recording

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """A window's spectrogram image prepared as this model was trained on it (band_norm if so, then its size)."""
        return mel.model_input(image, self.image_size, self.band_norm)

    def window_probabilities(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """uint8 (S, S) model-input images -> (n_windows, n_classes) float32 probabilities.

        Runs the network on WINDOWS_PER_RUN images at a time, taking them from `images` as it
        goes (a generator is never held whole). Raises ModelError if the network fails or gives
        no probabilities (probability_problem): the model is broken, and every answer would be.
        """
        outputs = [self._run(chunk) for chunk in _chunks(images, WINDOWS_PER_RUN)]
        return np.concatenate(outputs)

    def _run(self, images: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(images)[:, None].astype(np.float32) / np.float32(255.0)  # as training's ToTensor
        try:
            probabilities = self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        except Exception as error:  # onnxruntime's own types: a graph whose shapes or operators do not fit
            raise ModelError(f"{self.run_dir}: the network fails on its input ({first_line(error)})") from None
        problem = probability_problem(probabilities, len(images), len(self.classes))
        if problem:
            raise ModelError(f"{self.run_dir}: the network gives {problem}: the model is broken")
        return probabilities

    def predict_signal(self, signal: np.ndarray) -> tuple[np.ndarray, int]:
        """A prepared signal (audio.load_audio's output) -> (recording probabilities, number of windows).

        Raises audio.AudioError if every window's image is blank: there is nothing to predict from.
        """
        blank = []  # one flag per window, kept while the images themselves are not

        def model_inputs() -> Iterator[np.ndarray]:
            for _, image in mel.iter_recording_images(signal):
                blank.append(not image.any())
                yield self.model_input(image)

        # One BLAS thread, as in stage 1 (the images are the same): the mel product is small, and
        # OpenBLAS's threads, spinning between windows, fought onnxruntime's for the cores.
        # Measured on a 10-minute recording, 32-px model, busy 2-core machine: 5.2 s -> 1.7 s.
        with self._blas.limit(limits=1, user_api="blas"):
            window_probabilities = self.window_probabilities(model_inputs())
        if all(blank):
            raise audio.AudioError("gives only blank spectrogram images (nothing to predict from)")
        return metrics.combine_windows(window_probabilities), len(blank)

    def predict_file(self, path: str | os.PathLike, *, max_seconds: float = audio.DEFAULT_MAX_SECONDS) -> Prediction:
        """Classify one recording.

        Raises audio.AudioError when the recording cannot be read or used, ModelError when the
        network's answer is not finite (broken weights). The heart rate comes from the same
        signal (beats.segment, about 20 ms per 10 s): no second read.
        """
        signal = audio.load_audio(path, max_seconds=max_seconds)
        probabilities, windows = self.predict_signal(signal)
        heart_rate_bpm, beat_count, irregularity = recording_rhythm(signal, audio.SETTINGS.sample_rate)
        return Prediction(
            file=os.fsdecode(path), label=self.classes[int(np.argmax(probabilities))],
            probabilities={name: float(p) for name, p in zip(self.classes, probabilities)},
            windows=windows, model_id=self.model_id, model=self.name,
            heart_rate_bpm=heart_rate_bpm, beats=beat_count, beat_irregularity=irregularity,
        )


def recording_rhythm(signal: np.ndarray, sample_rate: int) -> tuple[float | None, int, float | None]:
    """(heart rate in bpm or None, beats, beat-interval irregularity or None) of a whole recording.

    Up to 1.5 x RHYTHM_PART_SECONDS: beats.segment's own figures. Longer: segmented in parts of
    RHYTHM_PART_SECONDS (the last one up to 1.5 x), so memory stays bounded; the rate is the median
    of the reliable parts', the beats their sum, the irregularity that of all their beat intervals
    (beats.irregularity). No reliable part: None, 0, None.
    """
    part = int(RHYTHM_PART_SECONDS * sample_rate)
    starts = list(range(0, max(signal.size - part // 2, 1), part))
    ends = starts[1:] + [signal.size]
    rhythms = [beats.segment(signal[start:end], sample_rate) for start, end in zip(starts, ends)]
    reliable = [rhythm for rhythm in rhythms if rhythm.reliable]
    if not reliable:
        return None, 0, None
    if len(rhythms) == 1:
        return reliable[0].heart_rate_bpm, reliable[0].beats, reliable[0].irregularity
    intervals = np.concatenate([rhythm.beat_intervals for rhythm in reliable])
    return (float(np.median([rhythm.heart_rate_bpm for rhythm in reliable])), sum(r.beats for r in reliable),
            beats.irregularity(intervals))


def predict_files(predictor: Predictor, paths: Iterable[str | os.PathLike], *,
                  max_seconds: float = audio.DEFAULT_MAX_SECONDS) -> Iterator[Prediction | Failure]:
    """One result per path, in order: a Prediction, or a Failure for a file that cannot be used.

    A ModelError (the network gives no usable answer) is raised, not yielded: it would be the
    same for every file.
    """
    for path in paths:
        try:
            yield predictor.predict_file(path, max_seconds=max_seconds)
        except audio.AudioError as error:
            yield Failure(os.fsdecode(path), str(error))


def probability_problem(probabilities: np.ndarray, n_rows: int, n_classes: int) -> str | None:
    """Why a network's output is not one probability distribution per window, or None if it is.

    The ONNX file is untrusted: a graph without its softmax, or with broken weights, runs and
    gives numbers that an argmax would still turn into labels.
    """
    if probabilities.shape != (n_rows, n_classes):
        return f"an output of shape {probabilities.shape} for {n_rows} windows of {n_classes} classes"
    if not np.isfinite(probabilities).all():
        return "non-finite probabilities (NaN or infinity)"
    if probabilities.min() < 0 or probabilities.max() > 1:
        return f"probabilities outside [0, 1] (from {probabilities.min():.4g} to {probabilities.max():.4g})"
    worst = float(np.abs(probabilities.sum(axis=1, dtype=np.float64) - 1).max())
    if worst > PROBABILITY_SUM_TOLERANCE:
        return f"probabilities that do not sum to 1 (off by up to {worst:.4g})"
    return None


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter), taken lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# ---------------------------------------------------------------- loading a model

def load_predictor(run_dir: str | os.PathLike, threads: int | None = None, *, name: str | None = None) -> Predictor:
    """Open a model folder: read model.json, check its audio settings, open model.onnx.

    Raises ModelError with a one-line message for a missing or incomplete folder, a malformed
    model.json, audio settings that differ from this code's, or an unusable ONNX file.
    threads: onnxruntime's intra-op threads (default and cap: the CPUs this process may use).
    name: what Prediction.model calls it (default: the folder); heartbeat.bundled passes "builtin".
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        hint = "train one with 'heartbeat train', or pass --model RUN"
        raise ModelError(f"{run_dir}: no model folder there ({hint})")
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: not a model folder (expected a training run's folder)")
    info = _read_model_info(run_dir)
    try:
        audio.check_settings(info["audio_settings"])
    except audio.AudioError as error:
        raise ModelError(f"{run_dir / MODEL_FILE}: {error}") from None
    onnx_path = run_dir / ONNX_FILE
    if not onnx_path.is_file():
        raise ModelError(f"{run_dir}: incomplete model folder: {ONNX_FILE} is missing")
    session = _open_session(onnx_path, threads)
    _check_contract(session, onnx_path, info)
    return Predictor(run_dir, info, session, name)


def _read_model_info(run_dir: Path) -> dict:
    path = run_dir / MODEL_FILE
    if not os.path.lexists(path):
        raise ModelError(f"{run_dir}: incomplete model folder: {MODEL_FILE} is missing")
    try:  # a bounded, link-safe read: the folder may be untrusted, and memory stays bounded whatever the file is
        info = json.loads(read_regular(path, MAX_MODEL_JSON_BYTES, links_within=run_dir).decode("utf-8"))
    except FileRefused as refused:
        raise ModelError(str(refused)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:  # RecursionError: nested too deep
        raise ModelError(f"{path}: not readable as JSON ({error})") from None
    if not isinstance(info, dict):
        raise ModelError(f"{path}: expected a JSON object")
    missing = [key for key in ("model_id", "classes", "image_size", "audio_settings") if key not in info]
    if missing:
        raise ModelError(f"{path}: missing {', '.join(missing)}")
    classes = info["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        raise ModelError(f"{path}: classes must be a list of two or more distinct names, got {classes!r:.200}")
    check_class_names(path, classes)
    if not (isinstance(info["image_size"], int) and info["image_size"] > 0):
        raise ModelError(f"{path}: image_size must be a positive integer, got {info['image_size']!r}")
    if not isinstance(info.get("input_band_norm", False), bool):
        raise ModelError(f"{path}: input_band_norm must be true or false, got {info['input_band_norm']!r}")
    if not isinstance(info["audio_settings"], dict):
        raise ModelError(f"{path}: audio_settings must be an object, got {info['audio_settings']!r}")
    return info


def check_class_names(path: Path, classes: list[str]) -> None:
    """ModelError naming model.json unless every class is a usable class name, by the rule data labels follow.

    A model folder may be untrusted: its class names are printed, and become csv columns and report cells.
    """
    problem = layouts.first_label_problem(classes)
    if problem:
        raise ModelError(f"{path}: {problem} (in classes)")


def _open_session(onnx_path: Path, threads: int | None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # One recording's windows are one small batch: parallelism is within each operator.
    options.intra_op_num_threads = worker_count(threads)  # more threads than CPUs only take turns
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # ENABLE_ALL includes the CPU layout transforms (NCHWc): measured 2.5x faster convolutions
    # than ENABLE_EXTENDED for about 0.15 s more session creation.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No memory pattern: ORT would plan one block for a whole 4-window batch and keep it, which
    # lifted the peak RSS of any recording of 8+ windows by about 90 MB (10 minutes at 512 px:
    # 386 -> 305 MiB, same speed; one 5 s window: +15 MiB). The arena still reuses buffers.
    options.enable_mem_pattern = False
    # Fatal only: ORT's warnings are not the user's business, and an error it logs (in terminal colours) is
    # also raised, and becomes our one line (ModelError); its log line would be a second.
    options.log_severity_level = 4
    try:
        return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        raise ModelError(f"{onnx_path}: not a usable ONNX model ({first_line(error)})") from None


def _check_contract(session, onnx_path: Path, info: dict) -> None:
    """The exported graph must take (n, 1, S, S) "image" and give (n, n_classes) "probabilities"."""
    inputs = {node.name: node.shape for node in session.get_inputs()}
    outputs = {node.name: node.shape for node in session.get_outputs()}
    size, n_classes = info["image_size"], len(info["classes"])
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelError(f"{onnx_path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                         f"found inputs {sorted(inputs)} and outputs {sorted(outputs)}")
    if list(inputs[INPUT_NAME][1:]) != [1, size, size]:
        raise ModelError(f"{onnx_path}: input shape {inputs[INPUT_NAME]} does not match image_size {size} in {MODEL_FILE}")
    if outputs[OUTPUT_NAME][1:] != [n_classes]:
        raise ModelError(f"{onnx_path}: output shape {outputs[OUTPUT_NAME]} does not match the "
                         f"{n_classes} classes in {MODEL_FILE}")


# ---------------------------------------------------------------- output

# The table is for a terminal: a file name's control characters are shown escaped (heartbeat.text);
# class names are usable class names (check_class_names), printable by that rule.

# After the classes: the heart-problem probability (only with a normal class), then the heart rate.
HEART_PROBLEM_COLUMN = "heart_problem"
BPM_COLUMN, BPM_WIDTH = "bpm", 5
NO_RATE = "-"  # the bpm cell when beats.segment found no reliable rhythm


def table_header(classes: list[str], file_width: int) -> str:
    names = [*classes, *([HEART_PROBLEM_COLUMN] if layouts.normal_class(classes) else [])]
    columns = "".join(f"{name:>{_probability_width(name)}}" for name in names)
    return f"{'file':<{file_width}}  {'predicted':<{_label_width(classes)}}{columns}  {BPM_COLUMN:>{BPM_WIDTH}}  windows"


def table_row(prediction: Prediction, file_width: int) -> str:
    classes = list(prediction.probabilities)
    cells = list(prediction.probabilities.items())  # a list: a class may itself be called heart_problem
    if prediction.heart_problem is not None:
        cells.append((HEART_PROBLEM_COLUMN, prediction.heart_problem))
    columns = "".join(f"{p:>{_probability_width(name)}.4f}" for name, p in cells)
    rate = NO_RATE if prediction.heart_rate_bpm is None else f"{prediction.heart_rate_bpm:.0f}"
    return (f"{printable(prediction.file):<{file_width}}  {prediction.label:<{_label_width(classes)}}{columns}  "
            f"{rate:>{BPM_WIDTH}}  {prediction.windows:>7}")


def _probability_width(name: str) -> int:
    return max(len(name), 6) + 2


def _label_width(classes: list[str]) -> int:
    return max(len("predicted"), *(len(name) for name in classes))
