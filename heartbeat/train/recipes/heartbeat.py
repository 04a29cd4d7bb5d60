"""The `heartbeat` training recipe: a small CNN trained from scratch on native-resolution mel windows.

`fit_heartbeat` trains on the training windows (is_valid False) and scores the validation
windows, with fastai's Learner and fit_one_cycle (the project's training loop) over our own
datasets: training windows are drawn (optionally oversampled) and augmented each epoch
(heartbeat.train.augment); validation windows are stage 1's fixed windows, never augmented, scored in
fp32 as predict's ONNX export runs them.

Its settings, each with the measured reason for its value, are heartbeat_recipe.Recipe.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heartbeat.data import audio
from heartbeat.train import augment
from heartbeat.train import nets
from heartbeat.train.progress import show_training
from heartbeat.train.recipes.heartbeat_recipe import RECIPE, Recipe
from heartbeat.train.settings import TrainError


@dataclass
class RecipeFit:
    """What train.Fit needs, field for field."""
    network: torch.nn.Module  # eval mode
    window_probs: np.ndarray  # (validation windows, classes), in the order of the validation windows
    epoch_log: pd.DataFrame  # epoch, train_loss, valid_loss, error_rate
    lr: float
    lr_suggestion: float  # no lr_find: the fixed rate
    lr_curve: pd.DataFrame  # empty: no lr_find (its 100 batches cost about as much as 5 epochs)
    class_weights: np.ndarray


# ---------------------------------------------------------------- data

def read_band_pixels(spectrograms_dir: Path, images) -> list[np.ndarray]:
    """Each stage-1 image's (n_mels, frames) band pixels (augment.native_bands), uint8."""
    from PIL import Image

    pixels = []
    for name in images:
        with Image.open(Path(spectrograms_dir) / name) as png:
            pixels.append(np.ascontiguousarray(augment.native_bands(np.asarray(png.convert("L")))))
    return pixels


def recording_mels(windows: pd.DataFrame, pixels: list[np.ndarray]) -> dict[str, np.ndarray]:
    """recording -> its whole mel image (augment.recording_mel) from its windows' pixels (in the windows' order)."""
    mels = {}
    positions = pd.Series(range(len(windows)), index=windows.index)
    for recording, group in windows.groupby("recording", sort=False):
        parts = [(float(start), pixels[positions[index]]) for index, start in group["start_s"].items()]
        mels[recording] = augment.recording_mel(parts)
    return mels


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
        return torch.from_numpy(augmented(self.pixels[index], self.mels[index], self.recipe, self.rng) / 255.0)[None], \
            int(self.targets[index])


def augmented(pixels: np.ndarray, mel: np.ndarray, recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """One training window, float32 pixels in [0, 255], with the recipe's augmentation levers applied."""
    levers = recipe.levers
    window = augment.random_window(mel, rng, pixels.shape[1], recipe.short_shift) if "random_windows" in levers else pixels
    window = window.astype(np.float32)
    if "device_colour" in levers:
        window = augment.spectral_tilt(window, rng, recipe.max_tilt_db_per_octave)
        window = augment.band_limits(window, rng, recipe.low_cut_hz, recipe.high_cut_hz, recipe.cut_db_per_octave)
        window = augment.noise_floor(window, rng, recipe.noise_db, recipe.noise_spread_db)
    if recipe.level_shift_db:
        window = augment.level_shift(window, rng, recipe.level_shift_db)
    if "specaugment" in levers:
        window = augment.time_masks(window, rng, recipe.time_masks, recipe.max_mask_frames)
        window = augment.frequency_masks(window, rng, recipe.frequency_masks, recipe.max_mask_bands)
    return window.astype(np.float32)


def image_augmenter(spectrograms_dir: Path, train_windows: pd.DataFrame, levers, image_size: int, seed: int, *,
                    band_norm: bool = False):
    """For the published recipe's image training: training manifest row -> its augmented stage-1 image.

    The same augmentations as the heartbeat recipe (`augmented`, with the named levers), on the
    window's native bands, then back to stage 1's layout (each band repeated to its rows) and
    prepared for the network as any training image is (audio.model_input: band_norm, size). uint8
    (image_size, image_size). One Generator seeded once draws every choice in the order the
    images are asked for, so a run with fastai's seeded batch order repeats.
    """
    chosen = RECIPE.with_levers(levers)
    train_windows = train_windows.reset_index(drop=True)
    pixels = read_band_pixels(spectrograms_dir, train_windows["image"])
    by_image = dict(zip(train_windows["image"], pixels))
    mels = recording_mels(train_windows, pixels) if "random_windows" in chosen.levers else {}
    rng = np.random.default_rng(seed)

    def augmented_image(row) -> np.ndarray:
        window = augmented(by_image[row["image"]], mels.get(row["recording"]), chosen, rng)
        bands = np.clip(np.rint(window), 0, 255).astype(np.uint8)
        return audio.model_input(np.repeat(bands, nets.ROWS_PER_BAND, axis=0), image_size, band_norm)

    return augmented_image


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

    class WeightedDataLoader(DataLoader):
        # oversampling: each epoch draws its windows with replacement, the rare classes more often
        def get_idxs(self):
            return list(np.random.choice(self.n, self.n, p=sample_weights / sample_weights.sum()))

    train_class = DataLoader if sample_weights is None else WeightedDataLoader
    train_dl = train_class(train_set, bs=batch_size, shuffle=True, drop_last=True, device=device)
    valid_dl = DataLoader(valid_set, bs=64, shuffle=False, device=device)  # fp32, no augmentation
    return DataLoaders(train_dl, valid_dl, device=device)


def inverse_frequency_weights(labels, classes: list[str]) -> np.ndarray:
    """n / (k * n_class) over the training windows (train.class_balance's weights): 1 for a balanced class."""
    counts = pd.Series(list(labels)).value_counts().reindex(classes, fill_value=0).to_numpy()
    return counts.sum() / (len(classes) * np.maximum(counts, 1))


# ---------------------------------------------------------------- fit

def training_autocast(dtype):
    """A fastai callback that runs training batches (not validation) under autocast to `dtype`."""
    from fastai.callback.core import Callback

    class TrainingAutocast(Callback):
        order = 10

        def before_batch(self):
            self.context = torch.autocast(self.dls.device.type, dtype=dtype) if self.training else None
            if self.context is not None:
                self.context.__enter__()

        def after_loss(self):
            if self.context is not None:
                self.context.__exit__(None, None, None)
                self.context = None

        def after_cancel_batch(self):
            self.after_loss()

    return TrainingAutocast()


def fit_heartbeat(windows: pd.DataFrame, classes: list[str], spectrograms_dir: Path, recipe: Recipe = RECIPE, *,
                  seed: int, device: torch.device, progress: bool = False, callbacks=()) -> RecipeFit:
    """Train the recipe on the training windows (is_valid False); the validation windows' probabilities, in order.

    `windows`: stage 1's manifest rows (image, recording, label, start_s) with is_valid.
    `callbacks`: more fastai callbacks for the fit (the selection scripts watch each epoch with one).
    """
    from fastai.callback.mixup import MixUp
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (adds Learner.fit_one_cycle)
    from fastai.callback.tracker import TerminateOnNaNCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
    from fastai.metrics import error_rate
    from fastai.torch_core import set_seed

    from heartbeat.train import device as devices

    windows = windows.reset_index(drop=True)
    is_valid = windows["is_valid"].to_numpy(bool)
    targets = np.array([classes.index(label) for label in windows["label"]])
    pixels = read_band_pixels(spectrograms_dir, windows["image"])
    train_rows = np.flatnonzero(~is_valid)
    valid_rows = np.flatnonzero(is_valid)
    train_windows = windows.iloc[train_rows]
    mels = recording_mels(train_windows, [pixels[i] for i in train_rows]) if "random_windows" in recipe.levers else {}
    class_weights = inverse_frequency_weights(train_windows["label"], classes)

    set_seed(seed, reproducible=True)
    train_set = TrainingWindows([pixels[i] for i in train_rows], [mels.get(name) for name in train_windows["recording"]],
                                targets[train_rows], recipe, seed)
    valid_set = ValidationWindows([pixels[i] for i in valid_rows], targets[valid_rows])
    sample_weights = class_weights[targets[train_rows]] ** recipe.balance_power if "oversample" in recipe.levers else None
    dls = dataloaders(train_set, valid_set, recipe.batch_size, device, sample_weights)
    network = recipe.network(len(classes)).to(device)
    callbacks = list(callbacks)
    autocast = devices.autocast_dtype(device, "auto") if recipe.bf16 else None
    if autocast is not None:
        callbacks.append(training_autocast(autocast))
    if recipe.mixup_alpha:
        callbacks.append(MixUp(recipe.mixup_alpha))  # training batches only (run_valid False)
    loss_func = LabelSmoothingCrossEntropyFlat(eps=recipe.label_smoothing) if recipe.label_smoothing else \
        CrossEntropyLossFlat()
    learn = Learner(dls, network, loss_func=loss_func, metrics=error_rate, wd=recipe.weight_decay, cbs=callbacks)
    show_training(learn, progress)
    set_seed(seed, reproducible=True)
    learn.fit_one_cycle(recipe.epochs, recipe.lr, cbs=TerminateOnNaNCallback())  # stops at the first non-finite loss
    check_finite(learn, recipe)
    names = learn.recorder.metric_names[1:-1]  # read before get_preds, which starts a new record
    epoch_log = pd.DataFrame([dict(zip(names, values)) for values in learn.recorder.values])
    epoch_log.insert(0, "epoch", range(len(epoch_log)))
    window_probs, _ = learn.get_preds(dl=dls.valid)
    if not torch.isfinite(window_probs).all():
        raise TrainError(f"training diverged: the validation probabilities are not finite (learning rate {recipe.lr:g}); "
                         "no run was written")
    return RecipeFit(network=learn.model.eval(), window_probs=window_probs.numpy(), epoch_log=epoch_log, lr=recipe.lr,
                     lr_suggestion=recipe.lr, lr_curve=pd.DataFrame({"lr": [], "loss": []}), class_weights=class_weights)


def check_finite(learn, recipe: Recipe) -> None:
    """TrainError if a training or validation loss was not finite (as train.check_finite_losses)."""
    recorder = learn.recorder
    losses = [float(loss) for loss in recorder.losses]
    losses += [float(value) for row in recorder.values for value in row[:2] if value is not None]
    if len(recorder.values) < recipe.epochs or not all(math.isfinite(loss) for loss in losses):
        raise TrainError(f"training diverged: the loss is not finite (learning rate {recipe.lr:g}); no run was written")
