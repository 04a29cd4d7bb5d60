"""Selection (SEEDS 1 AND 2 ONLY): does choosing the epochs on an inner split of the training folds help?

For each run of the 5-fold patient-grouped CV (seeds 1-2, the folds of `heartbeat cv`):
1. the training folds' patients are split 80:20 (split.patient_split, the run's seed);
2. the recipe (heartbeat.train.recipes.heartbeat_recipe.RECIPE) trains for MAX_EPOCHS on the 80%, and after every epoch
   its recordings' balanced accuracy on the 20% is measured (never the outer validation fold);
3. the best epoch count (ties: the fewest) is trained afresh on all training folds (a one-cycle
   schedule of that length) and scored on the outer fold.
The fixed recipe (RECIPE.epochs) on the same folds is experiments/recipe_search.py's "chosen".

    OMP_NUM_THREADS=1 .venv/bin/python experiments/inner_epochs_search.py SPECTROGRAMS_DIR OUT.csv
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import pandas as pd
from recipe_search import fit_windows, run_figures

SELECTION_SEEDS = (1, 2)
FOLDS = 5
INNER_VALID_FRACTION = 0.2
MAX_EPOCHS = 20  # the selection measured 20 fixed epochs as worse than 12: the search covers it


def epoch_watcher(valid_windows: pd.DataFrame, classes: list[str]):
    """A fastai callback: after each epoch, the validation recordings' balanced accuracy (list `scores`)."""
    import torch
    from fastai.callback.core import Callback

    from heartbeat.train import run as train

    class EpochWatcher(Callback):
        order = 90  # after the recorder's validation pass has produced predictions

        def __init__(self):
            self.scores = []

        def before_validate(self):
            self.batches = []

        def after_batch(self):
            if not self.training:
                self.batches.append(torch.softmax(self.learn.pred.float(), dim=1).detach().cpu().numpy())

        def after_validate(self):
            probabilities = np.concatenate(self.batches)
            table = train.recording_predictions(valid_windows, probabilities, classes)
            self.scores.append(run_figures(table["label"], table["predicted"], classes)["balanced_accuracy"])

    return EpochWatcher()


def main(argv) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spectrograms_dir, out_csv = argv
    import torch

    from heartbeat.report import cv
    from heartbeat.train import split
    from heartbeat.train import run as train
    from heartbeat.train.inputs import read_spectrograms
    from heartbeat.train.recipes.heartbeat_recipe import RECIPE

    torch.set_num_threads(1)
    windows = read_spectrograms(spectrograms_dir)
    recordings = split.recordings_table(windows)
    classes = sorted(set(windows["label"]))
    rows = []
    for seed, fold, table in cv.fold_splits(recordings, "patient", FOLDS, list(SELECTION_SEEDS), 0.3):
        started = time.time()
        outer_valid = windows["recording"].isin(table.loc[table["split"] == "valid", "recording"]).to_numpy()
        training = table[table["split"] == "train"].reset_index(drop=True)
        inner = split.patient_split(training, INNER_VALID_FRACTION, seed)
        held_out = windows["recording"].isin(inner.loc[inner["split"] == "valid", "recording"]).to_numpy()
        inner_frame = windows[~outer_valid].assign(is_valid=held_out[~outer_valid]).reset_index(drop=True)
        watcher = epoch_watcher(inner_frame[inner_frame["is_valid"]].reset_index(drop=True), classes)
        fit_windows(inner_frame, classes, spectrograms_dir, dataclasses.replace(RECIPE, epochs=MAX_EPOCHS), seed,
                    callbacks=[watcher])
        best_epochs = 1 + int(np.argmax(watcher.scores))  # argmax takes the first (fewest epochs) of ties
        final = fit_windows(windows.assign(is_valid=outer_valid), classes, spectrograms_dir,
                            dataclasses.replace(RECIPE, epochs=best_epochs), seed)
        valid = windows[outer_valid].reset_index(drop=True)
        predictions = train.recording_predictions(valid, final.window_probs, classes)
        figures = run_figures(predictions["label"], predictions["predicted"], classes)
        rows.append({"config": "inner_epochs", "seed": seed, "fold": fold, "epochs": best_epochs,
                     "inner_scores": " ".join(f"{score:.3f}" for score in watcher.scores), **figures,
                     "seconds": time.time() - started})
        pd.DataFrame(rows).to_csv(out_csv, index=False)
        print(f"seed {seed} fold {fold}: {best_epochs} epochs, bal.acc {figures['balanced_accuracy']:.3f} "
              f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
