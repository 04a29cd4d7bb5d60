"""The `heartbeat` training recipe: a small CNN trained from scratch on native-resolution mel windows.

`fit(study, plan, sources) -> Fit` trains on the training windows (is_valid False) and scores
the validation windows, with fastai's Learner and fit_one_cycle (heartbeat.train.loop) over our
own datasets: training windows are drawn (optionally oversampled) and augmented each epoch
(heartbeat.train.training_windows); validation windows are stage 1's fixed windows, never
augmented, scored in fp32 as predict's ONNX export runs them. Without a validation side
(--valid-fraction 0) the validation pass is skipped: the rate is fixed, nothing needs it.

Its settings, each with the measured reason for its value, are heartbeat_recipe.Recipe (plan.recipe).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from heartbeat.train import loop
from heartbeat.train import nets
from heartbeat.train import training_windows
from heartbeat.train.contract import Fit, Plan, Sources, Study
from heartbeat.train.progress import show_training
from heartbeat.train.recipes.heartbeat_recipe import Recipe


def fit(study: Study, plan: Plan, sources: Sources) -> Fit:
    """Train plan.recipe on the training windows; the validation windows' probabilities, in order.

    `sources` is unused: the network is trained from scratch, and fastai writes nothing here.
    """
    from fastai.torch_core import set_seed

    recipe, seed = plan.recipe, plan.settings.seed
    dls, class_weights = _dataloaders(study, plan)
    learn = _learner(dls, recipe, len(study.classes), plan)
    show_training(learn, plan.progress)
    set_seed(seed, reproducible=True)
    epoch_log = loop.fit_stage(learn, recipe.epochs, recipe.lr, lr=recipe.lr)  # stops at the first non-finite loss
    window_probs = loop.validation_probabilities(learn, recipe.lr) if plan.has_validation else \
        np.empty((0, len(study.classes)), dtype=np.float32)
    return Fit(network=learn.model.eval(), window_probs=window_probs, epoch_log=epoch_log, lr=recipe.lr,
               lr_suggestion=None, lr_curve=pd.DataFrame({"lr": [], "loss": []}), class_weights=class_weights,
               arch=nets.model_info(learn.model), body_trained=True)


def _dataloaders(study: Study, plan: Plan):
    """(fastai DataLoaders of the training and validation windows, the training side's class weights).

    The training windows' whole-recording mels are built only for random_windows; the
    oversampling weights are the class weights to the recipe's balance_power.
    """
    from fastai.torch_core import set_seed

    recipe, classes = plan.recipe, study.classes
    windows = plan.windows.reset_index(drop=True)
    is_valid = windows["is_valid"].to_numpy(bool)
    targets = np.array([classes.index(label) for label in windows["label"]])
    pixels = training_windows.read_band_pixels(study.spectrograms_dir, windows["image"])
    train_rows, valid_rows = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
    train_windows = windows.iloc[train_rows]
    mels = training_windows.recording_mels(train_windows, [pixels[i] for i in train_rows]) \
        if "random_windows" in recipe.levers else {}
    class_weights = loop.inverse_frequency_weights(train_windows["label"], classes)
    set_seed(plan.settings.seed, reproducible=True)
    train_set = TrainingWindows([pixels[i] for i in train_rows], [mels.get(name) for name in train_windows["recording"]],
                                targets[train_rows], recipe, plan.settings.seed)
    valid_set = ValidationWindows([pixels[i] for i in valid_rows], targets[valid_rows])
    sample_weights = class_weights[targets[train_rows]] ** recipe.balance_power if "oversample" in recipe.levers else None
    return dataloaders(train_set, valid_set, recipe.batch_size, plan.device, sample_weights), class_weights


def _learner(dls, recipe: Recipe, n_classes: int, plan: Plan):
    """fastai's Learner of the recipe's network: its loss, weight decay, bf16 training batches, mixup, plan.callbacks."""
    from fastai.callback.mixup import MixUp
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
    from fastai.metrics import error_rate

    from heartbeat.train import device as devices

    network = recipe.network(n_classes).to(plan.device)
    callbacks = list(plan.callbacks)
    autocast = devices.autocast_dtype(plan.device, "auto") if recipe.bf16 else None
    if autocast is not None:
        callbacks.append(loop.training_autocast(autocast))
    if recipe.mixup_alpha:
        callbacks.append(MixUp(recipe.mixup_alpha))  # training batches only (run_valid False)
    if not plan.has_validation:
        callbacks.append(loop.no_validation())
    loss_func = LabelSmoothingCrossEntropyFlat(eps=recipe.label_smoothing) if recipe.label_smoothing else \
        CrossEntropyLossFlat()
    metrics = error_rate if plan.has_validation else []
    return Learner(dls, network, loss_func=loss_func, metrics=metrics, wd=recipe.weight_decay, cbs=callbacks)


class TrainingWindows(torch.utils.data.Dataset):
    """Training items: a window of its recording (random or stage 1's), augmented by the recipe's levers.

    One numpy Generator, seeded once, draws every random choice in the order items are asked
    for: with fastai's seeded batch order (num_workers=0) a run is repeatable.
    """

    def __init__(self, pixels: list[np.ndarray], mels: list[np.ndarray], targets: np.ndarray, recipe: Recipe, seed: int):
        self.pixels, self.mels, self.targets, self.recipe = pixels, mels, targets, recipe
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return torch.from_numpy(training_windows.augmented(self.pixels[index], self.mels[index], self.recipe, self.rng) / 255.0)[None], \
            int(self.targets[index])


class ValidationWindows(torch.utils.data.Dataset):
    """Validation items: stage 1's own windows as they are (what predict sees), never augmented."""

    def __init__(self, pixels: list[np.ndarray], targets: np.ndarray):
        self.pixels, self.targets = pixels, targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return torch.from_numpy(self.pixels[index].astype(np.float32) / 255.0)[None], int(self.targets[index])



def dataloaders(train_set, valid_set, batch_size: int, device: torch.device, sample_weights: np.ndarray | None):
    """fastai DataLoaders: shuffled full training batches (drawn by sample_weights with replacement if given)."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    train_dl = loop.training_dataloader(train_set, batch_size=batch_size, sample_weights=sample_weights, device=device)
    valid_dl = DataLoader(valid_set, bs=64, shuffle=False, device=device)  # fp32, no augmentation
    return DataLoaders(train_dl, valid_dl, device=device)
