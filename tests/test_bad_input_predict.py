"""heartbeat predict under bad input, through the real command line (`python -m heartbeat predict`).

Every input is made here (no binary fixtures): recordings of every kind, broken and
unusual-but-valid; special files (a FIFO, link loops, a device, a name that is not UTF-8);
a long recording; and model folders that are tampered with. They run against the session's
tiny trained model (conftest.trained_run), several files per predict call. For each case: the
exit code, one stderr line naming the file, the files after a bad one still predicted, nothing
on disk changed (predict writes nothing), and where memory is the point, the peak RSS.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from badinput import REPO, assert_one_line_error, run_cli, snapshot
from conftest import clicks, sine, write_wav

RATE = 4000
MiB = 2**20
# heartbeat predict's peak RSS on all 656 Dataset B recordings in one call (README, "Speed"):
# a recording of any length must stay under it.
RSS_OF_THE_656_FILE_CALL = 410 * MiB
# Above a call on one short file: what a short bad file may add (nothing), and what a long
# recording may add (its 4 kHz signal and a few windows). The old code's images of a 1 Hz
# header took 350 MiB more, of a 20-minute recording 80 MiB more.
RSS_SLACK = 48 * MiB


def heart_sound(seconds: float, rate: int = RATE) -> np.ndarray:
    """Thumps and a soft murmur-like tone, peak below 1: sound in the mel bands, every window."""
    return (clicks(seconds, rate) + sine(150, seconds, rate, 0.05)).astype(np.float32)


def predict(model: Path, *files, flags: tuple[str, ...] = ("--json",), timeout: float = 120):
    return run_cli("predict", "--model", model, *flags, *files, timeout=timeout)


def json_lines(stdout: str) -> list[dict]:
    def no_constants(name):  # NaN, Infinity: Python accepts them, JSON does not
        raise AssertionError(f"invalid JSON constant {name} in {stdout!r}")

    return [json.loads(line, parse_constant=no_constants) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def model(trained_run) -> Path:
    return trained_run["run"]


@pytest.fixture(scope="module")
def one_file_rss(model, tmp_path_factory) -> int:
    """Peak RSS of a predict call on one short good recording: the runtime and the model."""
    wav = write_wav(tmp_path_factory.mktemp("baseline") / "good.wav", heart_sound(6.0), RATE)
    result = predict(model, wav)
    assert result.returncode == 0, result.stderr
    return result.peak_rss_bytes


# ---------------------------------------------------------------- recordings

def _soundfile(signal, rate=RATE, subtype="PCM_16", format_="WAV"):
    def make(path: Path) -> None:
        soundfile.write(str(path), signal, rate, subtype=subtype, format=format_)
    return make


def _bytes(data: bytes):
    def make(path: Path) -> None:
        path.write_bytes(data)
    return make


def _cut(keep):
    """A good 16-bit wav whose bytes stop after keep(size of the file) bytes."""
    def make(path: Path) -> None:
        _soundfile(heart_sound(8.0))(path)
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])
    return make


def _with(value: float):
    signal = heart_sound(2.0)
    signal[100] = value
    return _soundfile(signal, subtype="FLOAT")


def _folder(path: Path) -> None:
    path.mkdir()


def _nothing(path: Path) -> None:
    pass


# The sound at ordinary level (peak in [0.5, 1)) and 2**60 times louder (about 1e18: finite in
# float32, but its power spectrum overflowed to a blank image): the same images, the same answer.
ORDINARY = heart_sound(7.0) / np.float32(np.abs(heart_sound(7.0)).max()) * np.float32(0.9)
HUGE = ORDINARY * np.float32(2.0**60)

# (file name, how to make it, None if it must be predicted, else what its one stderr line says)
RECORDINGS = [
    ("good.wav", _soundfile(heart_sound(6.0)), None),
    ("zero-bytes.wav", _bytes(b""), "not a readable audio file"),
    ("truncated-in-header.wav", _cut(lambda size: 30), "not a readable audio file"),  # of its 44
    ("truncated-in-data.wav", _cut(lambda size: size // 2), None),  # a shorter recording: what is there is used
    ("not-audio.wav", _bytes(b"this is a text file, not audio\n" * 50), "not a readable audio file"),
    ("nan.wav", _with(np.nan), "contains NaN or infinite samples"),
    ("inf.wav", _with(np.inf), "contains NaN or infinite samples"),
    ("silent.wav", _soundfile(np.zeros(4 * RATE, np.float32)), "is silent"),
    ("too-short.wav", _soundfile(heart_sound(0.3)), "is 0.30 s long, shorter than the minimum 0.5 s"),
    ("no-samples.wav", _soundfile(np.zeros(0, np.float32)), "holds no samples"),
    ("stereo.wav", _soundfile(np.stack([heart_sound(6.0), 0.5 * heart_sound(6.0)], axis=1)), None),
    ("int8.wav", _soundfile(heart_sound(6.0), subtype="PCM_U8"), None),
    ("int24.wav", _soundfile(heart_sound(6.0), subtype="PCM_24"), None),
    ("int32.wav", _soundfile(heart_sound(6.0), subtype="PCM_32"), None),
    ("float.wav", _soundfile(heart_sound(6.0), subtype="FLOAT"), None),
    ("8k.wav", _soundfile(heart_sound(6.0, 8000), 8000), None),
    ("44k.wav", _soundfile(heart_sound(6.0, 44100), 44100), None),
    ("2k-like-physionet.wav", _soundfile(heart_sound(6.0, 2000), 2000), None),
    ("flac.flac", _soundfile(heart_sound(6.0), format_="FLAC"), None),
    ("ogg.ogg", _soundfile(heart_sound(6.0), subtype="VORBIS", format_="OGG"), None),
    # 7 KB declaring 1 Hz: 3,600 s, which the old code cut into 705 windows (53 s, 582 MB).
    ("one-hz-header.wav", _soundfile(np.random.default_rng(0).uniform(-0.5, 0.5, 3600), 1),
     "sample rate 1 Hz is below the minimum 1000 Hz"),
    ("999-hz.wav", _soundfile(heart_sound(6.0, 999), 999), "sample rate 999 Hz is below the minimum 1000 Hz"),
    ("longer-than-max-seconds.wav", _soundfile(heart_sound(40.0)), "is 40 s long, longer than --max-seconds 30"),
    ("ordinary-level.wav", _soundfile(ORDINARY, subtype="FLOAT"), None),
    ("huge-level.wav", _soundfile(HUGE, subtype="FLOAT"), None),
    ("a-folder.wav", _folder, "is a directory"),
    ("missing.wav", _nothing, "no such file"),
    ("good-again.wav", _soundfile(heart_sound(6.0)), None),
]


def test_every_bad_recording_gets_one_line_and_the_others_are_predicted(model, one_file_rss, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    paths = []
    for name, make, _ in RECORDINGS:
        make(folder / name)
        paths.append(folder / name)
    before = snapshot(tmp_path)
    model_before = snapshot(model)

    result = predict(model, *paths, flags=("--json", "--max-seconds", "30"))

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr  # numpy's overflow warnings
    predicted = json_lines(result.stdout)
    assert [line["file"] for line in predicted] == [str(path) for path, (*_, problem) in zip(paths, RECORDINGS)
                                                    if problem is None]
    errors = result.error_lines()
    expected = [(path, problem) for path, (*_, problem) in zip(paths, RECORDINGS) if problem is not None]
    assert len(errors) == len(expected), errors
    for line, (path, problem) in zip(errors, expected):
        assert line.startswith(f"heartbeat: {path}: ") and problem in line, line
    by_name = {Path(line["file"]).name: line for line in predicted}
    for line in predicted:
        assert all(math.isfinite(p) and 0 <= p <= 1 for p in line["probabilities"].values())
    assert by_name["huge-level.wav"]["probabilities"] == by_name["ordinary-level.wav"]["probabilities"]
    assert by_name["truncated-in-data.wav"]["windows"] == 1 and by_name["44k.wav"]["windows"] == 2
    assert snapshot(tmp_path) == before and snapshot(model) == model_before
    # The 1 Hz header is refused before its samples are read: no more memory than one short file.
    assert result.peak_rss_bytes < one_file_rss + RSS_SLACK


# ---------------------------------------------------------------- special files

@pytest.mark.timeout(90)
def test_special_files_are_refused_without_blocking_and_a_non_utf8_name_is_predicted(model, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = write_wav(folder / "good.wav", heart_sound(6.0), RATE)
    os.mkfifo(folder / "fifo.wav")  # opening it for reading would wait for a writer forever
    (folder / "loop.wav").symlink_to("loop.wav")
    (folder / "broken-link.wav").symlink_to("gone.wav")
    (folder / "link-to-good.wav").symlink_to("good.wav")
    not_utf8 = os.path.join(os.fsencode(folder), b"rec\xff.wav")
    shutil.copy(good, not_utf8)
    cases = [
        (folder / "fifo.wav", "is not a regular file (a FIFO)"),
        (good, None),
        (folder / "loop.wav", "is a symbolic link loop"),
        (folder / "broken-link.wav", "is a broken symbolic link"),
        (Path("/dev/null"), "is not a regular file (a character device)"),
        (folder / "link-to-good.wav", None),
        (not_utf8, None),
    ]
    before = snapshot(tmp_path)

    result = predict(model, *(path for path, _ in cases), flags=(), timeout=60)  # the table: names printed as given

    assert result.returncode == 1, result.stderr
    _intended_use, header, *rows = result.stdout.splitlines()
    assert header.split()[:2] == ["file", "predicted"]
    # The name's byte 0xff is written back as it was given (run_cli shows an undecodable byte as U+FFFD).
    assert [row.split()[0] for row in rows] == [str(good), str(folder / "link-to-good.wav"),
                                                str(folder / "rec\ufffd.wav")]
    assert len({tuple(row.split()[1:]) for row in rows}) == 1  # the same recording three times: the same answer
    errors = result.error_lines()
    expected = [(path, problem) for path, problem in cases if problem is not None]
    assert len(errors) == len(expected), errors
    for line, (path, problem) in zip(errors, expected):
        assert line.startswith(f"heartbeat: {path}: ") and problem in line, line
    assert snapshot(tmp_path) == before


def test_a_non_utf8_name_stays_valid_json(model, tmp_path):
    good = write_wav(tmp_path / "good.wav", heart_sound(6.0), RATE)
    not_utf8 = os.path.join(os.fsencode(tmp_path), b"rec\xff.wav")
    os.rename(good, not_utf8)

    result = predict(model, not_utf8)

    assert result.returncode == 0, result.stderr
    (line,) = json_lines(result.stdout)
    assert os.fsencode(line["file"]) == not_utf8  # the escaped name gives back the file's bytes


# ---------------------------------------------------------------- long recordings

def test_a_ten_minute_recording_is_predicted_in_bounded_memory(model, one_file_rss, tmp_path):
    wav = write_wav(tmp_path / "ten-minutes.wav", heart_sound(600.0), RATE)

    result = predict(model, wav, timeout=180)

    assert result.returncode == 0, result.stderr
    (line,) = json_lines(result.stdout)
    assert line["windows"] == math.ceil(600 / 5.11)
    assert result.peak_rss_bytes < RSS_OF_THE_656_FILE_CALL
    assert result.peak_rss_bytes < one_file_rss + RSS_SLACK


# ---------------------------------------------------------------- model folders

def _copy_of(run: Path, folder: Path) -> Path:
    """A model folder like `run`, copied (to edit). Not a hard link to the weights: onnx refuses to read external
    data with several links (a guard against hard-link attacks), so a link here would break every later test that
    loads `run` through load_model. Not a symbolic link: onnxruntime refuses weights outside the model's folder."""
    folder.mkdir()
    for name in ("model.json", "model.onnx", "model.onnx.data"):
        shutil.copy(run / name, folder / name)
    return folder


def _edit_model_json(change):
    def make(run: Path, folder: Path) -> Path:
        folder = _copy_of(run, folder)
        info = json.loads((folder / "model.json").read_text())
        change(info)
        (folder / "model.json").write_text(json.dumps(info))
        return folder
    return make


def _truncated_onnx(run: Path, folder: Path) -> Path:
    folder = _copy_of(run, folder)
    graph = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(graph[: len(graph) // 2])
    return folder


def _random_weights(run: Path, folder: Path) -> Path:
    """The weights file replaced by random bytes of the same size: the graph loads, the answers are NaN."""
    folder = _copy_of(run, folder)
    size = (run / "model.onnx.data").stat().st_size
    (folder / "model.onnx.data").unlink()
    (folder / "model.onnx.data").write_bytes(np.random.default_rng(0).bytes(size))
    return folder


def _model_json_replaced(replace):
    def make(run: Path, folder: Path) -> Path:
        folder = _copy_of(run, folder)
        (folder / "model.json").unlink()
        replace(folder / "model.json")
        return folder
    return make


def _huge_model_json(path: Path) -> None:
    with open(path, "wb") as handle:  # sparse: 2 GiB declared, nothing allocated; a whole read would be 2 GiB
        handle.truncate(2 << 30)


TAMPERED = [
    ("model-json-fifo", _model_json_replaced(os.mkfifo), "not a regular file"),  # a read would wait forever
    ("model-json-2gib", _model_json_replaced(_huge_model_json), "more than the limit of"),
    ("four-classes", _edit_model_json(lambda info: info["classes"].append("other")), "does not match the 4 classes"),
    ("hop-length", _edit_model_json(lambda info: info["audio_settings"].update(hop_length=41)),
     "hop_length: model has 41, this code has 40"),
    ("truncated-onnx", _truncated_onnx, "not a usable ONNX model"),
    ("random-weights", _random_weights, "non-finite probabilities"),
]


@pytest.mark.parametrize("name, make, problem", TAMPERED, ids=[case[0] for case in TAMPERED])
def test_a_tampered_model_folder_is_one_line_and_exit_2(model, tmp_path, name, make, problem):
    folder = make(model, tmp_path / name)
    wavs = [write_wav(tmp_path / f"{index}.wav", heart_sound(6.0), RATE) for index in range(2)]
    before = snapshot(tmp_path)

    result = predict(folder, *wavs)

    line = assert_one_line_error(result, str(folder), code=2)
    assert line.startswith(f"heartbeat: error: {folder}") and problem in line, line
    assert result.stdout == ""  # a broken model gives no answer at all, not NaN, not an arbitrary label
    assert snapshot(tmp_path) == before


class _CreatesMarker:
    """Unpickling this creates the marker file: what a malicious pickle's code would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_in_the_model_folder_never_runs(model, tmp_path):
    marker = tmp_path / "pickle-ran"
    payload = pickle.dumps(_CreatesMarker(marker))
    pickle.loads(payload).close()  # the payload works: loading it does create the marker
    marker.unlink()
    folder = _copy_of(model, tmp_path / "untrusted")
    for name in ("export.pkl", "model.pkl", "model.pth", "model.pt", "pytorch_model.bin", "checkpoint.pth"):
        (folder / name).write_bytes(payload)
    wav = write_wav(tmp_path / "good.wav", heart_sound(6.0), RATE)
    before = snapshot(tmp_path)

    result = predict(folder, wav)

    assert result.returncode == 0, result.stderr
    assert [line["file"] for line in json_lines(result.stdout)] == [str(wav)]
    assert not marker.exists()
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- untrusted model folders, built here

TINY_SIZE = 8  # image_size of the tiny models: the graph ignores the image's content
TINY_CLASSES = ["normal", "murmur", "extrastole"]
GOOD_PROBABILITIES = [0.2, 0.3, 0.5]


def _tiny_graph(nodes, initializers, n_classes: int):
    """An ONNX model with predict's contract: "image" (batch, 1, S, S) -> "probabilities" (batch, n_classes)."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, TINY_SIZE, TINY_SIZE])
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes])
    graph = helper.make_graph(nodes, "tiny", [image], [output], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def constant_output_model(values: list[float]):
    """A graph whose output is `values` for every window: image -> flatten -> x 0 -> + values."""
    from onnx import helper, numpy_helper

    zeros = numpy_helper.from_array(np.zeros((TINY_SIZE * TINY_SIZE, len(values)), np.float32), "zeros")
    bias = numpy_helper.from_array(np.asarray(values, np.float32), "values")
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "zeros"], ["nothing"]),
             helper.make_node("Add", ["nothing", "values"], ["probabilities"])]
    return _tiny_graph(nodes, [zeros, bias], len(values))


def failing_model(n_classes: int):
    """A valid graph that fails inside session.run: it reshapes each batch to 5 x 3 values, which no image has."""
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.asarray([5, 3], np.int64), "shape")
    return _tiny_graph([helper.make_node("Reshape", ["image", "shape"], ["probabilities"])], [shape], n_classes)


def tiny_model_folder(folder: Path, graph, classes=TINY_CLASSES, info_text: str | None = None) -> Path:
    """A model folder: model.json (these classes, this code's audio settings) and the graph as model.onnx."""
    import onnx

    from heartbeat.data import audio

    folder.mkdir()
    onnx.save_model(graph, str(folder / "model.onnx"))
    info = {"model_id": "tiny", "classes": classes, "image_size": TINY_SIZE, "audio_settings": audio.SETTINGS.to_dict()}
    (folder / "model.json").write_text(json.dumps(info) if info_text is None else info_text)
    return folder


@pytest.fixture
def two_wavs(tmp_path) -> list[Path]:
    return [write_wav(tmp_path / f"rec{index}.wav", heart_sound(6.0), RATE) for index in range(2)]


def test_a_tiny_model_with_true_probabilities_predicts(tmp_path, two_wavs):
    """The control for the cases below: the tiny graph itself is a usable model."""
    folder = tiny_model_folder(tmp_path / "tiny", constant_output_model(GOOD_PROBABILITIES))

    result = predict(folder, *two_wavs)

    assert result.returncode == 0, result.stderr
    assert [line["label"] for line in json_lines(result.stdout)] == ["extrastole", "extrastole"]


UNTRUSTED_CLASSES = [
    ("escape", ["normal", "\x1b[2Jmurmur", "extrastole"]),
    ("newline", ["normal", "mur\nmur", "extrastole"]),
    ("equals", ["normal", "=HYPERLINK(x)", "extrastole"]),
    ("slash", ["normal", "../murmur", "extrastole"]),
    ("leading-dot", ["normal", ".murmur", "extrastole"]),
]


@pytest.mark.parametrize("name, classes", UNTRUSTED_CLASSES, ids=[case[0] for case in UNTRUSTED_CLASSES])
def test_class_names_a_data_label_could_not_have_are_refused(tmp_path, two_wavs, name, classes):
    folder = tiny_model_folder(tmp_path / name, constant_output_model(GOOD_PROBABILITIES), classes)

    result = predict(folder, *two_wavs, flags=())

    line = assert_one_line_error(result, str(folder / "model.json"), code=2)
    assert "not a usable class name" in line and "\x1b" not in result.stderr, line
    assert result.stdout == ""


@pytest.mark.parametrize("name, classes", UNTRUSTED_CLASSES, ids=[case[0] for case in UNTRUSTED_CLASSES])
def test_the_torch_side_refuses_the_same_class_names(tmp_path, name, classes):
    from heartbeat.train import model as torch_model

    folder = tiny_model_folder(tmp_path / name, constant_output_model(GOOD_PROBABILITIES), classes)

    with pytest.raises(torch_model.ModelError, match="not a usable class name"):
        torch_model.load_model(folder)


def test_a_deeply_nested_model_json_is_one_line(tmp_path, two_wavs):
    from heartbeat.train import model as torch_model

    depth = 100_000
    folder = tiny_model_folder(tmp_path / "nested", constant_output_model(GOOD_PROBABILITIES),
                               info_text="[" * depth + "]" * depth)

    result = predict(folder, *two_wavs)

    line = assert_one_line_error(result, str(folder / "model.json"), code=2)
    assert "not readable as JSON" in line
    with pytest.raises(torch_model.ModelError, match="cannot be read"):
        torch_model.load_model(folder)


NOT_PROBABILITIES = [
    ("negative", [-0.5, 1.0, 0.5], "outside [0, 1]"),
    ("above-one", [0.0, 1.5, -0.5], "outside [0, 1]"),
    ("sum-1.5", [0.5, 0.5, 0.5], "do not sum to 1"),
    ("sum-0.9", [0.3, 0.3, 0.3], "do not sum to 1"),
]


@pytest.mark.parametrize("name, values, problem", NOT_PROBABILITIES, ids=[case[0] for case in NOT_PROBABILITIES])
def test_outputs_that_are_not_probabilities_are_one_line_naming_the_model(tmp_path, two_wavs, name, values, problem):
    folder = tiny_model_folder(tmp_path / name, constant_output_model(values))

    result = predict(folder, *two_wavs)

    line = assert_one_line_error(result, str(folder), code=2)
    assert problem in line, line
    assert result.stdout == ""


def test_a_model_that_fails_inside_the_run_is_one_line_naming_it(tmp_path, two_wavs):
    folder = tiny_model_folder(tmp_path / "fails", failing_model(len(TINY_CLASSES)))

    result = predict(folder, *two_wavs)

    line = assert_one_line_error(result, str(folder), code=2)
    assert "the network fails on its input" in line, line
    assert result.stdout == ""


# ---------------------------------------------------------------- terminal output

def test_control_characters_in_file_names_are_escaped_in_the_table_and_the_messages(tmp_path):
    folder = tiny_model_folder(tmp_path / "tiny", constant_output_model(GOOD_PROBABILITIES))
    good = write_wav(tmp_path / "a\x1b[2Jcleared\nfake row.wav", heart_sound(6.0), RATE)
    bad = tmp_path / "b\x1b]0;title\x07.wav"
    bad.write_bytes(b"not audio")

    result = predict(folder, good, bad, flags=())

    assert result.returncode == 1, result.stderr
    for output in (result.stdout, result.stderr):
        assert "\x1b" not in output and "\x07" not in output
    _intended_use, header, row = result.stdout.splitlines()  # the newline in the name made no second row
    assert row.startswith(str(tmp_path / "a\\x1b[2Jcleared\\nfake row.wav") + "  extrastole")
    assert len(header) == len(row)  # the columns line up with the escaped name
    (error,) = result.error_lines()
    assert error.startswith(f"heartbeat: {tmp_path}/b\\x1b]0;title\\x07.wav: not a readable audio file"), error


# ---------------------------------------------------------------- standard output that cannot take the answers

def _predict_into(stdout, model: Path, *files) -> subprocess.CompletedProcess:
    """`python -m heartbeat predict` with its standard output on `stdout` (a file or a descriptor)."""
    return subprocess.run([sys.executable, "-m", "heartbeat", "predict", "--model", str(model), *map(str, files)],
                          stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_standard_output_on_a_full_device_is_one_line_and_exit_2(tmp_path, two_wavs):
    folder = tiny_model_folder(tmp_path / "tiny", constant_output_model(GOOD_PROBABILITIES))

    with open("/dev/full", "w") as full:
        result = _predict_into(full, folder, *two_wavs)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "standard output cannot be written (No space left on device)" in lines[0], lines


def test_a_closed_pipe_stops_quietly_as_unix_tools_do(tmp_path, two_wavs):
    folder = tiny_model_folder(tmp_path / "tiny", constant_output_model(GOOD_PROBABILITIES))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as `| head -n0` or a closed `| head -n1`
    try:
        result = _predict_into(write_end, folder, *two_wavs)
    finally:
        os.close(write_end)

    assert result.returncode == 141, result.stderr  # 128 + SIGPIPE, as the shell reports for coreutils
    assert result.stderr == ""


# ---------------------------------------------------------------- flags

def test_an_absurd_max_seconds_is_refused_at_parse_time(tmp_path, two_wavs):
    result = run_cli("predict", "--model", tmp_path / "no-model", "--max-seconds", "1e308", *two_wavs)

    line = assert_one_line_error(result, "--max-seconds", code=2)
    assert "up to 86400" in line, line
