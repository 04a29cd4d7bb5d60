"""Where stage 2 runs: the one place that names the devices ("cpu", "cuda", "mps") and their precisions.

`resolve_device` turns --device (auto, cpu, cuda, mps) into a torch.device, or a one-line
DeviceError when the device asked for is not there; `autocast_dtype` says which reduced precision
--precision means on that device; `device_name` is what config.json and the report record.
Everything else passes a torch.device around and never spells a device's name.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")  # Linux's CPU description; elsewhere platform.processor() names the CPU
REDUCED_PRECISIONS = {torch.bfloat16: "bf16", torch.float16: "fp16"}


class DeviceError(ValueError):
    """The device asked for is not available here; the message names --device and the remedy."""


def cpu() -> torch.device:
    """The CPU: where the ONNX export's copy of the network runs, and where results are gathered."""
    return torch.device("cpu")


def resolve_device(name: str = "auto") -> torch.device:
    """--device as a torch.device: auto is CUDA if available, then Apple's MPS, then the CPU."""
    available = {"cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if name == "auto":
        name = next((kind for kind, present in available.items() if present), "cpu")
    if name == "cpu":
        return cpu()
    if name not in available:
        raise DeviceError(f"--device must be one of auto, cpu, cuda, mps, not {name!r}")
    if not available[name]:
        raise DeviceError(f"--device {name}: no {name.upper()} device is available to torch {torch.__version__} here "
                          "(use --device cpu, or auto to take what there is)")
    # CUDA's current GPU by its index, so that config.json says which one ran
    return torch.device(name, torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)  # absent from some builds
    return bool(backend is not None and backend.is_available())


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of --precision on `device`, or None for plain fp32.

    fp32 -> None; bf16 -> bf16; auto -> what the device runs fast: bf16 on a CPU with bf16
    instructions (oneDNN emulates it, slower, on one without), on CUDA bf16 where the GPU has it
    and else fp16, fp16 on MPS; None on any other device.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"--precision must be one of fp32, bf16, auto, not {precision!r}")
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """"fp32" for no autocast, else "bf16" or "fp16": what config.json records."""
    return "fp32" if dtype is None else REDUCED_PRECISIONS[dtype]


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX on x86)."""
    mkldnn = torch.backends.mkldnn
    return bool(mkldnn.is_available()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def device_name(device: torch.device) -> str:
    """The hardware's name: the CPU's model, the CUDA GPU's name, or "Apple MPS"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (GPU calls return before it is done): for timing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
