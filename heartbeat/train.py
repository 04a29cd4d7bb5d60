"""Stage 2: fine-tune an ImageNet ResNet-34 on the spectrograms, then report.

Reads top to bottom like the study: the settings, the data (stage 1's manifest), the split,
the network with its frozen body, the learning-rate finder, one-cycle training, the
validation predictions per recording, the report, and the saved model.

Two training modes, the same network and the same fastai calls:
- "features" (default): the frozen body, BatchNorm statistics included, never changes and
  the images are not augmented, so its output for each image is a constant. We compute it
  once (cached beside the spectrograms) and train the head on it with fastai's lr_find and
  fit_one_cycle. On Dataset B about 10x faster than running the body every epoch.
- "finetune": fastai's standard frozen-body fine-tuning, as published: the body's
  convolutions are frozen but its BatchNorm layers keep training (fastai's train_bn), so
  every batch runs the whole network forwards and backwards.
--no-pretrained trains from scratch: a frozen random body is meaningless, so the whole
network is trained (on images, as in "finetune" mode but unfrozen).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heartbeat import audio, config, metrics, model, split
from heartbeat.dataset import CLASSES
from heartbeat.fileio import atomic_directory, atomic_path, atomic_write_json, atomic_write_text, remove_dead_leftovers
from heartbeat.spectrograms import MANIFEST_NAME, SETTINGS_NAME

# fastai's layers call torch.jit.script at import; the deprecation is theirs to act on, not our users'.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

# Limits of the numeric settings (cli.py's argparse types check the same ones when arguments are parsed).
MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which fastai's set_seed calls, takes 0 .. 2**32-1
MAX_IMAGE_SIZE = 2048  # 4x the published 512 px; one batch of ResNet-34 activations beyond it outgrows a workstation
# The manifest columns training reads: the split and report (recording, patient_id, label), the images,
# and what identifies an image's content for the feature cache.
MANIFEST_COLUMNS_USED = ("image", "recording", "label", "patient_id", "settings_hash", "source_size", "source_mtime_ns")
# Stage 1 names every image images/<plain name>.png; any other path (../, absolute, a subfolder) is not its own.
IMAGE_PATH = re.compile(r"images/[^/\\\x00]+\.png")
FEATURES_DIR = "features"  # the frozen body's cached outputs, inside the spectrograms folder
LATEST = "latest"  # the symbolic link in the runs folder to the newest run
# A `latest` temporary link lives for microseconds (symlink, then rename); one older than this was left by a killed run.
STALE_LINK_SECONDS = 60


@dataclass
class TrainSettings:
    split: str = "patient"  # "patient": no patient on both sides (honest); "random": the published protocol
    valid_fraction: float = 0.3  # 70:30 as published
    seed: int = 42  # split, weight initialisation of the head, batch order
    epochs: int = 5  # published: fit_one_cycle(5)
    batch_size: int = 4  # published
    image_size: int = 512  # published: the 512 px spectrograms at full size
    pretrained: bool = True  # ImageNet body (frozen); False: train the whole network from scratch
    weights: str | None = None  # torchvision-format ResNet-34 state dict; None: the torch hub cache
    offline: bool = False  # never download the ImageNet weights into the hub cache (also HEARTBEAT_OFFLINE=1)
    mode: str = "features"  # "features" (body outputs computed once) or "finetune" (published: BN keeps training)
    lr: float | None = None  # None: lr_find's "valley" suggestion, as published
    unfreeze_epochs: int = 0  # optional second stage: unfreeze and train everything, discriminative rates
    balance: str = "none"  # "none" (published), "weights" (inverse-frequency loss), "oversample" (rare classes)
    # Body forward pass in "features" mode. fp32 (default): the report's probabilities are the ones
    # predict (fp32 ONNX) gives. "bf16" / "auto" (bf16 where the CPU has it) are faster, but the head
    # then learns and is scored on bf16 features that predict never sees.
    precision: str = "fp32"
    name: str = ""  # short name in the run folder's name

    def validate(self) -> None:
        """ValueError naming the command-line flag of the first setting out of its range (for library callers)."""
        choices = {"split": ("patient", "random"), "mode": ("features", "finetune"),
                   "balance": ("none", "weights", "oversample"), "precision": ("auto", "fp32", "bf16")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"--{field} must be one of {', '.join(allowed)}, not {getattr(self, field)!r}")
        if not 0 < self.valid_fraction < 1:  # also refuses NaN
            raise ValueError(f"--valid-fraction must be between 0 and 1 (both excluded), not {self.valid_fraction}")
        whole_numbers = {"--seed": (self.seed, 0, MAX_SEED), "--epochs": (self.epochs, 1, None),
                         "--bs": (self.batch_size, 1, None), "--image-size": (self.image_size, 1, MAX_IMAGE_SIZE),
                         "--unfreeze-epochs": (self.unfreeze_epochs, 0, None)}
        for flag, (value, low, high) in whole_numbers.items():
            whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if not whole or value < low or (high is not None and value > high):
                bounds = f"at least {low}" if high is None else f"between {low} and {high}"
                raise ValueError(f"{flag} must be a whole number {bounds}, not {value!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive finite number, not {self.lr!r}")
        if "/" in self.name or "\0" in self.name or self.name.startswith("."):  # part of a folder's name, never a path
            raise ValueError(f"--name must be a plain name (no '/', not starting with '.'), not {self.name!r}")


class TrainError(RuntimeError):
    """A problem the user can fix (missing manifest, mismatched settings); one-line message."""


# ---------------------------------------------------------------- the data

def read_spectrograms(spectrograms_dir: Path) -> pd.DataFrame:
    """Stage 1's manifest, labelled rows only, checked before any training.

    The folder must have been made with this code's audio settings; the manifest must be UTF-8
    csv with the columns training reads, name only stage 1's own images (images/<name>.png,
    regular files, never a path or a link out of the folder), and hold at least two of the
    known classes. Anything else is a TrainError naming the file and the problem.
    """
    spectrograms_dir = Path(spectrograms_dir)
    manifest_path = spectrograms_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise TrainError(f"{manifest_path}: not found (run 'make spectrograms' or 'heartbeat spectrograms' first)")
    settings_path = spectrograms_dir / SETTINGS_NAME
    try:
        audio.check_settings(json.loads(settings_path.read_text()))
    except (OSError, ValueError) as error:
        raise TrainError(f"{settings_path}: {error} (rerun the spectrogram stage)") from None
    manifest = _read_manifest(manifest_path)
    _check_image_paths(manifest_path, manifest)
    labelled = manifest[manifest["label"] != ""].reset_index(drop=True)
    if labelled.empty:
        raise TrainError(f"{manifest_path}: no labelled images")
    _check_classes(manifest_path, labelled["label"])
    missing = [name for name in labelled["image"] if not _is_regular_file(spectrograms_dir / name)]
    if missing:
        raise TrainError(f"{manifest_path}: {len(missing)} image(s) missing or not regular files, e.g. {missing[0]} "
                         "(rerun the spectrogram stage)")
    return labelled


def _read_manifest(manifest_path: Path) -> pd.DataFrame:
    """The manifest as a table with the columns training reads; TrainError if it is not such a csv."""
    problem = None
    try:
        manifest = pd.read_csv(manifest_path, dtype={"label": str, "sublabel": str, "image": str},
                               keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        problem = f"not a readable csv ({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__})"
    except OSError as error:
        problem = f"cannot be read ({error.strerror or error})"
    if problem:
        raise TrainError(f"{manifest_path}: {problem} (rerun the spectrogram stage)")
    absent = [column for column in MANIFEST_COLUMNS_USED if column not in manifest.columns]
    if absent:
        raise TrainError(f"{manifest_path}: no {', '.join(absent)} column{'s' if len(absent) > 1 else ''} "
                         "(not a manifest of this version's spectrogram stage; rerun it)")
    return manifest


def _check_image_paths(manifest_path: Path, manifest: pd.DataFrame) -> None:
    """TrainError naming the first row whose image is not images/<plain name>.png: nothing else is stage 1's."""
    for index, image in enumerate(manifest["image"]):
        if not IMAGE_PATH.fullmatch(image):
            # line 1 is the header
            raise TrainError(f"{manifest_path}: line {index + 2}: image {image!r} is not images/<name>.png inside the "
                             "spectrograms folder (rerun the spectrogram stage)")


def _check_classes(manifest_path: Path, labels: pd.Series) -> None:
    """TrainError unless the labels are known classes, at least two of them (names the classes found)."""
    found = sorted(set(labels))
    unknown = [label for label in found if label not in CLASSES]
    if unknown:
        raise TrainError(f"{manifest_path}: unknown label(s) {', '.join(map(repr, unknown))}; classes found: "
                         f"{', '.join(found)}; known: {', '.join(CLASSES)}")
    if len(found) < 2:
        raise TrainError(f"{manifest_path}: the labelled images hold only one class ({found[0]}); "
                         "a classifier needs at least two")


def _is_regular_file(path: Path) -> bool:
    """A regular file itself, not a symbolic link to one (which could lead anywhere)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


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


def uses_feature_cache(settings: TrainSettings) -> bool:
    """Whether training computes the frozen body's outputs once and caches them ("features" mode, pretrained)."""
    return settings.mode == "features" and settings.pretrained


def load_image(spectrograms_dir: Path, image: str, image_size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(spectrograms_dir / image) as png:
        return audio.model_input(np.asarray(png.convert("L")), image_size)


def image_dataloaders(spectrograms_dir: Path, windows: pd.DataFrame, classes: list[str], settings: TrainSettings,
                      class_weights: np.ndarray | None = None):
    """fastai DataLoaders over the manifest's images (column is_valid marks the validation side)."""
    from fastai.vision.all import CategoryBlock, ColReader, ColSplitter, DataBlock, ImageBlock, Normalize, PILImage

    def get_x(row):
        return PILImage.create(load_image(spectrograms_dir, row["image"], settings.image_size))

    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=classes)), get_x=get_x, get_y=ColReader("label"),
        splitter=ColSplitter("is_valid"),
        # ImageNet normalisation in every mode, so that one exported model serves them all
        batch_tfms=[Normalize.from_stats(list(model.IMAGENET_MEAN), list(model.IMAGENET_STD))],
    )
    if settings.balance == "oversample":
        datasets = block.datasets(windows)
        weights = class_weights[[classes.index(label) for label in windows.loc[~windows["is_valid"], "label"]]]
        # the block's item and batch transforms are not carried over by weighted_dataloaders itself
        return datasets.weighted_dataloaders(weights / weights.sum(), bs=settings.batch_size, num_workers=0,
                                             after_item=block.item_tfms, after_batch=block.batch_tfms)
    return block.dataloaders(windows, bs=settings.batch_size, num_workers=0)


def class_balance(train_labels: pd.Series, classes: list[str], balance: str):
    """(inverse-frequency class weights, loss function) for --balance.

    The weights are n / (k * n_class) over the training windows: 1 for every class when
    balanced. "weights" puts them in the cross-entropy loss; "oversample" uses them to draw
    training batches (see image_dataloaders / feature_dataloaders); "none" leaves both plain.
    """
    from fastai.vision.all import CrossEntropyLossFlat

    counts = train_labels.value_counts().reindex(classes, fill_value=0).to_numpy()
    class_weights = counts.sum() / (len(classes) * np.maximum(counts, 1))
    loss_weight = torch.tensor(class_weights, dtype=torch.float32) if balance == "weights" else None
    return class_weights, CrossEntropyLossFlat(weight=loss_weight)


# ---------------------------------------------------------------- frozen-body features

def uses_bf16(settings: TrainSettings) -> bool:
    """Whether the body pass runs in bf16: asked for, or "auto" on a CPU that has it."""
    return settings.precision == "bf16" or (settings.precision == "auto" and bf16_available())


def bf16_available() -> bool:
    return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def body_features(network, spectrograms_dir: Path, images: list[str], settings: TrainSettings, cache_key: str,
                  progress: bool = True) -> torch.Tensor:
    """The frozen body's pooled output for each image, (n_images, 1024); cached on disk by content key.

    network[0] is the body, network[1][:2] fastai's parameter-free AdaptiveConcatPool2d + Flatten.
    """
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    cache_path = feature_cache_dir(spectrograms_dir) / f"{cache_key}.safetensors"
    cached = _read_cached_features(cache_path, len(images), load_file)
    if cached is not None:
        return cached
    extractor = torch.nn.Sequential(network[0], network[1][:2]).eval().to(memory_format=torch.channels_last)
    chunk = 8
    mean = torch.tensor(model.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(model.IMAGENET_STD).view(1, 3, 1, 1)
    outputs = []
    bar = tqdm(total=len(images), desc="body features", unit="img", disable=not progress, file=sys.stderr)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bf16(settings)):
        for start in range(0, len(images), chunk):
            batch = model.images_to_tensor(
                [load_image(spectrograms_dir, name, settings.image_size) for name in images[start:start + chunk]]
            ).expand(-1, 3, -1, -1)
            batch = ((batch - mean) / std).contiguous(memory_format=torch.channels_last)
            outputs.append(extractor(batch).float())
            bar.update(len(batch))
    bar.close()
    features = torch.cat(outputs)
    with atomic_path(cache_path) as tmp:
        save_file({"features": features.contiguous()}, str(tmp))
    return features


def _read_cached_features(cache_path: Path, n_images: int, load_file) -> torch.Tensor | None:
    """The cached features if the cache file is a regular file (not a link) of the expected shape; else None (recompute)."""
    if not _is_regular_file(cache_path):
        return None
    try:
        features = load_file(str(cache_path))["features"]
    except Exception:  # a damaged or foreign cache file is rebuilt, never trusted; safetensors unpickles nothing
        return None
    if features.ndim != 2 or features.shape[0] != n_images or not torch.isfinite(features).all():
        return None
    return features


def feature_cache_key(state_digest: str, windows: pd.DataFrame, settings: TrainSettings) -> str:
    identity = [state_digest, settings.image_size, "bf16" if uses_bf16(settings) else "fp32", torch.__version__]
    identity += windows[["image", "settings_hash", "source_size", "source_mtime_ns"]].astype(str).to_numpy().tolist()
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]


def state_digest(state: dict | None) -> str:
    if state is None:
        return "random"
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def feature_dataloaders(features: torch.Tensor, targets: np.ndarray, is_valid: np.ndarray, batch_size: int,
                        sample_weights: np.ndarray | None = None):
    """fastai DataLoaders over precomputed features: shuffled, drop_last training batches as for images."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    items = list(zip(features, torch.as_tensor(targets, dtype=torch.long)))
    train_items = [item for item, valid in zip(items, is_valid) if not valid]
    valid_items = [item for item, valid in zip(items, is_valid) if valid]

    class WeightedDataLoader(DataLoader):
        # oversampling: each epoch draws its batches with replacement, rare classes more often
        def get_idxs(self):
            return list(np.random.choice(self.n, self.n, p=sample_weights / sample_weights.sum()))

    train_class = WeightedDataLoader if sample_weights is not None else DataLoader
    train_dl = train_class(train_items, bs=batch_size, shuffle=True, drop_last=True)
    valid_dl = DataLoader(valid_items, bs=max(batch_size, 64), shuffle=False)
    return DataLoaders(train_dl, valid_dl)


# ---------------------------------------------------------------- the study

def train(spectrograms_dir: str | Path, run_dir: str | Path | None = None, settings: TrainSettings | None = None,
          *, runs_dir: str | Path | None = None, split_table: pd.DataFrame | None = None, progress: bool = True) -> Path:
    """Train, report and save one run; returns the run folder. The folder appears only when complete.

    With no run_dir, the run gets a new folder in runs_dir (default data/runs), named by
    time and settings.name, and runs_dir/latest is pointed at it. split_table (columns
    recording, patient_id, label, split) replaces settings.split: cross-validation passes its folds.

    Everything that can be checked is checked before any training (settings, manifest, feature
    cache, output folder, `latest`); a run whose loss is not finite is never written.
    """
    settings = settings or TrainSettings()
    settings.validate()
    spectrograms_dir = Path(spectrograms_dir)
    started = time.time()
    windows = read_spectrograms(spectrograms_dir)
    if uses_feature_cache(settings):
        feature_cache_dir(spectrograms_dir)
    runs_dir, run_dir = _run_location(run_dir, runs_dir, settings)
    pretrained_state, weights_description = (
        model.load_pretrained_state(settings.weights, offline=settings.offline, progress=progress)
        if settings.pretrained else (None, "none: trained from scratch")
    )

    with atomic_directory(run_dir) as work_dir:  # the run folder appears complete, or not at all
        _train_into(work_dir, run_dir.name, spectrograms_dir, windows, settings, pretrained_state, weights_description,
                    started, progress, split_table)
    if runs_dir is not None:
        _point_latest(runs_dir, run_dir)
    return run_dir


def _train_into(run_dir, run_name, spectrograms_dir, windows, settings, pretrained_state, weights_description, started,
                progress, split_table=None):
    from fastai.vision.all import Learner, TerminateOnNaNCallback, error_rate, set_seed, vision_learner

    classes = [name for name in CLASSES if name in set(windows["label"])]

    # The split is by recording: all windows of a recording sit on the same side.
    if split_table is None:
        recordings = split.recordings_table(windows)
        split_table = split.make_split(recordings, settings.split, settings.valid_fraction, settings.seed)
    atomic_write_text(run_dir / "split.csv", split_table[["recording", "patient_id", "label", "split"]].to_csv(index=False))
    windows = windows.merge(split_table[["recording", "split"]], on="recording")
    windows["is_valid"] = windows["split"] == "valid"
    if windows["is_valid"].all() or not windows["is_valid"].any():
        raise TrainError("the split left one side empty: too few recordings or patients for a validation set")
    n_train_windows = int((~windows["is_valid"]).sum())
    if n_train_windows < settings.batch_size:  # training batches are full ones (drop_last): there would be none
        raise TrainError(f"--bs {settings.batch_size} is more than the {n_train_windows} training images: "
                         "no full batch to train on; give a smaller --bs")
    train_recordings = split_table[split_table["split"] == "train"]
    majority_class = train_recordings["label"].value_counts().idxmax()

    # Class balance (--balance): inverse frequency of the training windows.
    class_weights, loss_func = class_balance(windows.loc[~windows["is_valid"], "label"], classes, settings.balance)

    # The network: ResNet-34 with fastai's head; ImageNet body frozen (vision_learner freezes when pretrained).
    set_seed(settings.seed, reproducible=True)
    dls = image_dataloaders(spectrograms_dir, windows, classes, settings, class_weights)
    learn = vision_learner(dls, model.resnet34_arch(pretrained_state), pretrained=settings.pretrained,
                           loss_func=loss_func, metrics=error_rate, path=run_dir / ".fastai")
    features_mode = settings.mode == "features" and settings.pretrained
    training_mode = (
        "features: frozen body (BatchNorm statistics included) run once, head trained on its outputs" if features_mode
        else "finetune: frozen body with trainable BatchNorm (fastai default), head trained on images" if settings.pretrained
        else "from scratch: whole network trained on images (no pretrained body to freeze)"
    )

    # Learning-rate finder and one-cycle training, as published.
    set_seed(settings.seed, reproducible=True)
    if features_mode:
        key = feature_cache_key(state_digest(pretrained_state), windows, settings)
        features = body_features(learn.model, spectrograms_dir, list(windows["image"]), settings, key, progress)
        targets = np.array([classes.index(label) for label in windows["label"]])
        sample_weights = class_weights[targets[~windows["is_valid"].to_numpy()]] if settings.balance == "oversample" else None
        head_dls = feature_dataloaders(features, targets, windows["is_valid"].to_numpy(), settings.batch_size, sample_weights)
        trainer = Learner(head_dls, learn.model[1][2:], loss_func=loss_func, metrics=error_rate, path=run_dir / ".fastai")
    else:
        trainer = learn
    if not progress:  # no bars and no epoch table (without its ProgressCallback, fastai prints each epoch)
        for quiet in (trainer, learn):  # the same Learner twice outside features mode: harmless
            quiet.remove_cbs([cb for cb in quiet.cbs if type(cb).__name__ == "ProgressCallback"])
            quiet.logger = lambda *args, **kwargs: None
    suggestion = trainer.lr_find(show_plot=False)
    lr = settings.lr or float(suggestion.valley)
    _save_lr_find_plot(trainer, float(suggestion.valley), run_dir / "lr_find.png")
    set_seed(settings.seed, reproducible=True)
    trainer.fit_one_cycle(settings.epochs, lr, cbs=TerminateOnNaNCallback())
    check_finite_losses(trainer, settings.epochs, "training", lr)
    epoch_log = _epoch_log(trainer, first_epoch=0)
    if settings.unfreeze_epochs:
        learn.unfreeze()  # second stage: the whole network, lower rates for the earlier layers
        learn.fit_one_cycle(settings.unfreeze_epochs, slice(lr / 100, lr / 10), cbs=TerminateOnNaNCallback())
        check_finite_losses(learn, settings.unfreeze_epochs, "the unfrozen stage", lr)
        epoch_log = pd.concat([epoch_log, _epoch_log(learn, first_epoch=settings.epochs)], ignore_index=True)
    atomic_write_text(run_dir / "epochs.csv", epoch_log.to_csv(index=False))

    # Validation predictions: windows -> recordings by mean probability.
    if features_mode and not settings.unfreeze_epochs:
        window_probs, _ = trainer.get_preds(dl=head_dls.valid)
    else:
        window_probs, _ = learn.get_preds(dl=learn.dls.valid)
    if not torch.isfinite(window_probs).all():
        raise TrainError(f"training diverged: the validation probabilities are not finite (learning rate {lr:.3g}); "
                         "no run was written; try a lower --lr")
    valid_windows = windows[windows["is_valid"]].reset_index(drop=True)
    predictions = recording_predictions(valid_windows, window_probs.numpy(), classes)
    atomic_write_text(run_dir / "predictions.csv", predictions.to_csv(index=False))

    # Save: weights (safetensors), model.json, ONNX for predict, config.json.
    network = learn.model.eval()
    model_info = {
        "model_id": run_name, "arch": "resnet34", "classes": classes, "image_size": settings.image_size,
        "audio_settings": audio.SETTINGS.to_dict(), "weights_file": model.WEIGHTS_FILE, "onnx_file": model.ONNX_FILE,
        "input": "grayscale spectrogram window in [0, 1], (n, 1, image_size, image_size); output: class probabilities",
        "combine_windows": "mean of window probabilities",
    }
    model.save_model(run_dir, network, model_info)
    model.export_onnx(network, settings.image_size, run_dir / model.ONNX_FILE)

    leaked = split.leaked_patients(split_table)
    notes = []
    if settings.split == "random":
        notes.append(f"Random split by recording (the published protocol): {leaked} patients have recordings on both "
                     "sides, so validation figures are optimistic. The patient-grouped split (the default) does not allow this.")
    if not settings.pretrained:
        notes.append("No pretrained weights: the whole network was trained from scratch.")
    elif settings.weights:
        notes.append(f"Pretrained body read from {settings.weights}.")
    valid_side = split_table[split_table["split"] == "valid"]
    context = {
        "title": f"heartbeat run {run_name}", "split": settings.split, "weights": weights_description,
        "training_mode": training_mode, "n_train_recordings": int(len(train_recordings)),
        "n_train_patients": int(train_recordings["patient_id"].nunique()),
        "n_valid_patients": int(valid_side["patient_id"].nunique()), "leaked_patients": leaked,
        "notes": notes, "settings": dataclasses.asdict(settings), "lr_suggestion": float(suggestion.valley),
        "lr_used": lr,
    }
    from heartbeat.report import write_report

    write_report(run_dir, predictions, classes, majority_class=majority_class, context=context, epoch_log=epoch_log)
    atomic_write_json(run_dir / "config.json", {
        "train_settings": dataclasses.asdict(settings), "audio_settings": audio.SETTINGS.to_dict(),
        "spectrograms": str(spectrograms_dir), "classes": classes, "majority_class": majority_class,
        "training_mode": training_mode, "weights": weights_description, "lr_suggestion": float(suggestion.valley),
        # what --precision resolved to ("auto" depends on the CPU); only features mode's body pass uses bf16
        "body_precision": "bf16" if features_mode and uses_bf16(settings) else "fp32",
        "class_weights": dict(zip(classes, map(float, class_weights))),
        "lr_used": lr, "n_windows": {"train": int((~windows["is_valid"]).sum()), "valid": int(windows["is_valid"].sum())},
        "seconds": round(time.time() - started, 1), "versions": _versions(), "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
    })
    shutil.rmtree(run_dir / ".fastai", ignore_errors=True)


def check_finite_losses(learner, epochs: int, stage: str, lr: float) -> None:
    """TrainError if the last fit's loss was not finite: a diverged model is never saved or made `latest`.

    TerminateOnNaNCallback stops a fit at the first non-finite batch loss (training or
    validation), before that epoch is recorded: a fit with fewer recorded epochs than asked
    diverged, and so did one with any non-finite recorded loss (per batch, or per epoch).
    """
    recorder = learner.recorder
    losses = [float(loss) for loss in recorder.losses]
    losses += [float(value) for row in recorder.values for value in row[:2] if value is not None]
    if len(recorder.values) < epochs or not all(math.isfinite(loss) for loss in losses):
        raise TrainError(f"training diverged: the loss is not finite in {stage} (learning rate {lr:.3g}); "
                         "no run was written; try a lower --lr")


def recording_predictions(valid_windows: pd.DataFrame, window_probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per recording: its windows' probabilities combined (metrics.combine_windows) and the argmax class."""
    rows = []
    for recording, group in valid_windows.groupby("recording", sort=True):
        probabilities = metrics.combine_windows(window_probs[group.index.to_numpy()])
        rows.append({
            "recording": recording, "patient_id": group["patient_id"].iloc[0], "label": group["label"].iloc[0],
            "predicted": classes[int(np.argmax(probabilities))], "windows": len(group),
            **{f"prob_{name}": float(p) for name, p in zip(classes, probabilities)},
        })
    return pd.DataFrame(rows)


def _epoch_log(learner, first_epoch: int) -> pd.DataFrame:
    names = learner.recorder.metric_names[1:-1]  # drop "epoch" and "time"
    rows = [dict(zip(names, values)) for values in learner.recorder.values]
    log = pd.DataFrame(rows).rename(columns={"error_rate": "error_rate"})
    log.insert(0, "epoch", range(first_epoch, first_epoch + len(log)))
    return log


def _save_lr_find_plot(learner, suggestion: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learner.recorder.plot_lr_find()
    figure = plt.gcf()
    axes = figure.axes[0]
    axes.axvline(suggestion, color="tab:red", linestyle="--", label=f"valley {suggestion:.2e}")
    axes.legend()
    axes.set_title("Learning-rate finder")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(figure)


def _run_location(run_dir, runs_dir, settings: TrainSettings) -> tuple[Path | None, Path]:
    """(folder whose `latest` pointer to update, or None for an explicit run_dir; the run folder to create).

    Creates and checks the folder the run goes in, and removes what killed runs left there
    (only their hidden temporary folders, and only once their writer is dead).
    """
    if run_dir is not None:
        run_dir = Path(run_dir)
        if os.path.lexists(run_dir):  # a dangling link too: the finished run would be renamed onto it
            raise TrainError(f"{run_dir}: already exists (runs are never overwritten; choose another --out)")
        prepare_output_folder(run_dir.parent, run_dir)
        remove_dead_leftovers(run_dir.parent, prefix=f".{run_dir.name}.")
        return None, run_dir
    runs_dir = Path(runs_dir) if runs_dir is not None else config.RUNS_DIR
    prepare_output_folder(runs_dir, runs_dir)
    _check_latest(runs_dir)
    remove_dead_leftovers(runs_dir)
    _remove_stale_latest_links(runs_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{settings.name or settings.split}"
    suffix = 1
    while os.path.lexists(runs_dir / name):  # two runs in the same second
        suffix += 1
        name = f"{stamp}-{settings.name or settings.split}-{suffix}"
    return runs_dir, runs_dir / name


def prepare_output_folder(folder: Path, target: Path) -> None:
    """Create `folder` (where `target` will be written) if needed; TrainError naming target if it cannot be.

    Checked before any training, so that a run never trains for an hour and then cannot be saved.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocking = next((parent for parent in [folder, *folder.parents] if parent.exists() and not parent.is_dir()), None)
        reason = f"{blocking} is a file, not a folder" if blocking is not None else error.strerror or str(error)
        raise TrainError(f"{target}: cannot be created ({reason})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrainError(f"{target}: cannot be created ({folder} is not writable)")


def _check_latest(runs_dir: Path) -> None:
    """TrainError if runs_dir/latest is something other than a symbolic link: it is never replaced or deleted."""
    link = runs_dir / LATEST
    if os.path.lexists(link) and not link.is_symlink():
        raise TrainError(f"{link}: not a symbolic link (a file or folder of yours?); it is left as it is: "
                         "move it away, or give --out or another --runs")


def _remove_stale_latest_links(runs_dir: Path) -> None:
    """Remove `latest` temporary links a killed run left (older than STALE_LINK_SECONDS; a live one is younger).

    Both names: `.latest.<random>.tmp`, and `.latest.<pid>` of earlier versions.
    """
    for path in runs_dir.glob(f".{LATEST}.*"):
        try:
            if path.is_symlink() and time.time() - os.lstat(path).st_mtime > STALE_LINK_SECONDS:
                path.unlink()
        except OSError:
            pass  # another run removed or renamed it first


def _point_latest(runs_dir: Path, run_dir: Path) -> None:
    """runs_dir/latest -> run_dir, replaced atomically (a temporary link renamed over the old one).

    `latest` is checked again: it may have become a file or folder while the run trained, and
    is then left alone (the run itself is complete). The temporary link is removed on any
    error; after a SIGKILL in the microseconds it exists, the next run removes it.
    """
    link = runs_dir / LATEST
    try:
        _check_latest(runs_dir)
    except TrainError as error:
        raise TrainError(f"{error}; the run is complete in {run_dir}") from None
    tmp = runs_dir / f".{LATEST}.{secrets.token_hex(6)}.tmp"
    tmp.symlink_to(run_dir.name)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _versions() -> dict:
    import fastai
    import torchvision

    from heartbeat import __version__

    return {"heartbeat": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "fastai": fastai.__version__, "numpy": np.__version__,
            "pandas": pd.__version__}


def _git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=config.PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return result.stdout.strip() + ("+dirty" if dirty else "") if result.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
