"""Training end to end on synthetic recordings at 32 px: run folder, freezing, weights, report, errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from badinput import REPO, CliResult, assert_one_line_error
from conftest import record_initial_network
from heartbeat import cli
from heartbeat.train import model
from heartbeat.train import split
from heartbeat.train.device import cpu_has_bf16
from heartbeat.train.inputs import read_spectrograms
from heartbeat.train.run import TrainError, TrainSettings, train

BODY_CHILDREN = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def body_key(torchvision_key: str) -> str:
    """torchvision's 'layer1.0.conv1.weight' is '0.4.0.conv1.weight' in the fastai network (body = index 0)."""
    child, rest = torchvision_key.split(".", 1)
    return f"0.{BODY_CHILDREN.index(child)}.{rest}"


def saved_state(run_dir):
    """The saved network's tensors by state-dict key, read from its ONNX export with onnx itself (the network's
    one copy; a BatchNorm's num_batches_tracked is not exported)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(run_dir / model.ONNX_FILE)).graph
    return {tensor.name.removeprefix(model.EXPORTED_PREFIX): torch.from_numpy(numpy_helper.to_array(tensor).copy())
            for tensor in graph.initializer if tensor.name.startswith(model.EXPORTED_PREFIX)}


def git_head() -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def network_probabilities(run, spectrograms, recordings) -> np.ndarray:
    """Each recording's probabilities from the run's saved network in fp32 on stage 1's images, as predict computes them."""
    from PIL import Image

    from heartbeat.data import mel
    from heartbeat.report import metrics
    from heartbeat.train import nets

    network, info = model.load_model(run)  # safetensors + JSON: nothing is unpickled
    classifier = (nets.Classifier(network) if isinstance(network, nets.HeartNet) else model.Classifier(network)).eval()
    manifest = pd.read_csv(spectrograms / "manifest.csv", keep_default_na=False)
    recomputed = []
    for recording in recordings:
        images = [mel.model_input(np.asarray(Image.open(spectrograms / name)), info["image_size"])
                  for name in manifest.loc[manifest["recording"] == recording, "image"]]
        with torch.no_grad():
            window_probs = classifier(model.images_to_tensor(images)).numpy()
        recomputed.append(metrics.combine_windows(window_probs))
    return np.array(recomputed)


def recomputed_probabilities(run, spectrograms) -> tuple[np.ndarray, np.ndarray]:
    """(predictions.csv's probabilities, the same recomputed in fp32 from the saved weights, as predict does)."""
    classes = json.loads((run / "model.json").read_text())["classes"]
    predictions = pd.read_csv(run / "predictions.csv")
    saved = predictions[[f"prob_{name}" for name in classes]].to_numpy(dtype=float)
    return saved, network_probabilities(run, spectrograms, predictions["recording"])


def is_conv_weight(key: str, value) -> bool:
    return key.endswith("weight") and value.ndim == 4


def batchnorm_layers(state: dict) -> list[str]:
    """torchvision key prefixes of the BatchNorm layers ('bn1', 'layer1.0.downsample.1', ...)."""
    return [key.removesuffix(".running_mean") for key in state if key.endswith(".running_mean")]


def test_run_folder_holds_everything(trained_run):
    run = trained_run["run"]
    for name in ["config.json", "split.csv", "model.onnx.data", "model.json", "model.onnx", "lr_find.png", "lr_find.csv", "epochs.csv",
                 "predictions.csv", "metrics.json", "confusion_matrix.png", "confusion_matrix.json", "report.md",
                 "training_curves.png"]:
        assert (run / name).is_file(), name
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no temp files, no fastai scratch
    config = json.loads((run / "config.json").read_text())
    assert config["train_settings"]["image_size"] == 32 and config["audio_settings"]["sample_rate"] == 4000
    assert {"torch", "fastai", "heartbeat"} <= set(config["versions"])
    head = git_head()  # the commit the run was trained from, "+dirty" with uncommitted changes
    assert re.fullmatch(re.escape(head) + r"(\+dirty)?", config["git_commit"]) if head else config["git_commit"] == "unknown"
    ran = config["train_settings"]  # the settings that ran: from scratch, no body pass, the rate lr_find gave
    assert (ran["mode"], ran["precision"], ran["device"]) == ("scratch", "n/a", "cpu") and ran["device_name"]
    assert ran["lr"] == ran["lr_suggestion"] > 0
    report = (run / "report.md").read_text()  # the report's Settings table shows the same
    assert "| mode | scratch |" in report and f"| lr | {ran['lr']:.4g} |" in report and "| precision | n/a |" in report
    assert json.loads((run / "metrics.json").read_text())["context"]["settings"] == ran
    lr_curve = pd.read_csv(run / "lr_find.csv")  # what `heartbeat report` redraws lr_find.png from
    assert list(lr_curve.columns) == ["lr", "loss"] and len(lr_curve) > 10 and lr_curve["lr"].is_monotonic_increasing
    assert len(pd.read_csv(run / "epochs.csv")) == 1
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ["error_rate", "accuracy", "balanced_accuracy", "macro_f1", "majority_baseline_accuracy", "n_recordings", "per_class"]:
        assert key in metrics
    split = pd.read_csv(run / "split.csv")
    assert {"recording", "patient_id", "label", "split"} <= set(split.columns)
    assert metrics["n_recordings"] == (split["split"] == "valid").sum()
    confusion = json.loads((run / "confusion_matrix.json").read_text())
    assert np.sum(confusion["matrix"]) == metrics["n_recordings"]
    assert "none: trained from scratch" in (run / "report.md").read_text()


def test_split_file_covers_every_labelled_recording_once_by_patient(trained_run):
    split = pd.read_csv(trained_run["run"] / "split.csv")
    manifest = pd.read_csv(trained_run["spectrograms"] / "manifest.csv", keep_default_na=False)
    assert sorted(split["recording"]) == sorted(set(manifest.loc[manifest["label"] != "", "recording"]))
    assert split.groupby("patient_id")["split"].nunique().max() == 1


def test_load_model_rebuilds_the_saved_network(trained_run):
    import torchvision

    run = trained_run["run"]
    network, info = model.load_model(run)
    classes = json.loads((run / "config.json").read_text())["classes"]
    assert info["classes"] == classes and info["arch"] == "resnet34"
    assert not network.training
    state = network.state_dict()
    # The body is torchvision's ResNet-34, parameter for parameter; the head ends in one output per class.
    resnet = {key: value for key, value in torchvision.models.resnet34().state_dict().items() if not key.startswith("fc.")}
    assert sorted(key for key in state if key.startswith("0.")) == sorted(map(body_key, resnet))
    assert all(state[body_key(key)].shape == value.shape for key, value in resnet.items())
    last_linear = [layer for layer in network[1].modules() if isinstance(layer, torch.nn.Linear)][-1]
    assert last_linear.out_features == len(classes) == network(torch.zeros(2, 3, 32, 32)).shape[1]
    # ... holding exactly the saved weights
    saved = saved_state(run)
    assert {key for key in state if not key.endswith(".num_batches_tracked")} == saved.keys()
    assert all(torch.equal(state[key], saved[key]) for key in saved)


def test_saved_weights_reload_without_pickle_and_reproduce_the_predictions(trained_run):
    run, spectrograms = trained_run["run"], trained_run["spectrograms"]
    saved, recomputed = recomputed_probabilities(run, spectrograms)
    np.testing.assert_allclose(recomputed, saved, atol=1e-5)
    # torch's own safe loader reads the same tensors
    state = saved_state(run)
    torch.save(state, run.parent / "state.pt")
    reloaded = torch.load(run.parent / "state.pt", weights_only=True)
    assert all(torch.equal(reloaded[key], state[key]) for key in state)


def test_report_command_recomputes_the_same_metrics(trained_run, tmp_path, capsys):
    from sklearn.metrics import balanced_accuracy_score, f1_score

    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", "metrics.json", "predictions.csv", "epochs.csv", "lr_find.png"):  # what the report reads
        shutil.copy(trained_run["run"] / name, copy / name)
    before = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps({"context": before["context"]}))  # damage it
    assert cli.main(["report", str(copy)]) == 0
    assert json.loads((copy / "metrics.json").read_text()) == before
    assert f"error rate {before['error_rate']:.3f}" in capsys.readouterr().out
    # The report's figures, recomputed from predictions.csv with scikit-learn.
    predictions = pd.read_csv(copy / "predictions.csv")
    classes = json.loads((copy / "config.json").read_text())["classes"]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in (copy / "report.md").read_text().splitlines()
            if line.startswith("| ")}
    assert rows["balanced accuracy"] == f"{balanced_accuracy_score(predictions['label'], predictions['predicted']):.3f}"
    assert rows["macro-F1"] == f"{f1_score(predictions['label'], predictions['predicted'], labels=classes, average='macro', zero_division=0):.3f}"
    assert rows["error rate"] == f"{(predictions['label'] != predictions['predicted']).mean():.3f}"


def test_pretrained_features_mode_keeps_the_body_frozen(trained_run, standin_weights, tmp_path, monkeypatch):
    from heartbeat.train import augment
    from heartbeat.train.recipes import heartbeat as recipe

    initial = record_initial_network(monkeypatch)

    def refuse(*args, **kwargs):
        raise AssertionError("the published recipe used the heartbeat recipe's code")

    for name in [name for name in vars(augment) if not name.startswith("_") and callable(getattr(augment, name))]:
        monkeypatch.setattr(augment, name, refuse)  # no augmentation anywhere in a published run
    monkeypatch.setattr(recipe, "fit", refuse)
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8)
    run = train(trained_run["spectrograms"], tmp_path / "run", settings, progress=False).run_dir
    loaded = torch.load(standin_weights, weights_only=True)
    # The lean folder holds the head alone; the body is rebuilt from the weights file (the ONNX export
    # of the trained network is compared with this rebuilt one in test_model.py).
    assert not (run / model.WEIGHTS_FILE).exists() and (run / model.HEAD_FILE).is_file()
    state = model.load_model(run, pretrained_state=loaded)[0].state_dict()
    body = [key for key in loaded if not key.startswith("fc.")]
    assert all(torch.equal(state[body_key(key)], loaded[key]) for key in body), "the frozen body changed"
    assert all(torch.equal(initial[key], loaded[key]) for key in body), "the weights file was not what the body started from"
    assert "features" in json.loads((run / "config.json").read_text())["training_mode"]
    assert "file " in (run / "report.md").read_text()


def test_published_finetune_with_augmentation_levers_augments_training_images_only(trained_run, standin_weights,
                                                                                     tmp_path, monkeypatch):
    from heartbeat.train import training_windows

    seen = []
    original = training_windows.augmented

    def spy(pixels, mel, chosen, rng):
        seen.append((pixels.tobytes(), tuple(sorted(chosen.levers))))
        return original(pixels, mel, chosen, rng)

    monkeypatch.setattr(training_windows, "augmented", spy)
    settings = TrainSettings(weights=str(standin_weights), mode="finetune", image_size=32, epochs=1, batch_size=4,
                             lr=1e-3, levers="random_windows,specaugment")
    run = train(trained_run["spectrograms"], tmp_path / "run", settings, progress=False).run_dir
    split_table = pd.read_csv(run / "split.csv")
    windows = read_spectrograms(trained_run["spectrograms"]).merge(split_table[["recording", "split"]], on="recording")
    bands = {image: training_windows.read_band_pixels(trained_run["spectrograms"], [image])[0].tobytes()
             for image in windows["image"]}
    train_bands = {bands[image] for image in windows.loc[windows["split"] == "train", "image"]}
    valid_bands = {bands[image] for image in windows.loc[windows["split"] == "valid", "image"]}
    n_train = int((windows["split"] == "train").sum())
    assert len(seen) >= n_train - settings.batch_size  # every training image of the epoch (bar a dropped partial batch)
    assert {levers for _, levers in seen} == {("random_windows", "specaugment")}
    assert all(pixels in train_bands for pixels, _ in seen)
    assert not any(pixels in valid_bands for pixels, _ in seen)
    ran = json.loads((run / "config.json").read_text())["train_settings"]
    assert (ran["mode"], ran["levers"]) == ("finetune", "random_windows,specaugment")


def test_published_band_norm_run_is_predicted_as_its_report(trained_run, standin_weights, tmp_path):
    from heartbeat import predict

    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8, levers="band_norm")
    result = train(trained_run["spectrograms"], tmp_path / "run", settings, progress=False)
    assert json.loads((result.run_dir / "model.json").read_text())["input_band_norm"] is True
    assert json.loads((result.run_dir / "config.json").read_text())["train_settings"]["levers"] == "band_norm"
    predictor = predict.load_predictor(result.run_dir)
    for row in result.predictions.head(5).itertuples():
        answer = predictor.predict_file(trained_run["data"] / "set_b" / row.recording)
        expected = [getattr(row, f"prob_{name}") for name in result.classes]
        np.testing.assert_allclose([answer.probabilities[name] for name in result.classes], expected, atol=1e-4)
    predictor.band_norm = False  # the same network on images not band-normalised: other answers
    row = result.predictions.iloc[0]
    plain = predictor.predict_file(trained_run["data"] / "set_b" / row["recording"]).probabilities
    assert max(abs(plain[name] - row[f"prob_{name}"]) for name in result.classes) > 1e-4


@pytest.fixture(scope="module")
def heartbeat_run(trained_run, tmp_path_factory):
    """A heartbeat-recipe run (one epoch) on trained_run's spectrograms: the recipe's run folder, explanations included."""
    settings = TrainSettings(recipe="heartbeat", epochs=1, batch_size=8, seed=1)
    return train(trained_run["spectrograms"], tmp_path_factory.mktemp("heartbeat") / "run", settings, progress=False)


def test_heartbeat_recipe_run_is_predicted_as_its_report(trained_run, heartbeat_run):
    from heartbeat import predict
    from heartbeat.train import nets
    from heartbeat.train.recipes.heartbeat_recipe import RECIPE

    result = heartbeat_run
    info = json.loads((result.run_dir / "model.json").read_text())
    assert (info["arch"], info["image_size"], info["body_trained"]) == (nets.ARCH, 512, True)
    ran = json.loads((result.run_dir / "config.json").read_text())["train_settings"]
    assert (ran["mode"], ran["pretrained"], ran["epochs"], ran["lr"]) == ("heartbeat", False, 1, RECIPE.lr)
    assert set(ran["levers"].split(",")) == set(RECIPE.levers)
    reloaded, _ = model.load_model(result.run_dir)
    assert isinstance(reloaded, nets.HeartNet)
    predictor = predict.load_predictor(result.run_dir)  # predict unchanged: ONNX, same windows, mean of windows
    for row in result.predictions.head(5).itertuples():
        answer = predictor.predict_file(trained_run["data"] / "set_b" / row.recording)
        assert answer.windows == row.windows
        expected = [getattr(row, f"prob_{name}") for name in result.classes]
        np.testing.assert_allclose([answer.probabilities[name] for name in result.classes], expected, atol=1e-4)


MARKDOWN_IMAGE = re.compile(r"!\[(?:\\.|[^\]\\])*\]\(([^)\s]+)\)")  # ![alt](target): the target


def test_a_heartbeat_run_explains_a_few_validation_recordings_in_its_report(heartbeat_run):
    from PIL import Image

    from heartbeat import explain
    from heartbeat.report import explanations

    run, predictions = heartbeat_run.run_dir, heartbeat_run.predictions
    pictures = sorted((run / "explanations").iterdir())
    assert 1 <= len(pictures) <= len(heartbeat_run.classes) + 1 and not heartbeat_run.warnings
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.format == "PNG" and image.size == (1000, 800)
            image.verify()
    report = (run / "report.md").read_text()
    section = report.split("## What the model heard")[1].split("\n## ")[0]
    assert "red where hiding a patch lowers its log-odds" in section
    linked = MARKDOWN_IMAGE.findall(section)
    assert sorted(linked) == sorted(f"explanations/{picture.name}" for picture in pictures)
    assert all((run / target).is_file() for target in MARKDOWN_IMAGE.findall(report))  # every picture link resolves
    # Each is a validation recording, chosen by the rule report.explanations states.
    chosen = json.loads((run / "metrics.json").read_text())["context"]["explanations"]["pictures"]
    probabilities = predictions[[f"prob_{name}" for name in heartbeat_run.classes]].to_numpy()
    expected = explanations.choose_recordings(predictions, probabilities, heartbeat_run.classes)
    assert [(p["recording"], p["why"]) for p in chosen] == [(predictions["recording"].iloc[row], why) for row, why in expected]
    assert {p["file"] for p in chosen} == set(linked)


def test_the_report_explains_a_recording_as_predict_explains_its_wav(trained_run, heartbeat_run):
    """Stage 1's images with the manifest's start times and duration are the windows predict makes of the wav."""
    from heartbeat import explain, predict
    from heartbeat.data import audio
    from heartbeat.data.manifest import read_manifest
    from heartbeat.report import explanations

    predictor = predict.load_predictor(heartbeat_run.run_dir)
    spectrograms = trained_run["spectrograms"]
    manifest = read_manifest(spectrograms / "manifest.csv")
    recording = max(heartbeat_run.predictions["recording"], key=lambda name: sum(r["recording"] == name for r in manifest))
    from_images = explain.explain_images(predictor, *explanations.recording_windows(spectrograms, manifest, recording))
    from_wav = explain.explain_signal(predictor, audio.load_audio(trained_run["data"] / "set_b" / recording))
    assert from_images.window_starts.size > 1  # several windows, overlapping: their stitching is compared too
    np.testing.assert_array_equal(from_images.spectrogram, from_wav.spectrogram)
    np.testing.assert_allclose(from_images.window_starts, from_wav.window_starts, atol=1e-4)
    np.testing.assert_allclose(from_images.probabilities, from_wav.probabilities, atol=1e-6)
    assert from_images.target == from_wav.target and np.abs(from_wav.saliency).max() > 0
    np.testing.assert_allclose(from_images.saliency, from_wav.saliency, atol=1e-5)


def test_a_failure_to_draw_the_explanations_is_a_warning_not_a_failed_run(trained_run, tmp_path, capsys, monkeypatch):
    from heartbeat import explain

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts\nsecond line")

    monkeypatch.setattr(explain, "draw_explanation", broken)
    run = tmp_path / "run"
    code = cli.main(["train", "--spectrograms", str(trained_run["spectrograms"]), "--out", str(run), "--recipe",
                     "heartbeat", "--epochs", "1", "--bs", "8", "--seed", "1", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0 and "error rate" in out
    assert err == "heartbeat: warning: The explanations were not drawn: no fonts\n"
    assert not (run / "explanations").exists() and (run / "model.onnx").is_file()
    section = (run / "report.md").read_text().split("## What the model heard")[1].split("\n## ")[0]
    assert "The explanations were not drawn: no fonts" in section and "![" not in section


def test_a_published_recipe_run_has_no_explanations_and_says_why(trained_run):
    run = trained_run["run"]
    assert not (run / "explanations").exists()
    section = (run / "report.md").read_text().split("## What the model heard")[1].split("\n## ")[0]
    assert "No explanations for the published recipe" in section and "predict --model RUN --explain" in section


def test_valid_fraction_zero_trains_the_heartbeat_recipe_on_every_recording(trained_run, tmp_path, capsys):
    spectrograms, run = trained_run["spectrograms"], tmp_path / "final"
    code = cli.main(["train", "--spectrograms", str(spectrograms), "--out", str(run), "--recipe", "heartbeat",
                     "--valid-fraction", "0", "--epochs", "1", "--bs", "8", "--seed", "1", "--quiet"])
    assert code == 0 and "no validation figures" in capsys.readouterr().out
    for name in ["model.onnx", "model.json", "config.json", "split.csv", "epochs.csv", "report.md"]:
        assert (run / name).is_file(), name
    assert not (run / "predictions.csv").exists() and not (run / "metrics.json").exists()
    assert not (run / "explanations").exists() and "heard" not in (run / "report.md").read_text()  # nothing to explain
    split_table = pd.read_csv(run / "split.csv")
    labelled = set(read_spectrograms(spectrograms)["recording"])
    assert sorted(split_table["recording"]) == sorted(labelled) and set(split_table["split"]) == {"train"}
    assert list(pd.read_csv(run / "epochs.csv").columns) == ["epoch", "train_loss"]  # no validation pass
    assert json.loads((run / "config.json").read_text())["n_windows"]["valid"] == 0
    assert (f"Trained on all {len(labelled)} recordings: no validation side; its figures come from the CV"
            in (run / "report.md").read_text())
    # predict reads the final model as any other: its answers are the saved network's
    recordings = sorted(labelled)[:4]
    assert cli.main(["predict", "--json", "--model", str(run),
                     *[str(trained_run["data"] / "set_b" / name) for name in recordings]]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    classes = json.loads((run / "model.json").read_text())["classes"]
    predicted = np.array([[answer["probabilities"][name] for name in classes] for answer in answers])
    np.testing.assert_allclose(predicted, network_probabilities(run, spectrograms, recordings), atol=1e-4)


def test_valid_fraction_zero_is_refused_for_the_published_recipe(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--spectrograms", str(trained_run["spectrograms"]), "--out", str(out), "--no-pretrained",
                     "--valid-fraction", "0", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--valid-fraction 0" in err and "--recipe heartbeat" in err
    assert not out.exists()


def test_no_pretrained_trains_the_whole_body(trained_run):
    initial, state = trained_run["initial_body"], saved_state(trained_run["run"])
    convs = [key for key in initial if "conv" in key and key.endswith("weight")]
    changed = [key for key in convs if not torch.equal(state[body_key(key)], initial[key])]
    assert len(changed) == len(convs), f"{len(convs) - len(changed)} body convolutions did not train"


def test_random_split_report_states_the_leak(trained_run, standin_weights, tmp_path):
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8, split="random", seed=3)
    run = train(trained_run["spectrograms"], tmp_path / "run", settings, progress=False).run_dir
    split = pd.read_csv(run / "split.csv")
    leaked = int((split.groupby("patient_id")["split"].nunique() > 1).sum())
    assert leaked > 0
    assert f"{leaked} patients have recordings on both sides" in (run / "report.md").read_text()


def test_missing_imagenet_weights_stop_with_a_clear_message(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "run"
    code = cli.main(["train", "--spectrograms", str(trained_run["spectrograms"]), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet34-b627a593.pth") in err
    assert "--weights" in err and "--no-pretrained" in err
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_bad_inputs_to_train(trained_run, tmp_path, capsys):
    with pytest.raises(TrainError, match="manifest.csv: not found"):
        train(tmp_path / "nothing", tmp_path / "run", TrainSettings(pretrained=False))
    bad_weights = tmp_path / "bad.pth"
    bad_weights.write_bytes(b"not a state dict")
    code = cli.main(["train", "--spectrograms", str(trained_run["spectrograms"]), "--out", str(tmp_path / "r"), "--weights", str(bad_weights)])
    assert code == 2 and "bad.pth: not a loadable state dict" in capsys.readouterr().err
    with pytest.raises(TrainError, match="already exists"):
        train(trained_run["spectrograms"], trained_run["run"], TrainSettings(pretrained=False))


def test_spectrograms_made_with_other_audio_settings_are_refused(trained_run, tmp_path, capsys):
    from heartbeat.data.manifest import SETTINGS_NAME

    spectrograms = tmp_path / "spectrograms"
    shutil.copytree(trained_run["spectrograms"], spectrograms, ignore=shutil.ignore_patterns("features"))
    settings_file = spectrograms / SETTINGS_NAME
    made_with = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**made_with, "hop_length": made_with["hop_length"] + 1}))
    out = tmp_path / "run"

    code = cli.main(["train", "--spectrograms", str(spectrograms), "--out", str(out), "--no-pretrained",
                     "--image-size", "32", "--epochs", "1", "--quiet"])

    _, err = capsys.readouterr()
    assert_one_line_error(CliResult(code, "", err, 0), [str(settings_file), "hop_length"], code=2)
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["spectrograms"]


TINY_RUN = ["--no-pretrained", "--image-size", "32", "--epochs", "1", "--quiet"]
STOP_CASES = {  # name -> (command after its input folder's flag, where its work is under way, signal, to the group?)
    # Ctrl-C: the terminal interrupts the whole process group
    "train-ctrl-c": (["train", "--out", "{out}/run", *TINY_RUN], ".*/split.csv", signal.SIGINT, True),
    # `kill PID` or a service manager stopping the command: SIGTERM to the process alone
    "train-sigterm": (["train", "--out", "{out}/run", *TINY_RUN], ".*/split.csv", signal.SIGTERM, False),
    "cv-sigterm": (["cv", "--out", "{out}/cv", "--folds", "2", *TINY_RUN], ".cv.*.tmp/runs/.*", signal.SIGTERM, False),
    # a closed terminal hangs up its foreground process group
    "train-sighup": (["train", "--out", "{out}/run", *TINY_RUN], ".*/split.csv", signal.SIGHUP, True),
    # workers inherit the handler: each removes its own temporary image
    "spectrograms-sigterm": (["spectrograms", "--out", "{out}/spectrograms", "--jobs", "2", "--quiet"],
                             "spectrograms/images/*.png", signal.SIGTERM, False),
}


@pytest.mark.parametrize("case", list(STOP_CASES))
def test_a_stopped_command_exits_128_plus_the_signal_and_leaves_no_temporary(case, trained_run, tmp_path):
    command, under_way, signum, to_group = STOP_CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    source = ["--data", trained_run["data"]] if command[0] == "spectrograms" else ["--spectrograms", trained_run["spectrograms"]]
    arguments = [sys.executable, "-m", "heartbeat", command[0], *map(str, source), *(a.format(out=out) for a in command[1:])]
    # A session of its own, so that a signal to its group reaches it (and its workers) as a terminal's does.
    process = subprocess.Popen(arguments, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(under_way)):  # the command's temporary exists: its work is under way
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"{case} did not start"
            time.sleep(0.02)
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 128 + signum, err
    expected = "heartbeat: interrupted" if signum == signal.SIGINT else f"heartbeat: stopped by {signum.name}"
    assert [line for line in err.splitlines() if line.strip()] == [expected]
    assert [path for path in out.rglob(".*") if ".tmp" in path.name] == []  # no hidden temporary anywhere
    if command[0] == "spectrograms":
        assert not (out / "spectrograms" / "manifest.csv").exists()  # the manifest is written last, when complete
    else:
        assert list(out.iterdir()) == []  # neither the run (or CV folder) nor its temporary folder


def test_progress_in_a_log_is_one_line_per_epoch_without_carriage_returns(trained_run, tmp_path):
    log = tmp_path / "log"
    with open(log, "w") as stdout:  # a file, not a terminal: as `make demo > log`
        process = subprocess.run([sys.executable, "-m", "heartbeat", "train", "--spectrograms", str(trained_run["spectrograms"]),
                                  "--out", str(tmp_path / "run"), "--no-pretrained", "--image-size", "32", "--epochs", "2"],
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=stdout, stderr=subprocess.PIPE,
                                 text=True, timeout=280)
    assert process.returncode == 0, process.stderr
    text = log.read_text()
    assert "\r" not in text and "\r" not in process.stderr
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split()[:2] for line in epochs] == [["epoch", "0"], ["epoch", "1"]], text
    assert all("train_loss" in line and "valid_loss" in line and "error_rate" in line for line in epochs)


# ---------------------------------------------------------------- finetune, unfreeze, the majority baseline

@pytest.fixture(scope="module")
def finetune_run(trained_run, standin_weights, tmp_path_factory):
    """One run for three checks (one training instead of three): finetune mode on the stand-in weights, then
    --unfreeze-epochs 1, with a split whose training side's most common class is not the validation side's.

    Returns the run folder, the split, and the network's state when the second stage unfroze it.
    """
    from fastai.learner import Learner

    recordings = split.recordings_table(read_spectrograms(trained_run["spectrograms"]))
    patients = recordings.groupby("patient_id")["label"].first()
    # Training side: every murmur patient and one patient of each other class; the rest validate.
    train_patients = set(patients[patients == "murmur"].index)
    train_patients |= {patients[patients == label].index[0] for label in ("normal", "extrastole")}
    split_table = recordings.assign(split=np.where(recordings["patient_id"].isin(train_patients), "train", "valid"))

    at_unfreeze = {}
    real_unfreeze = Learner.unfreeze

    def unfreeze_recording_the_state(learner):
        at_unfreeze.update({key: value.clone() for key, value in learner.model.state_dict().items()})
        return real_unfreeze(learner)

    real_lr_find = Learner.lr_find

    def short_lr_find(learner, *args, **kwargs):
        # 20 steps instead of 100: these tests are about what training changes, not about the rate found.
        return real_lr_find(learner, *args, **{"num_it": 20, **kwargs})

    # lr given: the changes checked below must not depend on how small lr_find's suggestion is.
    settings = TrainSettings(weights=str(standin_weights), mode="finetune", unfreeze_epochs=1, lr=1e-3, image_size=32,
                             epochs=1, batch_size=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Learner, "unfreeze", unfreeze_recording_the_state)
        patch.setattr(Learner, "lr_find", short_lr_find)
        run = train(trained_run["spectrograms"], tmp_path_factory.mktemp("finetune") / "run", settings,
                    split_table=split_table, progress=False).run_dir
    return {"run": run, "split": split_table, "at_unfreeze": at_unfreeze}


def test_majority_baseline_is_the_training_sides_most_common_class(finetune_run):
    run, split_table = finetune_run["run"], finetune_run["split"]
    train_majority = split_table.loc[split_table["split"] == "train", "label"].value_counts().idxmax()
    valid_majority = split_table.loc[split_table["split"] == "valid", "label"].value_counts().idxmax()
    assert train_majority != valid_majority  # the fixture's point: the two sides disagree

    predictions = pd.read_csv(run / "predictions.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    baseline = metrics["majority_baseline"]
    assert json.loads((run / "config.json").read_text())["majority_class"] == train_majority
    assert baseline["class"] == train_majority
    # Its figures are those of answering the training side's class for every validation recording.
    assert sorted(predictions["recording"]) == sorted(split_table.loc[split_table["split"] == "valid", "recording"])
    assert baseline["error_rate"] == pytest.approx((predictions["label"] != train_majority).mean())
    assert metrics["majority_baseline_accuracy"] == pytest.approx((predictions["label"] == train_majority).mean())
    assert f"always {train_majority}" in (run / "report.md").read_text()


def test_finetune_mode_trains_batchnorm_and_keeps_the_convolutions(finetune_run, standin_weights):
    before = torch.load(standin_weights, weights_only=True)
    after_first_stage = finetune_run["at_unfreeze"]
    assert after_first_stage, "the second stage never unfroze the network"
    convs = [key for key, value in before.items() if is_conv_weight(key, value)]
    assert all(torch.equal(after_first_stage[body_key(key)], before[key]) for key in convs), "a frozen convolution changed"
    for layer in batchnorm_layers(before):
        for part in ("weight", "bias", "running_mean", "running_var"):
            key = f"{layer}.{part}"
            assert not torch.equal(after_first_stage[body_key(key)], before[key]), f"{key} did not train"
    assert "finetune" in json.loads((finetune_run["run"] / "config.json").read_text())["training_mode"]


def test_unfreeze_epochs_train_the_whole_body(finetune_run, standin_weights):
    before, after_first_stage = torch.load(standin_weights, weights_only=True), finetune_run["at_unfreeze"]
    assert after_first_stage, "the second stage never unfroze the network"
    final = saved_state(finetune_run["run"])
    convs = [key for key, value in before.items() if is_conv_weight(key, value)]
    unchanged = [key for key in convs if torch.equal(final[body_key(key)], after_first_stage[body_key(key)])]
    assert unchanged == [], f"{len(unchanged)} of {len(convs)} convolutions did not train after unfreezing"
    epochs = pd.read_csv(finetune_run["run"] / "epochs.csv")
    assert epochs["epoch"].tolist() == [0, 1]  # one epoch per stage
    assert json.loads((finetune_run["run"] / "config.json").read_text())["train_settings"]["unfreeze_epochs"] == 1


@pytest.mark.skipif(not cpu_has_bf16(), reason="torch says this CPU has no bf16")
def test_bf16_body_pass_runs_and_is_recorded(trained_run, standin_weights, tmp_path):
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8, precision="bf16")
    run = train(trained_run["spectrograms"], tmp_path / "run", settings, progress=False).run_dir

    config = json.loads((run / "config.json").read_text())
    assert config["train_settings"]["precision"] == "bf16"
    # The head was scored on bf16 features: close to what the fp32 model (predict's) gives, but not equal.
    saved, recomputed = recomputed_probabilities(run, trained_run["spectrograms"])
    difference = np.abs(saved - recomputed).max()
    assert 1e-6 < difference < 0.05, difference


def test_lr_find_without_a_curve_gives_no_suggestion():
    # fastai's valley() fails on an empty curve (the loss diverged within the finder's first steps)
    from types import SimpleNamespace

    from heartbeat.train.loop import find_lr

    def diverged(show_plot):
        raise IndexError("index 0 is out of bounds for dimension 0 with size 0")

    learner = SimpleNamespace(lr_find=diverged, recorder=SimpleNamespace(lrs=[1e-7, 2e-7], losses=[1.1, 9.0]))
    curve, suggestion = find_lr(learner)
    assert suggestion is None and curve.to_dict("list") == {"lr": [1e-7, 2e-7], "loss": [1.1, 9.0]}
    learner.lr_find = lambda show_plot: SimpleNamespace(valley=3e-3)
    assert find_lr(learner)[1] == 3e-3
