"""heartbeat.report on small synthetic runs: files, their contents, re-runs, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from heartbeat.report import plot_confusion_matrix, plot_training_curves, write_report

CLASSES = ["extrastole", "murmur", "normal"]
OUTPUTS = {"metrics.json", "confusion_matrix.png", "confusion_matrix.json", "report.md"}


def _predictions(labels, predicted) -> pd.DataFrame:
    frame = pd.DataFrame({
        "recording": [f"rec_{i:03d}.wav" for i in range(len(labels))],
        "patient_id": [f"p{i // 2}" for i in range(len(labels))],
        "label": labels,
        "predicted": predicted,
    })
    for name in CLASSES:
        frame[f"prob_{name}"] = np.where(frame["predicted"] == name, 0.8, 0.1)
    return frame


@pytest.fixture
def predictions() -> pd.DataFrame:
    labels = ["normal"] * 8 + ["murmur"] * 3 + ["extrastole"] * 2
    predicted = ["normal"] * 6 + ["murmur", "extrastole"] + ["murmur", "normal", "murmur"] + ["normal", "extrastole"]
    return _predictions(labels, predicted)


@pytest.fixture
def context() -> dict:
    return {
        "title": "heartbeat run 20261123-190000-test",
        "split": "patient",
        "weights": "ImageNet (torchvision IMAGENET1K_V1)",
        "training_mode": "fine-tune: head first, then whole network",
        "n_train_recordings": 40,
        "n_train_patients": 17,
        "n_valid_patients": 7,
        "notes": ["first note for the reader", "second note"],
        "settings": {"learning_rate": 0.002, "epochs": 4, "batch_size": 16},
        "lr_suggestion": 0.0012,
    }


@pytest.fixture
def epoch_log() -> pd.DataFrame:
    return pd.DataFrame({
        "epoch": [0, 1, 2, 3],
        "train_loss": [1.2, 0.9, 0.7, 0.6],
        "valid_loss": [1.1, np.nan, 0.8, 0.75],
        "error_rate": [0.45, 0.4, np.nan, 0.3],
    })


def _assert_png(path, min_side=200):
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.verify()
    assert width >= min_side and height >= min_side


def _table_row(markdown: str, first_cell: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no table row starting with {first_cell!r}")


def test_write_report_outputs(tmp_path, predictions, context, epoch_log):
    metrics = write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=context, epoch_log=epoch_log)

    assert {path.name for path in tmp_path.iterdir()} == OUTPUTS | {"training_curves.png"}
    _assert_png(tmp_path / "confusion_matrix.png")
    _assert_png(tmp_path / "training_curves.png")

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["context"] == context
    assert saved["n_recordings"] == len(predictions)

    confusion = json.loads((tmp_path / "confusion_matrix.json").read_text())
    assert confusion["classes"] == CLASSES
    assert sum(map(sum, confusion["matrix"])) == len(predictions)
    assert confusion["split"] == "patient"
    assert confusion["weights"] == context["weights"]
    # Row = true class, column = predicted: 1 extrastole called normal, 2 normals called something else.
    assert confusion["matrix"][0] == [1, 0, 1]
    assert confusion["matrix"][2] == [1, 1, 6]


def test_report_markdown_shows_figures_beside_baseline(tmp_path, predictions, context, epoch_log):
    write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=context, epoch_log=epoch_log)
    report = (tmp_path / "report.md").read_text()

    # Expected figures worked out from the frame itself, not from the code under test.
    model_error = (predictions["label"] != predictions["predicted"]).mean()
    baseline_error = (predictions["label"] != "normal").mean()
    assert report.startswith(f"# {context['title']}\n")
    assert f"{model_error:.3f}" in report.split("##")[0]  # in the summary paragraph
    assert f"{baseline_error:.3f}" in report.split("##")[0]
    assert "majority baseline (always normal)" in report
    assert _table_row(report, "error rate") == [f"{model_error:.3f}", f"{baseline_error:.3f}"]
    assert _table_row(report, "accuracy") == [f"{1 - model_error:.3f}", f"{1 - baseline_error:.3f}"]
    # Heart problems: 5 recordings, 3 called murmur/extrastole; normals: 8, 6 called normal.
    assert _table_row(report, "heart-problem sensitivity") == [f"{3 / 5:.3f}", "0.000"]
    assert _table_row(report, "heart-problem specificity") == [f"{6 / 8:.3f}", "1.000"]
    assert _table_row(report, "heart-problem Youden index") == [f"{3 / 5 + 6 / 8 - 1:.3f}", "0.000"]
    for figure in ("balanced accuracy", "macro-F1"):
        assert len(_table_row(report, figure)) == 2
    # Per-class table: murmur precision 2/3 (two of three murmur calls right), recall 2/3, support 3.
    assert _table_row(report, "murmur")[:2] == [f"{2 / 3:.3f}", f"{2 / 3:.3f}"]
    assert _table_row(report, "murmur")[3] == "3"

    assert "![confusion matrix](confusion_matrix.png)" in report
    assert "](training_curves.png)" in report
    assert "lr_find.png" not in report
    confusion_section = report.split("## Confusion matrix")[1]
    assert _table_row(confusion_section, "normal") == ["1", "1", "6"]
    for note in context["notes"]:
        assert f"- {note}" in report
    for setting in context["settings"]:
        assert f"| {setting} |" in report
    assert _table_row(report, "train") == ["40", "17"]
    assert _table_row(report, "validation") == [str(len(predictions)), "7"]


def test_undefined_figures_show_as_na(tmp_path, context):
    # No heart problem among the validation recordings: sensitivity is undefined.
    frame = _predictions(["normal"] * 4, ["normal", "murmur", "normal", "normal"])
    metrics = write_report(tmp_path, frame, CLASSES, majority_class="normal", context=context)
    assert metrics["heart_problem"]["sensitivity"] is None
    report = (tmp_path / "report.md").read_text()
    assert _table_row(report, "heart-problem sensitivity") == ["n/a", "n/a"]
    assert _table_row(report, "heart-problem Youden index") == ["n/a", "n/a"]
    assert json.loads((tmp_path / "metrics.json").read_text())["heart_problem"]["sensitivity"] is None


def test_lr_find_image_linked_when_present(tmp_path, predictions, context):
    Image.new("RGB", (300, 200), "white").save(tmp_path / "lr_find.png")
    write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=context)
    report = (tmp_path / "report.md").read_text()
    assert "](lr_find.png)" in report
    assert "training_curves.png" not in report
    assert not (tmp_path / "training_curves.png").exists()


def test_rerun_overwrites_cleanly(tmp_path, predictions, context, epoch_log):
    write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=context, epoch_log=epoch_log)
    first_files = {path.name for path in tmp_path.iterdir()}

    better = predictions.assign(predicted=predictions["label"])
    context_again = {**context, "split": "random", "notes": ["patients leak across the split"]}
    metrics = write_report(tmp_path, better, CLASSES, majority_class="normal", context=context_again)

    assert {path.name for path in tmp_path.iterdir()} == first_files
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["error_rate"] == 0.0
    assert saved["context"]["split"] == "random"
    assert json.loads((tmp_path / "confusion_matrix.json").read_text())["split"] == "random"
    report = (tmp_path / "report.md").read_text()
    assert _table_row(report, "error rate")[0] == "0.000"
    assert "- patients leak across the split" in report
    assert "first note for the reader" not in report
    # The curves written by the first call are still there, so the report keeps linking them.
    assert "](training_curves.png)" in report
    _assert_png(tmp_path / "confusion_matrix.png")


def test_no_temporary_files_left(tmp_path, predictions, context, epoch_log):
    for _ in range(2):
        write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=context, epoch_log=epoch_log)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_context_with_numpy_values_is_written_as_plain_json(tmp_path, predictions, context):
    numpy_context = {**context, "n_train_recordings": np.int64(40), "lr_suggestion": np.float64(0.0012)}
    metrics = write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=numpy_context)
    assert type(metrics["context"]["n_train_recordings"]) is int
    assert json.loads((tmp_path / "metrics.json").read_text())["context"] == context


def test_bad_predictions_raise(tmp_path, predictions, context):
    with pytest.raises(ValueError, match="predicted"):
        write_report(tmp_path, predictions.drop(columns="predicted"), CLASSES, majority_class="normal", context=context)
    duplicated = pd.concat([predictions, predictions.iloc[:1]])
    with pytest.raises(ValueError, match="several rows"):
        write_report(tmp_path, duplicated, CLASSES, majority_class="normal", context=context)
    with pytest.raises(ValueError, match="weights"):
        write_report(tmp_path, predictions, CLASSES, majority_class="normal",
                     context={key: value for key, value in context.items() if key != "weights"})
    assert list(tmp_path.iterdir()) == []


def test_plots_directly(tmp_path, epoch_log):
    plot_confusion_matrix([[3, 1], [0, 5]], ["murmur", "normal"], "a title", tmp_path / "cm.png")
    _assert_png(tmp_path / "cm.png")
    no_validation = epoch_log.assign(valid_loss=np.nan, error_rate=np.nan)
    plot_training_curves(no_validation, tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion_matrix([[1, 2]], ["murmur", "normal"], "t", tmp_path / "bad.png")
    with pytest.raises(ValueError, match="error_rate"):
        plot_training_curves(epoch_log.drop(columns="error_rate"), tmp_path / "bad.png")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cm.png", "curves.png"]
