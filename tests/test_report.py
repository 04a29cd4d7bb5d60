"""heartbeat.report.run_report (with figures, run_files, outputs) on small synthetic runs: files, their contents, re-runs, atomic writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score

from badinput import CliResult, assert_one_line_error, run_cli, snapshot
from heartbeat import cli
from heartbeat.report.figures import (lr_find_figure, plot_confusion_matrix, plot_lr_find, plot_training_curves,
                                      probability_table, results_choice, top_losses)
from heartbeat.report.run_files import MAX_RUN_FILE_BYTES
from heartbeat.report.run_report import write_report

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


def _sample_predictions() -> pd.DataFrame:
    labels = ["normal"] * 8 + ["murmur"] * 3 + ["extrastole"] * 2
    predicted = ["normal"] * 6 + ["murmur", "extrastole"] + ["murmur", "normal", "murmur"] + ["normal", "extrastole"]
    return _predictions(labels, predicted)


@pytest.fixture
def predictions() -> pd.DataFrame:
    return _sample_predictions()


def _sample_context() -> dict:
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
def context() -> dict:
    return _sample_context()


def _sample_epoch_log() -> pd.DataFrame:
    return pd.DataFrame({
        "epoch": [0, 1, 2, 3],
        "train_loss": [1.2, 0.9, 0.7, 0.6],
        "valid_loss": [1.1, np.nan, 0.8, 0.75],
        "error_rate": [0.45, 0.4, np.nan, 0.3],
    })


@pytest.fixture
def epoch_log() -> pd.DataFrame:
    return _sample_epoch_log()


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
    # Balanced accuracy and macro-F1 from scikit-learn, for the model and for always answering "normal".
    always_normal = ["normal"] * len(predictions)
    assert _table_row(report, "balanced accuracy") == [
        f"{balanced_accuracy_score(predictions['label'], predictions['predicted']):.3f}",
        f"{balanced_accuracy_score(predictions['label'], always_normal):.3f}",
    ]
    assert _table_row(report, "macro-F1") == [
        f"{f1_score(predictions['label'], predictions['predicted'], labels=CLASSES, average='macro'):.3f}",
        f"{f1_score(predictions['label'], always_normal, labels=CLASSES, average='macro', zero_division=0):.3f}",
    ]
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


# ---------------------------------------------------------------- heartbeat report RUN: check first, write after

def _run_folder(folder, predictions, context, epoch_log):
    """A run folder as training leaves it, as far as the report is concerned."""
    folder.mkdir()
    write_report(folder, predictions, CLASSES, majority_class="normal", context=context, epoch_log=epoch_log)
    (folder / "config.json").write_text(json.dumps({"classes": CLASSES, "majority_class": "normal"}))
    (folder / "predictions.csv").write_text(predictions.to_csv(index=False))
    (folder / "epochs.csv").write_text(epoch_log.to_csv(index=False))
    return folder


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
    return _run_folder(tmp_path_factory.mktemp("template") / "run", _sample_predictions(), _sample_context(),
                       _sample_epoch_log())


@pytest.fixture
def run_folder(tmp_path, run_template):
    # Resolved: the messages name the files by their real paths.
    return Path(shutil.copytree(run_template, tmp_path.resolve() / "run"))


def _report(capsys, *args):
    code = cli.main(["report", *map(str, args)])
    out, err = capsys.readouterr()
    return CliResult(code, out, err, 0)


def test_report_command_rewrites_from_the_saved_files(run_folder, predictions, capsys):
    saved = json.loads((run_folder / "metrics.json").read_text())
    _keep_only_the_context(run_folder)
    for name in ("report.md", "training_curves.png"):
        (run_folder / name).unlink()

    result = _report(capsys, run_folder)

    assert result.returncode == 0, result.stderr
    assert json.loads((run_folder / "metrics.json").read_text()) == saved
    report = (run_folder / "report.md").read_text()
    recomputed = pd.read_csv(run_folder / "predictions.csv")
    assert _table_row(report, "balanced accuracy")[0] == (
        f"{balanced_accuracy_score(recomputed['label'], recomputed['predicted']):.3f}")
    assert _table_row(report, "macro-F1")[0] == (
        f"{f1_score(recomputed['label'], recomputed['predicted'], labels=CLASSES, average='macro'):.3f}")
    _assert_png(run_folder / "training_curves.png")  # drawn again from epochs.csv
    assert f"{saved['error_rate']:.3f}" in result.stdout and str(run_folder) in result.stdout


def _replace_csv(name, change):
    def damage(folder):
        frame = pd.read_csv(folder / name)
        (folder / name).write_text(change(frame).to_csv(index=False))
    return damage


def _write(name, data: bytes):
    def damage(folder):
        (folder / name).unlink(missing_ok=True)
        (folder / name).write_bytes(data)
    return damage


def _edit_json(name, change):
    def damage(folder):
        value = json.loads((folder / name).read_text())
        change(value)
        (folder / name).write_text(json.dumps(value))
    return damage


def _link_out(name):
    """name becomes a link to a good copy of itself outside the run folder."""
    def damage(folder):
        outside = folder.parent / f"outside-{name}"
        (folder / name).rename(outside)
        (folder / name).symlink_to(outside)
    return damage


def _special(name, make):
    def damage(folder):
        (folder / name).unlink()
        make(folder / name)
    return damage


def _huge(name):
    def damage(folder):
        with open(folder / name, "r+b") as handle:  # sparse: no disk space, but the size a reader sees
            handle.truncate(MAX_RUN_FILE_BYTES + 1)
    return damage


BAD_RUN_FOLDERS = {
    # case: (damage, file named in the message, words of the message)
    "no predictions": (lambda folder: (folder / "predictions.csv").unlink(), "predictions.csv", "not found"),
    "predictions lack a column": (_replace_csv("predictions.csv", lambda f: f.drop(columns="predicted")),
                                  "predictions.csv", "predicted"),
    "unknown label": (_replace_csv("predictions.csv", lambda f: f.assign(label=["artifact"] + list(f["label"][1:]))),
                      "predictions.csv", "artifact"),
    "empty label": (_replace_csv("predictions.csv", lambda f: f.assign(predicted=[None] + list(f["predicted"][1:]))),
                    "predictions.csv", "predicted"),
    "a recording twice": (_replace_csv("predictions.csv", lambda f: pd.concat([f, f.iloc[:1]])),
                          "predictions.csv", "several rows"),
    "no recordings": (_replace_csv("predictions.csv", lambda f: f.iloc[:0]), "predictions.csv", "no recordings"),
    "predictions empty": (_write("predictions.csv", b""), "predictions.csv", "csv"),
    "predictions not UTF-8": (_write("predictions.csv", "recording,label,predicted\nr\xe9c,normal,normal\n".encode("latin-1")),
                              "predictions.csv", "UTF-8"),
    "predictions binary": (_write("predictions.csv", bytes(range(256)) * 8), "predictions.csv", ""),
    "predictions a link out of the folder": (_link_out("predictions.csv"), "predictions.csv", "out of the run folder"),
    "predictions a fifo": (_special("predictions.csv", os.mkfifo), "predictions.csv", "not a regular file"),
    "predictions a folder": (_special("predictions.csv", Path.mkdir), "predictions.csv", "not a regular file"),
    "predictions huge": (_huge("predictions.csv"), "predictions.csv", "bytes"),
    "no config": (lambda folder: (folder / "config.json").unlink(), "config.json", "not found"),
    "config not JSON": (_write("config.json", b"{classes: [normal]"), "config.json", "not valid JSON"),
    "config a list": (_write("config.json", b"[1, 2]"), "config.json", "JSON object"),
    "config without classes": (_edit_json("config.json", lambda c: c.pop("classes")), "config.json", "classes"),
    "majority class unknown": (_edit_json("config.json", lambda c: c.update(majority_class="artifact")),
                               "config.json", "artifact"),
    "config a link loop": (_special("config.json", lambda path: path.symlink_to(path.name)), "config.json", ""),
    "config a link out of the folder": (_link_out("config.json"), "config.json", "out of the run folder"),
    "no metrics": (lambda folder: (folder / "metrics.json").unlink(), "metrics.json", "not found"),
    "metrics without context": (_edit_json("metrics.json", lambda m: m.pop("context")), "metrics.json", "context"),
    "context explanations not a list": (_edit_json("metrics.json", lambda m: m["context"].update(
        explanations={"pictures": "a.png", "note": None})), "metrics.json", "explanations"),
    "context explanation without a file": (_edit_json("metrics.json", lambda m: m["context"].update(
        explanations={"pictures": [{"recording": "a.wav"}], "note": None})), "metrics.json", "explanations"),
    "context without weights": (_edit_json("metrics.json", lambda m: m["context"].pop("weights")),
                                "metrics.json", "weights"),
    "context settings not a table": (_edit_json("metrics.json", lambda m: m["context"].update(settings="fast")),
                                     "metrics.json", "settings"),
    "metrics nested too deeply": (_write("metrics.json", b"[" * 100_000), "metrics.json", ""),
    "metrics with a huge number": (_write("metrics.json", b'{"context": ' + b"9" * 5000 + b"}"), "metrics.json", ""),
    "epochs lack a column": (_replace_csv("epochs.csv", lambda f: f.drop(columns="error_rate")), "epochs.csv", "error_rate"),
    "epochs not numbers": (_replace_csv("epochs.csv", lambda f: f.assign(train_loss="low")), "epochs.csv", "train_loss"),
    "an output is a folder": (_special("report.md", Path.mkdir), "report.md", "folder"),
}


@pytest.mark.parametrize("case", list(BAD_RUN_FOLDERS))
def test_report_on_a_bad_run_folder_is_one_line_and_changes_nothing(case, run_folder, capsys):
    damage, name, words = BAD_RUN_FOLDERS[case]
    damage(run_folder)
    before = snapshot(run_folder.parent)  # the outside files too: the run folder's links point there

    result = _report(capsys, run_folder)

    line = assert_one_line_error(result, [str(run_folder / name), words], code=2)
    assert line.startswith("heartbeat: error: ")
    assert snapshot(run_folder.parent) == before


def _keep_only_the_context(run_folder):
    """metrics.json reduced to what `heartbeat report` needs from it: a rewrite would change it."""
    metrics = json.loads((run_folder / "metrics.json").read_text())
    (run_folder / "metrics.json").write_text(json.dumps({"context": metrics["context"]}))
    (run_folder / "confusion_matrix.json").unlink()


def test_report_on_an_incomplete_folder_in_a_real_process(run_folder):
    _keep_only_the_context(run_folder)
    _replace_csv("epochs.csv", lambda frame: frame.drop(columns="valid_loss"))(run_folder)
    before = snapshot(run_folder)

    result = run_cli("report", run_folder)

    assert_one_line_error(result, [str(run_folder / "epochs.csv"), "valid_loss"], code=2)
    assert snapshot(run_folder) == before
    assert not [path.name for path in run_folder.iterdir() if path.name.startswith(".")]


def test_a_failure_while_writing_replaces_none_of_the_report(run_folder, capsys, monkeypatch):
    _keep_only_the_context(run_folder)
    before = snapshot(run_folder)
    real_write_bytes = Path.write_bytes
    writes = []

    def fail_on_the_third(path, data):
        writes.append(path.name)
        if len(writes) == 3:
            raise OSError(28, "No space left on device")
        return real_write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", fail_on_the_third)
    result = _report(capsys, run_folder)

    assert_one_line_error(result, [str(run_folder), "No space left on device"], code=2)
    assert len(writes) == 3
    assert snapshot(run_folder) == before  # the two files written before the failure were not renamed into place


def test_report_follows_latest_and_never_writes_through_a_link(run_folder, tmp_path, capsys, monkeypatch):
    from heartbeat import config

    outside = tmp_path / "outside.md"
    outside.write_text("not the run's")
    (run_folder / "report.md").unlink()
    (run_folder / "report.md").symlink_to(outside)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").symlink_to(run_folder)
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "runs")

    result = _report(capsys)  # no RUN: data/runs/latest

    assert result.returncode == 0, result.stderr
    assert outside.read_text() == "not the run's"
    assert not (run_folder / "report.md").is_symlink() and (run_folder / "report.md").read_text().startswith("# ")
    assert (tmp_path / "runs" / "latest").is_symlink()


def test_report_on_a_missing_folder(tmp_path, capsys):
    result = _report(capsys, tmp_path / "no-such-run")
    assert_one_line_error(result, str(tmp_path / "no-such-run"), code=2)
    assert list(tmp_path.iterdir()) == []


def test_report_removes_what_a_killed_report_left_and_nothing_else(run_folder, capsys):
    import fcntl

    dead = run_folder / ".report.k1ll3d.tmp.md"  # its writer is gone: nobody holds its lock
    dead.write_text("half a report")
    alive = run_folder / ".metrics.w0rk1n.tmp.json"  # a report still being written holds its lock
    alive.write_text("{")
    other = run_folder / ".notes.k1ll3d.tmp.md"  # not a temporary of the report's files
    other.write_text("someone else's")
    with open(alive) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _report(capsys, run_folder)

    assert result.returncode == 0, result.stderr
    assert not dead.exists() and alive.read_text() == "{" and other.exists()


# ---------------------------------------------------------------- lr_find, results and top-losses pictures

def test_lr_find_is_drawn_from_its_csv_and_redrawn_by_the_report_command(run_folder, capsys):
    lrs = np.logspace(-7, 1, 40)
    losses = 1.5 - 0.5 * np.tanh(np.log10(lrs) + 3) + np.where(lrs > 1e-1, 5.0, 0.0)  # a valley, then divergence
    pd.DataFrame({"lr": lrs, "loss": losses}).to_csv(run_folder / "lr_find.csv", index=False)

    figure = lr_find_figure(lrs, losses, 1e-3)
    curve, suggestion = figure.axes[0].lines
    assert figure.axes[0].get_xscale() == "log"
    np.testing.assert_array_equal(curve.get_xdata(), lrs[:-5])  # as fastai: the last 5 (diverged) points left out
    assert list(suggestion.get_xdata()) == [1e-3, 1e-3] and suggestion.get_linestyle() == "--"

    result = _report(capsys, run_folder)
    assert result.returncode == 0, result.stderr
    _assert_png(run_folder / "lr_find.png")
    assert "](lr_find.png)" in (run_folder / "report.md").read_text()
    plot_lr_find(lrs, losses, 1e-3, run_folder / "again.png")
    _assert_png(run_folder / "again.png")


def test_a_bad_lr_find_csv_is_one_line_and_changes_nothing(run_folder, capsys):
    (run_folder / "lr_find.csv").write_text("lr,loss\n0.1,low\n")
    before = snapshot(run_folder)
    result = _report(capsys, run_folder)
    assert_one_line_error(result, str(run_folder / "lr_find.csv"), code=2)
    assert "'loss'" in result.stderr and snapshot(run_folder) == before


def _probabilities(rows: dict) -> pd.DataFrame:
    """predictions from {recording: (label, {class: probability})}; predicted = the most probable class."""
    frame = pd.DataFrame([{"recording": name, "patient_id": name, "label": label,
                           "predicted": max(probs, key=probs.get), **{f"prob_{c}": probs.get(c, 0.0) for c in CLASSES}}
                          for name, (label, probs) in rows.items()])
    return frame


def test_top_losses_are_the_most_confidently_wrong_first():
    table = _probabilities({
        "a.wav": ("normal", {"normal": 0.4, "murmur": 0.6}),  # wrong, 0.6 on murmur
        "b.wav": ("murmur", {"normal": 0.9, "murmur": 0.1}),  # wrong, 0.9 on normal: first
        "c.wav": ("normal", {"normal": 0.51, "murmur": 0.49}),  # right, though 0.49 on a wrong class
        "d.wav": ("normal", {"normal": 0.3, "extrastole": 0.7}),  # wrong, 0.7
        "e.wav": ("extrastole", {"extrastole": 0.2, "murmur": 0.7, "normal": 0.1}),  # wrong, 0.7, higher loss: before d
        "f.wav": ("murmur", {"murmur": 0.3, "normal": 0.7}),  # the same as d: after it, by name
    })
    probabilities = probability_table(table, CLASSES)
    assert [table["recording"][row] for row in top_losses(table, probabilities, CLASSES)] == [
        "b.wav", "e.wav", "d.wav", "f.wav", "a.wav"]
    assert top_losses(table, probabilities, CLASSES, limit=2) == [1, 4]
    right = table.assign(label=table["predicted"])
    assert top_losses(right, probabilities, CLASSES) == []


def test_explained_recordings_are_each_classs_surest_right_and_the_most_confidently_wrong():
    from heartbeat.report.explanations import MAX_RECORDING_WINDOWS, choose_recordings

    table = _probabilities({
        "a.wav": ("normal", {"normal": 0.6, "murmur": 0.4}),
        "b.wav": ("normal", {"normal": 0.9, "murmur": 0.1}),  # the surest right normal
        "c.wav": ("normal", {"normal": 0.99, "murmur": 0.01}),  # surer, but too long to explain
        "d.wav": ("murmur", {"murmur": 0.7, "normal": 0.3}),  # the only right murmur
        "e.wav": ("murmur", {"normal": 0.8, "murmur": 0.2}),  # wrong, 0.8
        "f.wav": ("extrastole", {"normal": 0.6, "extrastole": 0.4}),  # wrong, 0.6; no extrastole is right
    }).assign(windows=[1, 3, MAX_RECORDING_WINDOWS + 1, 2, MAX_RECORDING_WINDOWS, 1])
    chosen = choose_recordings(table, probability_table(table, CLASSES), CLASSES)
    assert [(table["recording"][row], why) for row, why in chosen] == [
        ("d.wav", "the surest right murmur"), ("b.wav", "the surest right normal"), ("e.wav", "the most confidently wrong")]
    all_right = table.assign(label=table["predicted"])
    assert [why for _, why in choose_recordings(all_right, probability_table(all_right, CLASSES), CLASSES)] == [
        "the surest right murmur", "the surest right normal"]  # c.wav is too long; nothing is wrong


def test_the_report_links_the_explanations_that_are_there_and_says_why_the_others_are_not(tmp_path, predictions,
                                                                                          context, capsys):
    pictures = [{"file": f"explanations/{name}", "recording": name, "label": "normal", "predicted": "normal",
                 "why": "the surest right normal"} for name in ("1-a.png", "2-gone.png", "../outside.png")]
    (tmp_path / "explanations").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "explanations" / "1-a.png")
    (tmp_path / "outside.png").write_bytes((tmp_path / "explanations" / "1-a.png").read_bytes())
    context["explanations"] = {"pictures": pictures, "note": "Not explained: z.wav (no images)."}
    write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=context)

    section = (tmp_path / "report.md").read_text().split("## What the model heard")[1].split("\n## ")[0]
    assert "](explanations/1-a.png)" in section and "gone" not in section and "outside" not in section
    assert "2 of the pictures training drew are no longer in the run folder." in section
    assert "Not explained: z.wav (no images)." in section and "log-odds" in section
    (tmp_path / "explanations" / "1-a.png").unlink()  # none left: the section still says why
    write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=context)
    section = (tmp_path / "report.md").read_text().split("## What the model heard")[1].split("\n## ")[0]
    assert "![" not in section and "3 of the pictures" in section and "log-odds" not in section


def test_results_grid_shows_every_class_present():
    table = _predictions(["normal"] * 12 + ["murmur"] * 3 + ["extrastole"], ["normal"] * 16)
    chosen = results_choice(table, CLASSES)
    assert len(chosen) == 9 and len(set(chosen)) == 9
    assert set(table["label"].iloc[chosen]) == set(CLASSES)
    assert results_choice(table.iloc[:2], CLASSES) == [0, 1]  # fewer recordings than tiles: all of them


def _spectrograms_for(folder: Path, predictions: pd.DataFrame) -> Path:
    """A stage-1-like folder: two windows per validation recording, each a distinct grey image."""
    from heartbeat.data.manifest import MANIFEST_COLUMNS

    (folder / "images").mkdir(parents=True)
    rows = []
    for index, recording in enumerate(predictions["recording"]):
        for window in (1, 0):  # listed out of order: the first window is the one shown
            image = f"images/{Path(recording).stem}_w{window}.png"
            Image.fromarray(np.full((64, 64), 10 * index + window, dtype=np.uint8)).save(folder / image)
            rows.append({**dict.fromkeys(MANIFEST_COLUMNS, ""), "image": image, "recording": recording,
                         "window": str(window)})
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(folder / "manifest.csv", index=False)
    return folder


def test_results_and_top_losses_are_drawn_linked_and_redrawn(run_folder, predictions, tmp_path, capsys):
    spectrograms = _spectrograms_for(tmp_path / "spectrograms", predictions)
    config = json.loads((run_folder / "config.json").read_text())
    (run_folder / "config.json").write_text(json.dumps({**config, "spectrograms": str(spectrograms)}))
    outside = snapshot(spectrograms)

    assert _report(capsys, run_folder).returncode == 0
    report = (run_folder / "report.md").read_text()
    for name in ("results.png", "top_losses.png"):
        _assert_png(run_folder / name)
        assert f"]({name})" in report
    assert snapshot(spectrograms) == outside  # read, never written

    shutil.rmtree(spectrograms)  # the pictures stay as drawn; the report says they were not redrawn
    for name in ("results.png", "top_losses.png"):
        (run_folder / name).unlink()
    result = _report(capsys, run_folder)
    assert result.returncode == 0 and result.stderr == ""
    report = (run_folder / "report.md").read_text()
    assert f"The spectrograms folder {spectrograms} is gone" in report and "](results.png)" not in report


def test_only_the_spectrograms_own_images_are_read(tmp_path):
    from heartbeat.report.figures import _first_windows, read_window_image

    folder = tmp_path / "spectrograms"
    (folder / "images").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(secret)
    (folder / "images" / "link.png").symlink_to(secret)
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(folder / "images" / "own.png")
    rows = [{"image": image, "recording": recording, "window": "0"}
            for image, recording in (("../secret.png", "a.wav"), (str(secret), "b.wav"), ("images/sub/x.png", "c.wav"),
                                     ("images/link.png", "d.wav"), ("images/own.png", "e.wav"))]
    assert _first_windows(rows) == {"d.wav": "images/link.png", "e.wav": "images/own.png"}
    assert read_window_image(folder, "images/link.png") is None  # a link is never followed out
    assert read_window_image(folder, "images/own.png").tolist() == np.full((8, 8), 7).tolist()


def test_no_module_of_the_package_sets_a_matplotlib_backend_or_uses_pyplot():
    import re

    package = Path(cli.__file__).parent
    offenders = [path.name for path in sorted(package.rglob("*.py"))
                 if re.search(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot", path.read_text())]
    assert offenders == []


# ---------------------------------------------------------------- names that would run: terminal, spreadsheet

def test_report_md_escapes_control_characters_in_its_title_and_tables(tmp_path, predictions, context):
    context = {**context, "title": "run \x1b[2J\nfake heading", "settings": {"spectrograms": "data\x1b]0;t\x07"},
               "notes": ["a note\rover"]}

    write_report(tmp_path, predictions, CLASSES, majority_class="normal", context=context)

    report = (tmp_path / "report.md").read_text()
    assert not {"\x1b", "\x07", "\r"} & set(report)
    assert report.splitlines()[0] == "# run \\x1b[2J\\nfake heading"
    assert _table_row(report, "spectrograms") == ["data\\x1b]0;t\\x07"]
    assert "- a note\\rover" in report.splitlines()
    assert json.loads((tmp_path / "metrics.json").read_text())["context"]["title"] == context["title"]  # exact


def test_the_report_command_reads_spreadsheet_safe_names_back(tmp_path, context, capsys):
    from heartbeat.text import spreadsheet_frame

    classes = ["+plus", "-minus", "@at"]  # usable class names that a spreadsheet would open as formulas
    labels = ["+plus"] * 3 + ["-minus"] * 3 + ["@at"] * 2
    frame = pd.DataFrame({"recording": [f"=rec{i}.wav" for i in range(len(labels))],
                          "patient_id": [f"-{i}" for i in range(len(labels))],
                          "label": labels, "predicted": labels[1:] + labels[:1]})
    for name in classes:
        frame[f"prob_{name}"] = np.where(frame["predicted"] == name, 0.8, 0.1)
    folder = tmp_path / "run"
    folder.mkdir()
    write_report(folder, frame, classes, majority_class="+plus", context=context)
    saved = json.loads((folder / "metrics.json").read_text())
    (folder / "config.json").write_text(json.dumps({"classes": classes, "majority_class": "+plus"}))
    (folder / "predictions.csv").write_text(spreadsheet_frame(frame).to_csv(index=False))  # as train writes it
    written = pd.read_csv(folder / "predictions.csv", dtype=str, keep_default_na=False)
    assert written["label"].str.startswith("'").all() and written["recording"].str.startswith("'=").all()

    result = _report(capsys, folder)

    assert result.returncode == 0, result.stderr
    assert json.loads((folder / "metrics.json").read_text()) == saved


def test_spreadsheet_cells_round_trip_and_numbers_are_left_alone():
    from heartbeat.text import from_spreadsheet_cell, spreadsheet_cell, spreadsheet_frame

    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'x", "''", "plain", "", "a=b", "1-2"):
        cell = spreadsheet_cell(text)
        assert from_spreadsheet_cell(cell) == text
        assert cell.startswith("'") == (text[:1] in ("=", "+", "-", "@", "\t", "\r", "'"))
    frame = pd.DataFrame({"name": ["-x", "y"], "delta": [-0.5, 0.25], "count": [-3, 4]})
    safe = spreadsheet_frame(frame)
    assert safe["name"].tolist() == ["'-x", "y"]
    assert safe["delta"].tolist() == [-0.5, 0.25] and safe["count"].tolist() == [-3, 4]
    assert safe.to_csv(index=False).splitlines()[1] == "'-x,-0.5,-3"


@pytest.mark.parametrize("n_tiles", [0, 1, 2, 7])
def test_a_picture_grid_title_lies_within_the_figure(n_tiles):
    from heartbeat.report.figures import prediction_grid_figure

    title = "Most confidently wrong recordings"
    tiles = [(np.zeros((32, 32), np.uint8), f"true: murmur\npredicted: normal (0.9{i})\nloss 2.30", False, 2.3)
             for i in range(n_tiles)]
    figure = prediction_grid_figure(tiles, title, empty_text="no wrong predictions")
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    heading, = [text for text in figure.texts if text.get_text() == title]
    box, frame = heading.get_window_extent(renderer), figure.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (box, frame)
