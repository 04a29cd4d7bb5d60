"""heartbeat.train.model: the lean run folder (which weights are saved) and load_model's two ways back to the network."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from heartbeat.train import model
from heartbeat.predict import load_predictor
from heartbeat.train.run import TrainSettings, train


@pytest.fixture(scope="module")
def features_run(trained_run, standin_weights, tmp_path_factory):
    """A features-mode run (stand-in body, 32 px, 1 epoch); its body features are cached beside the spectrograms."""
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8)
    return train(trained_run["spectrograms"], tmp_path_factory.mktemp("features") / "run", settings, progress=False).run_dir


@pytest.fixture(scope="module")
def standin_state(standin_weights):
    return model.load_pretrained_state(str(standin_weights))[0]


def random_windows(size: int, count: int = 4) -> list[np.ndarray]:
    return list(np.random.default_rng(0).integers(0, 256, size=(count, size, size), dtype=np.uint8))


def classifier_probabilities(network, images) -> np.ndarray:
    with torch.no_grad():
        return model.Classifier(network).eval()(model.images_to_tensor(images)).numpy()


def onnx_initializers(onnx_path) -> dict[str, np.ndarray]:
    """The ONNX export's tensors by name, read with onnx itself (not through model.py)."""
    import onnx
    from onnx import numpy_helper

    return {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(str(onnx_path)).graph.initializer}


def same_state(state: dict, other: dict) -> bool:
    """Every tensor equal, bit for bit; a BatchNorm's num_batches_tracked (a step counter, not exported) aside."""
    keys = [key for key in state if not key.endswith(".num_batches_tracked")]
    return state.keys() == other.keys() and all(torch.equal(state[key], other[key]) for key in keys)


def test_a_run_that_trained_its_body_keeps_the_network_once(trained_run):
    run = trained_run["run"]  # from scratch: every layer trained
    network, info = model.load_model(run)
    assert info["body_trained"] is True and info["weights_file"] == model.ONNX_FILE
    assert not (run / model.HEAD_FILE).exists() and not (run / model.WEIGHTS_FILE).exists()
    # One full copy: no other file in the folder is anywhere near the size of the ONNX's weights.
    data_bytes = (run / model.ONNX_DATA_FILE).stat().st_size
    large = [path.name for path in run.iterdir() if path.is_file() and path.stat().st_size > 0.5 * data_bytes]
    assert large == [model.ONNX_DATA_FILE]
    # The rebuilt network holds the ONNX's tensors under their names, bit for bit ...
    saved = onnx_initializers(run / model.ONNX_FILE)
    state = network.state_dict()
    for key, value in state.items():
        if not key.endswith(".num_batches_tracked"):
            assert np.array_equal(value.numpy(), saved[model.EXPORTED_PREFIX + key]), key
    # ... and answers as predict does from the same file.
    images = random_windows(info["image_size"])
    np.testing.assert_allclose(classifier_probabilities(network, images),
                               load_predictor(run).window_probabilities(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["resnet34", "heartnet"])
def test_the_onnx_export_gives_back_the_network_it_was_made_from(tmp_path, arch):
    from heartbeat.train import nets

    torch.manual_seed(0)
    net = {"kind": "cnn1d", "channels": [8, 16], "input_pool": [1, 2]} if arch == nets.ARCH else None
    network = model.build_model(3, arch, net)
    with torch.no_grad():  # BatchNorm statistics as after training; weights of 1 and biases of 0 stay equal to
        for key, value in network.state_dict().items():  # each other, which an export must not merge into one
            if key.endswith("running_var"):
                value.uniform_(0.5, 2.0)
            elif key.endswith("running_mean"):
                value.uniform_(-0.1, 0.1)
    network.eval()
    info = {"classes": ["a", "b", "c"], "image_size": 512 if net else 64, "arch": arch, **({"net": net} if net else {})}
    model.save_model(tmp_path, network, info, body_trained=True, body_state_digest=None)
    model.export_onnx(network, info["image_size"], tmp_path / model.ONNX_FILE)
    assert sorted(path.name for path in tmp_path.iterdir()) == [model.MODEL_FILE, model.ONNX_FILE, model.ONNX_DATA_FILE]
    loaded, _ = model.load_model(tmp_path)
    assert same_state(network.state_dict(), loaded.state_dict())


def test_a_run_folder_from_before_still_loads_its_safetensors(trained_run, tmp_path):
    from safetensors.torch import save_file

    network, info = model.load_model(trained_run["run"])
    with torch.no_grad():
        for value in network.parameters():
            value.add_(1.0)  # differs from the ONNX beside it: which file was read shows
    older = tmp_path / "older-run"
    older.mkdir()
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(older / model.WEIGHTS_FILE))
    for name in (model.ONNX_FILE, model.ONNX_DATA_FILE):
        shutil.copy(trained_run["run"] / name, older / name)
    for named in (True, False):  # runs that named the file, and the first lean runs, which did not
        described = {**info, "weights_file": model.WEIGHTS_FILE} if named else \
            {key: value for key, value in info.items() if key != "weights_file"}
        (older / model.MODEL_FILE).write_text(json.dumps(described))
        loaded, _ = model.load_model(older)
        assert same_state(network.state_dict(), loaded.state_dict())


@pytest.mark.parametrize("weights_file", ["../elsewhere/model.onnx", "/etc/passwd", "head.safetensors", 7])
def test_a_weights_file_that_is_not_one_of_the_two_names_is_refused(trained_run, tmp_path, weights_file):
    folder = tmp_path / "run"
    shutil.copytree(trained_run["run"], folder)
    info = json.loads((folder / model.MODEL_FILE).read_text())
    (folder / model.MODEL_FILE).write_text(json.dumps({**info, "weights_file": weights_file}))
    with pytest.raises(model.ModelError) as raised:
        model.load_model(folder)
    message = str(raised.value)
    assert "\n" not in message and str(folder / model.MODEL_FILE) in message and "weights_file" in message


def test_onnx_weights_through_a_symlink_are_one_line(trained_run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in (model.MODEL_FILE, model.ONNX_FILE):
        shutil.copy(trained_run["run"] / name, folder / name)
    (folder / model.ONNX_DATA_FILE).symlink_to(trained_run["run"] / model.ONNX_DATA_FILE)
    with pytest.raises(model.ModelError) as raised:
        model.load_model(folder)
    message = str(raised.value)
    assert "\n" not in message and str(folder / model.ONNX_FILE) in message and "symbolic link" in message


def test_onnx_weights_read_only_from_the_data_file_beside_it(trained_run, tmp_path):
    import onnx

    folder = tmp_path / "run"
    shutil.copytree(trained_run["run"], folder)
    outside = tmp_path / "outside.data"
    shutil.copy(folder / model.ONNX_DATA_FILE, outside)
    graph = onnx.load(str(folder / model.ONNX_FILE), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    onnx.save_model(graph, str(folder / model.ONNX_FILE))
    with pytest.raises(model.ModelError) as raised:
        model.load_model(folder)
    message = str(raised.value)
    assert "\n" not in message and str(folder / model.ONNX_FILE) in message and "outside" in message


def test_a_features_mode_run_stores_the_head_alone_and_the_body_digest(features_run, standin_state):
    assert not (features_run / model.WEIGHTS_FILE).exists()
    info = json.loads((features_run / model.MODEL_FILE).read_text())
    assert info["body_trained"] is False and info["weights_file"] == model.HEAD_FILE
    assert info["body_state_digest"] == model.state_digest(standin_state)
    # One full copy of the network (the ONNX for predict); the head is a few percent of it.
    head_bytes = (features_run / model.HEAD_FILE).stat().st_size
    assert head_bytes < 0.05 * (features_run / "model.onnx.data").stat().st_size


def test_load_model_rebuilds_the_trained_features_mode_network(features_run, standin_state):
    network, info = model.load_model(features_run, pretrained_state=standin_state)
    assert not network.training
    images = random_windows(info["image_size"])
    # The ONNX was exported from the network as trained, in memory: the rebuilt one answers the same,
    # so the head round-trips and the frozen body is the pretrained one, unchanged by training.
    expected = load_predictor(features_run).window_probabilities(images)
    np.testing.assert_allclose(classifier_probabilities(network, images), expected, atol=1e-4, rtol=0)
    # Without a state given, the weights file named in config.json is read: the same network.
    again, _ = model.load_model(features_run)
    state = network.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in again.state_dict().items())


def test_another_pretrained_body_is_refused_in_one_line(features_run, standin_state):
    other = {key: value.clone() for key, value in standin_state.items()}
    other["layer4.2.conv2.weight"][0, 0, 0, 0] += 1e-3  # one weight of 21 million differs
    with pytest.raises(model.ModelError) as raised:
        model.load_model(features_run, pretrained_state=other)
    message = str(raised.value)
    assert "\n" not in message and str(features_run / model.MODEL_FILE) in message
    assert model.state_digest(other) in message and model.state_digest(standin_state) in message


def test_an_unavailable_pretrained_body_is_one_line_naming_the_files(features_run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    for name in (model.MODEL_FILE, model.HEAD_FILE, "config.json"):  # what load_model reads
        shutil.copy(features_run / name, copy / name)
    config = json.loads((copy / "config.json").read_text())
    missing = tmp_path / "moved-away.pth"
    config["train_settings"]["weights"] = str(missing)
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(model.ModelError) as raised:
        model.load_model(copy)
    message = str(raised.value)
    assert "\n" not in message and str(copy / model.HEAD_FILE) in message and str(missing) in message


def test_training_writes_the_prediction_pictures_and_links_them(features_run):
    report = (features_run / "report.md").read_text()
    for name in ("results.png", "top_losses.png"):
        assert (features_run / name).stat().st_size > 0 and f"]({name})" in report


def test_imagenet_normalisation_is_torchvisions_on_the_inputs_device_and_dtype():
    from torchvision.transforms import Normalize

    rgb = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    normalised = model.imagenet_normalise(rgb)
    assert normalised.dtype == torch.float64 and normalised.device == rgb.device
    torch.testing.assert_close(normalised, Normalize(model.IMAGENET_MEAN, model.IMAGENET_STD)(rgb))
    grey = torch.rand(2, 1, 5, 5)
    # The Classifier copies the one channel to three and normalises it before the network (here: flatten).
    expected = torch.softmax(torch.flatten(Normalize(model.IMAGENET_MEAN, model.IMAGENET_STD)(grey.expand(-1, 3, -1, -1)), 1), 1)
    torch.testing.assert_close(model.Classifier(torch.nn.Flatten())(grey), expected)


def test_an_onnx_error_without_a_message_is_still_one_line(tmp_path, monkeypatch):
    import onnx

    def fail(*args, **kwargs):
        raise ValueError()  # some libraries raise with no message: the line must still name the problem

    (tmp_path / model.ONNX_FILE).write_bytes(b"not onnx")
    monkeypatch.setattr(onnx, "load", fail)
    with pytest.raises(model.ModelError, match=r"model\.onnx: not a readable ONNX model \(ValueError\)"):
        model._onnx_initializers(tmp_path / model.ONNX_FILE)
