"""The CLI over the bundled model: predict/evaluate --model default and builtin, --about, the intended-use line, --explain.

The bundle is written from the session's tiny trained model by the release's own code and put
in place of the package's (bundled.BUNDLED_DIR), so these tests do not depend on the shipped one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import write_wav
from heartbeat import bundled, cli, config, release
from heartbeat.data.synth import heartbeat_signal
from heartbeat.predict import INTENDED_USE
from test_bundled import run_copy

CARD = "# Model card\n\nResearch and teaching, not diagnosis.\n"


@pytest.fixture(scope="session")
def written_bundle(trained_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-bundle") / "builtin"
    run = run_copy(trained_run["run"], tmp_path_factory.mktemp("run") / "run")
    release.write_bundle(run, folder, CARD, {"recipe": "test", "model_id": "test-bundle"},
                         max_bytes=1 << 40)  # the session's model is an 83 MB ResNet
    return folder


@pytest.fixture
def bundle(written_bundle, tmp_path, monkeypatch) -> Path:
    """A copy of the bundle in place of the package's, and no training run (RUNS_DIR empty)."""
    folder = Path(shutil.copytree(written_bundle, tmp_path / "bundle"))
    monkeypatch.setattr(bundled, "BUNDLED_DIR", folder)
    monkeypatch.setattr(config, "RUNS_DIR", tmp_path / "runs")
    return folder


@pytest.fixture
def wavs(tmp_path) -> list[Path]:
    return [write_wav(tmp_path / f"{folder}/rec.wav", heartbeat_signal(kind, 6.0, rng=np.random.default_rng(i)), 4000)
            for i, (folder, kind) in enumerate([("a", "normal"), ("b", "murmur")])]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_without_a_training_run_the_bundled_model_answers(bundle, wavs, capsys):
    code, out, err = run(capsys, "predict", "--json", *wavs)
    assert (code, err) == (0, "")
    assert [json.loads(line)["model"] for line in out.splitlines()] == ["builtin", "builtin"]
    assert {json.loads(line)["model_id"] for line in out.splitlines()} == {"test-bundle"}


def test_builtin_is_the_bundled_model_even_with_a_latest_run(bundle, trained_run, wavs, capsys):
    config.RUNS_DIR.mkdir()
    (config.RUNS_DIR / "latest").symlink_to(trained_run["run"])

    _, by_default, _ = run(capsys, "predict", "--json", wavs[0])
    _, builtin, _ = run(capsys, "predict", "--json", "--model", "builtin", wavs[0])

    assert json.loads(by_default)["model"] == str(config.RUNS_DIR / "latest")
    assert json.loads(builtin)["model"] == "builtin"


def test_a_damaged_bundled_model_is_one_line_with_the_fix(bundle, wavs, capsys):
    (bundle / "model.onnx").write_bytes(b"damaged")
    code, out, err = run(capsys, "predict", *wavs)
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert len(err.splitlines()) == 1 and "model.onnx" in err and "corrupt" in err and "make release-model" in err


def test_about_prints_the_card(bundle, capsys):
    assert run(capsys, "predict", "--model", "builtin", "--about") == (0, CARD, "")
    assert run(capsys, "predict", "--about") == (0, CARD, "")  # no training run: the default is the bundled model


def test_about_a_run_folder_points_to_its_report(bundle, trained_run, capsys):
    code, out, err = run(capsys, "predict", "--model", trained_run["run"], "--about")
    assert (code, out) == (cli.EXIT_USAGE, "") and "report.md" in err and len(err.splitlines()) == 1


def test_predict_without_files_is_a_usage_error(bundle, capsys):
    with pytest.raises(SystemExit) as refused:
        cli.main(["predict"])
    err = capsys.readouterr().err
    assert refused.value.code == cli.EXIT_USAGE and "FILE" in err and len(err.splitlines()) == 1


def test_the_intended_use_line_comes_once_before_the_table_and_never_in_json(bundle, wavs, capsys):
    _, table, _ = run(capsys, "predict", *wavs)
    _, lines, _ = run(capsys, "predict", "--json", *wavs)
    assert table.splitlines()[0] == INTENDED_USE and table.count(INTENDED_USE) == 1
    assert table.splitlines()[1].split()[:2] == ["file", "predicted"] and len(table.splitlines()) == 4
    assert INTENDED_USE not in lines


def test_explain_writes_one_picture_per_file_under_unique_names(bundle, wavs, tmp_path, capsys):
    code, out, err = run(capsys, "predict", "--explain", tmp_path / "pictures", *wavs)
    assert (code, err) == (0, "")
    assert sorted(path.name for path in (tmp_path / "pictures").iterdir()) == ["rec-2.png", "rec.png"]
    assert len(out.splitlines()) == 4


def test_explain_into_a_file_is_one_line_and_predictions_still_print(bundle, wavs, tmp_path, capsys):
    target = tmp_path / "pictures.png"
    target.write_text("keep me")
    code, out, err = run(capsys, "predict", "--json", "--explain", target, *wavs)
    assert code == cli.EXIT_FAILED
    assert len(out.splitlines()) == 2
    assert len(err.splitlines()) == 1 and "not a folder" in err and str(target) in err
    assert target.read_text() == "keep me"


def test_evaluate_runs_the_bundled_model(bundle, trained_run, tmp_path, capsys):
    code, out, err = run(capsys, "evaluate", "--model", "builtin", "--data", trained_run["data"], "--out",
                         tmp_path / "evaluation", "--quiet")
    assert code == 0, err
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["n_recordings"] > 0


def test_explain_into_a_folder_that_cannot_be_made_is_one_line_and_predictions_still_print(bundle, wavs, tmp_path,
                                                                                            capsys):
    (tmp_path / "a-file").write_text("keep me")
    code, out, err = run(capsys, "predict", "--explain", tmp_path / "a-file" / "pictures", *wavs)
    assert code == cli.EXIT_FAILED
    assert len(out.splitlines()) == 4  # the intended use, the header and both rows
    assert len(err.splitlines()) == 1 and "cannot write pictures" in err and "no pictures written" in err


def test_a_picture_that_cannot_be_written_is_one_line_and_the_others_are_still_written(bundle, wavs, tmp_path,
                                                                                       capsys):
    pictures = tmp_path / "pictures"
    (pictures / "rec.png").mkdir(parents=True)  # a folder where the first file's picture should go
    code, out, err = run(capsys, "predict", "--json", "--explain", pictures, *wavs)
    assert code == cli.EXIT_FAILED
    assert len(out.splitlines()) == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"heartbeat: {wavs[0]}: no picture (")
    assert (pictures / "rec-2.png").stat().st_size > 0 and (pictures / "rec.png").is_dir()
    assert sorted(path.name for path in pictures.iterdir()) == ["rec-2.png", "rec.png"]  # no temporary left
