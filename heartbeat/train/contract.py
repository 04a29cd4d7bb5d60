"""What a recipe is given and what it gives back: `fit(study, plan, sources) -> Fit`.

- Study: the data as read (inputs.read_study), shared by the folds of a CV;
- Plan: how this run learns: its split, resolved settings, device and (heartbeat recipe) Recipe;
- Sources: what the run reads or caches besides the data (the pretrained body, fastai's scratch folder);
- Fit: everything run.write_run records of the training.
make_plan turns a Study and TrainSettings into a Plan, checked usable before any training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heartbeat.train import device as devices
from heartbeat.train import split
from heartbeat.train.recipes.heartbeat_recipe import RECIPE, Recipe
from heartbeat.train.settings import TrainError, TrainSettings, resolved

SPLIT_COLUMNS = ["recording", "patient_id", "label", "split"]  # split.csv


@dataclass(frozen=True)
class Study:
    """The labelled manifest rows (--label-map applied), the sorted classes and stage 1's dataset.json."""
    spectrograms_dir: Path  # the images: windows["image"] is relative to it
    windows: pd.DataFrame
    classes: list[str]
    dataset: dict  # the layout, and whether its groups are patients


@dataclass(frozen=True)
class Plan:
    """How the run learns: the settings that run, the split, the device, the recipe."""
    settings: TrainSettings  # effective(): the recipe's own values filled in
    mode: str  # "features", "finetune", "scratch" or "heartbeat"
    split_table: pd.DataFrame  # SPLIT_COLUMNS: split.csv
    windows: pd.DataFrame  # the study's windows with their side (split, is_valid)
    majority_class: str  # the training side's most common class: the baseline's answer
    device: torch.device
    autocast: torch.dtype | None  # features mode's body pass; None: fp32
    recipe: Recipe | None  # the heartbeat recipe's settings; None for the published recipe
    progress: bool = True
    callbacks: tuple = ()  # more fastai callbacks for the fit (experiments watch each epoch with one)

    @property
    def valid_windows(self) -> pd.DataFrame:
        return self.windows[self.windows["is_valid"]]

    @property
    def train_labels(self) -> pd.Series:
        return self.windows.loc[~self.windows["is_valid"], "label"]

    @property
    def has_validation(self) -> bool:
        """False for --valid-fraction 0: a final model trained on every labelled recording."""
        return bool(self.windows["is_valid"].any())

    def settings_that_ran(self, *, lr: float, lr_suggestion: float | None) -> dict:
        return resolved(self.settings, device=str(self.device), device_name=devices.device_name(self.device),
                        precision=devices.precision_name(self.autocast), lr=lr, lr_suggestion=lr_suggestion)


@dataclass(frozen=True)
class Sources:
    """What a run reads or caches besides the data."""
    pretrained_state: dict | None  # torchvision-format ResNet-34 weights; None: from scratch
    body_digest: str | None  # model.state_digest of pretrained_state: the feature cache's key and model.json's check
    weights_description: str  # where the body's weights came from, for the report
    scratch_dir: Path | None = None  # fastai's Learner.path (lr_find's saved model), inside the run's temporary folder


@dataclass
class Fit:
    """What a recipe returns: the trained network and everything the run folder records of its training."""
    network: torch.nn.Module  # eval mode, on the plan's device
    window_probs: np.ndarray  # (validation windows, classes), in the order of plan.valid_windows
    epoch_log: pd.DataFrame  # epoch, train_loss (, valid_loss, error_rate with a validation side)
    lr: float  # the rate used: --lr, else lr_find's suggestion
    lr_suggestion: float | None  # lr_find's "valley"; None without lr_find or when its loss diverged
    lr_curve: pd.DataFrame  # lr_find's curve: lr, loss (empty without lr_find)
    class_weights: np.ndarray  # inverse class frequencies of the training windows
    arch: dict  # model.json's network fields
    body_trained: bool  # whether training changed the pretrained body (model.save_model keeps it then)


@dataclass
class TrainResult:
    """What train returns: the run folder and what it holds, so that callers need not read it back."""
    run_dir: Path
    metrics: dict | None  # as metrics.json; None without a validation side
    settings: dict  # the settings that ran (settings.resolved), as config.json's train_settings
    classes: list[str]
    predictions: pd.DataFrame | None  # as predictions.csv; None without a validation side
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line each: what the run left out, and why


def make_plan(study: Study, settings: TrainSettings, split_table: pd.DataFrame | None = None, *,
              progress: bool = True, recipe: Recipe | None = None, callbacks=()) -> Plan:
    """The split by recording (all windows of a recording on one side), checked usable, and the resolved run.

    Recordings are grouped by the manifest's patient_id, the layout's group (the patient, or the
    recording itself where the layout names none). split_table (columns recording, patient_id,
    label, split) replaces settings.split: cross-validation passes its folds. `recipe` replaces
    the heartbeat recipe's settings (experiments), epochs, batch size and rate included.
    """
    mode = settings.training_mode()
    if mode == "heartbeat":
        recipe = recipe or dataclasses.replace(RECIPE.with_levers(settings.lever_names()), epochs=settings.epochs,
                                               batch_size=settings.batch_size, lr=settings.lr)
        settings = dataclasses.replace(settings, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr)
    split_table = _split_table(study.windows, settings) if split_table is None else split_table
    windows = study.windows.merge(split_table[["recording", "split"]], on="recording")
    windows["is_valid"] = windows["split"] == "valid"
    _check_sides(windows, settings)
    majority_class = split_table.loc[split_table["split"] == "train", "label"].value_counts().idxmax()
    device = devices.resolve_device(settings.device)
    autocast = devices.autocast_dtype(device, settings.precision) if mode == "features" else None
    return Plan(settings, mode, split_table[SPLIT_COLUMNS], windows, majority_class, device, autocast, recipe,
                progress, tuple(callbacks))


def plan_from_windows(study: Study, settings: TrainSettings, *, recipe: Recipe | None = None, callbacks=(),
                      progress: bool = False) -> Plan:
    """make_plan for windows that already carry is_valid (experiments, tests): their split as a split table."""
    recordings = study.windows.drop_duplicates("recording")
    if "patient_id" not in recordings:  # no groups given: each recording its own
        recordings = recordings.assign(patient_id=recordings["recording"])
    split_table = recordings.assign(split=np.where(recordings["is_valid"], "valid", "train"))
    bare = dataclasses.replace(study, windows=study.windows.drop(columns=["is_valid", "split"], errors="ignore"))
    return make_plan(bare, settings, split_table, progress=progress, recipe=recipe, callbacks=callbacks)


def _split_table(windows: pd.DataFrame, settings: TrainSettings) -> pd.DataFrame:
    """settings.split's split of the labelled recordings; every one on the training side with --valid-fraction 0."""
    recordings = split.recordings_table(windows)
    if settings.valid_fraction == 0:  # a final model: its figures come from the CV
        return recordings.assign(split="train")
    return split.make_split(recordings, settings.split, settings.valid_fraction, settings.seed)


def _check_sides(windows: pd.DataFrame, settings: TrainSettings) -> None:
    """TrainError for a side left empty (the validation side may be, with --valid-fraction 0) or no full batch."""
    if windows["is_valid"].all() or (not windows["is_valid"].any() and settings.valid_fraction != 0):
        raise TrainError("the split left one side empty: too few recordings or patients for a validation set")
    n_train_windows = int((~windows["is_valid"]).sum())
    if n_train_windows < settings.batch_size:  # training batches are full ones (drop_last): there would be none
        raise TrainError(f"--bs {settings.batch_size} is more than the {n_train_windows} training images: "
                         "no full batch to train on; give a smaller --bs")
