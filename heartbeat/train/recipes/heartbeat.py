"""The `heartbeat` training recipe: a small CNN trained from scratch on native-resolution mel windows.

`fit_heartbeat` trains on the training windows (is_valid False) and scores the validation
windows, with fastai's Learner and fit_one_cycle (the project's training loop) over our own
datasets: training windows are drawn (optionally oversampled) and augmented each epoch
(heartbeat.train.augment); validation windows are stage 1's fixed windows, never augmented, scored in
fp32 as predict's ONNX export runs them.

`Recipe` holds every hyperparameter with the measured reason for its value; its `levers` are
the parts that can be switched off one at a time for the ablation table (`Recipe.with_levers`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heartbeat.data import mel
from heartbeat.train import augment
from heartbeat.train import nets
from heartbeat.train.progress import show_training
from heartbeat.train.settings import TrainError

# The parts of the recipe that can be switched on and off one at a time (the ablation's rows).
LEVERS = {
    "band_norm": "per-recording per-band level normalisation inside the network (nets.BandNorm)",
    "oversample": "oversampling of the rare classes' training windows (off: every window once per epoch)",
    "random_windows": "each epoch draws every training window at a random offset within its recording",
    "specaugment": "SpecAugment time and frequency masks",
    "device_colour": "random spectral tilt, band limits and noise floor (another stethoscope's colour)",
}
# Measured on Dataset B, 5-fold patient CV, seeds 1-2 (10 fold trainings each; scripts/recipe_search.py). Each
# difference is paired by fold: mean +- its standard error, then the two seeds' means.
# From the first recipe (all five levers on, classes fully balanced):
# - all of band_norm, random_windows, specaugment, device_colour off: balanced accuracy -0.103 +- 0.029 (-0.092,
#   -0.115 per seed);
# - band_norm off: balanced accuracy -0.057 +- 0.015 (-0.069, -0.045), heart-problem Youden -0.102 +- 0.036: kept.
#   It is also what keeps the network working on another device's colour (scripts/device_shift.py, README): without
#   it a 400 Hz low-pass, a +6 dB/octave tilt or noise 20 dB below the signal cost 0.09-0.18 balanced accuracy;
#   with it, none cost more than its spread;
# - device_colour off: balanced accuracy +0.035 +- 0.025 (-0.018, +0.088) and 24 s less per fold: it does not help
#   on one device's recordings, so it is off by default and stays a lever for recordings from other stethoscopes.
# From the chosen recipe (DEFAULT_LEVERS, balance_power 0.75):
# - random_windows off: balanced accuracy -0.056 +- 0.017 (-0.075, -0.037), Youden -0.050 +- 0.020: kept;
# - specaugment off: balanced accuracy -0.077 +- 0.025 (-0.093, -0.062), extrastole recall 0.39 -> 0.12: kept.
DEFAULT_LEVERS = frozenset({"band_norm", "oversample", "random_windows", "specaugment"})
# Measured against the chosen recipe on the same 10 runs and not kept (paired balanced accuracy, Youden):
# - an ensemble of 3 seeds' models, probabilities averaged: -0.037 +- 0.014, Youden -0.052 +- 0.018 (averaging
#   softens the rare classes' probabilities: extrastole recall 0.39 -> 0.27); a fold ensemble (3 models on 2 of 3
#   patient-grouped inner folds each): -0.040 +- 0.023 (scripts/ensemble_search.py);
# - a class bias chosen on those inner models' out-of-fold predictions: for balanced accuracy -0.022 +- 0.023
#   (Youden -0.101 +- 0.037); for the mean of balanced accuracy and Youden -0.047 +- 0.017 (Youden +0.089 +- 0.019,
#   extrastole recall 0.01): it only moves along the extrastole-normal trade-off;
# - the epochs chosen per run on an inner 20% patient split (scripts/inner_epochs_search.py): see `epochs`.


@dataclass(frozen=True)
class Recipe:
    """Every setting of the `heartbeat` recipe, with the reason for its value.

    "Measured" means scripts/recipe_search.py on Dataset B (seeds 1-2 only); settings without a
    measurement were not varied within the search's time box and say so.
    """
    levers: frozenset = DEFAULT_LEVERS
    # bands as channels of 1-D convolutions: a training step costs 5.6 ms per window on one CPU thread, against
    # 12 ms for the PANNs-style 2-D CNN (16-128 channels on bands pooled by 4), which measured balanced accuracy
    # -0.043 +- 0.013 and Youden -0.067 +- 0.028, at 2.9x the time per fold
    kind: str = "cnn1d"
    # about 0.3 M weights for ~650 training windows. A fifth block (64, 128, 128, 256, 256: a receptive field of
    # ~2.6 s, two beat cycles, for the extrastole's irregular rhythm): balanced accuracy -0.010 +- 0.021,
    # Youden -0.032 +- 0.024
    channels: tuple = (64, 128, 128, 256)
    input_pool: tuple = (1, 2)  # 20 ms frames: an S1 or S2 lasts 100-150 ms, so little is lost, and half the cost
    dropout: float = 0.2  # PANNs' value (not varied)
    # measured against the chosen recipe's 12: 8 epochs balanced accuracy -0.027 +- 0.023, Youden -0.045 +- 0.033;
    # 20 epochs balanced accuracy -0.056 +- 0.021 (extrastole recall 0.39 -> 0.16: longer training forgets the rare class)
    epochs: int = 12
    batch_size: int = 32  # enough windows per batch for BatchNorm's statistics (not varied)
    lr: float = 3e-3  # one-cycle peak rate, fixed: lr_find's 100 batches would cost ~5 epochs (value not varied)
    weight_decay: float = 0.01  # fastai's default (not varied)
    # oversampling draws a window of class c with probability ~ weight_c ** balance_power (weight_c: inverse
    # class frequency). Measured: 1.0 (balanced) gave extrastole recall 0.61 but normal recall 0.50 (Youden
    # 0.30); 0.5 gave normal 0.86 but extrastole 0.07; 0.75: Youden +0.109 +- 0.020 over 1.0 for balanced
    # accuracy -0.010 +- 0.013, extrastole recall 0.39, normal 0.67
    balance_power: float = 0.75
    short_shift: float = 0.25  # random_windows: a short recording's sound may start this fraction of it later
    time_masks: int = 2  # specaugment: two masks of up to 0.4 s each (about a third of a beat cycle) ...
    max_mask_frames: int = 40
    frequency_masks: int = 2  # ... and two of up to 12 of the 128 bands (SpecAugment's LibriSpeech sizes, scaled)
    max_mask_bands: int = 12
    max_tilt_db_per_octave: float = 3.0  # device_colour: bell vs diaphragm differ by a few dB per octave
    low_cut_hz: tuple = (20.0, 80.0)  # device_colour: where another device's low end may stop ...
    high_cut_hz: tuple = (500.0, 2000.0)  # ... and its high end (a 1 kHz recording keeps up to 500 Hz)
    cut_db_per_octave: float = 12.0  # a second-order filter's roll-off
    noise_db: tuple = (-70.0, -45.0)  # noise floor re the recording's peak: faint hiss to audible handling noise
    noise_spread_db: float = 3.0
    level_shift_db: float = 0.0  # off: not measured (band_norm already removes a recording's overall level)
    # mixup of training windows and their labels (Beta(alpha, alpha) weights); 0: off. Measured at fastai's 0.4:
    # balanced accuracy -0.058 +- 0.018, Youden -0.094 +- 0.038
    mixup_alpha: float = 0.0
    # the training loss's label smoothing (fastai's eps); 0: plain cross-entropy. Measured at fastai's 0.1: balanced
    # accuracy -0.030 +- 0.025, extrastole recall 0.39 -> 0.30
    label_smoothing: float = 0.0
    # training batches run under bf16 autocast where the device has native bf16 (1.4x faster per step here);
    # validation and the exported model stay fp32, so the report's probabilities are predict's
    bf16: bool = True

    def with_levers(self, names) -> Recipe:
        """This recipe with exactly the named levers on; ValueError naming any unknown lever."""
        names = frozenset(names)
        unknown = sorted(names - set(LEVERS))
        if unknown:
            raise ValueError(f"unknown lever(s) {', '.join(unknown)} (known: {', '.join(LEVERS)})")
        return dataclasses.replace(self, levers=names)

    def network(self, n_classes: int) -> nets.HeartNet:
        return nets.HeartNet(n_classes, kind=self.kind, channels=self.channels, band_norm="band_norm" in self.levers,
                             input_pool=self.input_pool, dropout=self.dropout)


RECIPE = Recipe()


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
    prepared for the network as any training image is (mel.model_input: band_norm, size). uint8
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
        return mel.model_input(np.repeat(bands, nets.ROWS_PER_BAND, axis=0), image_size, band_norm)

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
