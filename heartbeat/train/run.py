"""Stage 2: fine-tune an ImageNet ResNet-34 on the spectrograms, then report.

`train` reads as the study does: split -> fit -> write the run.
- split: stage 1's manifest (checked before any training), recordings to the training or the
  validation side, all windows of a recording on the same side;
- fit: the network with its frozen body, the learning-rate finder, one-cycle training, an
  optional unfrozen second stage, the validation windows' probabilities;
- write the run: predictions per recording, the network (torch weights and ONNX), config.json
  with the settings that ran, the report. heartbeat.train.runfolder owns the folder's layout.

Three training modes, the same network and the same fastai calls:
- "features" (default): the frozen body, BatchNorm statistics included, never changes and
  the images are not augmented, so its output for each image is a constant. We compute it
  once (cached beside the spectrograms) and train the head on it with fastai's lr_find and
  fit_one_cycle. On Dataset B about 10x faster than running the body every epoch.
- "finetune": fastai's standard frozen-body fine-tuning, as published: the body's
  convolutions are frozen but its BatchNorm layers keep training (fastai's train_bn), so
  every batch runs the whole network forwards and backwards.
- "scratch" (--no-pretrained): a frozen random body is meaningless, so the whole network is
  trained (on images, as in "finetune" mode but unfrozen).
Everything runs on --device (heartbeat.train.device); the ONNX export runs on a CPU copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heartbeat.data import audio
from heartbeat.data import mel
from heartbeat.data import layouts
from heartbeat.report import metrics
from heartbeat.train import model
from heartbeat.report import run_report as report
from heartbeat.train import runfolder
from heartbeat.train import split
from heartbeat.train import device as devices
from heartbeat.fileio import (atomic_directory, atomic_path, atomic_write_json, atomic_write_text, entry_kind,
                              exclusive_lock, remove_dead_leftovers)
from heartbeat.train.progress import on_terminal, show_training
from heartbeat.train.settings import MAX_IMAGE_SIZE, MAX_SEED, TrainError, TrainSettings, resolved  # noqa: F401 (re-exported)
from heartbeat.data.manifest import DATASET_NAME, MANIFEST_NAME, SETTINGS_NAME, read_dataset_description
from heartbeat.text import spreadsheet_frame

# fastai's layers call torch.jit.script at import; the deprecation is theirs to act on, not our users'.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

# The manifest columns training reads: the split and report (recording, patient_id, label), the images,
# and what identifies an image's content for the feature cache.
MANIFEST_COLUMNS_USED = ("image", "recording", "label", "patient_id", "settings_hash", "source_size", "source_mtime_ns")
# Stage 1 names every image images/<plain name>.png; any other path (../, absolute, a subfolder) is not its own.
IMAGE_PATH = re.compile(r"images/[^/\\\x00]+\.png")
FEATURES_DIR = "features"  # the frozen body's cached outputs, inside the spectrograms folder
FEATURES_BATCH = 8  # images per body pass in features mode: memory stays small at 512 px, and results stay today's
TRAINING_MODES = {  # the resolved mode -> what config.json and the report say of it
    "features": "features: frozen body (BatchNorm statistics included) run once, head trained on its outputs",
    "finetune": "finetune: frozen body with trainable BatchNorm (fastai default), head trained on images",
    "scratch": "scratch: whole network trained on images from random weights (no pretrained body to freeze)",
    "heartbeat": "heartbeat recipe: a small CNN on the native 128 mel bands, trained from scratch on augmented "
                 "random windows (heartbeat.train.recipes.heartbeat)",
}


# ---------------------------------------------------------------- what a run is made of

@dataclass
class Plan:
    """How the run trains, resolved once from its settings: the mode, the device, the body pass's autocast dtype."""
    settings: TrainSettings
    mode: str  # "features", "finetune" or "scratch"
    device: torch.device
    autocast: torch.dtype | None  # features mode's body pass; None: fp32

    @classmethod
    def resolve(cls, settings: TrainSettings) -> Plan:
        device = devices.resolve_device(settings.device)
        mode = settings.training_mode()
        autocast = devices.autocast_dtype(device, settings.precision) if mode == "features" else None
        return cls(settings, mode, device, autocast)

    def settings_that_ran(self, *, lr: float, lr_suggestion: float) -> dict:
        return resolved(self.settings, device=str(self.device), device_name=devices.device_name(self.device),
                        precision=devices.precision_name(self.autocast), lr=lr, lr_suggestion=lr_suggestion)


@dataclass
class Sources:
    """What a run reads besides its settings: stage 1's folder and the pretrained body."""
    spectrograms_dir: Path
    pretrained_state: dict | None  # torchvision-format ResNet-34 weights; None: from scratch
    body_digest: str | None  # model.state_digest of pretrained_state: the feature cache's key and model.json's check
    weights_description: str  # where the body's weights came from, for the report


@dataclass
class Study:
    """The split: every window with its side (column is_valid), the split table, the classes, the majority class."""
    windows: pd.DataFrame
    split_table: pd.DataFrame
    classes: list[str]  # the sorted labels of the data (after --label-map)
    majority_class: str  # the training side's most common class: the baseline's answer
    dataset: dict  # stage 1's dataset.json: the layout, and whether its groups are patients


@dataclass
class Fit:
    """What fit returns: the trained network and everything the run folder records of its training."""
    network: torch.nn.Module  # eval mode, on the plan's device
    window_probs: np.ndarray  # (validation windows, classes), in the order of the validation windows
    epoch_log: pd.DataFrame  # epoch, train_loss, valid_loss, error_rate
    lr: float  # the rate used: --lr, else lr_find's suggestion
    lr_suggestion: float | None  # lr_find's "valley"; None when the finder's loss diverged before it had a curve
    lr_curve: pd.DataFrame  # lr_find's curve: lr, loss
    class_weights: np.ndarray  # inverse class frequencies of the training windows (--balance)


@dataclass
class TrainResult:
    """What train returns: the run folder and what it holds, so that callers need not read it back."""
    run_dir: Path
    metrics: dict  # as metrics.json
    settings: dict  # the settings that ran (settings.resolved), as config.json's train_settings
    classes: list[str]
    predictions: pd.DataFrame  # as predictions.csv


# ---------------------------------------------------------------- the study

def train(spectrograms_dir: str | Path, run_dir: str | Path | None = None, settings: TrainSettings | None = None,
          *, runs_dir: str | Path | None = None, split_table: pd.DataFrame | None = None,
          progress: bool = True) -> TrainResult:
    """Split, fit, write the run; returns the result. The run folder appears only when complete.

    With no run_dir, the run gets a new folder in runs_dir (default data/runs), named by
    time and settings.name, and runs_dir/latest is pointed at it. split_table (columns
    recording, patient_id, label, split) replaces settings.split: cross-validation passes its folds.

    Everything that can be checked is checked before any training (settings, device, manifest,
    feature cache, output folder, `latest`); a run whose loss is not finite is never written.
    """
    settings = settings or TrainSettings()
    settings.validate()
    settings = settings.effective()  # the recipe's own epochs, batch size (and rate) where none were given
    started = time.time()
    plan = Plan.resolve(settings)
    spectrograms_dir = Path(spectrograms_dir)
    windows = read_spectrograms(spectrograms_dir, label_map=settings.label_map)
    dataset = read_dataset(spectrograms_dir)
    if plan.mode == "features":
        feature_cache_dir(spectrograms_dir)
    with (runfolder.run_location(run_dir, runs_dir, settings.name or settings.split) as (runs_dir, run_dir),
          exclusive_lock(run_dir)):  # FolderBusy while another command writes this run
        runfolder.check_new_run(run_dir)  # again, under the lock: another command may have published it meanwhile
        sources = read_sources(spectrograms_dir, settings, progress)
        with atomic_directory(run_dir) as work_dir:  # the run folder appears complete, or not at all
            study = split_windows(windows, settings, split_table, work_dir, dataset)
            fitted = fit(study, plan, sources, scratch_dir=work_dir / runfolder.SCRATCH_DIR, progress=progress)
            result = write_run(work_dir, run_dir.name, study=study, fitted=fitted, plan=plan, sources=sources,
                               seconds=time.time() - started)
        if runs_dir is not None:
            runfolder.point_latest(runs_dir, run_dir)  # as each run finishes: `latest` is the last to finish
    return dataclasses.replace(result, run_dir=run_dir)


def uses_feature_cache(settings: TrainSettings) -> bool:
    """Whether training computes the frozen body's outputs once and caches them ("features" mode, pretrained)."""
    return settings.training_mode() == "features"


def read_sources(spectrograms_dir: Path, settings: TrainSettings, progress: bool) -> Sources:
    """The pretrained body the settings ask for (WeightsError if it cannot be had), and its digest."""
    if not settings.pretrained:
        return Sources(spectrograms_dir, None, None, "none: trained from scratch")
    state, description = model.load_pretrained_state(settings.weights, offline=settings.offline, progress=progress)
    return Sources(spectrograms_dir, state, model.state_digest(state), description)


def split_windows(windows: pd.DataFrame, settings: TrainSettings, split_table: pd.DataFrame | None,
                  run_dir: Path, dataset: dict) -> Study:
    """The split by recording (all windows of a recording on one side), written to split.csv; checked usable.

    Recordings are grouped by the manifest's patient_id, the layout's group (the patient, or the
    recording itself where the layout names none).
    """
    classes = sorted(set(windows["label"]))
    if split_table is None:
        recordings = split.recordings_table(windows)
        split_table = split.make_split(recordings, settings.split, settings.valid_fraction, settings.seed)
    split_columns = ["recording", "patient_id", "label", "split"]
    atomic_write_text(run_dir / runfolder.SPLIT_FILE, split_table[split_columns].to_csv(index=False))
    windows = windows.merge(split_table[["recording", "split"]], on="recording")
    windows["is_valid"] = windows["split"] == "valid"
    if windows["is_valid"].all() or not windows["is_valid"].any():
        raise TrainError("the split left one side empty: too few recordings or patients for a validation set")
    n_train_windows = int((~windows["is_valid"]).sum())
    if n_train_windows < settings.batch_size:  # training batches are full ones (drop_last): there would be none
        raise TrainError(f"--bs {settings.batch_size} is more than the {n_train_windows} training images: "
                         "no full batch to train on; give a smaller --bs")
    majority_class = split_table.loc[split_table["split"] == "train", "label"].value_counts().idxmax()
    return Study(windows, split_table, classes, majority_class, dataset)


# ---------------------------------------------------------------- the data

def read_spectrograms(spectrograms_dir: Path, label_map: str = "") -> pd.DataFrame:
    """Stage 1's manifest, labelled rows only (label_map, --label-map's text, applied), checked before any training.

    The folder must have been made with this code's audio settings; the manifest must be UTF-8
    csv with the columns training reads, name only stage 1's own images (images/<name>.png,
    regular files, never a path or a link out of the folder), and hold at least two classes.
    Anything else is a TrainError naming the file and the problem.
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
    labelled = manifest[manifest["label"] != ""]
    if label_map:
        labelled = _map_labels(manifest_path, labelled, layouts.parse_label_map(label_map))
    labelled = labelled.reset_index(drop=True)
    if labelled.empty:
        raise TrainError(f"{manifest_path}: no labelled images")
    _check_classes(manifest_path, labelled["label"])
    missing = [name for name in labelled["image"] if entry_kind(spectrograms_dir / name) != "file"]
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


def _map_labels(manifest_path: Path, labelled: pd.DataFrame, label_map: dict[str, str | None]) -> pd.DataFrame:
    """The rows with their labels renamed, those mapped to drop left out; TrainError for a label the manifest lacks."""
    try:
        layouts.check_label_map(label_map, labelled["label"], manifest_path, noun="image")
    except layouts.LayoutError as error:
        raise TrainError(str(error)) from None
    mapped = labelled["label"].map(lambda label: label_map.get(label, label))
    return labelled.assign(label=mapped)[mapped.notna()]


def _check_classes(manifest_path: Path, labels: pd.Series) -> None:
    """TrainError unless the labels are usable class names, at least two of them (names the classes found)."""
    found = sorted(set(labels))
    unusable = [label for label in found if layouts.label_problem(label)]
    if unusable:  # a class name becomes a column of predictions.csv and a word of model.json
        raise TrainError(f"{manifest_path}: {layouts.label_problem(unusable[0])} (rerun the spectrogram stage)")
    if len(found) < 2:
        raise TrainError(f"{manifest_path}: the labelled images hold only one class ({found[0]}); "
                         "a classifier needs at least two")


def read_dataset(spectrograms_dir: Path) -> dict:
    """Stage 1's dataset.json (the layout, whether its groups are patients); TrainError if it is missing or not ours."""
    description = read_dataset_description(spectrograms_dir)
    if description is None or not isinstance(description.get("groups_are_patients"), bool):
        raise TrainError(f"{Path(spectrograms_dir) / DATASET_NAME}: missing or not this version's (rerun the "
                         "spectrogram stage)")
    return description


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
    from PIL import Image

    with Image.open(spectrograms_dir / image) as png:
        return mel.model_input(np.asarray(png.convert("L")), image_size, band_norm)


def image_dataloaders(spectrograms_dir: Path, windows: pd.DataFrame, classes: list[str], settings: TrainSettings,
                      class_weights: np.ndarray | None = None):
    """fastai DataLoaders over the manifest's images (column is_valid marks the validation side).

    With augmentation levers (settings.augmentation_levers), training images are augmented as
    the heartbeat recipe's windows are (recipe.image_augmenter); validation images never are.
    """
    from fastai.vision.all import CategoryBlock, ColReader, ColSplitter, DataBlock, ImageBlock, Normalize, PILImage

    band_norm, augmentations = settings.input_band_norm(), settings.augmentation_levers()  # once, not per image
    augmented_image = None
    if augmentations:
        from heartbeat.train.recipes import heartbeat as recipe

        augmented_image = recipe.image_augmenter(spectrograms_dir, windows[~windows["is_valid"]], augmentations,
                                                 settings.image_size, settings.seed, band_norm=band_norm)

    def get_x(row):
        if augmented_image is not None and not row["is_valid"]:
            return PILImage.create(augmented_image(row))
        return PILImage.create(load_image(spectrograms_dir, row["image"], settings.image_size, band_norm))

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
    from tqdm import tqdm

    extractor = torch.nn.Sequential(network[0], network[1][:2]).eval()
    extractor = extractor.to(plan.device, memory_format=torch.channels_last)
    autocast = (torch.autocast(plan.device.type, dtype=plan.autocast) if plan.autocast is not None
                else contextlib.nullcontext())
    outputs = []
    band_norm = plan.settings.input_band_norm()
    bar = tqdm(total=len(images), desc="body features", unit="img", disable=not (progress and on_terminal(sys.stderr)),
               file=sys.stderr)  # in a log its carriage-return frames are noise
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

    class WeightedDataLoader(DataLoader):
        # oversampling: each epoch draws its batches with replacement, rare classes more often
        def get_idxs(self):
            return list(np.random.choice(self.n, self.n, p=sample_weights / sample_weights.sum()))

    train_class = WeightedDataLoader if sample_weights is not None else DataLoader
    train_dl = train_class(train_items, bs=batch_size, shuffle=True, drop_last=True)
    valid_dl = DataLoader(valid_items, bs=max(batch_size, 64), shuffle=False)
    return DataLoaders(train_dl, valid_dl)


# ---------------------------------------------------------------- fit

def fit(study: Study, plan: Plan, sources: Sources, *, scratch_dir: Path, progress: bool) -> Fit:
    """lr_find and one-cycle training as published (then the optional unfrozen stage); validation probabilities.

    The heartbeat recipe trains its own network instead (fit_recipe).
    """
    from fastai.vision.all import set_seed

    if plan.mode == "heartbeat":
        return fit_recipe(study, plan, sources, progress)
    settings = plan.settings
    train_labels = study.windows.loc[~study.windows["is_valid"], "label"]
    class_weights, loss_func = class_balance(train_labels, study.classes, settings.balance)
    set_seed(settings.seed, reproducible=True)
    learn = image_learner(study, plan, sources, loss_func=loss_func, class_weights=class_weights, scratch_dir=scratch_dir)
    set_seed(settings.seed, reproducible=True)
    trainer = learn
    if plan.mode == "features":  # the head alone, on the body's outputs computed once
        trainer = head_learner(learn, study, plan, sources, loss_func=loss_func, class_weights=class_weights,
                               progress=progress)
    for learner in {id(trainer): trainer, id(learn): learn}.values():  # the same Learner twice outside features mode
        show_training(learner, progress)
    if settings.lr is None:
        lr_curve, lr_suggestion = find_lr(trainer)
    else:  # a rate is given: the finder's 100 mock training steps would choose nothing
        lr_curve, lr_suggestion = pd.DataFrame({"lr": [], "loss": []}), None
    lr = settings.lr or lr_suggestion
    if lr is None:
        raise TrainError(f"lr_find gave no suggestion: its loss diverged within {len(lr_curve)} steps on "
                         f"{int((~study.windows['is_valid']).sum())} training images; give a rate with --lr")
    set_seed(settings.seed, reproducible=True)
    epoch_log = fit_stage(trainer, settings.epochs, lr, stage="training", lr=lr, first_epoch=0)
    if settings.unfreeze_epochs:
        learn.unfreeze()  # second stage: the whole network, lower rates for the earlier layers
        second = fit_stage(learn, settings.unfreeze_epochs, slice(lr / 100, lr / 10), stage="the unfrozen stage",
                           lr=lr, first_epoch=settings.epochs)
        epoch_log = pd.concat([epoch_log, second], ignore_index=True)
    scorer = trainer if plan.mode == "features" and not settings.unfreeze_epochs else learn
    return Fit(network=learn.model.eval(), window_probs=validation_probabilities(scorer, lr), epoch_log=epoch_log,
               lr=lr, lr_suggestion=lr_suggestion, lr_curve=lr_curve, class_weights=class_weights)


def fit_recipe(study: Study, plan: Plan, sources: Sources, progress: bool) -> Fit:
    """The heartbeat recipe (heartbeat.train.recipes.heartbeat) with the run's levers, epochs, batch size and rate."""
    from heartbeat.train.recipes import heartbeat as recipes

    settings = plan.settings
    chosen = dataclasses.replace(recipes.RECIPE.with_levers(settings.lever_names()), epochs=settings.epochs,
                                 batch_size=settings.batch_size, lr=settings.lr)
    fitted = recipes.fit_heartbeat(study.windows, study.classes, sources.spectrograms_dir, chosen, seed=settings.seed,
                                   device=plan.device, progress=progress)
    if not np.isfinite(fitted.window_probs).all() or not np.isfinite(fitted.epoch_log["train_loss"]).all():
        raise TrainError(f"training diverged: the loss or the validation probabilities are not finite (learning rate "
                         f"{settings.lr:.3g}); no run was written; try a lower --lr")
    return Fit(network=fitted.network, window_probs=fitted.window_probs, epoch_log=fitted.epoch_log, lr=fitted.lr,
               lr_suggestion=None, lr_curve=fitted.lr_curve, class_weights=fitted.class_weights)


def image_learner(study: Study, plan: Plan, sources: Sources, *, loss_func, class_weights: np.ndarray,
                  scratch_dir: Path):
    """fastai's vision_learner: ResNet-34 with fastai's head, on the plan's device; the pretrained body frozen."""
    from fastai.vision.all import error_rate, vision_learner

    dls = image_dataloaders(sources.spectrograms_dir, study.windows, study.classes, plan.settings, class_weights)
    return vision_learner(dls.to(plan.device), model.resnet34_arch(sources.pretrained_state),
                          pretrained=plan.settings.pretrained, loss_func=loss_func, metrics=error_rate, path=scratch_dir)


def head_learner(learn, study: Study, plan: Plan, sources: Sources, *, loss_func, class_weights: np.ndarray,
                 progress: bool):
    """A Learner of the head alone (after fastai's pooling) over the frozen body's outputs, on the plan's device."""
    from fastai.vision.all import Learner, error_rate

    windows, settings = study.windows, plan.settings
    key = feature_cache_key(sources.body_digest, windows, plan)
    features = body_features(learn.model, sources.spectrograms_dir, list(windows["image"]), plan, key, progress)
    targets = np.array([study.classes.index(label) for label in windows["label"]])
    is_valid = windows["is_valid"].to_numpy()
    sample_weights = class_weights[targets[~is_valid]] if settings.balance == "oversample" else None
    head_dls = feature_dataloaders(features, targets, is_valid, settings.batch_size, sample_weights)
    return Learner(head_dls.to(plan.device), learn.model[1][2:], loss_func=loss_func, metrics=error_rate,
                   path=learn.path)


def find_lr(learner) -> tuple[pd.DataFrame, float | None]:
    """fastai's lr_find: (its curve, columns lr and loss; its "valley" suggestion, or None).

    fastai's suggestion skips the curve's first 10 and last 5 steps; when the loss diverges
    before that (a handful of training images), it has nothing to choose from and fails: None.
    """
    try:
        suggestion = float(learner.lr_find(show_plot=False).valley)
    except IndexError:  # fastai's valley() on an empty curve
        suggestion = None
    recorder = learner.recorder
    curve = pd.DataFrame({"lr": [float(lr) for lr in recorder.lrs], "loss": [float(loss) for loss in recorder.losses]})
    return curve, suggestion


def fit_stage(learner, epochs: int, rates, *, stage: str, lr: float, first_epoch: int) -> pd.DataFrame:
    """fit_one_cycle, stopped at the first non-finite loss (TrainError); the stage's epoch log."""
    from fastai.vision.all import TerminateOnNaNCallback

    learner.fit_one_cycle(epochs, rates, cbs=TerminateOnNaNCallback())
    check_finite_losses(learner, epochs, stage, lr)
    return _epoch_log(learner, first_epoch=first_epoch)


def validation_probabilities(learner, lr: float) -> np.ndarray:
    """The validation windows' class probabilities (on the CPU, in the windows' order); TrainError if not finite."""
    window_probs, _ = learner.get_preds(dl=learner.dls.valid)
    if not torch.isfinite(window_probs).all():
        raise TrainError(f"training diverged: the validation probabilities are not finite (learning rate {lr:.3g}); "
                         "no run was written; try a lower --lr")
    return window_probs.numpy()


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


def _epoch_log(learner, first_epoch: int) -> pd.DataFrame:
    names = learner.recorder.metric_names[1:-1]  # drop "epoch" and "time"
    log = pd.DataFrame([dict(zip(names, values)) for values in learner.recorder.values])
    log.insert(0, "epoch", range(first_epoch, first_epoch + len(log)))
    return log


# ---------------------------------------------------------------- write the run

def write_run(work_dir: Path, run_name: str, *, study: Study, fitted: Fit, plan: Plan, sources: Sources,
              seconds: float) -> TrainResult:
    """Every file of the run folder: logs, predictions, the network, config.json (the settings that ran), the report."""
    atomic_write_text(work_dir / runfolder.EPOCHS_FILE, fitted.epoch_log.to_csv(index=False))
    atomic_write_text(work_dir / runfolder.LR_FIND_CSV, fitted.lr_curve.to_csv(index=False))
    valid_windows = study.windows[study.windows["is_valid"]].reset_index(drop=True)
    predictions = recording_predictions(valid_windows, fitted.window_probs, study.classes)
    # For people (a spreadsheet) and for `heartbeat report`, which reads the quoted text cells back (heartbeat.text).
    atomic_write_text(work_dir / runfolder.PREDICTIONS_FILE, spreadsheet_frame(predictions).to_csv(index=False))
    save_network(work_dir, run_name, fitted.network.to(devices.cpu()), study.classes, plan, sources.body_digest)
    ran = plan.settings_that_ran(lr=fitted.lr, lr_suggestion=fitted.lr_suggestion)
    atomic_write_json(work_dir / runfolder.CONFIG_FILE, {
        "train_settings": ran, "audio_settings": audio.SETTINGS.to_dict(), "spectrograms": str(sources.spectrograms_dir.resolve()),
        "dataset": study.dataset, "classes": study.classes, "majority_class": study.majority_class,
        "training_mode": TRAINING_MODES[plan.mode],
        "weights": sources.weights_description, "class_weights": dict(zip(study.classes, map(float, fitted.class_weights))),
        "n_windows": {"train": int((~study.windows["is_valid"]).sum()), "valid": int(study.windows["is_valid"].sum())},
        "seconds": round(seconds, 1), **runfolder.provenance(),
    })
    metrics = report.write_report(work_dir, predictions, study.classes, majority_class=study.majority_class,
                                  context=report_context(run_name, study, plan, sources, ran),
                                  epoch_log=fitted.epoch_log, lr_find=fitted.lr_curve, spectrograms=sources.spectrograms_dir)
    shutil.rmtree(work_dir / runfolder.SCRATCH_DIR, ignore_errors=True)
    return TrainResult(work_dir, metrics, ran, study.classes, predictions)


def save_network(work_dir: Path, run_name: str, network, classes: list[str], plan: Plan, body_digest: str | None) -> None:
    """Torch weights where training changed them (model.save_model), model.json, and the ONNX export for predict."""
    from heartbeat.train import nets

    image_size = plan.settings.image_size
    arch = nets.model_info(network) if isinstance(network, nets.HeartNet) else {"arch": "resnet34"}
    model_info = {
        "model_id": run_name, **arch, "classes": classes, "image_size": image_size,
        "input_band_norm": plan.settings.input_band_norm(),  # predict prepares its images as training did
        "audio_settings": audio.SETTINGS.to_dict(), "onnx_file": model.ONNX_FILE,
        "input": "grayscale spectrogram window in [0, 1], (n, 1, image_size, image_size); output: class probabilities",
        "combine_windows": "mean of window probabilities",
    }
    body_trained = plan.mode != "features" or plan.settings.unfreeze_epochs > 0
    model.save_model(work_dir, network, model_info, body_trained=body_trained, body_state_digest=body_digest)
    model.export_onnx(network, image_size, work_dir / model.ONNX_FILE)


def report_context(run_name: str, study: Study, plan: Plan, sources: Sources, ran: dict) -> dict:
    """What the report says of the run besides its figures: split sizes, the settings that ran, notes."""
    split_table = study.split_table
    train_side, valid_side = (split_table[split_table["split"] == side] for side in ("train", "valid"))
    leaked = split.leaked_patients(split_table)
    notes = []
    if plan.settings.split == "random":
        notes.append(f"Random split by recording (the published protocol): {leaked} patients have recordings on both "
                     "sides, so validation figures are optimistic. The patient-grouped split (the default) does not allow this.")
    if not study.dataset["groups_are_patients"]:
        notes.append(report.recording_groups_sentence(study.dataset["format"]))
    if plan.mode == "scratch":
        notes.append("No pretrained weights: the whole network was trained from scratch.")
    elif plan.settings.weights:
        notes.append(f"Pretrained body read from {plan.settings.weights}.")
    return {
        "title": f"heartbeat run {run_name}", "split": plan.settings.split, "weights": sources.weights_description,
        "training_mode": TRAINING_MODES[plan.mode], "n_train_recordings": int(len(train_side)),
        "n_train_patients": int(train_side["patient_id"].nunique()),
        "n_valid_patients": int(valid_side["patient_id"].nunique()), "leaked_patients": leaked, "notes": notes,
        "settings": ran, "lr_suggestion": ran["lr_suggestion"], "lr_used": ran["lr"],
    }


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
