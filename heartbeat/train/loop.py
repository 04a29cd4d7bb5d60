"""The fastai training loop both recipes share: lr_find, a checked one-cycle fit, its epoch log, the scores.

A fit whose loss or validation probabilities are not finite is a TrainError, with one wording
for both recipes: a diverged model is never saved or made `latest`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from heartbeat.train.settings import TrainError


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



def fit_stage(learner, epochs: int, rates, *, lr: float, first_epoch: int = 0, stage: str = "") -> pd.DataFrame:
    """fit_one_cycle, stopped at the first non-finite loss (TrainError); the stage's epoch log.

    `stage` names the stage in the error ("training", "the unfrozen stage"); "" names none.
    """
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (adds Learner.fit_one_cycle)
    from fastai.callback.tracker import TerminateOnNaNCallback

    learner.fit_one_cycle(epochs, rates, cbs=TerminateOnNaNCallback())
    check_finite_losses(learner, epochs, stage, lr)
    return epoch_log(learner, first_epoch=first_epoch)


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
        where = f" in {stage}" if stage else ""
        raise TrainError(f"training diverged: the loss is not finite{where} (learning rate {lr:.3g}); "
                         "no run was written; try a lower --lr")


def epoch_log(learner, first_epoch: int = 0) -> pd.DataFrame:
    """The Recorder's epochs: epoch, train_loss (, valid_loss, the metrics); read before get_preds starts a new record."""
    names = learner.recorder.metric_names[1:-1]  # drop "epoch" and "time"
    log = pd.DataFrame([dict(zip(names, values)) for values in learner.recorder.values])
    log.insert(0, "epoch", range(first_epoch, first_epoch + len(log)))
    return log


def inverse_frequency_weights(labels, classes: list[str]) -> np.ndarray:
    """n / (k * n_class) over the training windows: 1 for every class when balanced (--balance, oversampling)."""
    counts = pd.Series(list(labels)).value_counts().reindex(classes, fill_value=0).to_numpy()
    return counts.sum() / (len(classes) * np.maximum(counts, 1))


def training_dataloader(items, *, batch_size: int, sample_weights: np.ndarray | None = None, **options):
    """fastai's DataLoader of shuffled full training batches; drawn with replacement by sample_weights if given."""
    from fastai.data.load import DataLoader

    class WeightedDataLoader(DataLoader):
        # oversampling: each epoch draws its batches with replacement, rare classes more often
        def get_idxs(self):
            return list(np.random.choice(self.n, self.n, p=sample_weights / sample_weights.sum()))

    loader = DataLoader if sample_weights is None else WeightedDataLoader
    return loader(items, bs=batch_size, shuffle=True, drop_last=True, **options)


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



def no_validation():
    """A fastai callback for a fit without a validation side (--valid-fraction 0): each epoch's validation is skipped."""
    from fastai.callback.core import Callback, CancelValidException

    class NoValidation(Callback):
        def before_fit(self):
            self.recorder.valid_metrics = False  # the epoch log is epoch, train_loss

        def before_validate(self):
            raise CancelValidException()

    return NoValidation()
