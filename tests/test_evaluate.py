"""heartbeat evaluate: predict's exact answers, what is and is not scored, the set's own baseline, bad input, OUT.

Uses the session's tiny Dataset B model (conftest.trained_run: 32 px, trained from scratch) on copies of its
own recordings in other layouts, and synth.write_layout's folders. The CLI runs in-process through
heartbeat.cli.main, and once as a real process (tests/badinput.run_cli) with torch and fastai made unimportable.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from badinput import REPO, run_cli, snapshot
from conftest import REAL_DATA, needs_real_data
from heartbeat import cli
from heartbeat.data import layouts
from heartbeat.report.evaluate import OUTPUTS, EvaluationError, evaluate
from heartbeat.report.metrics import classification_metrics
from heartbeat.data.synth import write_layout


def cli_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["evaluate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def model_classes(run: Path) -> list[str]:
    return json.loads((run / "model.json").read_text())["classes"]


def copy_as_folders(recordings: list[layouts.Recording], root: Path) -> Path:
    """DIR/<label>/<file name>: a folders-layout copy of some recordings."""
    for recording in recordings:
        (root / recording.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(recording.path, root / recording.label / recording.path.name)
    return root


def predict_json(capsys, run: Path, paths: list[Path]) -> list[dict]:
    """`heartbeat predict --json` on paths, one dict per file."""
    code = cli.main(["predict", "--json", "--model", str(run), *map(str, paths)])
    out = capsys.readouterr().out
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def own_recordings(trained_run) -> list[layouts.Recording]:
    """The model's Dataset B recordings: every murmur, two normal and two extrastole (the set's majority is
    murmur, while the training data's is normal)."""
    by_label = collections.defaultdict(list)
    for recording in layouts.read_recordings(trained_run["data"]).recordings:
        by_label[recording.label].append(recording)
    chosen = by_label["murmur"] + by_label["normal"][:2] + by_label["extrastole"][:2]
    assert len(by_label["murmur"]) > 2
    return chosen


@pytest.fixture(scope="module")
def folders_evaluation(trained_run, own_recordings, tmp_path_factory):
    """evaluate() on a folders-layout copy of own_recordings: (result, data folder, OUT)."""
    root = tmp_path_factory.mktemp("folders-evaluation")
    data = copy_as_folders(own_recordings, root / "data")
    result = evaluate(trained_run["run"], data, root / "out", progress=False)
    return result, data, root / "out"


def small_folders(trained_run, root: Path) -> Path:
    """One recording of each class of the model's data in the folders layout."""
    recordings = layouts.read_recordings(trained_run["data"]).recordings
    first = {}
    for recording in recordings:
        first.setdefault(recording.label, recording)
    return copy_as_folders(list(first.values()), root)


# ---------------------------------------------------------------- the predict path, exactly

def test_a_folders_copy_gives_exactly_the_probabilities_predict_gives(folders_evaluation, own_recordings,
                                                                      trained_run, capsys):
    result, data, out = folders_evaluation
    rows = read_rows(out)
    classes = model_classes(trained_run["run"])
    assert result.format == "folders" and result.failures == [] and result.not_scored == {}
    assert [row["recording"] for row in rows] == sorted(f"{r.label}/{r.path.name}" for r in own_recordings)
    originals = {f"{r.label}/{r.path.name}": r.path for r in own_recordings}

    predicted = predict_json(capsys, trained_run["run"], [originals[row["recording"]] for row in rows])

    assert any(int(row["windows"]) > 1 for row in rows)  # multi-window recordings are covered
    for row, expected in zip(rows, predicted):
        assert row["label"] == row["recording"].split("/")[0]
        assert row["group"] == row["recording"]  # the folders layout names no patient
        assert row["predicted"] == expected["label"] and int(row["windows"]) == expected["windows"]
        assert [float(row[f"prob_{name}"]) for name in classes] == [expected["probabilities"][n] for n in classes]


@needs_real_data
def test_real_dataset_b_recordings_in_folders_give_exactly_predicts_probabilities(trained_run, tmp_path, capsys):
    by_label = collections.defaultdict(list)
    for recording in layouts.read_recordings(REAL_DATA, "pascal-b").recordings:
        if recording.label is not None and len(by_label[recording.label]) < 2:
            by_label[recording.label].append(recording)
    chosen = [recording for group in by_label.values() for recording in group]
    data = copy_as_folders(chosen, tmp_path / "data")

    code, _, err = cli_main(capsys, "--model", trained_run["run"], "--data", data, "--out", tmp_path / "out", "--quiet")

    assert code == 0, err
    rows = read_rows(tmp_path / "out")
    originals = {f"{r.label}/{r.path.name}": r.path for r in chosen}
    assert sorted(row["recording"] for row in rows) == sorted(originals)
    predicted = predict_json(capsys, trained_run["run"], [originals[row["recording"]] for row in rows])
    classes = model_classes(trained_run["run"])
    for row, expected in zip(rows, predicted):
        assert (row["predicted"], int(row["windows"])) == (expected["label"], expected["windows"])
        assert [float(row[f"prob_{name}"]) for name in classes] == [expected["probabilities"][n] for n in classes]


# ---------------------------------------------------------------- figures

def test_metrics_json_is_what_predictions_csv_gives_beside_the_sets_own_majority(folders_evaluation, trained_run):
    _, _, out = folders_evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    rows = read_rows(out)
    classes = model_classes(trained_run["run"])
    labels = [row["label"] for row in rows]
    training_majority = json.loads((trained_run["run"] / "config.json").read_text())["majority_class"]

    majority = collections.Counter(labels).most_common(1)[0][0]
    assert majority == "murmur" != training_majority  # the evaluated set's majority, not the training data's
    recomputed = classification_metrics(labels, [row["predicted"] for row in rows], classes,
                                        majority_class=majority, normal_class="normal")
    assert {key: value for key, value in metrics.items() if key != "context"} == recomputed
    assert metrics["context"]["n_scored"] == len(rows) and metrics["context"]["format"] == "folders"
    assert metrics["context"]["groups_are_patients"] is False
    confusion = json.loads((out / "confusion_matrix.json").read_text())
    assert (confusion["classes"], confusion["matrix"]) == (classes, recomputed["confusion_matrix"]["matrix"])
    report = (out / "report.md").read_text()
    assert "majority baseline (always murmur)" in report and f"| accuracy | {recomputed['accuracy']:.3f} |" in report


def test_predictions_of_a_class_the_set_lacks_are_errors_in_the_confusion_matrix(folders_evaluation, own_recordings,
                                                                                 trained_run, tmp_path):
    _, _, out = folders_evaluation
    classes = model_classes(trained_run["run"])
    predicted = {row["recording"]: row["predicted"] for row in read_rows(out)}
    lacking = collections.Counter(predicted.values()).most_common(1)[0][0]  # a class the model does predict
    other = next(name for name in classes if name != lacking)
    relabelled = []
    for recording in own_recordings:  # each recording keeps its label unless it is the lacking class
        label = other if recording.label == lacking else recording.label
        relabelled.append(layouts.Recording(recording.path, label, recording.source, recording.source))
    data = copy_as_folders(relabelled, tmp_path / "data")

    result = evaluate(trained_run["run"], data, tmp_path / "out", progress=False)

    metrics = result.metrics
    matrix = metrics["confusion_matrix"]["matrix"]
    column = classes.index(lacking)
    n_lacking = sum(1 for name in predicted.values() if name == lacking)
    assert n_lacking > 0 and lacking not in {recording.label for recording in relabelled}
    assert matrix[column] == [0] * len(classes)  # no recording of that class...
    assert sum(row[column] for row in matrix) == n_lacking  # ...but its predictions show, as errors
    assert metrics["per_class"][lacking]["support"] == 0 and metrics["per_class"][lacking]["recall"] is None
    correct = sum(1 for row in read_rows(tmp_path / "out") if row["label"] == row["predicted"])
    assert metrics["accuracy"] == correct / len(relabelled) <= 1 - n_lacking / len(relabelled)
    assert f"no recording of {lacking}" in (tmp_path / "out" / "report.md").read_text()


def test_without_a_normal_class_the_heart_problem_figures_are_left_out_and_the_report_says_why(
        trained_run, own_recordings, tmp_path):
    run = tmp_path / "run"  # the same network, its "normal" class renamed
    run.mkdir()
    info = json.loads((trained_run["run"] / "model.json").read_text())
    info["classes"] = ["quiet" if name == "normal" else name for name in info["classes"]]
    (run / "model.json").write_text(json.dumps(info))
    for name in ("model.onnx", "model.onnx.data"):
        (run / name).symlink_to(trained_run["run"] / name)
    data = copy_as_folders([r for r in own_recordings if r.label != "normal"][:3], tmp_path / "data")

    result = evaluate(run, data, tmp_path / "out", progress=False)

    assert result.metrics["heart_problem"] is None and result.metrics["majority_baseline"]["heart_problem"] is None
    report = (tmp_path / "out" / "report.md").read_text()
    assert "heart-problem sensitivity" not in report and "left out: the model has no \"normal\" class" in report


# ---------------------------------------------------------------- not scored, label map

def test_labels_the_model_does_not_know_are_counted_not_scored_or_mapped(trained_run, tmp_path, capsys):
    data = write_layout(tmp_path / "a", "pascal-a", seed=1, n_patients=4, recordings_per_patient=(1, 2),
                        seconds=(2.0, 3.0))
    found = layouts.read_recordings(data).recordings
    counts = collections.Counter(recording.label for recording in found)
    assert counts["artifact"] and counts["extrahls"] and counts[None]

    code, out, err = cli_main(capsys, "--model", trained_run["run"], "--data", data, "--out", tmp_path / "plain",
                              "--quiet")

    assert code == 0, err
    assert out.startswith("data: pascal-a (found set_a.csv)\n")
    context = json.loads((tmp_path / "plain" / "metrics.json").read_text())["context"]
    assert context["not_scored"] == {"artifact": counts["artifact"], "extrahls": counts["extrahls"]}
    assert context["n_unlabelled"] == counts[None]
    assert collections.Counter(row["label"] for row in read_rows(tmp_path / "plain")) == {
        "murmur": counts["murmur"], "normal": counts["normal"]}
    report = (tmp_path / "plain" / "report.md").read_text()
    assert f"| not scored: artifact | {counts['artifact']} |" in report and "--label-map old=new" in report

    code, _, err = cli_main(capsys, "--model", trained_run["run"], "--data", data, "--out", tmp_path / "mapped",
                            "--label-map", "extrahls=normal,artifact=drop", "--quiet")

    assert code == 0, err
    context = json.loads((tmp_path / "mapped" / "metrics.json").read_text())["context"]
    assert context["not_scored"] == {} and context["label_map"] == {"extrahls": "normal", "artifact": "drop"}
    rows = read_rows(tmp_path / "mapped")
    assert collections.Counter(row["label"] for row in rows) == {
        "murmur": counts["murmur"], "normal": counts["normal"] + counts["extrahls"]}
    assert not any("artifact" in row["recording"] for row in rows)


# ---------------------------------------------------------------- bad input

def test_a_bad_file_gets_one_line_and_the_others_are_evaluated(trained_run, tmp_path, capsys):
    data = small_folders(trained_run, tmp_path / "data")
    broken = data / "normal" / "broken.wav"
    broken.write_text("this is not audio\n")

    code, out, err = cli_main(capsys, "--model", trained_run["run"], "--data", data, "--out", tmp_path / "out",
                              "--quiet")

    assert code == cli.EXIT_FAILED
    problems = [line for line in err.splitlines() if line.startswith("heartbeat:")]
    assert len(problems) == 1 and problems[0].startswith(f"heartbeat: {broken}: not a readable audio file")
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 3 and "normal/broken.wav" not in {row["recording"] for row in rows}
    context = json.loads((tmp_path / "out" / "metrics.json").read_text())["context"]
    assert [item["recording"] for item in context["failed"]] == ["normal/broken.wav"]
    assert "| failed (could not be used) | 1 |" in (tmp_path / "out" / "report.md").read_text()
    assert "1 failed" in out


def test_a_log_gets_the_summary_line_without_progress_bar_frames(trained_run, tmp_path, capsys):
    data = small_folders(trained_run, tmp_path / "data")

    code, out, err = cli_main(capsys, "--model", trained_run["run"], "--data", data, "--out", tmp_path / "out")

    assert code == 0, err
    assert "\r" not in err and "\r" not in out  # capsys's stderr is no terminal, as a log file or a pipe is
    assert out.strip()


def test_when_every_file_fails_nothing_is_written(trained_run, tmp_path, capsys):
    (tmp_path / "data" / "murmur").mkdir(parents=True)
    (tmp_path / "data" / "murmur" / "a.wav").write_text("not audio")

    code, _, err = cli_main(capsys, "--model", trained_run["run"], "--data", tmp_path / "data", "--out",
                            tmp_path / "out", "--quiet")

    assert code == cli.EXIT_FAILED
    assert f"heartbeat: {tmp_path / 'data' / 'murmur' / 'a.wav'}: not a readable audio file" in err
    assert "was not written" in err and not (tmp_path / "out").exists()


def _bad_model(run, tmp_path):
    (tmp_path / "model").mkdir()
    return ["--model", tmp_path / "model"], "model.json is missing"


def _malformed_label_map(run, tmp_path):
    return ["--label-map", "normal"], "--label-map"


def _label_map_naming_no_label(run, tmp_path):
    return ["--label-map", "artifact=drop"], "no recording labelled artifact"


def _empty_data(run, tmp_path):
    (tmp_path / "empty").mkdir()
    return ["--data", tmp_path / "empty"], "no known layout"


def _no_known_label(run, tmp_path):
    (tmp_path / "unknown" / "artifact").mkdir(parents=True)
    shutil.copy(next((tmp_path / "data").rglob("*.wav")), tmp_path / "unknown" / "artifact" / "x.wav")
    return ["--data", tmp_path / "unknown"], "no recording has a label the model knows"


def _out_inside_the_data(run, tmp_path):
    return ["--out", tmp_path / "data" / "evaluation"], "inside the data folder"


def _out_inside_the_model(run, tmp_path):
    return ["--out", run / "evaluation"], "inside the model folder"


def _out_is_a_file(run, tmp_path):
    (tmp_path / "file").write_text("mine")
    return ["--out", tmp_path / "file"], "not a folder"


def _output_name_is_a_link(run, tmp_path):
    (tmp_path / "out" / "report.md").unlink()
    (tmp_path / "out" / "report.md").symlink_to(tmp_path / "elsewhere.md")
    return [], "report.md: not a regular file"


@pytest.mark.parametrize("make_case", [_bad_model, _malformed_label_map, _label_map_naming_no_label, _empty_data,
                                       _no_known_label, _out_inside_the_data, _out_inside_the_model, _out_is_a_file,
                                       _output_name_is_a_link])
def test_an_evaluation_that_cannot_run_is_one_line_and_leaves_out_as_it_was(trained_run, folders_evaluation,
                                                                             tmp_path, capsys, make_case):
    data = small_folders(trained_run, tmp_path / "data")
    shutil.copytree(folders_evaluation[2], tmp_path / "out")  # an earlier evaluation
    (tmp_path / "out" / "notes.txt").write_text("the user's own file")
    flags, problem = make_case(trained_run["run"], tmp_path)
    arguments = {"--model": trained_run["run"], "--data": data, "--out": tmp_path / "out", "--label-map": None}
    arguments.update(dict(zip(flags[::2], flags[1::2])))
    # The run folder by its names only: hashing its 170 MB of weights for every case would be slow.
    before, run_before = snapshot(tmp_path), sorted(os.listdir(trained_run["run"]))

    code, out, err = cli_main(capsys, *[item for flag, value in arguments.items() if value is not None
                                        for item in (flag, value)], "--quiet")

    assert code == cli.EXIT_USAGE and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("heartbeat: error: ") and problem in err, err
    assert snapshot(tmp_path) == before and sorted(os.listdir(trained_run["run"])) == run_before


# ---------------------------------------------------------------- OUT

def test_a_rerun_replaces_every_output_and_nothing_else(trained_run, own_recordings, tmp_path):
    first = copy_as_folders(own_recordings[:3], tmp_path / "first")
    second = copy_as_folders(own_recordings[-2:], tmp_path / "second")
    out = tmp_path / "out"
    evaluate(trained_run["run"], first, out, progress=False)
    (out / "notes.txt").write_text("the user's own file")

    evaluate(trained_run["run"], second, out, progress=False)

    assert sorted(path.name for path in out.iterdir()) == sorted([*OUTPUTS, "notes.txt"])  # no temporary left
    assert (out / "notes.txt").read_text() == "the user's own file"
    expected = sorted(f"{r.label}/{r.path.name}" for r in own_recordings[-2:])
    assert [row["recording"] for row in read_rows(out)] == expected
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_recordings"] == 2 and metrics["context"]["data_dir"] == str(second)
    assert str(second) in (out / "report.md").read_text() and str(first) not in (out / "report.md").read_text()
    assert json.loads((out / "confusion_matrix.json").read_text())["data"] == str(second)


def test_an_out_link_is_refused(trained_run, tmp_path):
    data = small_folders(trained_run, tmp_path / "data")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(EvaluationError, match="a symbolic link"):
        evaluate(trained_run["run"], data, tmp_path / "link", progress=False)
    assert list((tmp_path / "target").iterdir()) == []


# ---------------------------------------------------------------- the command line

POISON = 'raise RuntimeError("evaluate imported {name}")\n'


def test_the_command_runs_without_torch_or_fastai_and_writes_every_file(trained_run, tmp_path):
    data = small_folders(trained_run, tmp_path / "data")
    for name in ("torch", "fastai"):  # importing either fails the command
        (tmp_path / "poison" / name).mkdir(parents=True)
        (tmp_path / "poison" / name / "__init__.py").write_text(POISON.format(name=name))
    environment = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "poison"), str(Path(__file__).resolve().parents[1])])}

    result = run_cli("evaluate", "--model", trained_run["run"], "--data", data, "--out", tmp_path / "out",
                     "--threads", "1", env=environment)

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
    data_line, summary_line = result.stdout.splitlines()
    assert summary_line.startswith(f"{tmp_path / 'out'}: accuracy ") and "3 scored recordings" in summary_line
    assert data_line.startswith("data: folders (")  # the format line
    assert "rec/s]" not in result.stderr and "\r" not in result.stderr  # a pipe is no terminal: no progress bar


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0
    for flag in ("--model", "--data", "--format", "--label-map", "--group-regex", "--out", "--max-seconds",
                 "--threads", "--quiet"):
        assert flag in text
    assert all(name in text for name in layouts.FORMATS)


# ---------------------------------------------------------------- names that would run: spreadsheet, terminal

def test_names_a_spreadsheet_or_a_terminal_would_run_are_written_inert(trained_run, own_recordings, tmp_path, capsys):
    data = tmp_path / "data \x1b[2J"
    data.mkdir()
    one_of = {recording.label: recording for recording in own_recordings}
    rows = [("=SUM(1+1).wav", "normal", "=cmd|x"), ("-2.wav", "murmur", "@me"), ("+x.wav", "extrastole", "-3"),
            ("'quoted.wav", "normal", "p1"), ("bad \x1b]0;title\x07.wav", "normal", "p2")]
    for name, label, _ in rows[:-1]:
        shutil.copy(one_of[label].path, data / name)
    (data / rows[-1][0]).write_text("not audio")
    with open(data / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("file", "label", "patient"), *rows])

    code, out, err = cli_main(capsys, "--model", trained_run["run"], "--data", data, "--format", "csv",
                              "--out", tmp_path / "out", "--quiet")

    assert code == cli.EXIT_FAILED, err
    written = read_rows(tmp_path / "out")
    # A text cell starting with = + - @ (or ', so that the quote can be taken off again) gets a leading '.
    assert [(row["recording"], row["group"]) for row in written] == [
        ("'=SUM(1+1).wav", "'=cmd|x"), ("'-2.wav", "'@me"), ("'+x.wav", "'-3"), ("''quoted.wav", "p1")]
    for row in written:  # numbers stay numbers
        assert row["windows"].isdigit() and all(0 <= float(row[f"prob_{name}"]) <= 1 for name in model_classes(
            trained_run["run"]))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "\x1b" not in report and "\x07" not in report
    assert "data \\x1b[2J" in report.splitlines()[0]  # the title
    assert "- bad \\x1b]0;title\\x07.wav: not a readable audio file" in report
    assert "\x1b" not in out + err and "bad \\x1b]0;title\\x07.wav" in err
    context = json.loads((tmp_path / "out" / "metrics.json").read_text())["context"]
    assert context["data_dir"] == str(data)  # JSON stays exact


def test_a_model_giving_no_probabilities_is_one_line_and_out_is_not_written(trained_run, tmp_path, capsys):
    from test_bad_input_predict import constant_output_model, tiny_model_folder

    model = tiny_model_folder(tmp_path / "tiny", constant_output_model([0.5, 0.5, 0.5]))
    data = small_folders(trained_run, tmp_path / "data")

    code, _, err = cli_main(capsys, "--model", model, "--data", data, "--out", tmp_path / "out", "--quiet")

    assert code == cli.EXIT_USAGE
    (line,) = [line for line in err.splitlines() if line.startswith("heartbeat:")]
    assert line.startswith(f"heartbeat: error: {model}: the network gives probabilities that do not sum to 1"), line
    assert not (tmp_path / "out").exists()


def test_a_relative_out_from_a_deleted_working_folder_is_one_line(trained_run, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    data = small_folders(trained_run, tmp_path / "data")
    # The shell enters the folder, deletes it, then runs heartbeat there: os.getcwd() fails in the command.
    command = ["sh", "-c", 'rmdir "$PWD" && exec "$0" "$@"', sys.executable, "-m", "heartbeat", "evaluate",
               "--model", str(trained_run["run"]), "--data", str(data), "--out", "relative-out", "--quiet"]

    result = subprocess.run(command, cwd=gone, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})

    assert result.returncode == cli.EXIT_USAGE, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("heartbeat: error: the current folder no longer exists"), line
    assert not gone.exists()
