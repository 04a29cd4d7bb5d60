"""heartbeat predict: same answers as the trained Learner, every bad input, JSON schema, formats, safety.

Uses the session's tiny trained model (conftest.trained_run: 32 px, trained from scratch).
The CLI is called in-process through heartbeat.cli.main; subprocesses only where a fresh
interpreter is the point (what gets imported, the standalone script).
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from conftest import write_wav
from heartbeat import cli, config
from heartbeat.data import audio
from heartbeat.data import mel
from heartbeat.predict import INPUT_NAME, INTENDED_USE, WINDOWS_PER_RUN, ModelError, Prediction, load_predictor, predict_files
from heartbeat.data.synth import heartbeat_signal

ROOT = Path(__file__).resolve().parents[1]
JSON_KEYS = {"file", "label", "probabilities", "windows", "model_id"}  # the first five: never removed or renamed
ADDED_KEYS = {"model", "heart_problem", "heart_rate_bpm", "beats", "beat_irregularity"}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["predict", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def model_folder_copy(run: Path, destination: Path) -> Path:
    """A model folder like `run`: model.json copied (to edit), the large files symlinked."""
    destination.mkdir()
    shutil.copy(run / "model.json", destination / "model.json")
    for name in ("model.onnx", "model.onnx.data"):  # the network's one copy (model.json: weights_file)
        (destination / name).symlink_to(run / name)
    return destination


@pytest.fixture
def good_wav(tmp_path) -> Path:
    return write_wav(tmp_path / "good.wav", heartbeat_signal("normal", 6.0, rng=np.random.default_rng(1)), 4000)


# ---------------------------------------------------------------- same answers as training

def assert_predict_matches_the_report(run: Path, data: Path, capsys) -> None:
    """heartbeat predict on a run's validation recordings gives its predictions.csv, to 1e-4."""
    with open(run / "predictions.csv", newline="") as handle:
        expected = list(csv.DictReader(handle))
    classes = json.loads((run / "model.json").read_text())["classes"]
    assert expected and any(int(row["windows"]) > 1 for row in expected)  # multi-window recordings are covered
    paths = [data / "set_b" / row["recording"] for row in expected]

    code, out, err = run_cli(capsys, "--json", "--model", run, *paths)

    assert (code, err) == (0, "")
    results = json_lines(out)
    assert [result["file"] for result in results] == [str(path) for path in paths]
    for row, result in zip(expected, results):
        assert result["label"] == row["predicted"], row["recording"]
        assert result["windows"] == int(row["windows"]), row["recording"]
        for name in classes:
            assert result["probabilities"][name] == pytest.approx(float(row[f"prob_{name}"]), abs=1e-4), row["recording"]


def test_predict_matches_the_learners_validation_predictions(trained_run, capsys):
    assert_predict_matches_the_report(trained_run["run"], trained_run["data"], capsys)


def test_predict_matches_a_features_mode_report(trained_run, standin_weights, tmp_path, capsys):
    # The default mode scores the validation side from cached body features: the report's
    # probabilities must still be the ones the exported whole network gives.
    from heartbeat.train.run import TrainSettings, train

    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8)
    run = train(trained_run["spectrograms"], tmp_path / "run", settings, progress=False).run_dir
    assert "features" in json.loads((run / "config.json").read_text())["training_mode"]
    assert capsys.readouterr().out == ""  # progress=False trains silently
    assert_predict_matches_the_report(run, trained_run["data"], capsys)


def test_onnx_graph_matches_the_trained_torch_network(trained_run):
    import torch

    from heartbeat.train import model

    network, info = model.load_model(trained_run["run"])
    size = info["image_size"]
    images = list(np.random.default_rng(0).integers(0, 256, size=(5, size, size), dtype=np.uint8))
    with torch.no_grad():
        expected = model.Classifier(network).eval()(model.images_to_tensor(images)).numpy()
    actual = load_predictor(trained_run["run"]).window_probabilities(images)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_file_names_agree_with_the_model_module():
    from heartbeat import predict
    from heartbeat.train import model

    assert (predict.MODEL_FILE, predict.ONNX_FILE) == (model.MODEL_FILE, model.ONNX_FILE)


# ---------------------------------------------------------------- output

def test_json_lines_schema(trained_run, tmp_path, capsys):
    info = json.loads((trained_run["run"] / "model.json").read_text())
    long_wav = write_wav(tmp_path / "long.wav", heartbeat_signal("murmur", 12.0, rng=np.random.default_rng(2)), 4000)
    short_wav = write_wav(tmp_path / "short.wav", heartbeat_signal("extrastole", 3.0, rng=np.random.default_rng(3)), 4000)

    code, out, _ = run_cli(capsys, "--json", "--model", trained_run["run"], long_wav, short_wav)

    assert code == 0
    results = json_lines(out)
    assert len(results) == 2
    for result in results:
        assert set(result) == JSON_KEYS | ADDED_KEYS
        assert result["model"] == str(trained_run["run"])
        assert result["heart_problem"] == pytest.approx(1 - result["probabilities"]["normal"])
        assert isinstance(result["beats"], int)
        assert isinstance(result["file"], str) and isinstance(result["label"], str)
        assert list(result["probabilities"]) == info["classes"]
        assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in result["probabilities"].values())
        assert math.isclose(sum(result["probabilities"].values()), 1.0, abs_tol=1e-5)
        assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
        assert result["model_id"] == info["model_id"]
    assert [result["windows"] for result in results] == [math.ceil(12.0 / audio.SETTINGS.window_seconds), 1]


def test_table_output(trained_run, good_wav, capsys):
    classes = json.loads((trained_run["run"] / "model.json").read_text())["classes"]

    code, out, _ = run_cli(capsys, "--model", trained_run["run"], good_wav)

    assert code == 0
    intended_use, header, row = out.splitlines()
    assert intended_use == INTENDED_USE
    assert header.split() == ["file", "predicted", *classes, "heart_problem", "bpm", "windows"]
    fields = row.split()
    assert fields[0] == str(good_wav) and fields[1] in classes and fields[-1] == "2"
    probabilities = dict(zip(classes, map(float, fields[2:2 + len(classes)])))
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-3)
    assert float(fields[-3]) == pytest.approx(1 - probabilities["normal"], abs=2e-4)  # heart_problem
    assert fields[-2] == "-" or 40 <= float(fields[-2]) <= 200  # bpm


def test_default_model_is_the_latest_run(trained_run, good_wav, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "latest").symlink_to(trained_run["run"])
    monkeypatch.setattr(config, "RUNS_DIR", runs)

    code, out, _ = run_cli(capsys, "--json", good_wav)

    assert code == 0
    assert json_lines(out)[0]["model_id"] == json.loads((trained_run["run"] / "model.json").read_text())["model_id"]


# ---------------------------------------------------------------- input formats

def test_stereo_44k_float_and_mono_4k_16bit_of_the_same_sound_agree(trained_run, tmp_path, capsys):
    sound = heartbeat_signal("murmur", 6.0, 4000, rng=np.random.default_rng(7))
    mono_4k = write_wav(tmp_path / "mono_4k_16bit.wav", sound, 4000, "PCM_16")
    at_44k = soxr.resample(sound, 4000, 44100, quality="HQ")
    stereo_44k = write_wav(tmp_path / "stereo_44k_float.wav", np.stack([at_44k, 0.7 * at_44k], axis=1), 44100, "FLOAT")
    assert soundfile.info(str(stereo_44k)).channels == 2

    code, out, _ = run_cli(capsys, "--json", "--model", trained_run["run"], stereo_44k, mono_4k)

    assert code == 0
    stereo, mono = json_lines(out)
    assert stereo["label"] == mono["label"]
    # Same duration once resampled (read as 4 kHz, the 44.1 kHz file would be 11x longer: 13 windows).
    assert stereo["windows"] == mono["windows"] == 2
    # Not identical: the resampler's anti-aliasing roll-off dims the top mel bands (above ~1.8 kHz).
    for name, p in mono["probabilities"].items():
        assert stereo["probabilities"][name] == pytest.approx(p, abs=0.1)


@pytest.mark.parametrize("format_, subtype, suffix, tolerance", [
    # 8-bit: quantisation noise at -48 dB shows in an 80 dB image; how far that moves a model
    # trained from scratch for one epoch varies from run to run (0.07 seen)
    ("WAV", "PCM_U8", "wav", 0.1),
    ("WAV", "PCM_16", "wav", 0.01),
    ("WAV", "PCM_24", "wav", 1e-4),
    ("WAV", "PCM_32", "wav", 1e-4),
    ("WAV", "DOUBLE", "wav", 1e-4),
    ("FLAC", "PCM_16", "flac", 0.01),
    ("OGG", "VORBIS", "ogg", 0.03),  # lossy
])
def test_audio_formats(trained_run, tmp_path, capsys, format_, subtype, suffix, tolerance):
    sound = heartbeat_signal("extrastole", 6.0, 4000, rng=np.random.default_rng(4))
    reference = write_wav(tmp_path / "reference.wav", sound, 4000, "FLOAT")
    other = tmp_path / f"other.{suffix}"
    soundfile.write(str(other), sound, 4000, subtype=subtype, format=format_)
    # The samples soundfile decodes from `other`, as a float file: predict must read `other` as exactly these.
    decoded = write_wav(tmp_path / "decoded.wav", soundfile.read(str(other), dtype="float32")[0], 4000, "FLOAT")

    code, out, err = run_cli(capsys, "--json", "--model", trained_run["run"], reference, other, decoded)

    assert (code, err) == (0, "")
    expected, actual, as_decoded = json_lines(out)
    assert actual == {**as_decoded, "file": str(other)}
    assert actual["windows"] == expected["windows"]
    for name, p in expected["probabilities"].items():
        assert actual["probabilities"][name] == pytest.approx(p, abs=tolerance)


# ---------------------------------------------------------------- bad input

def test_every_bad_file_gets_one_line_and_the_good_ones_are_still_predicted(trained_run, tmp_path, good_wav, capsys):
    rate = 4000
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 2 * rate).astype(np.float32)
    with_nan, with_inf = noise.copy(), noise.copy()
    with_nan[100] = np.nan
    with_inf[100] = np.inf
    (tmp_path / "text.wav").write_text("this is not audio\n")
    (tmp_path / "folder.wav").mkdir()
    bad = {
        tmp_path / "missing.wav": "no such file",
        tmp_path / "folder.wav": "is a directory",
        tmp_path / "text.wav": "not a readable audio file",
        write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), rate): "no samples",
        write_wav(tmp_path / "short.wav", noise[: int(0.3 * rate)], rate): "0.30 s long, shorter than the minimum 0.5 s",
        write_wav(tmp_path / "nan.wav", with_nan, rate, "FLOAT"): "NaN or infinite",
        write_wav(tmp_path / "inf.wav", with_inf, rate, "FLOAT"): "NaN or infinite",
        write_wav(tmp_path / "silent.wav", np.zeros(2 * rate, np.float32), rate): "silent",
    }
    paths = list(bad)
    paths.insert(4, good_wav)  # a good file among the bad ones, and another at the end
    paths.append(good_wav)

    code, out, err = run_cli(capsys, "--json", "--model", trained_run["run"], *paths)

    assert code == cli.EXIT_FAILED
    assert [result["file"] for result in json_lines(out)] == [str(good_wav)] * 2
    lines = err.splitlines()
    assert len(lines) == len(bad)
    for line, (path, problem) in zip(lines, bad.items()):
        assert line.startswith(f"heartbeat: {path}: ") and problem in line, line


def test_max_seconds_is_applied_to_each_file(trained_run, tmp_path, capsys):
    twelve = write_wav(tmp_path / "twelve.wav", heartbeat_signal("normal", 12.0, rng=np.random.default_rng(5)), 4000)

    refused = run_cli(capsys, "--json", "--model", trained_run["run"], "--max-seconds", "10", twelve)
    accepted = run_cli(capsys, "--json", "--model", trained_run["run"], "--max-seconds", "12.5", twelve)

    assert refused == (cli.EXIT_FAILED, "", f"heartbeat: {twelve}: is 12 s long, longer than --max-seconds 10\n")
    assert accepted[0] == 0 and json_lines(accepted[1])[0]["windows"] == 3


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "ten"])
def test_max_seconds_must_be_a_positive_number(value, good_wav, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["predict", "--max-seconds", value, str(good_wav)])
    assert exit_.value.code == cli.EXIT_USAGE
    assert "argument --max-seconds: " in capsys.readouterr().err  # the flag is known, the value refused


class _SpySession:
    """Passes network calls to the real session, noting how many windows had been made by then."""

    def __init__(self, session, windows_made: list):
        self.session, self.windows_made, self.calls = session, windows_made, []

    def run(self, names, feeds):
        self.calls.append((len(self.windows_made), len(feeds[INPUT_NAME])))
        return self.session.run(names, feeds)


def test_a_long_recordings_windows_are_made_and_run_a_few_at_a_time(trained_run, monkeypatch):
    # A recording's windows never wait all together: that memory grew with the recording's length.
    predictor = load_predictor(trained_run["run"])
    windows_made = []
    make_windows = mel.iter_recording_images

    def counted(signal, settings=audio.SETTINGS):
        for window in make_windows(signal, settings):
            windows_made.append(window[0])
            yield window

    monkeypatch.setattr(mel, "iter_recording_images", counted)
    spy = predictor._session = _SpySession(predictor._session, windows_made)
    signal = heartbeat_signal("murmur", 61.0, rng=np.random.default_rng(6))  # ceil(61 / 5.11) = 12 windows

    _, windows = predictor.predict_signal(signal)

    assert windows == len(windows_made) == 12
    assert sum(size for _, size in spy.calls) == 12
    run_so_far = 0
    for made, size in spy.calls:
        assert size <= WINDOWS_PER_RUN
        assert made - run_so_far <= WINDOWS_PER_RUN  # made but not yet through the network
        run_so_far += size


class _NaNSession:
    """A network whose weights are broken: every probability is NaN."""

    def run(self, names, feeds):
        return [np.full((len(feeds[INPUT_NAME]), 3), np.nan, np.float32)]


def test_non_finite_probabilities_are_a_model_error_not_an_answer(trained_run, good_wav):
    predictor = load_predictor(trained_run["run"])
    predictor._session = _NaNSession()

    with pytest.raises(ModelError, match=f"^{re.escape(str(trained_run['run']))}: the network gives non-finite"):
        predictor.predict_file(good_wav)
    with pytest.raises(ModelError):
        list(predict_files(predictor, [good_wav, good_wav]))  # raised, not yielded as one file's failure
    nan = Prediction(file="x.wav", label="murmur", probabilities={"murmur": math.nan}, windows=1, model_id="m")
    with pytest.raises(ValueError):
        nan.to_json()  # the last guard: `NaN` is not JSON


def test_a_recording_whose_images_are_all_blank_is_not_predicted(trained_run, good_wav, monkeypatch):
    blank = np.zeros((audio.SETTINGS.image_size,) * 2, np.uint8)
    monkeypatch.setattr(mel, "iter_recording_images", lambda signal, settings=audio.SETTINGS: iter([(0.0, blank)] * 2))

    with pytest.raises(audio.AudioError, match="blank"):
        load_predictor(trained_run["run"]).predict_file(good_wav)


# ---------------------------------------------------------------- bad model folders

def _missing_folder(run, tmp_path):
    return tmp_path / "no-such-run", "no model folder there"


def _without_model_json(run, tmp_path):
    folder = model_folder_copy(run, tmp_path / "run")
    (folder / "model.json").unlink()
    return folder, "model.json is missing"


def _without_onnx(run, tmp_path):
    folder = model_folder_copy(run, tmp_path / "run")
    (folder / "model.onnx").unlink()
    return folder, "model.onnx is missing"


def _without_onnx_weights(run, tmp_path):
    folder = model_folder_copy(run, tmp_path / "run")
    (folder / "model.onnx.data").unlink()
    return folder, "model.onnx.data"


def _malformed_model_json(run, tmp_path):
    folder = model_folder_copy(run, tmp_path / "run")
    (folder / "model.json").write_text('{"classes": ["a", ')
    return folder, "not readable as JSON"


def _different_hop_length(run, tmp_path):
    folder = model_folder_copy(run, tmp_path / "run")
    info = json.loads((folder / "model.json").read_text())
    info["audio_settings"]["hop_length"] += 1
    (folder / "model.json").write_text(json.dumps(info))
    return folder, f"hop_length: model has {audio.SETTINGS.hop_length + 1}, this code has {audio.SETTINGS.hop_length}"


def _not_onnx(run, tmp_path):
    folder = model_folder_copy(run, tmp_path / "run")
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").write_bytes(b"not a model")
    return folder, "not a usable ONNX model"


@pytest.mark.parametrize("make_folder", [_missing_folder, _without_model_json, _without_onnx, _without_onnx_weights,
                                         _malformed_model_json,
                                         _different_hop_length, _not_onnx])
def test_an_unusable_model_folder_is_one_clear_message(trained_run, tmp_path, good_wav, capsys, make_folder):
    folder, problem = make_folder(trained_run["run"], tmp_path)

    code, out, err = run_cli(capsys, "--model", folder, good_wav)

    assert code == cli.EXIT_USAGE
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"heartbeat: error: {folder}") and problem in err, err


def test_a_missing_run_folder_says_how_to_get_one(tmp_path, good_wav, capsys):
    code, _, err = run_cli(capsys, "--model", tmp_path / "runs" / "latest", good_wav)

    assert code == cli.EXIT_USAGE
    assert "latest: no model folder there" in err and "heartbeat train" in err and "--model" in err


# ---------------------------------------------------------------- safety

class _CreatesMarker:
    """Unpickling this creates the marker file: what a malicious pickle's code would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_never_unpickled(trained_run, tmp_path, good_wav, capsys):
    from heartbeat.train import model

    marker = tmp_path / "pickle-ran"
    payload = pickle.dumps(_CreatesMarker(marker))
    pickle.loads(payload).close()  # the payload works: loading it does create the marker
    assert marker.exists()
    marker.unlink()
    folder = model_folder_copy(trained_run["run"], tmp_path / "untrusted-run")
    (folder / "model.onnx.data").unlink()  # load_model, like onnx, reads the weights from a regular file only
    shutil.copy(trained_run["run"] / "model.onnx.data", folder / "model.onnx.data")
    for name in ("export.pkl", "model.pkl", "learner.pkl", "model.pth", "model.pt", "pytorch_model.bin", "checkpoint.pth"):
        (folder / name).write_bytes(payload)

    code, out, _ = run_cli(capsys, "--json", "--model", folder, good_wav)
    network, _ = model.load_model(folder)

    assert code == 0 and json_lines(out)[0]["file"] == str(good_wav)
    saved, state = model.load_model(trained_run["run"])[0].state_dict(), network.state_dict()
    assert state.keys() == saved.keys() and all(state[key].equal(saved[key]) for key in saved)  # the saved network
    assert not marker.exists()


def test_onnx_weights_outside_the_model_folder_are_refused(trained_run, tmp_path, good_wav, capsys):
    import onnx

    folder = model_folder_copy(trained_run["run"], tmp_path / "run")
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    elsewhere = str(trained_run["run"].resolve() / "model.onnx.data")  # same weights, outside the folder
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = elsewhere
    (folder / "model.onnx").unlink()
    onnx.save(graph, str(folder / "model.onnx"))

    code, out, err = run_cli(capsys, "--model", folder, good_wav)

    assert (code, out) == (cli.EXIT_USAGE, "")
    assert len(err.splitlines()) == 1 and "not a usable ONNX model" in err and "External data path" in err, err


# ---------------------------------------------------------------- a fresh process

HEAVY_MODULES = ("torch", "torchvision", "fastai", "pandas", "librosa", "matplotlib", "numba", "scipy", "sklearn")

# Runs scripts/predict.py as `python scripts/predict.py ...` would, then lists what got imported.
SCRIPT_AND_IMPORTS = """
import json, runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit_:
    code = exit_.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(%r))
print(json.dumps({"exit": code, "heavy": heavy}), file=sys.stderr)
""" % (HEAVY_MODULES,)


def test_standalone_script_predicts_without_importing_torch_pandas_or_fastai(trained_run, good_wav, capsys):
    _, expected_out, _ = run_cli(capsys, "--json", "--model", trained_run["run"], good_wav)

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT_AND_IMPORTS, str(ROOT / "scripts" / "predict.py"), "--json", "--model",
         str(trained_run["run"]), str(good_wav)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""}, cwd=ROOT,
    )

    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"exit": 0, "heavy": []}
    assert result.stdout == expected_out


# ---------------------------------------------------------------- plain answer: heart problem, heart rate

@pytest.mark.parametrize("bpm", [50, 72, 120])
def test_a_recording_of_known_rate_gets_its_heart_rate(trained_run, tmp_path, bpm):
    from test_beats import RATE, heartbeats

    signal, onsets = heartbeats(bpm, snr_db=10.0)
    path = write_wav(tmp_path / f"{bpm}.wav", signal / np.abs(signal).max() * 0.5, RATE)

    prediction = load_predictor(trained_run["run"]).predict_file(path)

    assert abs(prediction.heart_rate_bpm - bpm) <= 3
    assert abs(prediction.beats - len(onsets)) <= 2
    assert prediction.beat_irregularity < 0.05
    assert json.loads(prediction.to_json())["heart_rate_bpm"] == prediction.heart_rate_bpm


def test_a_long_recordings_rhythm_is_found_part_by_part(trained_run, tmp_path, monkeypatch):
    from heartbeat import predict
    from test_beats import RATE, heartbeats

    segmented = []
    real_segment = predict.beats.segment
    monkeypatch.setattr(predict.beats, "segment", lambda signal, rate: segmented.append(signal.size) or
                        real_segment(signal, rate))
    signal, onsets = heartbeats(72, seconds=70.0, snr_db=10.0)
    path = write_wav(tmp_path / "long.wav", signal / np.abs(signal).max() * 0.5, RATE)

    prediction = load_predictor(trained_run["run"]).predict_file(path)

    assert max(segmented) <= 1.5 * predict.RHYTHM_PART_SECONDS * RATE and sum(segmented) == signal.size
    assert abs(prediction.heart_rate_bpm - 72) <= 3
    assert abs(prediction.beats - len(onsets)) <= 2 * len(segmented)  # each part may lose a beat at either edge
    assert prediction.beat_irregularity < 0.05


def test_noise_gets_no_heart_rate_but_still_a_class(trained_run, tmp_path, capsys):
    noise = np.random.default_rng(4).standard_normal(10 * 4000).astype(np.float32) * 0.2
    path = write_wav(tmp_path / "noise.wav", noise, 4000)

    code, out, err = run_cli(capsys, "--json", "--model", trained_run["run"], path)
    _, table, _ = run_cli(capsys, "--model", trained_run["run"], path)

    assert (code, err) == (0, "")
    result, = json_lines(out)
    assert result["label"] in result["probabilities"]
    assert (result["heart_rate_bpm"], result["beats"], result["beat_irregularity"]) == (None, 0, None)
    assert table.splitlines()[-1].split()[-2] == "-"


def _prediction(probabilities: dict, **rhythm) -> Prediction:
    return Prediction(file="a.wav", label=max(probabilities, key=probabilities.get), probabilities=probabilities,
                      windows=1, model_id="m", **rhythm)


def test_the_heart_problem_probability_needs_a_normal_class():
    from heartbeat.predict import table_header, table_row

    with_normal = _prediction({"murmur": 0.25, "normal": 0.75}, heart_rate_bpm=71.6, beats=11, beat_irregularity=0.01)
    without = _prediction({"cat": 0.4, "dog": 0.6})

    assert json.loads(with_normal.to_json())["heart_problem"] == pytest.approx(0.25)
    assert json.loads(without.to_json())["heart_problem"] is None
    assert table_header(["murmur", "normal"], 5).split() == ["file", "predicted", "murmur", "normal", "heart_problem",
                                                             "bpm", "windows"]
    assert table_row(with_normal, 5).split() == ["a.wav", "normal", "0.2500", "0.7500", "0.2500", "72", "1"]
    assert table_header(["cat", "dog"], 5).split() == ["file", "predicted", "cat", "dog", "bpm", "windows"]
    assert table_row(without, 5).split() == ["a.wav", "dog", "0.4000", "0.6000", "-", "1"]
