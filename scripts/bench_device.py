"""Time stage 2's two device-bound passes on the CPU and on the GPU (CUDA or MPS), side by side in one run.

    python scripts/bench_device.py [--windows 16] [--spectrograms DIR] [--image-size 512]

For someone with a GPU: how much faster stage 2 would be there. Two passes, each over the same
N spectrogram windows on every device found (the CPU always; CUDA, else MPS, when torch sees one):
- features pass: the frozen ResNet-34 body (with fastai's pooling) over the N windows in
  inference mode, in batches of 8 as train.py's features pass does, once in fp32 and once with
  autocast at the device's reduced precision (bf16 where the device has it, else fp16 on a GPU;
  a CPU without bf16 instructions gets the fp32 row only);
- finetune epoch: forward + backward + Adam step of the whole network (fastai's head on the
  body, body frozen but for its BatchNorm layers, as `--mode finetune` trains) over the N
  windows at batch size 4 (full batches only, as fastai drops a partial one), in fp32.
Each timing follows one untimed batch (allocator, kernel selection) and waits for the device to
finish. Images are random pixels (the time does not depend on them) unless --spectrograms
names stage 1's output; decoding the PNGs is not timed. Weights are a stand-in (torchvision's
random initialisation): timing only, never accuracy.

Prints a table: pass, device, device name, precision, seconds, windows/s, and the speed-up over
the CPU's fp32 row of the same pass. Without a GPU it prints the CPU rows and says so.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib
from benchlib import say

N_CLASSES = 3  # Dataset B: normal, murmur, extrastole
FEATURES_BATCH = 8  # train.py's features pass feeds the body 8 images at a time
FINETUNE_BATCH = 4  # train.py's default batch size (the published recipe's)


@dataclass(frozen=True)
class Row:
    pass_name: str
    device: str
    device_name: str
    precision: str
    seconds: float
    windows: int


# ---------------------------------------------------------------- devices (heartbeat.train.device names them)

def devices() -> list:
    """The CPU, then the GPU torch can use (CUDA first, then Apple's MPS), if any: what --device auto would take."""
    from heartbeat.train import device

    found, gpu = [device.cpu()], device.resolve_device("auto")
    return found if gpu == found[0] else [*found, gpu]


def reduced_precision(device):
    """The autocast dtype the device runs fast (train's --precision auto), or None where only fp32 is worth timing."""
    from heartbeat.train.device import autocast_dtype

    return autocast_dtype(device, "auto")


def precision_name(dtype) -> str:
    from heartbeat.train.device import precision_name

    return precision_name(dtype) + ("" if dtype is None else " autocast")


# ---------------------------------------------------------------- the network and its input

def stand_in_network():
    """ResNet-34 body + fastai's head, built as train.py builds it, on stand-in weights, frozen as fastai freezes."""
    from fastai.vision.learner import create_vision_model
    from torch import nn

    from heartbeat.train import model

    network = create_vision_model(model.resnet34_arch(benchlib.stand_in_state()), N_CLASSES, pretrained=True)
    for module in network[0].modules():  # the body: only BatchNorm trains (fastai's train_bn)
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad = isinstance(module, nn.BatchNorm2d)
    return network


def random_windows(count: int, image_size: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, image_size, image_size), dtype=torch.uint8, generator=generator)


def spectrogram_windows(spectrograms: Path, count: int, image_size: int):
    """The first `count` images of stage 1's manifest, as the network sees them (uint8, resized as in training)."""
    import numpy as np
    import torch
    from PIL import Image

    from heartbeat.data import mel

    with open(spectrograms / "manifest.csv", newline="") as handle:
        names = [row["image"] for row in csv.DictReader(handle)][:count]
    images = []
    for name in names:
        with Image.open(spectrograms / name) as png:
            images.append(mel.model_input(np.asarray(png.convert("L")), image_size))
    return torch.from_numpy(np.stack(images))


def normalised(windows, device):
    """uint8 (n, size, size) on the host -> ImageNet-normalised float (n, 3, size, size) on `device`."""
    from heartbeat.train import model

    grey = windows.to(device)[:, None].float() / 255.0
    return model.imagenet_normalise(grey.expand(-1, 3, -1, -1))


# ---------------------------------------------------------------- the two passes

def timed_batches(batches: list, step, device) -> float:
    """Seconds for step() over every batch, after one untimed step on the first."""
    from heartbeat.train.device import synchronize

    step(batches[0])
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    synchronize(device)
    return time.perf_counter() - start


def features_seconds(network, windows, device, dtype) -> float:
    import torch

    extractor = torch.nn.Sequential(network[0], network[1][:2]).eval().to(device, memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def step(batch):
        return extractor(normalised(batch, device).contiguous(memory_format=torch.channels_last)).float()

    with torch.inference_mode(), autocast:
        return timed_batches(list(windows.split(FEATURES_BATCH)), step, device)


def finetune_seconds(network, windows, labels, device) -> float:
    import torch

    trainee = copy.deepcopy(network).to(device).train()
    optimiser = torch.optim.Adam([p for p in trainee.parameters() if p.requires_grad], lr=1e-3)
    loss_func = torch.nn.CrossEntropyLoss()

    def step(batch):
        images, targets = batch
        loss = loss_func(trainee(normalised(images, device)), targets.to(device))
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()

    batches = list(zip(windows.split(FINETUNE_BATCH), labels.split(FINETUNE_BATCH)))
    return timed_batches(batches, step, device)


def measure(windows, devices_found: list) -> list[Row]:
    import torch

    from heartbeat.train.device import device_name

    network = stand_in_network()
    labels = torch.randint(0, N_CLASSES, (len(windows),), generator=torch.Generator().manual_seed(0))
    full = len(windows) // FINETUNE_BATCH * FINETUNE_BATCH  # fastai drops the last partial training batch
    rows = []
    for device in devices_found:
        name = device_name(device)
        for dtype in dict.fromkeys([None, reduced_precision(device)]):  # fp32, then the reduced precision if any
            say(f"{benchlib.NAME}: features pass on {device}, {precision_name(dtype)} ...")
            seconds = features_seconds(network, windows, device, dtype)
            rows.append(Row("features pass", str(device), name, precision_name(dtype), seconds, len(windows)))
        say(f"{benchlib.NAME}: finetune epoch on {device}, fp32 ...")
        seconds = finetune_seconds(network, windows[:full], labels[:full], device)
        rows.append(Row("finetune epoch", str(device), name, "fp32", seconds, full))
    return rows


# ---------------------------------------------------------------- the table

def table(rows: list[Row]) -> list[str]:
    """A Markdown table; the last column is the CPU fp32 row's seconds over this row's, for the same pass."""
    from heartbeat.train.device import cpu

    baseline = {row.pass_name: row.seconds for row in rows if row.device == str(cpu()) and row.precision == "fp32"}
    lines = ["| pass | device | device name | precision | seconds | windows/s | vs CPU fp32 |", "|---|---|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.pass_name} | {row.device} | {row.device_name} | {row.precision} | {row.seconds:.2f} | "
                     f"{row.windows / row.seconds:.2f} | {baseline[row.pass_name] / row.seconds:.2f}x |")
    return lines


def main() -> int:
    import torch

    from heartbeat.train.device import device_name

    parser = benchlib.argument_parser(__doc__, data=False)
    parser.add_argument("--windows", type=int, default=16, help="spectrogram windows per pass (default: %(default)s; "
                                                                "about a minute on a 2-core CPU)")
    parser.add_argument("--image-size", type=int, default=512, help="window size in px (default: %(default)s, the training default)")
    parser.add_argument("--spectrograms", type=Path, help="stage 1's output: time real windows instead of random pixels")
    args = benchlib.parse_arguments(parser)
    if args.windows < FINETUNE_BATCH or args.image_size < 32:
        parser.error(f"--windows must be at least {FINETUNE_BATCH} (one finetune batch) and --image-size at least 32")
    if args.spectrograms and not (args.spectrograms / "manifest.csv").is_file():
        parser.error(f"{args.spectrograms}: no manifest.csv (pass stage 1's output folder)")

    found = devices()
    if args.spectrograms:
        windows = spectrogram_windows(args.spectrograms, args.windows, args.image_size)
        source = f"real spectrograms from {args.spectrograms}"
    else:
        windows = random_windows(args.windows, args.image_size)
        source = "random pixels"
    if len(windows) < FINETUNE_BATCH:
        parser.error(f"{args.spectrograms}: {len(windows)} images, fewer than one finetune batch ({FINETUNE_BATCH})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {len(windows)} windows of "
          f"{args.image_size} px ({source}); features batch {FEATURES_BATCH}, finetune batch {FINETUNE_BATCH}; "
          f"stand-in weights (timing only)")
    print("no GPU found: CPU only" if len(found) == 1 else f"GPU: {found[1]} ({device_name(found[1])})", flush=True)
    print()
    print("\n".join(table(measure(windows, found))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
