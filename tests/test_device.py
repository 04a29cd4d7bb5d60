"""--device and --precision: every device-dependent branch, reached on the CPU by passing the device or patching torch."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest
import torch

from heartbeat.train import device as devices
from heartbeat.train.device import DeviceError, autocast_dtype, resolve_device

HEARTBEAT = Path(__file__).resolve().parents[1] / "heartbeat"


def machine(monkeypatch, *, cuda: bool, mps: bool) -> None:
    """Make torch report these GPUs (none of them is ever used: only resolve_device asks).

    functools.wraps keeps __wrapped__, which torch's compiler looks up on import."""
    for module, answer in ((torch.cuda, cuda), (torch.backends.mps, mps)):
        monkeypatch.setattr(module, "is_available", functools.wraps(module.is_available)(lambda answer=answer: answer))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda:1"),  # CUDA first (its current GPU)
    (False, True, "mps"),  # then Apple's MPS
    (False, False, "cpu"),  # then the CPU
])
def test_auto_takes_cuda_then_mps_then_the_cpu(cuda, mps, expected, monkeypatch):
    machine(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(expected)


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_a_device_that_is_not_there_is_one_line_naming_the_flag(name, monkeypatch):
    machine(monkeypatch, cuda=False, mps=False)
    with pytest.raises(DeviceError, match=f"^--device {name}: no {name.upper()} device") as refused:
        resolve_device(name)
    assert "\n" not in str(refused.value) and "--device cpu" in str(refused.value)


def test_asked_devices_are_given_when_present(monkeypatch):
    machine(monkeypatch, cuda=True, mps=True)
    assert [str(resolve_device(name)) for name in ("cpu", "cuda", "mps")] == ["cpu", "cuda:1", "mps"]
    with pytest.raises(DeviceError, match="--device must be one of"):
        resolve_device("tpu")


@pytest.mark.parametrize("device, precision, bf16_cpu, bf16_gpu, expected", [
    ("cpu", "fp32", True, True, None),
    ("cuda", "fp32", True, True, None),
    ("cpu", "bf16", False, False, torch.bfloat16),  # asked for: given, even where it is emulated
    ("cpu", "auto", True, False, torch.bfloat16),
    ("cpu", "auto", False, False, None),
    ("cuda", "auto", False, True, torch.bfloat16),
    ("cuda", "auto", False, False, torch.float16),
    ("mps", "auto", False, False, torch.float16),
    ("meta", "auto", True, True, None),  # any other device: plain fp32
])
def test_autocast_dtype_per_device(device, precision, bf16_cpu, bf16_gpu, expected, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: bf16_cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_gpu)
    assert autocast_dtype(torch.device(device), precision) == expected
    assert devices.precision_name(expected) == {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[expected]


def test_device_names(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Stand-in GPU 9000")
    assert devices.device_name(torch.device("cuda")) == "Stand-in GPU 9000"
    assert devices.device_name(torch.device("mps")) == "Apple MPS"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Stand-in CPU @ 3.00GHz\nflags\t: fpu\n")
    monkeypatch.setattr(devices, "CPUINFO", cpuinfo)
    assert devices.device_name(devices.cpu()) == "Stand-in CPU @ 3.00GHz"
    monkeypatch.setattr(devices, "CPUINFO", tmp_path / "absent")  # not Linux: the platform module's answer
    assert devices.device_name(devices.cpu())


def test_only_the_device_module_names_a_device():
    # `.cuda()` or a hard-coded "cpu"/"cuda"/"mps" anywhere else in the package would bypass --device.
    result = subprocess.run(["grep", "-rnE", r"\.cuda\(\)|[\"'](cpu|cuda|mps)[\"']", str(HEARTBEAT), "--include=*.py"],
                            capture_output=True, text=True)
    offenders = [line for line in result.stdout.splitlines()
                 if not line.startswith(str(HEARTBEAT / "train" / "device.py")) and not line.startswith(str(HEARTBEAT / "train" / "settings.py"))]
    assert offenders == []


def test_features_pass_runs_on_the_device_under_its_autocast(monkeypatch, tmp_path):
    """The body pass's device and dtype reach the network: checked with a recording stand-in body on the CPU."""
    import numpy as np
    from PIL import Image

    from types import SimpleNamespace

    from heartbeat.train.recipes import features
    from heartbeat.train.settings import TrainSettings

    seen = []

    class Body(torch.nn.Module):
        def forward(self, batch):
            seen.append((batch.device, torch.get_autocast_dtype(batch.device.type), torch.is_autocast_enabled(batch.device.type)))
            return batch.mean(dim=(2, 3), keepdim=True)

    network = torch.nn.Sequential(Body(), torch.nn.Sequential(torch.nn.Identity(), torch.nn.Flatten()))
    (tmp_path / "images").mkdir()
    for index in range(3):
        Image.fromarray(np.full((16, 16), index * 40, dtype=np.uint8)).save(tmp_path / "images" / f"w{index}.png")
    images = [f"images/w{index}.png" for index in range(3)]
    plan = SimpleNamespace(settings=TrainSettings(image_size=16), device=devices.cpu(), autocast=torch.bfloat16)
    outputs = features.body_features(network, tmp_path, images, plan, "key-bf16", progress=False)
    assert outputs.shape == (3, 3) and outputs.dtype == torch.float32
    assert seen == [(devices.cpu(), torch.bfloat16, True)]
    seen.clear()
    plain = features.body_features(network, tmp_path, images, SimpleNamespace(**{**vars(plan), "autocast": None}),
                                   "key-fp32", progress=False)
    assert seen[0][2] is False  # fp32: no autocast at all
    # ImageNet normalisation of the grey windows, as the exported Classifier does it
    expected = [(index * 40 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]) for index in range(3)]
    np.testing.assert_allclose(plain.numpy(), np.array(expected), rtol=1e-5)
