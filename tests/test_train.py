"""Training end to end on synthetic recordings at 32 px: run folder, freezing, weights, report, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import record_initial_network
from heartbeat import cli, model
from heartbeat.train import TrainError, TrainSettings, train

BODY_CHILDREN = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def body_key(torchvision_key: str) -> str:
    """torchvision's 'layer1.0.conv1.weight' is '0.4.0.conv1.weight' in the fastai network (body = index 0)."""
    child, rest = torchvision_key.split(".", 1)
    return f"0.{BODY_CHILDREN.index(child)}.{rest}"


def saved_state(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / model.WEIGHTS_FILE))


def test_run_folder_holds_everything(trained_run):
    run = trained_run["run"]
    for name in ["config.json", "split.csv", "model.safetensors", "model.json", "model.onnx", "lr_find.png", "epochs.csv",
                 "predictions.csv", "metrics.json", "confusion_matrix.png", "confusion_matrix.json", "report.md",
                 "training_curves.png"]:
        assert (run / name).is_file(), name
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no temp files, no fastai scratch
    config = json.loads((run / "config.json").read_text())
    assert config["train_settings"]["image_size"] == 32 and config["audio_settings"]["sample_rate"] == 4000
    assert {"torch", "fastai", "heartbeat"} <= set(config["versions"]) and config["git_commit"]
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


def test_saved_weights_reload_without_pickle_and_reproduce_the_predictions(trained_run):
    from PIL import Image

    from heartbeat import audio, metrics

    run, spectrograms = trained_run["run"], trained_run["spectrograms"]
    network, info = model.load_model(run)  # safetensors + JSON: nothing is unpickled
    classifier = model.Classifier(network).eval()
    manifest = pd.read_csv(spectrograms / "manifest.csv", keep_default_na=False)
    predictions = pd.read_csv(run / "predictions.csv")
    for _, row in predictions.iterrows():
        images = [audio.model_input(np.asarray(Image.open(spectrograms / name)), info["image_size"])
                  for name in manifest.loc[manifest["recording"] == row["recording"], "image"]]
        with torch.no_grad():
            window_probs = classifier(model.images_to_tensor(images)).numpy()
        combined = metrics.combine_windows(window_probs)
        expected = row[[f"prob_{name}" for name in info["classes"]]].to_numpy(dtype=float)
        np.testing.assert_allclose(combined, expected, atol=1e-5)
    # torch's own safe loader reads the same tensors
    from safetensors.torch import load_file

    state = load_file(str(run / model.WEIGHTS_FILE))
    torch.save(state, run.parent / "state.pt")
    reloaded = torch.load(run.parent / "state.pt", weights_only=True)
    assert all(torch.equal(reloaded[key], state[key]) for key in state)


def test_report_command_recomputes_the_same_metrics(trained_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_run["run"], copy)
    before = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps({"context": before["context"]}))  # damage it
    assert cli.main(["report", str(copy)]) == 0
    assert json.loads((copy / "metrics.json").read_text()) == before
    assert "error rate" in capsys.readouterr().out


def test_pretrained_features_mode_keeps_the_body_frozen(trained_run, standin_weights, tmp_path, monkeypatch):
    initial = record_initial_network(monkeypatch)
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8)
    run = train(trained_run["spectrograms"], tmp_path / "run", settings, progress=False)
    state = saved_state(run)
    loaded = torch.load(standin_weights, weights_only=True)
    body = [key for key in loaded if not key.startswith("fc.")]
    assert all(torch.equal(state[body_key(key)], loaded[key]) for key in body), "the frozen body changed"
    assert all(torch.equal(initial[key], loaded[key]) for key in body), "the weights file was not what the body started from"
    assert "features" in json.loads((run / "config.json").read_text())["training_mode"]
    assert "file " in (run / "report.md").read_text()


def test_no_pretrained_trains_the_whole_body(trained_run):
    initial, state = trained_run["initial_body"], saved_state(trained_run["run"])
    convs = [key for key in initial if "conv" in key and key.endswith("weight")]
    changed = [key for key in convs if not torch.equal(state[body_key(key)], initial[key])]
    assert len(changed) == len(convs), f"{len(convs) - len(changed)} body convolutions did not train"


def test_random_split_report_states_the_leak(trained_run, standin_weights, tmp_path):
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8, split="random", seed=3)
    run = train(trained_run["spectrograms"], tmp_path / "run", settings, progress=False)
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
