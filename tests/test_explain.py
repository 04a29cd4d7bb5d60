"""heartbeat.explain: occlusion saliency finds where a model looks, and the picture reads correctly.

Every model here is a small ONNX graph written by hand (onnx.helper) that keeps predict's
contract ("image" float32 (n, 1, 512, 512) -> "probabilities" (n, 2), softmax) and whose answer
depends only on a known region of the image: the mean brightness of some rows (mel bands) and
columns (frames). So the right saliency map is known in advance.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import sine
from heartbeat import explain
from heartbeat.data import audio
from heartbeat.data import mel
from heartbeat.predict import INPUT_NAME, OUTPUT_NAME, load_predictor

RATE = audio.SETTINGS.sample_rate
SIZE = audio.SETTINGS.image_size
N_MELS = audio.SETTINGS.n_mels
ROWS_PER_BAND = SIZE // N_MELS
FRAME = audio.SETTINGS.hop_length / RATE  # seconds per frame
CLASSES = ["normal", "murmur"]


def region_model(folder: Path, bands: tuple[int, int], frames: tuple[int, int] | None,
                 threshold: float, gain: float = 40.0) -> Path:
    """A model folder whose p(murmur) = sigmoid(2 * gain * (m - threshold)), m the mean pixel (0..1) of mel bands
    [bands) (lowest band 0) over frames [frames) of the window (None: all of them); p(normal) = 1 - p(murmur)."""
    import onnx
    from onnx import TensorProto, helper

    first_row, last_row = (N_MELS - bands[1]) * ROWS_PER_BAND, (N_MELS - bands[0]) * ROWS_PER_BAND  # low at the bottom
    first_column, last_column = frames or (0, SIZE)
    constants = {
        "starts": np.array([first_row, first_column], np.int64), "ends": np.array([last_row, last_column], np.int64),
        "axes": np.array([2, 3], np.int64), "shape": np.array([-1, 1], np.int64),
        "weights": np.array([[-gain, gain]], np.float32), "bias": np.array([[gain * threshold, -gain * threshold]], np.float32),
    }
    nodes = [
        helper.make_node("Slice", [INPUT_NAME, "starts", "ends", "axes"], ["region"]),
        helper.make_node("ReduceMean", ["region"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["level"]),
        helper.make_node("Mul", ["level", "weights"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "region", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", len(CLASSES)])],
        [onnx.numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "model.json").write_text(json.dumps({"model_id": "region-test", "classes": CLASSES, "image_size": SIZE,
                                                   "audio_settings": audio.SETTINGS.to_dict()}))
    return folder


def band_centre_hz(band: int) -> float:
    return float(mel.mel_band_edges()[band + 1])


def background(seconds: float, seed: int = 0) -> np.ndarray:
    """Quiet white noise: every band sounds a little, so every frame counts as sounding."""
    return (0.005 * np.random.default_rng(seed).standard_normal(round(seconds * RATE))).astype(np.float32)


def add_burst(signal: np.ndarray, hz: float, start: float, stop: float, amplitude: float = 0.5) -> None:
    first = round(start * RATE)
    burst = sine(hz, stop - start, RATE, amplitude)
    signal[first:first + burst.size] += burst


def region_mean(signal: np.ndarray, bands: tuple[int, int], frames: tuple[int, int] | None, window: int = 0) -> float:
    """The mean pixel (0..1) a region model reads from one window of `signal` (to set its threshold)."""
    image = mel.recording_images(signal)[window][1]
    rows = slice((N_MELS - bands[1]) * ROWS_PER_BAND, (N_MELS - bands[0]) * ROWS_PER_BAND)
    return float(image[rows, slice(*(frames or (0, SIZE)))].mean()) / 255.0


# A region that is exactly two patches of the default grid: bands 32-47 (442-648 Hz), frames 96-143 (0.96-1.44 s).
BANDS = (32, 48)
FRAMES = (96, 144)
TONE_HZ = band_centre_hz(40)


@pytest.fixture
def tone_recording() -> np.ndarray:
    """3 s (one window, padded after 3 s): quiet noise and a tone in the middle of BANDS during FRAMES."""
    signal = background(3.0)
    add_burst(signal, TONE_HZ, FRAMES[0] * FRAME + 0.02, FRAMES[1] * FRAME - 0.02)
    return signal


def test_saliency_is_high_inside_the_region_the_model_reads_and_zero_elsewhere(tmp_path, tone_recording):
    level = region_mean(tone_recording, BANDS, FRAMES)
    predictor = load_predictor(region_model(tmp_path / "model", BANDS, FRAMES, threshold=level - 0.05), threads=1)
    explanation = explain.explain_signal(predictor, tone_recording)

    assert CLASSES[explanation.target] == "murmur" and explanation.probabilities[1] > 0.8
    inside = np.zeros(explanation.saliency.shape, bool)
    inside[slice(*BANDS), slice(*FRAMES)] = True
    # Hiding either half of the bright region takes away most of the evidence...
    assert explanation.saliency[inside].min() > 0.3
    # ...and hiding anything else changes nothing the model reads.
    assert np.abs(explanation.saliency[~inside]).max() < 1e-6
    # The model's log-odds are 2 * gain * (mean - threshold): hiding the first half of the region (frames 96-119)
    # with each row's mean level lowers them by exactly 2 * gain * (the brightness it takes away) / the region's size.
    image = mel.recording_images(tone_recording)[0][1].astype(float)
    rows = slice((N_MELS - BANDS[1]) * ROWS_PER_BAND, (N_MELS - BANDS[0]) * ROWS_PER_BAND)
    neutral = np.rint(image[rows][:, image.max(axis=0) > 0].mean(axis=1))  # over the sounding frames
    taken = (image[rows, FRAMES[0]:FRAMES[0] + explain.PATCH_FRAMES] - neutral[:, None]).sum()
    expected = 2 * 40.0 * taken / (image[rows, slice(*FRAMES)].size * 255.0)
    assert explanation.saliency[BANDS[0], FRAMES[0]] == pytest.approx(expected, rel=1e-3)


def test_the_explanation_covers_the_recording_and_agrees_with_predict(tmp_path, tone_recording):
    level = region_mean(tone_recording, BANDS, FRAMES)
    predictor = load_predictor(region_model(tmp_path / "model", BANDS, FRAMES, threshold=level - 0.05), threads=1)
    explanation = explain.explain_signal(predictor, tone_recording)

    frames = 1 + tone_recording.size // audio.SETTINGS.hop_length  # 3 s, not the 5.11-s window with its padding
    assert explanation.spectrogram.shape == explanation.saliency.shape == (N_MELS, frames)
    assert explanation.duration == pytest.approx(3.0, abs=0.02)
    # The lowest band first: the tone's band is the loudest row during the tone.
    assert abs(int(np.argmax(explanation.spectrogram[:, 120])) - 40) <= 1
    probabilities, windows = predictor.predict_signal(tone_recording)
    np.testing.assert_allclose(explanation.probabilities, probabilities, atol=1e-6)
    assert explanation.window_probabilities.shape == (windows, len(CLASSES))


def test_overlapping_windows_are_stitched_onto_the_recording_time_axis(tmp_path):
    """8 s: two windows, at 0 s and 2.89 s. The model reads FRAMES of each window; a burst sits in each."""
    signal = background(8.0, seed=1)
    second = audio.window_starts(signal.size)[1] // audio.SETTINGS.hop_length  # frame 289 (2.89 s)
    for offset in (0, second):
        add_burst(signal, TONE_HZ, (offset + FRAMES[0]) * FRAME + 0.02, (offset + FRAMES[1]) * FRAME - 0.02)
    level = min(region_mean(signal, BANDS, FRAMES, window) for window in (0, 1))
    predictor = load_predictor(region_model(tmp_path / "model", BANDS, FRAMES, threshold=level - 0.05), threads=1)
    explanation = explain.explain_signal(predictor, signal)

    np.testing.assert_allclose(explanation.window_starts, [0.0, second * FRAME], atol=0.01)
    lit = np.zeros(explanation.saliency.shape, bool)
    for offset in (0, second):
        lit[slice(*BANDS), offset + FRAMES[0]:offset + FRAMES[1]] = True
    assert explanation.saliency[lit].min() > 0.1
    assert np.abs(explanation.saliency[~lit]).max() < 1e-6
    # The second window's region lies where both windows overlap (frames 289-511): the first one, which does not
    # read it there, counts too, so the map there is the mean of the two windows' drops.
    assert explanation.saliency[slice(*BANDS), second + FRAMES[0]:second + FRAMES[1]].max() \
        < explanation.saliency[slice(*BANDS), slice(*FRAMES)].min()


def test_a_murmur_in_systole_lights_up_systole_not_diastole(tmp_path):
    """The issue's example. Beats every 0.96 s (four 0.24-s patches, so each patch is wholly systole or diastole):
    S1 (60 Hz) at 0.14 s, band noise 260-420 Hz from 0.24 to 0.48 s (systole), S2 (90 Hz) at 0.50 s, diastole
    to the next S1. The model only knows "murmur if the 240-440 Hz bands are loud on average over the window";
    the saliency has to find out when."""
    seconds, period = 4.8, 0.96
    signal = background(seconds, seed=2)
    rng = np.random.default_rng(3)
    spectrum_hz = np.fft.rfftfreq(round(0.24 * RATE), 1 / RATE)
    systole = np.zeros(1 + signal.size // audio.SETTINGS.hop_length, bool)
    diastole = np.zeros_like(systole)
    for beat in np.arange(0.0, seconds - period / 2, period):
        add_burst(signal, 60.0, beat + 0.14, beat + 0.22, 0.8)
        add_burst(signal, 90.0, beat + 0.50, beat + 0.56, 0.5)
        spectrum = np.fft.rfft(rng.standard_normal(spectrum_hz.size * 2 - 2))
        spectrum[(spectrum_hz < 260) | (spectrum_hz > 420)] = 0
        noise = np.fft.irfft(spectrum)
        start = round((beat + 0.24) * RATE)
        signal[start:start + noise.size] += (0.2 * noise / noise.std()).astype(np.float32)
        systole[round((beat + 0.24) / FRAME):round((beat + 0.48) / FRAME)] = True
        diastole[round((beat + 0.72) / FRAME):round((beat + 0.96) / FRAME)] = True  # after S2's patch
    murmur_bands = (16, 32)
    level = region_mean(signal, murmur_bands, None)
    predictor = load_predictor(region_model(tmp_path / "model", murmur_bands, None, threshold=level - 0.03), threads=1)
    explanation = explain.explain_signal(predictor, signal)

    assert CLASSES[explanation.target] == "murmur"
    band = explanation.saliency[slice(*murmur_bands)]
    assert band[:, systole].mean() > 0.05
    assert band[:, diastole].max() <= 0.0  # hiding diastole's quiet never lowers p(murmur): no evidence there
    # The heart sounds' own bands (below 240 Hz) and everything above the murmur carry nothing the model reads.
    assert np.abs(explanation.saliency[:murmur_bands[0]]).max() < 1e-6
    assert np.abs(explanation.saliency[murmur_bands[1]:]).max() < 1e-6


def test_log_odds_keep_counting_where_the_probability_saturates():
    probabilities = np.array([[1e-9, 1.0 - 1e-9], [1e-7, 1.0 - 1e-7], [0.5, 0.5], [0.0, 1.0]], np.float32)
    odds = explain.log_odds(probabilities, 1)
    assert odds[0] == pytest.approx(np.log(1e9), rel=1e-3) and odds[1] == pytest.approx(np.log(1e7), rel=1e-3)
    assert odds[2] == 0.0 and np.isfinite(odds[3])


def test_patches_hide_with_each_bands_mean_level_and_never_touch_padding():
    """The neutral value: a band's mean over the sounding frames (what band normalisation maps to 0), not silence."""
    image = np.zeros((SIZE, SIZE), np.uint8)
    levels = np.repeat(np.linspace(10, 200, N_MELS).astype(np.uint8), ROWS_PER_BAND)  # a band's rows are copies
    image[:, :100] = levels[:, None]  # sounding frames 0-99, padding after
    image[-ROWS_PER_BAND:, 10:20] = 250  # an event in the lowest band

    class Recorder:
        def __init__(self):
            self.images = []

        def model_input(self, image):
            return image

        def window_probabilities(self, images):
            self.images += list(images)
            return np.zeros((len(self.images), 2))

    recorder = Recorder()
    explain._window_saliency(recorder, image, 0.5, 1, (24, 16), ROWS_PER_BAND)
    # 8 band patches x 5 frame patches touch frames 0-119; frames 100+ are padding only from patch 5 on.
    assert len(recorder.images) == 8 * 5
    first = recorder.images[0]  # the lowest bands, frames 0-23
    lowest = image[-ROWS_PER_BAND:, :100].mean()
    assert (first[-ROWS_PER_BAND:, :24] == round(lowest)).all()
    assert (first[:, 24:] == image[:, 24:]).all() and (first[:-16 * ROWS_PER_BAND] == image[:-16 * ROWS_PER_BAND]).all()
    last_in_time = recorder.images[4]  # frames 96-119: only 96-99 sound
    assert (last_in_time[:, 100:] == 0).all()


def test_explaining_imports_no_heavy_module(tmp_path, tone_recording):
    """Saliency needs only the forward pass: predict stays torch-free (and pandas/matplotlib wait for drawing)."""
    from test_predict import HEAVY_MODULES

    folder = region_model(tmp_path / "model", BANDS, FRAMES, threshold=0.1)
    np.save(tmp_path / "signal.npy", tone_recording)
    code = (f"import sys, numpy; from heartbeat import explain, predict; "
            f"explain.explain_signal(predict.load_predictor({str(folder)!r}, 1), numpy.load({str(tmp_path / 'signal.npy')!r})); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY_MODULES!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip() == "[]", result.stderr


# ---------------------------------------------------------------- the picture

@pytest.fixture
def explained(tmp_path, tone_recording):
    level = region_mean(tone_recording, BANDS, FRAMES)
    predictor = load_predictor(region_model(tmp_path / "model", BANDS, FRAMES, threshold=level - 0.05), threads=1)
    return explain.explain_signal(predictor, tone_recording)


def test_the_figure_has_three_panels_on_one_time_axis_with_low_frequencies_at_the_bottom(explained):
    figure = explain.explanation_figure(explained, CLASSES, "a.wav: murmur")
    figure.canvas.draw()  # lays the figure out
    assert [axes.get_label() for axes in figure.axes][:3] == list(explain.PANELS)
    assert len(figure.axes) == 5  # and two colour bars (dB, saliency)
    spectrum, probability, saliency = figure.axes[:3]
    # Times line up: the same horizontal extent and limits in every panel, in seconds.
    positions = [axes.get_position() for axes in (spectrum, probability, saliency)]
    assert all(p.x0 == pytest.approx(positions[0].x0) and p.x1 == pytest.approx(positions[0].x1) for p in positions)
    assert spectrum.get_xlim() == probability.get_xlim() == saliency.get_xlim()
    assert spectrum.get_xlim()[1] == pytest.approx(explained.duration, abs=0.02)
    assert saliency.get_xlabel() == "time (s)"
    for axes in (spectrum, saliency):
        ticks = {label.get_text(): position for label, position in zip(axes.get_yticklabels(), axes.get_yticks())}
        assert axes.get_ylabel() == "frequency (Hz)" and ticks["100"] < ticks["1000"]
        assert axes.get_ylim()[0] < axes.get_ylim()[1]  # upward: the low bands at the bottom
        assert axes.images[0].origin == "lower"
    assert [text.get_text() for text in probability.get_legend().get_texts()] == CLASSES
    assert "saliency for murmur" in saliency.get_title(loc="left")


def test_the_png_decodes_at_its_size_with_every_panel_drawn(explained):
    from PIL import Image

    png = explain.draw_explanation(explained, CLASSES, "a.wav: murmur (p = 0.90)")
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    width, height = (round(inches * explain.FIGURE_DPI) for inches in explain.FIGURE_INCHES)
    assert picture.shape == (height, width)
    for third in np.array_split(picture, 3):
        assert third.std() > 10  # not blank


def test_write_explanation_is_atomic(explained, tmp_path):
    path = tmp_path / "out" / "a.wav.png"
    explain.write_explanation(path, explained, CLASSES, "first")
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG")
    with pytest.raises(ValueError):  # a failure while drawing
        explain.write_explanation(path, explained, CLASSES[:1], "second")
    assert path.read_bytes() == first and os.listdir(path.parent) == ["a.wav.png"]


def test_the_title_names_the_file_on_one_line():
    assert explain.printable_name("a\nb\x1b[31m.wav") == "a\\nb\\x1b[31m.wav"
    assert explain.printable_name(b"caf\xe9.wav") == "caf\\xe9.wav"
    assert explain.printable_name("ok $x$ é.wav") == "ok $x$ é.wav"


def test_explain_images_refuses_windows_that_are_not_a_recordings(tmp_path, tone_recording):
    predictor = load_predictor(region_model(tmp_path / "model", BANDS, FRAMES, threshold=0.1), threads=1)
    start, image = mel.recording_images(tone_recording)[0]
    for windows, duration, problem in [
        ([], 3.0, "no windows"),
        ([(start, image[:256])], 3.0, "not uint8 (512, 512)"),
        ([(start, image.astype(np.float32))], 3.0, "not uint8 (512, 512)"),
        ([(4.0, image)], 3.0, "outside the 3-s recording"),
        ([(start, image)], float("nan"), "positive number of seconds"),
    ]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            explain.explain_images(predictor, windows, duration)
