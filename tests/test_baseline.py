"""The classical baseline: features from stage 1's images, the logistic regression, and its place in every CV report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from heartbeat.data import audio
from heartbeat.data import png
from heartbeat.report.baseline import (PERCENTILES, RHYTHM_FEATURES, classical_predictions, feature_names,
                                recording_features)
from heartbeat.report.cv import CLASSICAL_TITLE, classical_run, classical_verdict
from heartbeat.report.metrics import classification_metrics

SETTINGS = audio.SETTINGS
N_MELS, SIZE = SETTINGS.n_mels, SETTINGS.image_size
FRAME_S = SETTINGS.hop_length / SETTINGS.sample_rate


def band_image(levels: np.ndarray) -> np.ndarray:
    """A stage-1-shaped image from (n_mels, frames) band levels, band 0 lowest: rows repeated, low band at the bottom."""
    return np.repeat(np.asarray(levels, dtype=np.uint8)[::-1], SIZE // N_MELS, axis=0)


def write_recording(folder, name: str, band_levels: list[np.ndarray]) -> list[dict]:
    """Write one PNG per window as stage 1 names them; return the manifest rows."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for window, levels in enumerate(band_levels):
        image = f"images/{name}_w{window:02d}.png"
        (folder / image).write_bytes(png.encode_png(band_image(levels)))
        rows.append({"recording": f"{name}.wav", "window": window, "image": image})
    return rows


def column(name: str) -> int:
    return feature_names().index(name)


def test_band_statistics_of_a_constructed_image_skip_the_padding(tmp_path):
    levels = np.full((N_MELS, SIZE), 100)
    levels[5] = 200  # one loud band
    levels[7, ::2] = 60  # one band alternating 60 / 140: mean 100, std 40
    levels[7, 1::2] = 140
    levels[:, 400:] = 0  # silence padded after the recording's end
    names, features = recording_features(tmp_path, pd.DataFrame(write_recording(tmp_path, "a", [levels])))

    assert names == ["a.wav"] and features.shape == (1, N_MELS * (2 + len(PERCENTILES)) + len(RHYTHM_FEATURES))
    row = features[0]
    assert row[column("band005_mean")] == pytest.approx(200) and row[column("band005_std")] == pytest.approx(0)
    assert row[column("band000_mean")] == pytest.approx(100) and row[column("band127_p90")] == pytest.approx(100)
    assert row[column("band007_mean")] == pytest.approx(100) and row[column("band007_std")] == pytest.approx(40)
    assert row[column("band007_p10")] == pytest.approx(60) and row[column("band007_p90")] == pytest.approx(140)


@pytest.mark.parametrize("beat_s", [0.6, 1.1])
def test_a_periodic_envelope_gives_its_beat_lag_across_windows(tmp_path, beat_s):
    frames = np.arange(2 * SIZE)
    beat_frames = int(round(beat_s / FRAME_S))
    loud = (frames % beat_frames) < 6  # a 60 ms thump every beat
    levels = np.where(loud, 180, 40)[None, :].repeat(N_MELS, axis=0)
    rows = write_recording(tmp_path, "beats", [levels[:, :SIZE], levels[:, SIZE:]])
    _, regular = recording_features(tmp_path, pd.DataFrame(rows[::-1]))  # window order comes from the column

    assert regular[0, column("beat_lag_s")] == pytest.approx(beat_s, abs=FRAME_S)
    assert regular[0, column("beat_autocorrelation")] > 0.8
    assert regular[0, column("beat_autocorrelation_2x")] > 0.6
    # the same beats with every third one early (an extrastole): less regular
    early = loud.copy()
    for start in np.flatnonzero(np.diff(loud.astype(int)) == 1)[1::3] + 1:
        early[start:start + 6] = False
        early[start - beat_frames // 3:start - beat_frames // 3 + 6] = True
    irregular_levels = np.where(early, 180, 40)[None, :].repeat(N_MELS, axis=0)
    rows = write_recording(tmp_path / "x", "extra", [irregular_levels[:, :SIZE], irregular_levels[:, SIZE:]])
    _, irregular = recording_features(tmp_path / "x", pd.DataFrame(rows))
    assert irregular[0, column("beat_autocorrelation")] < regular[0, column("beat_autocorrelation")] - 0.1


def test_only_stage_ones_own_images_are_read(tmp_path):
    (tmp_path / "outside.png").write_bytes(png.encode_png(band_image(np.full((N_MELS, SIZE), 9))))
    windows = pd.DataFrame([{"recording": "a.wav", "window": 0, "image": "images/../outside.png"}])
    with pytest.raises(ValueError, match="not one of stage 1's own images"):
        recording_features(tmp_path, windows)


def synthetic_features(tmp_path, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images of two classes that differ only in some bands' level (murmur: bands 30-59, 100-600 Hz or so,
    are 10 levels louder; one band alone is too little signal among 640 standardised features for 30 recordings)."""
    rng = np.random.default_rng(seed)
    rows, labels = [], {}
    for index in range(2 * n_per_class):
        label = "murmur" if index % 2 else "normal"
        levels = rng.normal(100, 20, (N_MELS, SIZE))
        levels[30:60] += 10 if label == "murmur" else 0
        rows += write_recording(tmp_path, f"r{index:03d}", [np.clip(levels, 1, 255)])
        labels[f"r{index:03d}.wav"] = label
    names, features = recording_features(tmp_path, pd.DataFrame(rows))
    return features, np.array([labels[name] for name in names])


def test_the_baseline_learns_an_easy_problem(tmp_path):
    features, labels = synthetic_features(tmp_path, 20, seed=0)
    classes = ["extrastole", "murmur", "normal"]
    probabilities = classical_predictions(features[:30], labels[:30], features[30:], classes, seed=1)

    assert probabilities.shape == (10, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1)
    assert np.all(probabilities[:, 0] == 0)  # extrastole never seen in training
    predicted = np.asarray(classes)[probabilities.argmax(axis=1)]
    assert np.mean(predicted == labels[30:]) >= 0.9  # chance is 0.5
    again = classical_predictions(features[:30], labels[:30], features[30:], classes, seed=1)
    np.testing.assert_array_equal(probabilities, again)


def test_the_baseline_never_sees_validation_labels(tmp_path):
    features, labels = synthetic_features(tmp_path, 12, seed=2)
    table = pd.DataFrame(features, index=[f"r{i:03d}.wav" for i in range(len(labels))])
    split_table = pd.DataFrame({"recording": table.index, "label": labels,
                                "split": np.where(np.arange(len(labels)) < 16, "train", "valid")})
    shuffled = split_table.copy()
    valid = shuffled["split"] == "valid"
    shuffled.loc[valid, "label"] = np.random.default_rng(0).permutation(shuffled.loc[valid, "label"].to_numpy())[::-1]
    assert not shuffled["label"].equals(split_table["label"])

    original = classical_run(table, split_table, ["murmur", "normal"], seed=3)
    assert original["recording"].tolist() == split_table.loc[valid, "recording"].tolist()
    pd.testing.assert_frame_equal(original, classical_run(table, shuffled, ["murmur", "normal"], seed=3))
    # and its training labels do matter: flipping them flips what it predicts
    flipped = split_table.assign(label=split_table["label"].map({"murmur": "normal", "normal": "murmur"}))
    assert (classical_run(table, flipped, ["murmur", "normal"], seed=3)["classical_predicted"]
            != original["classical_predicted"]).mean() > 0.5


@pytest.mark.parametrize("model_mean, verb", [(0.61, "beats"), (0.59, "does not beat"), (0.60, "does not beat")])
def test_the_report_says_whether_the_cnn_beats_the_classical_baseline(model_mean, verb):
    summary = {"balanced_accuracy": {"mean": model_mean}, "classical_balanced_accuracy": {"mean": 0.60}}
    assert classical_verdict(summary).startswith(f"The CNN {verb} the classical baseline")


@pytest.fixture(scope="module")
def classical_cv(trained_run, standin_weights, tmp_path_factory):
    """A tiny CV run (32 px, 1 epoch, 2 folds, one seed) on the frozen stand-in body, as test_cv's: its features are
    cached once for both folds (a from-scratch CV trained two more networks and took minutes on a busy machine)."""
    from heartbeat.report.cv import cross_validate
    from heartbeat.train.run import TrainSettings

    out = tmp_path_factory.mktemp("classical-cv") / "cv"
    settings = TrainSettings(weights=str(standin_weights), image_size=32, epochs=1, batch_size=8)
    summary = cross_validate(trained_run["spectrograms"], out, settings, folds=2, seeds=[1], progress=False)
    return {"out": out, "summary": summary}


def test_cv_reports_the_classical_baseline_recomputed_from_the_features(classical_cv, trained_run):
    out = classical_cv["out"]
    summary = json.loads((out / "summary.json").read_text())
    manifest = pd.read_csv(trained_run["spectrograms"] / "manifest.csv", keep_default_na=False)
    names, matrix = recording_features(trained_run["spectrograms"], manifest[manifest["label"] != ""])
    features = pd.DataFrame(matrix, index=names)
    oof = pd.read_csv(out / "oof.csv")
    classes = sorted(set(manifest.loc[manifest["label"] != "", "label"]))
    per_run, pooled_true, pooled_predicted = {"balanced_accuracy": [], "error_rate": []}, [], []
    for fold in (0, 1):
        split_table = pd.read_csv(out / "runs" / f"seed1-fold{fold}" / "split.csv")
        train_labels = split_table.loc[split_table["split"] == "train", "label"]
        expected = classical_run(features, split_table, classes, seed=1)
        written = oof[oof["fold"] == fold].set_index("recording")["classical_predicted"]
        assert written.loc[expected["recording"]].tolist() == expected["classical_predicted"].tolist()
        truth = split_table.set_index("recording").loc[expected["recording"], "label"].tolist()
        metrics = classification_metrics(truth, expected["classical_predicted"].tolist(), classes,
                                         majority_class=train_labels.value_counts().idxmax())
        for name in per_run:
            per_run[name].append(metrics[name])
        pooled_true += truth
        pooled_predicted += expected["classical_predicted"].tolist()
    for name, values in per_run.items():
        assert summary[f"classical_{name}"]["mean"] == pytest.approx(np.mean(values))
        assert summary[f"classical_{name}"]["std"] == pytest.approx(np.std(values, ddof=1))
    folds = pd.read_csv(out / "folds.csv")
    assert folds["classical_balanced_accuracy"].tolist() == pytest.approx(per_run["balanced_accuracy"])
    pooled = classification_metrics(pooled_true, pooled_predicted, classes, majority_class="normal")
    assert summary["classical_pooled_oof"]["balanced_accuracy"] == pytest.approx(pooled["balanced_accuracy"])

    report = (out / "report.md").read_text()
    assert f"| figure | model | majority baseline | {CLASSICAL_TITLE} |" in report
    entry = summary["classical_balanced_accuracy"]
    balanced_row = next(line for line in report.splitlines() if line.startswith("| balanced accuracy |"))
    assert balanced_row.rstrip(" |").split(" | ")[-1].startswith(f"{entry['mean']:.3f} ± {entry['std']:.3f}")
    assert classical_verdict(summary) in report
