"""The `heartbeat` recipe's networks: small CNNs on the spectrogram at its native resolution.

Stage 1's images repeat each of the 128 mel bands to 4 rows so that the published ResNet sees
a 512x512 picture. These networks see the bands themselves: `native_input` keeps one row per
band (exact: the 4 rows are identical), so the input is 128 bands x 512 frames of 10 ms, and
they are sized for Dataset B's few hundred recordings (about 0.3-0.5 M weights, against
ResNet-34's 21 M) and for training on two CPU cores.

Two kinds, each rebuilt from the small dict `config(network)` that model.json stores:
- "cnn1d": the mel bands are the channels of 1-D convolutions over time (each filter sees the
  whole spectrum of a few frames); cheap, and its receptive field spans beats (about 1.3 s);
- "cnn2d": PANNs' CNN kind (conv3x3-BN-ReLU x2 + pooling per block, then the mean over
  frequency, the max + mean over time, dropout, a linear layer), on bands pooled by 4 and
  frames by 2 to fit the CPU budget.
Both can start with `BandNorm`: each band's level relative to its own mean over the recording's
sounding frames, which removes any fixed frequency response (a device's colour).

The saved model keeps the project's ONNX contract, so predict is unchanged: `Classifier` takes
stage 1's (n, 1, 512, 512) grey image in [0, 1] and gives class probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCH = "heartnet"  # model.json's "arch" for these networks (model.build_model); "net" holds config(network)
ROWS_PER_BAND = 4  # stage 1: image_size 512 / n_mels 128 (audio.AudioSettings)
KINDS = ("cnn1d", "cnn2d")


def native_input(grey: torch.Tensor, rows_per_band: int = ROWS_PER_BAND) -> torch.Tensor:
    """(n, 1, bands * rows_per_band, frames) stage-1 image -> (n, 1, bands, frames): each band's first row.

    Exact for stage 1's images, whose rows_per_band rows of a band are identical copies.
    """
    return grey[:, :, ::rows_per_band]


class BandNorm(nn.Module):
    """Per-recording band levels: each band minus its mean over the sounding frames; silent frames stay 0.

    A stethoscope's frequency response adds a fixed dB offset to each band: subtracting each
    band's mean removes it, and leaves what changes over time (beats, murmurs between them).
    Sounding frames are those with any band above the floor (stage 1 pads a short recording with
    all-zero frames). Returns the normalised levels (n, 1, bands, frames) and the sounding mask
    (n, 1, 1, frames), so that the network still knows where the sound ends.
    """

    def forward(self, x):  # (n, 1, bands, frames) in [0, 1]
        sounding = (x.amax(dim=2, keepdim=True) > 0).to(x.dtype)  # (n, 1, 1, frames)
        count = sounding.sum(dim=3, keepdim=True).clamp(min=1.0)
        band_mean = x.sum(dim=3, keepdim=True) / count  # silent frames are all 0: the sum is the sounding frames'
        return (x - band_mean) * sounding, sounding


def _conv_block(kind: str, inputs: int, outputs: int) -> nn.Sequential:
    """conv3-BN-ReLU twice (PANNs' block): two small kernels see as far as one larger one, with fewer weights."""
    conv, norm = (nn.Conv1d, nn.BatchNorm1d) if kind == "cnn1d" else (nn.Conv2d, nn.BatchNorm2d)
    return nn.Sequential(conv(inputs, outputs, 3, padding=1, bias=False), norm(outputs), nn.ReLU(inplace=True),
                         conv(outputs, outputs, 3, padding=1, bias=False), norm(outputs), nn.ReLU(inplace=True))


class HeartNet(nn.Module):
    """Native (n, 1, bands, frames) pixels in [0, 1] -> class logits. See the module's docstring for the kinds."""

    def __init__(self, n_classes: int, *, kind: str = "cnn1d", channels: tuple[int, ...] = (64, 128, 128, 256),
                 band_norm: bool = True, input_pool: tuple[int, int] = (1, 2), dropout: float = 0.2,
                 n_bands: int = 128):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown network kind {kind!r} (expected one of {', '.join(KINDS)})")
        self.settings = {"kind": kind, "channels": list(channels), "band_norm": band_norm,
                         "input_pool": list(input_pool), "dropout": dropout, "n_bands": n_bands}
        self.kind, self.input_pool, self.dropout = kind, tuple(input_pool), dropout
        self.band_norm = BandNorm() if band_norm else None
        bands = n_bands // self.input_pool[0]
        # the sounding mask is one more input: a channel of its own (cnn1d), a second plane (cnn2d)
        first = (bands + band_norm) if kind == "cnn1d" else (1 + band_norm)
        sizes = [first, *channels]
        self.blocks = nn.ModuleList(_conv_block(kind, a, b) for a, b in zip(sizes, sizes[1:]))
        self.head = nn.Linear(channels[-1], n_classes)

    def forward(self, x):  # (n, 1, bands, frames)
        if self.input_pool != (1, 1):  # pooled first: everything after it runs on fewer values
            x = F.avg_pool2d(x, self.input_pool)
        if self.kind == "cnn1d":
            x = x[:, 0]  # (n, bands, frames): the bands are the channels
        if self.band_norm is not None:
            levels, sounding = self.band_norm(x[:, None] if self.kind == "cnn1d" else x)
            x = torch.cat([levels[:, 0], sounding[:, 0]], dim=1) if self.kind == "cnn1d" else \
                torch.cat([levels, sounding.expand_as(levels)], dim=1)
        for block in self.blocks:
            x = block(x)
            x = F.avg_pool1d(x, 2) if self.kind == "cnn1d" else F.avg_pool2d(x, 2)
            x = F.dropout(x, self.dropout, self.training)
        if self.kind == "cnn2d":
            x = x.mean(dim=2)  # PANNs: average over frequency, then pool over time
        x = x.amax(dim=2) + x.mean(dim=2)  # the loudest moment and the overall level of each feature
        return self.head(F.dropout(x, self.dropout, self.training))


def config(network: HeartNet) -> dict:
    """What `build` needs to rebuild the network (model.json's "net")."""
    return dict(network.settings)


def model_info(network: HeartNet) -> dict:
    """model.json's entries that say which network this is: {"arch": ARCH, "net": config(network)}."""
    return {"arch": ARCH, "net": config(network)}


def build(n_classes: int, settings: dict) -> HeartNet:
    """An untrained network of the saved config (see `config`)."""
    settings = dict(settings)
    return HeartNet(n_classes, kind=settings.pop("kind"), channels=tuple(settings.pop("channels")),
                    input_pool=tuple(settings.pop("input_pool")), **settings)


class Classifier(nn.Module):
    """What predict runs: stage 1's grey (n, 1, 512, 512) image in [0, 1] -> class probabilities.

    The exported graph: `native_input` (exact), the network, softmax.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, grey):
        return torch.softmax(self.network(native_input(grey)), dim=1)
