"""The `heartbeat` recipe's settings: every hyperparameter with the measured reason for its value.

`Recipe`'s `levers` are the parts that can be switched off one at a time for the ablation table
(`Recipe.with_levers`). Only the standard library is imported: heartbeat.train.settings reads
RECIPE's epochs, batch size, rate and levers, and `heartbeat train --help` must not load torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The parts of the recipe that can be switched on and off one at a time (the ablation's rows).
LEVERS = {
    "band_norm": "per-recording per-band level normalisation inside the network (nets.BandNorm)",
    "oversample": "oversampling of the rare classes' training windows (off: every window once per epoch)",
    "random_windows": "each epoch draws every training window at a random offset within its recording",
    "specaugment": "SpecAugment time and frequency masks",
    "device_colour": "random spectral tilt, band limits and noise floor (another stethoscope's colour)",
}
# Measured on Dataset B, 5-fold patient CV, seeds 1-2 (10 fold trainings each; experiments/recipe_search.py). Each
# difference is paired by fold: mean +- its standard error, then the two seeds' means.
# From the first recipe (all five levers on, classes fully balanced):
# - all of band_norm, random_windows, specaugment, device_colour off: balanced accuracy -0.103 +- 0.029 (-0.092,
#   -0.115 per seed);
# - band_norm off: balanced accuracy -0.057 +- 0.015 (-0.069, -0.045), heart-problem Youden -0.102 +- 0.036: kept.
#   It is also what keeps the network working on another device's colour (experiments/device_shift.py, README): without
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
#   patient-grouped inner folds each): -0.040 +- 0.023 (experiments/ensemble_search.py);
# - a class bias chosen on those inner models' out-of-fold predictions: for balanced accuracy -0.022 +- 0.023
#   (Youden -0.101 +- 0.037); for the mean of balanced accuracy and Youden -0.047 +- 0.017 (Youden +0.089 +- 0.019,
#   extrastole recall 0.01): it only moves along the extrastole-normal trade-off;
# - the epochs chosen per run on an inner 20% patient split (experiments/inner_epochs_search.py): see `epochs`.


@dataclass(frozen=True)
class Recipe:
    """Every setting of the `heartbeat` recipe, with the reason for its value.

    "Measured" means experiments/recipe_search.py on Dataset B (seeds 1-2 only); settings without a
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

    def network(self, n_classes: int):
        """The recipe's nets.HeartNet for n_classes (torch: imported only here)."""
        from heartbeat.train import nets

        return nets.HeartNet(n_classes, kind=self.kind, channels=self.channels, band_norm="band_norm" in self.levers,
                             input_pool=self.input_pool, dropout=self.dropout)


RECIPE = Recipe()
