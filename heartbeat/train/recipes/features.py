"""The published recipe's features mode: the frozen body's output for each image, computed once and cached.

The frozen body (BatchNorm statistics included) never changes and features mode does not
augment, so the body's output for an image is a constant: it is cached beside the spectrograms
(SPECTROGRAMS/features), keyed by the images' content, the body, the size, the device and precision.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heartbeat.data import mel
from heartbeat.fileio import atomic_path, entry_kind, remove_dead_leftovers
from heartbeat.train import device as devices
from heartbeat.train import loop
from heartbeat.train import model
from heartbeat.train.contract import Plan
from heartbeat.text import progress_bar
from heartbeat.train.settings import TrainError, TrainSettings

FEATURES_DIR = "features"  # the frozen body's cached outputs, inside the spectrograms folder
FEATURES_BATCH = 8  # images per body pass in features mode: memory stays small at 512 px, and results stay today's


def uses_feature_cache(settings: TrainSettings) -> bool:
    """Whether training computes the frozen body's outputs once and caches them ("features" mode, pretrained)."""
    return settings.training_mode() == "features"


def feature_cache_dir(spectrograms_dir: Path) -> Path:
    """SPECTROGRAMS/features, checked to be a real folder there (or absent), after removing dead writers' leftovers.

    The cache is read and written on later runs: a link or a file in its place could lead them
    out of the spectrograms folder, so it is refused, and left as it is.
    """
    folder = Path(spectrograms_dir) / FEATURES_DIR
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        raise TrainError(f"{folder}: the feature cache must be a folder inside {spectrograms_dir}, not a link or a file "
                         "(move it away; it is rebuilt as needed)")
    remove_dead_leftovers(folder)  # the cache files of a killed run
    return folder


def load_image(spectrograms_dir: Path, image: str, image_size: int, band_norm: bool = False) -> np.ndarray:
    """A stage-1 image as the network takes it (mel.model_input: band_norm, size), uint8."""
    from PIL import Image

    with Image.open(spectrograms_dir / image) as png:
        return mel.model_input(np.asarray(png.convert("L")), image_size, band_norm)



def body_features(network, spectrograms_dir: Path, images: list[str], plan: Plan, cache_key: str,
                  progress: bool = True) -> torch.Tensor:
    """The frozen body's pooled output for each image, (n_images, 1024) on the CPU; cached on disk by content key."""
    from safetensors.torch import load_file, save_file

    cache_path = feature_cache_dir(spectrograms_dir) / f"{cache_key}.safetensors"
    cached = _read_cached_features(cache_path, len(images), load_file)
    if cached is not None:
        return cached
    features = _run_body(network, spectrograms_dir, images, plan, progress)
    with atomic_path(cache_path) as tmp:
        save_file({"features": features.contiguous()}, str(tmp))
    return features


def _run_body(network, spectrograms_dir: Path, images: list[str], plan: Plan, progress: bool) -> torch.Tensor:
    """The body pass, batched on the plan's device under its autocast dtype (if any).

    network[0] is the body, network[1][:2] fastai's parameter-free AdaptiveConcatPool2d + Flatten.
    """
    extractor = torch.nn.Sequential(network[0], network[1][:2]).eval()
    extractor = extractor.to(plan.device, memory_format=torch.channels_last)
    autocast = (torch.autocast(plan.device.type, dtype=plan.autocast) if plan.autocast is not None
                else contextlib.nullcontext())
    outputs = []
    band_norm = plan.settings.input_band_norm()
    bar = progress_bar(len(images), "body features", "img", progress)
    with torch.inference_mode(), autocast:
        for start in range(0, len(images), FEATURES_BATCH):
            grey = model.images_to_tensor([load_image(spectrograms_dir, name, plan.settings.image_size, band_norm)
                                           for name in images[start:start + FEATURES_BATCH]]).to(plan.device)
            batch = model.imagenet_normalise(grey.expand(-1, 3, -1, -1)).contiguous(memory_format=torch.channels_last)
            outputs.append(extractor(batch).float().cpu())
            bar.update(len(batch))
    bar.close()
    return torch.cat(outputs)


def _read_cached_features(cache_path: Path, n_images: int, load_file) -> torch.Tensor | None:
    """The cached features if the cache file is a regular file (not a link) of the expected shape; else None (recompute)."""
    if entry_kind(cache_path) != "file":
        return None
    try:
        features = load_file(str(cache_path))["features"]
    except Exception:  # a damaged or foreign cache file is rebuilt, never trusted; safetensors unpickles nothing
        return None
    if features.ndim != 2 or features.shape[0] != n_images or not torch.isfinite(features).all():
        return None
    return features


def feature_cache_key(body_digest: str, windows: pd.DataFrame, plan: Plan) -> str:
    """The images' content, the body, the size, and where and in which precision the body ran."""
    identity = [body_digest, plan.settings.image_size, devices.precision_name(plan.autocast), plan.device.type,
                torch.__version__]
    identity += windows[["image", "settings_hash", "source_size", "source_mtime_ns"]].astype(str).to_numpy().tolist()
    if plan.settings.input_band_norm():  # other images, other features (keys of runs without it are unchanged)
        identity.append("band_norm")
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]


def feature_dataloaders(features: torch.Tensor, targets: np.ndarray, is_valid: np.ndarray, batch_size: int,
                        sample_weights: np.ndarray | None = None):
    """fastai DataLoaders over precomputed features: shuffled, drop_last training batches as for images."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    items = list(zip(features, torch.as_tensor(targets, dtype=torch.long)))
    train_items = [item for item, valid in zip(items, is_valid) if not valid]
    valid_items = [item for item, valid in zip(items, is_valid) if valid]

    train_dl = loop.training_dataloader(train_items, batch_size=batch_size, sample_weights=sample_weights)
    valid_dl = DataLoader(valid_items, bs=max(batch_size, 64), shuffle=False)
    return DataLoaders(train_dl, valid_dl)
