"""The published recipe: fastai's ResNet-34 as the study trained it, `fit(study, plan, sources) -> Fit`.

Three training modes, the same network and the same fastai calls:
- "features" (default): the frozen body, BatchNorm statistics included, never changes and
  the images are not augmented, so its output for each image is a constant. We compute it
  once (cached beside the spectrograms, recipes.features) and train the head on it with
  fastai's lr_find and fit_one_cycle. On Dataset B about 10x faster than running the body every epoch.
- "finetune": fastai's standard frozen-body fine-tuning, as published: the body's
  convolutions are frozen but its BatchNorm layers keep training (fastai's train_bn), so
  every batch runs the whole network forwards and backwards.
- "scratch" (--no-pretrained): a frozen random body is meaningless, so the whole network is
  trained (on images, as in "finetune" mode but unfrozen).
lr_find (unless --lr), one-cycle training, the optional unfrozen second stage, then the
validation windows' probabilities. Everything runs on the plan's device.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from heartbeat.train import loop
from heartbeat.train import model
from heartbeat.train import training_windows
from heartbeat.train.contract import Fit, Plan, Sources, Study
from heartbeat.train.progress import show_training
from heartbeat.train.recipes import features
from heartbeat.train.settings import TrainError, TrainSettings


def fit(study: Study, plan: Plan, sources: Sources) -> Fit:
    """lr_find and one-cycle training as published (then the optional unfrozen stage); validation probabilities."""
    from fastai.vision.all import set_seed

    settings = plan.settings
    class_weights, loss_func = class_balance(plan.train_labels, study.classes, settings.balance)
    set_seed(settings.seed, reproducible=True)
    learn = image_learner(study, plan, sources, loss_func=loss_func, class_weights=class_weights)
    set_seed(settings.seed, reproducible=True)
    trainer = learn
    if plan.mode == "features":  # the head alone, on the body's outputs computed once
        trainer = head_learner(learn, study, plan, sources, loss_func=loss_func, class_weights=class_weights)
    for learner in {id(trainer): trainer, id(learn): learn}.values():  # the same Learner twice outside features mode
        show_training(learner, plan.progress)
    lr_curve, lr_suggestion, lr = learning_rate(trainer, plan)
    set_seed(settings.seed, reproducible=True)
    epoch_log = loop.fit_stage(trainer, settings.epochs, lr, stage="training", lr=lr, first_epoch=0)
    if settings.unfreeze_epochs:
        learn.unfreeze()  # second stage: the whole network, lower rates for the earlier layers
        second = loop.fit_stage(learn, settings.unfreeze_epochs, slice(lr / 100, lr / 10), stage="the unfrozen stage",
                                lr=lr, first_epoch=settings.epochs)
        epoch_log = pd.concat([epoch_log, second], ignore_index=True)
    scorer = trainer if plan.mode == "features" and not settings.unfreeze_epochs else learn
    body_trained = plan.mode != "features" or settings.unfreeze_epochs > 0
    return Fit(network=learn.model.eval(), window_probs=loop.validation_probabilities(scorer, lr), epoch_log=epoch_log,
               lr=lr, lr_suggestion=lr_suggestion, lr_curve=lr_curve, class_weights=class_weights,
               arch={"arch": "resnet34"}, body_trained=body_trained)


def learning_rate(trainer, plan: Plan) -> tuple[pd.DataFrame, float | None, float]:
    """(lr_find's curve, its suggestion, the rate to use): --lr if given (no finder), else the suggestion."""
    settings = plan.settings
    if settings.lr is None:
        lr_curve, lr_suggestion = loop.find_lr(trainer)
    else:  # a rate is given: the finder's 100 mock training steps would choose nothing
        lr_curve, lr_suggestion = pd.DataFrame({"lr": [], "loss": []}), None
    lr = settings.lr or lr_suggestion
    if lr is None:
        raise TrainError(f"lr_find gave no suggestion: its loss diverged within {len(lr_curve)} steps on "
                         f"{int((~plan.windows['is_valid']).sum())} training images; give a rate with --lr")
    return lr_curve, lr_suggestion, lr


def image_learner(study: Study, plan: Plan, sources: Sources, *, loss_func, class_weights: np.ndarray):
    """fastai's vision_learner: ResNet-34 with fastai's head, on the plan's device; the pretrained body frozen."""
    from fastai.vision.all import error_rate, vision_learner

    dls = image_dataloaders(study.spectrograms_dir, plan.windows, study.classes, plan.settings, class_weights)
    return vision_learner(dls.to(plan.device), model.resnet34_arch(sources.pretrained_state),
                          pretrained=plan.settings.pretrained, loss_func=loss_func, metrics=error_rate, path=sources.scratch_dir)


def head_learner(learn, study: Study, plan: Plan, sources: Sources, *, loss_func, class_weights: np.ndarray):
    """A Learner of the head alone (after fastai's pooling) over the frozen body's outputs, on the plan's device."""
    from fastai.vision.all import Learner, error_rate

    windows, settings = plan.windows, plan.settings
    key = features.feature_cache_key(sources.body_digest, windows, plan)
    body_outputs = features.body_features(learn.model, study.spectrograms_dir, list(windows["image"]), plan, key,
                                          plan.progress)
    targets = np.array([study.classes.index(label) for label in windows["label"]])
    is_valid = windows["is_valid"].to_numpy()
    sample_weights = class_weights[targets[~is_valid]] if settings.balance == "oversample" else None
    head_dls = features.feature_dataloaders(body_outputs, targets, is_valid, settings.batch_size, sample_weights)
    return Learner(head_dls.to(plan.device), learn.model[1][2:], loss_func=loss_func, metrics=error_rate,
                   path=learn.path)


def image_dataloaders(spectrograms_dir: Path, windows: pd.DataFrame, classes: list[str], settings: TrainSettings,
                      class_weights: np.ndarray | None = None):
    """fastai DataLoaders over the manifest's images (column is_valid marks the validation side).

    With augmentation levers (settings.augmentation_levers), training images are augmented as
    the heartbeat recipe's windows are (training_windows.image_augmenter); validation images never are.
    """
    from fastai.vision.all import CategoryBlock, ColReader, ColSplitter, DataBlock, ImageBlock, Normalize, PILImage

    band_norm, augmentations = settings.input_band_norm(), settings.augmentation_levers()  # once, not per image
    augmented_image = None
    if augmentations:
        augmented_image = training_windows.image_augmenter(spectrograms_dir, windows[~windows["is_valid"]], augmentations,
                                                 settings.image_size, settings.seed, band_norm=band_norm)

    def get_x(row):
        if augmented_image is not None and not row["is_valid"]:
            return PILImage.create(augmented_image(row))
        return PILImage.create(features.load_image(spectrograms_dir, row["image"], settings.image_size, band_norm))

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

    class_weights = loop.inverse_frequency_weights(train_labels, classes)
    loss_weight = torch.tensor(class_weights, dtype=torch.float32) if balance == "weights" else None
    return class_weights, CrossEntropyLossFlat(weight=loss_weight)

