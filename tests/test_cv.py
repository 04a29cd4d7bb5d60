"""Cross-validation and class balance: folds, out-of-fold completeness, summaries, protocols, --balance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from badinput import CliResult, assert_one_line_error, snapshot
from heartbeat import cli
from heartbeat.report.cv import cross_validate, fold_splits
from heartbeat.report.metrics import classification_metrics
from heartbeat.train.split import leaked_patients, patient_folds
from heartbeat.train.device import cpu_has_bf16
from heartbeat.train.recipes.features import feature_dataloaders
from heartbeat.train.recipes.published import class_balance
from heartbeat.train.run import TrainSettings
from test_split import dataset_like


@pytest.mark.parametrize("seed", [0, 1])
def test_patient_folds_are_disjoint_complete_and_even(seed):
    recordings = dataset_like(seed)
    folds = patient_folds(recordings, 5, seed)
    assert len(folds) == len(recordings) and set(folds) == set(range(5))
    assert recordings.assign(fold=folds).groupby("patient_id")["fold"].nunique().max() == 1
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 0.25 * len(recordings) / 5
    for label, group in recordings.assign(fold=folds).groupby("label"):
        per_fold = group["fold"].value_counts().reindex(range(5), fill_value=0)
        assert per_fold.max() - per_fold.min() <= max(3, 0.5 * len(group) / 5), label


def test_published_protocol_splits_recordings_at_random():
    recordings = dataset_like(3)
    runs = list(fold_splits(recordings, "published", 5, [1, 2], 0.3))
    assert [(seed, fold) for seed, fold, _ in runs] == [(1, 0), (2, 0)]
    for _, _, table in runs:
        assert (table["split"] == "valid").sum() == round(0.3 * len(recordings))
        assert leaked_patients(table) > 0
    assert not runs[0][2]["split"].equals(runs[1][2]["split"])


@pytest.fixture(scope="module")
def cv_result(trained_run, standin_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "cv"
    features_before = set((trained_run["spectrograms"] / "features").glob("*")) if (trained_run["spectrograms"] / "features").exists() else set()
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8)
    summary = cross_validate(trained_run["spectrograms"], out, settings, folds=3, seeds=[1, 2], progress=False)
    features_after = set((trained_run["spectrograms"] / "features").glob("*"))
    return {"out": out, "summary": summary, "new_feature_files": features_after - features_before}


def test_every_labelled_recording_is_out_of_fold_once_per_seed(cv_result, trained_run):
    oof = pd.read_csv(cv_result["out"] / "oof.csv")
    for column in ["recording", "patient_id", "label", "fold", "seed", "predicted", "prob_normal"]:
        assert column in oof.columns
    manifest = pd.read_csv(trained_run["spectrograms"] / "manifest.csv", keep_default_na=False)
    labelled = set(manifest.loc[manifest["label"] != "", "recording"])
    for seed, group in oof.groupby("seed"):
        assert sorted(group["recording"]) == sorted(labelled)
        assert group.groupby("patient_id")["fold"].nunique().max() == 1
    assert len(list((cv_result["out"] / "runs").iterdir())) == 6
    assert len(cv_result["new_feature_files"]) <= 1, "the body's features were computed more than once"


def test_fold_runs_draw_no_explanation_pictures(cv_result):
    from heartbeat.report.explanations import NOT_ASKED_NOTE

    folds = sorted((cv_result["out"] / "runs").iterdir())
    assert len(folds) == 6
    for run in folds:
        assert not (run / "explanations").exists()
        assert NOT_ASKED_NOTE in (run / "report.md").read_text()


def test_summary_matches_the_out_of_fold_file(cv_result):
    oof = pd.read_csv(cv_result["out"] / "oof.csv")
    summary = json.loads((cv_result["out"] / "summary.json").read_text())
    classes = sorted(oof["label"].unique())
    error_rates, balanced = [], []
    for (seed, fold), group in oof.groupby(["seed", "fold"]):
        metrics = classification_metrics(group["label"].tolist(), group["predicted"].tolist(),
                                          sorted(set(classes) | set(oof["predicted"])), majority_class="normal")
        error_rates.append(metrics["error_rate"])
        balanced.append(metrics["balanced_accuracy"])
    for name, values in [("error_rate", error_rates), ("balanced_accuracy", balanced)]:
        entry = summary[name]
        assert set(entry) >= {"mean", "std", "ci95"}
        assert entry["mean"] == pytest.approx(np.mean(values))
        assert entry["std"] == pytest.approx(np.std(values, ddof=1))
        assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
    confusion = json.loads((cv_result["out"] / "confusion_matrix.json").read_text())
    assert np.sum(confusion["matrix"]) == len(oof)
    report = (cv_result["out"] / "report.md").read_text()
    assert f"{summary['error_rate']['mean']:.3f} ± {summary['error_rate']['std']:.3f}" in report
    assert (cv_result["out"] / "folds.png").is_file() and (cv_result["out"] / "confusion_matrix.png").is_file()


def test_cv_command_line_published_protocol_reports_the_leak(trained_run, standin_weights, tmp_path, capsys):
    out = tmp_path / "cv"
    code = cli.main(["cv", "--spectrograms", str(trained_run["spectrograms"]), "--out", str(out), "--protocol", "published",
                     "--seeds", "4,5", "--weights", str(standin_weights), "--image-size", "32", "--epochs", "1", "--bs", "8",
                     "--precision", "auto", "--quiet"])

    stdout = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_runs"] == 2 and summary["protocol"] == "published" and summary["seeds"] == [4, 5]
    error = summary["error_rate"]
    assert f"error rate {error['mean']:.3f} ± {error['std']:.3f} over 2 runs" in stdout and str(out / "report.md") in stdout
    oof = pd.read_csv(out / "oof.csv")
    assert sorted(oof["seed"].unique()) == [4, 5]
    # The leak line's numbers: patients on both sides, counted from each run's own split.csv.
    leaked = [leaked_patients(pd.read_csv(run / "split.csv")) for run in sorted((out / "runs").iterdir())]
    assert len(leaked) == 2 and min(leaked) > 0
    assert summary["leaked_patients_per_run"] == [leaked_patients(pd.read_csv(out / "runs" / f"seed{seed}-fold0" / "split.csv"))
                                                  for seed in (4, 5)]
    assert f"so {min(leaked)}–{max(leaked)} patients per run have recordings on both sides" in (out / "report.md").read_text()
    # --precision auto reached every run, and resolved as the CPU allows.
    for run in (out / "runs").iterdir():
        config = json.loads((run / "config.json").read_text())
        assert config["train_settings"]["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert summary["settings"]["precision"] == ("bf16" if cpu_has_bf16() else "fp32")


@pytest.mark.parametrize("flag, value, named", [
    ("--folds", "1", "--folds"),
    ("--out", "{spectrograms}", "{spectrograms}"),  # exists already
    ("--spectrograms", "{missing}", "{missing}/manifest.csv"),
])
def test_cv_command_line_refuses_bad_input(flag, value, named, trained_run, tmp_path, capsys):
    paths = {"spectrograms": trained_run["spectrograms"], "missing": tmp_path / "missing"}
    arguments = {"--spectrograms": str(trained_run["spectrograms"]), "--out": str(tmp_path / "cv"),
                 flag: value.format(**paths)}
    before = snapshot(tmp_path)

    try:
        code = cli.main(["cv", *[item for pair in arguments.items() for item in pair], "--no-pretrained", "--quiet"])
    except SystemExit as refused:  # refused while parsing the arguments: argparse's usage line, then the error
        code = refused.code

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert named.format(**paths) in err.strip().splitlines()[-1]
    if not flag.startswith("--folds"):
        assert_one_line_error(CliResult(code, "", err, 0), named.format(**paths), code=2)
    assert snapshot(tmp_path) == before


def test_balance_weights_put_inverse_frequencies_in_the_loss():
    labels = pd.Series(["normal"] * 70 + ["murmur"] * 20 + ["extrastole"] * 10)
    classes = ["extrastole", "murmur", "normal"]
    weights, weighted = class_balance(labels, classes, "weights")
    np.testing.assert_allclose(weights, [100 / 30, 100 / 60, 100 / 210])
    _, plain = class_balance(labels, classes, "none")
    assert plain.func.weight is None
    torch.testing.assert_close(weighted.func.weight, torch.tensor(weights, dtype=torch.float32))
    # a batch where the rare class (extrastole) is wrong and the common one right: weighting makes the error cost more
    logits, targets = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0]]), torch.tensor([0, 2])
    per_sample = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = float((per_sample * torch.tensor([weights[0], weights[2]])).sum() / (weights[0] + weights[2]))
    assert float(weighted(logits, targets)) == pytest.approx(expected)
    assert float(weighted(logits, targets)) > float(plain(logits, targets))


def test_oversampling_draws_rare_classes_as_often_as_common_ones():
    targets = np.array([2] * 70 + [1] * 20 + [0] * 10)
    features = torch.randn(len(targets), 4)
    is_valid = np.zeros(len(targets), dtype=bool)
    weights, _ = class_balance(pd.Series(np.array(["extrastole", "murmur", "normal"])[targets]), ["extrastole", "murmur", "normal"], "oversample")

    def drawn_shares(sample_weights):
        np.random.seed(0)
        dls = feature_dataloaders(features, targets, is_valid, 10, sample_weights)
        drawn = np.concatenate([batch[1].numpy() for _ in range(30) for batch in dls.train])
        return np.bincount(drawn, minlength=3) / len(drawn)

    balanced = drawn_shares(weights[targets])
    natural = drawn_shares(None)
    assert np.all(np.abs(balanced - 1 / 3) < 0.05), balanced
    np.testing.assert_allclose(natural, [0.1, 0.2, 0.7], atol=0.02)


def spy_on_the_loss(monkeypatch) -> list[tuple]:
    """Record (class weights, targets) of every loss computed for a training step (with gradients)."""
    real_cross_entropy = torch.nn.functional.cross_entropy
    calls = []

    def cross_entropy(input, target, weight=None, *args, **kwargs):
        if torch.is_grad_enabled():  # training steps; validation runs without gradients
            calls.append((None if weight is None else weight.clone(), target.clone()))
        return real_cross_entropy(input, target, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    return calls


@pytest.mark.parametrize("balance", ["weights", "oversample"])
def test_balance_is_used_in_training(balance, trained_run, standin_weights, tmp_path, monkeypatch):
    from heartbeat.train.run import train

    calls = spy_on_the_loss(monkeypatch)
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8, balance=balance)
    run = train(trained_run["spectrograms"], tmp_path / balance, settings, progress=False).run_dir

    config = json.loads((run / "config.json").read_text())
    assert config["train_settings"]["balance"] == balance
    assert config["class_weights"]["normal"] < 1 < config["class_weights"]["extrastole"]
    classes = config["classes"]
    assert len(calls) >= 20
    split = pd.read_csv(run / "split.csv")
    manifest = pd.read_csv(trained_run["spectrograms"] / "manifest.csv", keep_default_na=False)
    train_windows = manifest.merge(split.loc[split["split"] == "train", ["recording"]], on="recording")
    natural = train_windows["label"].value_counts(normalize=True).reindex(classes, fill_value=0).to_numpy()
    drawn = np.bincount(torch.cat([targets for _, targets in calls]).numpy(), minlength=len(classes))
    shares = drawn / drawn.sum()
    if balance == "weights":
        # every training step's loss weighs the classes by their inverse frequency; batches keep the natural mix
        expected = torch.tensor([config["class_weights"][name] for name in classes])
        assert all(weight is not None and torch.allclose(weight, expected) for weight, _ in calls)
    else:
        # the loss is plain, and the sampler draws every class about equally often instead of the natural mix
        assert all(weight is None for weight, _ in calls)
        assert natural.max() > 0.45, natural  # the data must be unbalanced for the test to tell
        assert np.abs(shares - 1 / len(classes)).max() < 0.1, (shares, natural)
