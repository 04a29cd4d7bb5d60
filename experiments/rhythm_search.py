"""Do rhythm features help the heartbeat recipe? A selection on SEEDS 1 AND 2 ONLY (never 3-5).

    .venv/bin/python experiments/rhythm_search.py --data DATA --spectrograms S --cv D [--out runs.csv]

D is `heartbeat cv --spectrograms S --out D --folds 5 --seeds 1,2 --recipe heartbeat`; its oof.csv
holds the CNN's out-of-fold probabilities. For every seed and fold of that CV (the script rebuilds
the folds with heartbeat.report.cv.fold_splits and checks that oof.csv used the same ones), it scores on
the fold's validation recordings:

- cnn: the recipe's CNN alone (oof.csv's prediction);
- rhythm: heartbeat.data.rhythm's features alone, scaled logistic regression fit on the training folds;
- stack-cnn: a small logistic regression on the CNN's log-probabilities alone (the control: a
  recalibration of the CNN, no rhythm);
- stack-cnn+rhythm: the same with the rhythm features added;
- classical and majority baselines (oof.csv's, fit on the same folds by `heartbeat cv`).

The stackers of fold k are fit on the OTHER folds' out-of-fold rows of the same seed and applied to
fold k's out-of-fold probabilities. Every probability a stacker sees, in fitting or in scoring, is
out-of-fold: it comes from a CNN that never trained on that recording (nor its patient). What fold
k's labels can reach is only second-order: the fold-j CNNs (j != k) trained on fold k, and the
stacker learns from their predictions on fold j. Its few coefficients cannot memorise fold k. The
exact alternative (nested: an inner CV of the CNN inside every outer training set) would cost
4 more CNN trainings per run, 40 for the selection; the stackers' results are compared with the
cnn-only stacker fit the same way, so any optimism of the protocol appears in both.

Prints a table (mean +- std over the 10 runs) and the paired differences against cnn (mean +- s.e.),
with two threshold-free figures beside the selection's (one-vs-rest ROC AUC of extrastole and of "not
normal"): a stacker that only moves the operating point, trading normal recall for extrastole recall,
leaves them unchanged; one that adds information raises them.

Result (CV of `heartbeat cv ... --seeds 1,2 --recipe heartbeat`, balanced accuracy 0.591 +- 0.053; the
variants below were all declared before any ran, none was chosen): no rhythm variant adds information.
Extrastole AUC: cnn 0.644; stackers with rhythm 0.620-0.650 (paired -0.012 +- 0.021 to +0.006 +- 0.020);
rhythm alone 0.534. The stackers' recall changes are operating-point moves: the cnn-only stacker (class-
balanced) already gives extrastole recall 0.53 at normal recall 0.39, with the same balanced accuracy.
Best balanced accuracy: stack-cnn+decode-free, +0.018 +- 0.023 over cnn (Youden -0.023 +- 0.040): within
noise, one of five variants. Nothing goes to seeds 3-5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from recipe_search import FOLDS, SELECTION_SEEDS, run_figures

# sklearn's default strength: the rhythm and stacking models have 3 to 21 inputs for ~370 training
# recordings, so no strong penalty is needed. Fixed in advance, not tuned on these seeds.
STACKER_C = 1.0
PROBABILITY_FLOOR = 1e-4  # log(0) would be -inf: a CNN probability is clipped here before its log
# The decode-free features: the segmenter's decode finds no premature beat on real extrastoles.
DECODE_FREE = ("acf_", "peak_", "clean_")
# name -> (inputs: "cnn" = the CNN's log-probabilities, "rhythm" = every rhythm feature, "decode-free"; C)
LEARNED = {
    "rhythm": (("rhythm",), STACKER_C),
    "stack-cnn": (("cnn",), STACKER_C),
    "stack-cnn+rhythm": (("cnn", "rhythm"), STACKER_C),
    # two variants, declared before they ran: fewer inputs (decode-free only), a stronger penalty
    "stack-cnn+decode-free": (("cnn", "decode-free"), STACKER_C),
    "stack-cnn+rhythm, C 0.1": (("cnn", "rhythm"), 0.1),
    # beat-synchronous band levels (systole minus diastole per band group), declared with the above
    "stack-cnn+rhythm+bands": (("cnn", "rhythm", "bands"), STACKER_C),
}
MODELS = ["cnn", *LEARNED, "classical", "majority"]
FIGURES = ["balanced_accuracy", "macro_f1", "youden", "recall_extrastole", "recall_murmur", "recall_normal",
           "auc_extrastole", "auc_heart_problem"]


def recording_features(data_dir: Path, cache: Path | None) -> pd.DataFrame:
    """heartbeat.data.rhythm's features (and its band features) of every labelled recording of Dataset B, indexed by
    the manifest's name."""
    from heartbeat.data import audio
    from heartbeat.data import layouts
    from heartbeat.data import rhythm

    if cache is not None and cache.exists():
        return pd.read_csv(cache, index_col="recording")
    rows = {}
    for recording in layouts.read_pascal_b(data_dir):
        if recording.label is not None:
            signal = audio.load_audio(recording.path)
            rows[recording.path.name] = {**rhythm.rhythm_features(signal), **rhythm.band_features(signal)}
    frame = pd.DataFrame.from_dict(rows, orient="index")[rhythm.FEATURE_NAMES + rhythm.BAND_NAMES]
    frame = frame.rename_axis("recording")
    if cache is not None:
        frame.to_csv(cache)
    return frame


def fit_predict(train_x: np.ndarray, train_y, valid_x: np.ndarray, classes: list[str], seed: int,
                c: float = STACKER_C) -> np.ndarray:
    """Class probabilities of a scaled, class-balanced logistic regression (as the classical baseline's)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000,
                                                               random_state=seed))
    model.fit(train_x, np.asarray(train_y))
    probabilities = np.zeros((len(valid_x), len(classes)))
    known = model.predict_proba(valid_x)
    for column, name in enumerate(model.classes_):
        probabilities[:, classes.index(name)] = known[:, column]
    return probabilities


def check_folds(oof: pd.DataFrame, recordings: pd.DataFrame, seed: int) -> None:
    """oof.csv's fold of every recording must be heartbeat.report.cv.fold_splits' for this seed."""
    from heartbeat.report import cv

    for _, fold, split_table in cv.fold_splits(recordings, "patient", FOLDS, [seed], 0.3):
        expected = set(split_table.loc[split_table["split"] == "valid", "recording"])
        found = set(oof.loc[(oof["seed"] == seed) & (oof["fold"] == fold), "recording"])
        if expected != found:
            raise SystemExit(f"oof.csv's seed {seed} fold {fold} is not heartbeat.report.cv's fold ({len(expected ^ found)} "
                             "recordings differ)")


def ranking_figures(labels: np.ndarray, probabilities: np.ndarray | None, classes: list[str]) -> dict:
    """Threshold-free: one-vs-rest ROC AUC of extrastole, and of "not normal" (1 - P(normal)); NaN without
    probabilities. A lever that only moves the operating point (a class bias) leaves them unchanged."""
    from sklearn.metrics import roc_auc_score

    if probabilities is None:
        return {"auc_extrastole": np.nan, "auc_heart_problem": np.nan}
    extrastole = labels == "extrastole"
    problem = labels != "normal"
    return {"auc_extrastole": roc_auc_score(extrastole, probabilities[:, classes.index("extrastole")])
            if 0 < extrastole.sum() < len(labels) else np.nan,
            "auc_heart_problem": roc_auc_score(problem, 1.0 - probabilities[:, classes.index("normal")])
            if 0 < problem.sum() < len(labels) else np.nan}


def run_rows(oof: pd.DataFrame, features: pd.DataFrame, classes: list[str], seed: int) -> list[dict]:
    """Every model's figures on every fold of one seed."""
    runs = oof[oof["seed"] == seed].set_index("recording")
    cnn_probabilities = runs[[f"prob_{name}" for name in classes]].to_numpy()
    blocks = {"cnn": np.log(np.clip(cnn_probabilities, PROBABILITY_FLOOR, 1.0)),
              "rhythm": features.loc[runs.index, [c for c in features.columns if not c.startswith("band")]].to_numpy(),
              "bands": features.loc[runs.index, [c for c in features.columns if c.startswith("band")]].to_numpy(),
              "decode-free": features.loc[runs.index, [c for c in features.columns if c.startswith(DECODE_FREE)]]
              .to_numpy()}
    labels = runs["label"].to_numpy()
    rows = []
    for fold in sorted(runs["fold"].unique()):
        valid = (runs["fold"] == fold).to_numpy()
        predicted = {"cnn": runs.loc[valid, "predicted"].to_numpy(),
                     "classical": runs.loc[valid, "classical_predicted"].to_numpy(),
                     "majority": np.full(valid.sum(), "normal", dtype=object)}
        probabilities = {"cnn": cnn_probabilities[valid], "classical": None,
                         "majority": np.tile(np.eye(len(classes))[classes.index("normal")], (valid.sum(), 1))}
        for name, (inputs, c) in LEARNED.items():
            x = np.hstack([blocks[block] for block in inputs])
            # rhythm alone: the training folds' features; stackers: the other folds' out-of-fold CNN rows
            probabilities[name] = fit_predict(x[~valid], labels[~valid], x[valid], classes, seed, c)
            predicted[name] = np.asarray(classes)[probabilities[name].argmax(axis=1)]
        for name in MODELS:
            rows.append({"model": name, "seed": seed, "fold": int(fold),
                         **run_figures(labels[valid], predicted[name], classes),
                         **ranking_figures(labels[valid], probabilities[name], classes)})
    return rows


def table(rows: pd.DataFrame) -> str:
    lines = ["| model | " + " | ".join(FIGURES) + " |", "|---" * (len(FIGURES) + 1) + "|"]
    for name in MODELS:
        runs = rows[rows["model"] == name]
        lines.append(f"| {name} | " + " | ".join(f"{runs[key].mean():.3f} ± {runs[key].std(ddof=1):.3f}"
                                                for key in FIGURES) + " |")
    return "\n".join(lines)


def paired(rows: pd.DataFrame, reference: str) -> str:
    """Per model, the paired difference from the reference over the same (seed, fold): mean +- s.e."""
    keys = ["balanced_accuracy", "youden", "recall_extrastole", "recall_normal", "auc_extrastole"]
    base = rows[rows["model"] == reference].set_index(["seed", "fold"])
    lines = [f"| vs {reference} | " + " | ".join(f"Δ {key}" for key in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in MODELS:
        if name in (reference, "majority"):
            continue
        difference = rows[rows["model"] == name].set_index(["seed", "fold"])[keys] - base[keys]
        cells = [f"{difference[key].mean():+.3f} ± {difference[key].std(ddof=1) / np.sqrt(len(difference)):.3f}"
                 for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Dataset B's folder (set_b.csv, set_b/)")
    parser.add_argument("--spectrograms", type=Path, required=True, help="stage 1's output the CV ran on")
    parser.add_argument("--cv", type=Path, required=True, help="the heartbeat cv folder (oof.csv) for seeds 1, 2")
    parser.add_argument("--features", type=Path, help="cache the rhythm features in this csv (reused if present)")
    parser.add_argument("--out", type=Path, help="write every run's figures to this csv")
    args = parser.parse_args()

    from heartbeat.train import split
    from heartbeat.train.inputs import read_spectrograms
    from heartbeat.data.dataset import CLASSES

    oof = pd.read_csv(args.cv / "oof.csv")
    seeds = sorted(int(seed) for seed in oof["seed"].unique())
    if not set(seeds) <= set(SELECTION_SEEDS):
        raise SystemExit(f"{args.cv}: seeds {seeds}; the selection uses seeds {SELECTION_SEEDS} only")
    windows = read_spectrograms(args.spectrograms)
    recordings = split.recordings_table(windows)
    classes = [name for name in CLASSES if name in set(windows["label"])]
    features = recording_features(args.data, args.features)
    rows = []
    for seed in seeds:
        check_folds(oof, recordings, seed)
        rows += run_rows(oof, features, classes, seed)
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    print(f"seeds {seeds}, {FOLDS} folds: mean ± std over {frame.groupby(['seed', 'fold']).ngroups} runs\n")
    print(table(frame) + "\n\n" + paired(frame, "cnn") + "\n\n" + paired(frame, "stack-cnn"))
    print("\nauc_*: one-vs-rest ROC AUC from each run's probabilities (classical: none kept in oof.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
