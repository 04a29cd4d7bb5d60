"""Shared fixtures: synthetic recordings made on the fly (no binary fixtures), and the real data's location."""

from __future__ import annotations

import os
from pathlib import Path

# One compute thread per test process (set before numpy or torch load their thread pools): the
# training fixtures are tiny, so a second thread gains little, and on a busy 2-core machine
# OpenMP's spinning threads slowed the trained_run fixture past pytest's 300 s timeout (44 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import soundfile

# No test may download ImageNet weights (87 MB, and no network here): tests of the download
# path unset this themselves and serve a local file.
os.environ.setdefault("HEARTBEAT_OFFLINE", "1")

# The real Dataset B sits beside the repository in ../shared (never copied in, never written).
REAL_DATA = Path(os.environ.get("HEARTBEAT_REAL_DATA", Path(__file__).resolve().parents[2] / "shared/data/heartbeat-sounds"))

needs_real_data = pytest.mark.skipif(not (REAL_DATA / "set_b.csv").is_file(), reason=f"real Dataset B not at {REAL_DATA}")


def sine(frequency: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def clicks(seconds: float, sample_rate: int, every_s: float = 0.8) -> np.ndarray:
    """A click train: short decaying 60 Hz bursts, like heart-sound thumps."""
    signal = np.zeros(int(round(seconds * sample_rate)), dtype=np.float32)
    burst = sine(60, 0.08, sample_rate, 0.8) * np.exp(-np.linspace(0, 5, int(round(0.08 * sample_rate))))
    for start in np.arange(0.1, seconds - 0.1, every_s):
        index = int(start * sample_rate)
        signal[index:index + burst.size] += burst[: signal.size - index]
    return signal


def write_wav(path: Path, signal: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), signal, sample_rate, subtype=subtype)
    return path


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    """A small Dataset-B-shaped folder with the download's file-name quirks."""
    from heartbeat.data.synth import write_dataset_b

    return write_dataset_b(tmp_path / "data", n_patients=6, recordings_per_patient=(1, 2), n_unlabelled=2,
                           seconds=(1.0, 11.0), seed=3)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny model trained once per test session on synthetic recordings (from scratch, 32 px, 1 epoch).

    Returns a dict: data (the Dataset-B-shaped folder), spectrograms, run (the run folder),
    initial_body (the network's weights as vision_learner received them, before training).
    """
    from heartbeat.train import model
    from heartbeat.data.spectrograms import build_spectrograms
    from heartbeat.data.synth import write_dataset_b
    from heartbeat.train.run import TrainSettings, train

    root = tmp_path_factory.mktemp("trained")
    data = write_dataset_b(root / "data", n_patients=10, recordings_per_patient=(2, 3), n_unlabelled=0,
                           seconds=(2.0, 8.0), seed=5)
    build_spectrograms(data, root / "spectrograms", jobs=1, progress=False)
    settings = TrainSettings(pretrained=False, image_size=32, epochs=1, batch_size=8, seed=1)
    with pytest.MonkeyPatch.context() as patch:
        initial_body = record_initial_network(patch)
        run = train(root / "spectrograms", root / "run", settings, progress=False).run_dir
    return {"data": data, "spectrograms": root / "spectrograms", "run": run, "initial_body": initial_body}


def record_initial_network(patch) -> dict:
    """Patch model.resnet34_arch so the state of the network it builds is captured before any training."""
    from fastai.vision.learner import model_meta

    from heartbeat.train import model

    captured = {}
    real_arch = model.resnet34_arch

    def arch_recording(state):
        build = real_arch(state)

        def resnet34(weights=None, **kwargs):
            network = build(weights, **kwargs)
            captured.update({key: value.clone() for key, value in network.state_dict().items()})
            return network

        model_meta[resnet34] = model_meta[build]
        return resnet34

    patch.setattr(model, "resnet34_arch", arch_recording)
    return captured


@pytest.fixture(scope="session")
def standin_weights(tmp_path_factory):
    """A stand-in for the ImageNet file (random values, torchvision's format): code paths, not accuracy."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet34-standin.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    return path
