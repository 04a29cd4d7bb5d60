"""heartbeat.train.recipes.heartbeat and heartbeat.train.nets: the `heartbeat` recipe's fit on a few synthetic windows (seconds).

Validation windows are never augmented and are scored as predict scores them (the exported ONNX
model on stage 1's images, within 1e-4); a fit repeats exactly per seed; the native input is exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from heartbeat.data import png
from heartbeat.train import model
from heartbeat.train import nets
from heartbeat.train import training_windows
from heartbeat.train.contract import Sources, Study, plan_from_windows
from heartbeat.train.recipes import heartbeat as recipe
from heartbeat.train.recipes import heartbeat_recipe
from heartbeat.train.settings import TrainSettings

CLASSES = ["extrastole", "murmur", "normal"]
# A tiny network, two short epochs, every lever on: what is tested is the plumbing, not what it learns.
TINY = dataclasses.replace(heartbeat_recipe.RECIPE, levers=frozenset(heartbeat_recipe.LEVERS), channels=(8, 8), epochs=2, batch_size=4)


def fit(windows: pd.DataFrame, folder, chosen, seed: int):
    """The recipe's one entry point on windows that carry is_valid, on the CPU."""
    study = Study(folder, windows, CLASSES, {})
    settings = TrainSettings(recipe="heartbeat", seed=seed, device="cpu").effective()
    return recipe.fit(study, plan_from_windows(study, settings, recipe=chosen), Sources(None, None, "none"))


def stage_one_image(label: str, seed: int, sounding: int = 512) -> np.ndarray:
    """A 512x512 uint8 image as stage 1 makes them (bands repeated 4x), loud beats in a class-dependent band."""
    rng = np.random.default_rng(seed)
    bands = rng.integers(1, 60, (128, 512)).astype(np.uint8)
    band = {"extrastole": 100, "murmur": 60, "normal": 20}[label]
    bands[band:band + 10, ::50] = 250
    bands[:, sounding:] = 0
    return np.repeat(bands, 4, axis=0)


@pytest.fixture(scope="module")
def windows_dir(tmp_path_factory):
    """(windows table with is_valid, spectrograms folder): 15 recordings, some with two windows, 4 of them validation."""
    folder = tmp_path_factory.mktemp("spectrograms")
    (folder / "images").mkdir()
    rows = []
    for index in range(15):
        label = CLASSES[index % 3]
        recording = f"{label}__{index}.wav"
        n_windows = 2 if index % 4 == 0 else 1
        for window in range(n_windows):
            image = f"images/{label}__{index}_w{window:02d}.png"
            sounding = 512 if n_windows == 2 else 300 + 10 * index
            (folder / image).write_bytes(png.encode_png(stage_one_image(label, 100 * index + window, sounding)))
            rows.append({"image": image, "recording": recording, "label": label, "window": window,
                         "start_s": 3.0 * window, "is_valid": index >= 11})
    return pd.DataFrame(rows), folder


def valid_images(windows: pd.DataFrame, folder) -> np.ndarray:
    """The validation windows' stage-1 images as predict feeds them: (n, 1, 512, 512) float32 in [0, 1]."""
    from PIL import Image

    images = [np.asarray(Image.open(folder / name)) for name in windows.loc[windows["is_valid"], "image"]]
    return model.images_to_tensor(images).numpy()


@pytest.fixture(scope="module")
def spied_fit(windows_dir):
    """A fit with training_windows.augmented wrapped: every window it augmented is recorded."""
    windows, folder = windows_dir
    seen = []
    original = training_windows.augmented

    def spy(pixels, mel, chosen, rng):
        seen.append(pixels.copy())
        return original(pixels, mel, chosen, rng)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_windows, "augmented", spy)
        fitted = fit(windows, folder, TINY, 3)
    return fitted, seen


def test_only_training_windows_are_augmented(windows_dir, spied_fit):
    windows, folder = windows_dir
    fitted, seen = spied_fit
    bands = {name: training_windows.read_band_pixels(folder, [name])[0].tobytes() for name in windows["image"]}
    train_bands = {bands[name] for name in windows.loc[~windows["is_valid"], "image"]}
    valid_bands = {bands[name] for name in windows.loc[windows["is_valid"], "image"]}
    n_train = int((~windows["is_valid"]).sum())
    assert len(seen) == TINY.epochs * n_train  # every training window drawn each epoch (fastai then drops a partial batch)
    assert all(pixels.tobytes() in train_bands for pixels in seen)
    assert not any(pixels.tobytes() in valid_bands for pixels in seen)


def test_validation_probabilities_are_the_exported_models_on_stage_one_images(windows_dir, spied_fit, tmp_path):
    import onnxruntime

    windows, folder = windows_dir
    fitted, _ = spied_fit
    images = valid_images(windows, folder)
    assert fitted.window_probs.shape == (len(images), len(CLASSES))
    model.export_onnx(fitted.network, 512, tmp_path / model.ONNX_FILE)
    session = onnxruntime.InferenceSession(str(tmp_path / model.ONNX_FILE), providers=["CPUExecutionProvider"])
    exported = session.run(["probabilities"], {"image": images})[0]
    assert np.abs(exported - fitted.window_probs).max() < 1e-4
    assert not fitted.network.training
    assert list(fitted.epoch_log.columns) == ["epoch", "train_loss", "valid_loss", "error_rate"]
    assert len(fitted.epoch_log) == TINY.epochs


def test_a_saved_heartnet_loads_back_to_the_same_network(spied_fit, tmp_path):
    fitted, _ = spied_fit
    info = {"model_id": "test", "classes": CLASSES, "image_size": 512, **nets.model_info(fitted.network)}
    model.save_model(tmp_path, fitted.network, info, body_trained=True, body_state_digest=None)
    model.export_onnx(fitted.network, 512, tmp_path / model.ONNX_FILE)  # a trained network's one copy, as a run writes it
    loaded, saved_info = model.load_model(tmp_path)
    grey = torch.rand(2, 1, 512, 512)
    with torch.no_grad():
        assert torch.equal(nets.Classifier(loaded)(grey), nets.Classifier(fitted.network)(grey))
    assert saved_info["arch"] == nets.ARCH


def test_a_model_json_naming_no_buildable_network_is_a_model_error(spied_fit, tmp_path):
    fitted, _ = spied_fit
    info = {"model_id": "test", "classes": CLASSES, "image_size": 512, "arch": nets.ARCH, "net": {"kind": "cnn9d"}}
    model.save_model(tmp_path, fitted.network, info, body_trained=True, body_state_digest=None)
    with pytest.raises(model.ModelError, match="model.json: not a network this code can build"):
        model.load_model(tmp_path)


def test_a_fit_repeats_exactly_per_seed_and_differs_with_another(windows_dir, spied_fit):
    windows, folder = windows_dir
    fitted, _ = spied_fit
    again = fit(windows, folder, TINY, 3)
    other = fit(windows, folder, TINY, 4)
    assert np.array_equal(again.window_probs, fitted.window_probs)
    assert not np.array_equal(other.window_probs, fitted.window_probs)


def test_mixup_and_label_smoothing_change_training_only(windows_dir, spied_fit, tmp_path):
    import onnxruntime

    windows, folder = windows_dir
    plain, _ = spied_fit
    mixed_recipe = dataclasses.replace(TINY, mixup_alpha=0.4, label_smoothing=0.1)
    mixed = fit(windows, folder, mixed_recipe, 3)
    again = fit(windows, folder, mixed_recipe, 3)
    assert np.array_equal(again.window_probs, mixed.window_probs)  # still repeatable per seed
    assert not np.array_equal(mixed.window_probs, plain.window_probs)  # the training changed
    assert not np.isclose(mixed.epoch_log["train_loss"], plain.epoch_log["train_loss"]).any()
    # validation windows are scored unmixed, by the network predict runs
    model.export_onnx(mixed.network, 512, tmp_path / model.ONNX_FILE)
    session = onnxruntime.InferenceSession(str(tmp_path / model.ONNX_FILE), providers=["CPUExecutionProvider"])
    exported = session.run(["probabilities"], {"image": valid_images(windows, folder)})[0]
    assert np.abs(exported - mixed.window_probs).max() < 1e-4


def test_the_native_input_is_exactly_the_bands():
    bands = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 1, 128, 512)).astype(np.float32) / 255)
    image = bands.repeat_interleave(nets.ROWS_PER_BAND, dim=2)  # stage 1's 512 rows
    assert torch.equal(nets.native_input(image), bands)
    network = nets.HeartNet(3, channels=(8, 8)).eval()
    with torch.no_grad():
        assert torch.equal(nets.Classifier(network)(image), torch.softmax(network(bands), dim=1))


def test_band_norm_removes_a_fixed_frequency_response():
    bands = torch.rand(2, 1, 128, 512) * 0.5 + 0.25
    bands[..., 400:] = 0  # padded silence
    colour = torch.linspace(-0.2, 0.2, 128).view(1, 1, 128, 1)
    coloured = torch.where(bands > 0, bands + colour, bands)
    levels, sounding = nets.BandNorm()(bands)
    coloured_levels, _ = nets.BandNorm()(coloured)
    assert torch.allclose(levels, coloured_levels, atol=1e-5)
    assert not levels[..., 400:].any() and sounding[..., :400].all() and not sounding[..., 400:].any()


def test_levers_switch_parts_of_the_recipe_off_by_name():
    assert heartbeat_recipe.RECIPE.levers == heartbeat_recipe.DEFAULT_LEVERS <= set(heartbeat_recipe.LEVERS)
    plain = heartbeat_recipe.RECIPE.with_levers([])
    assert plain.network(3).band_norm is None and heartbeat_recipe.RECIPE.network(3).band_norm is not None
    pixels = np.full((128, 512), 100, dtype=np.uint8)
    mel = np.random.default_rng(0).integers(1, 256, (128, 900)).astype(np.uint8)
    assert np.array_equal(training_windows.augmented(pixels, mel, plain, np.random.default_rng(0)), pixels)
    assert not np.array_equal(training_windows.augmented(pixels, mel, heartbeat_recipe.RECIPE.with_levers(["random_windows"]),
                                               np.random.default_rng(0)), pixels)
    with pytest.raises(ValueError, match="unknown lever"):
        heartbeat_recipe.RECIPE.with_levers(["random_windows", "mixup"])


def test_oversampling_draws_each_class_with_weight_count_to_the_minus_three_quarters(windows_dir, monkeypatch):
    """The recipe's balance_power (0.75, measured): a window of class c is drawn with probability ~ count_c ** -0.75."""
    windows, folder = windows_dir
    normal = windows.index[(windows["label"] == "normal") & ~windows["is_valid"]]
    windows = windows.drop(normal[1:])  # training windows: 5 extrastole, 5 murmur, 1 normal
    counts = windows[~windows["is_valid"]]["label"].value_counts()
    assert sorted(counts.to_dict().items()) == [("extrastole", 5), ("murmur", 5), ("normal", 1)]
    real_dataloaders, draws = recipe.dataloaders, []

    class Spied(Exception):
        pass

    def spy(train_set, valid_set, batch_size, device, sample_weights):
        dls = real_dataloaders(train_set, valid_set, batch_size, device, sample_weights)
        with monkeypatch.context() as patch:  # the weighted draw of an epoch's training windows
            patch.setattr(np.random, "choice", lambda n, size, p: draws.append((train_set.targets, p)) or list(range(n)))
            dls.train.get_idxs()
        raise Spied  # the weights are what this test is about: no need to train

    monkeypatch.setattr(recipe, "dataloaders", spy)
    with pytest.raises(Spied):
        fit(windows, folder, TINY, 3)

    (targets, p), = draws
    expected = np.array([counts[CLASSES[target]] for target in targets], dtype=float) ** -0.75
    assert TINY.balance_power == heartbeat_recipe.RECIPE.balance_power == 0.75
    np.testing.assert_allclose(p, expected / expected.sum(), rtol=1e-9)
