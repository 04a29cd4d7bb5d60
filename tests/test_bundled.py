"""The bundled model: which model answers, its files' integrity, its card, how a release writes it, and the shipped one.

Most tests use a bundle made from the session's tiny trained model by the release's own code
(release.write_bundle); the shipped-bundle tests read heartbeat/models/builtin/ and need it present.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import write_wav
from heartbeat import bundled, release
from heartbeat.bundled import BUILTIN, ModelError, about, check_bundled, load_model, resolve_model
from heartbeat.data.synth import heartbeat_signal

ROOT = Path(__file__).resolve().parents[1]
CARD = "# Model card\n\nResearch and teaching, not diagnosis.\n"


# The session's model is a 32-px ResNet-34 (83 MB): far over the shipped limit, which is tested on its own.
NO_LIMIT = 1 << 40


def run_copy(run: Path, folder: Path) -> Path:
    """The run's model files copied: onnx refuses to load weights with several hard links, and other tests
    (test_bad_input_predict's model folders) hard-link the session's."""
    folder.mkdir()
    for name in ("model.json", "model.onnx", "model.onnx.data", "split.csv"):
        shutil.copy(run / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def written_bundle(trained_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / BUILTIN
    run = run_copy(trained_run["run"], tmp_path_factory.mktemp("run") / "run")
    release.write_bundle(run, folder, CARD, {"recipe": "test", "model_id": "test-bundle"}, max_bytes=NO_LIMIT)
    return folder


@pytest.fixture
def bundle(written_bundle, tmp_path) -> Path:
    """A fresh copy of the written bundle, to damage."""
    return Path(shutil.copytree(written_bundle, tmp_path / "models" / BUILTIN))


@pytest.fixture
def wav(tmp_path) -> Path:
    return write_wav(tmp_path / "a.wav", heartbeat_signal("normal", 6.0, rng=np.random.default_rng(1)), 4000)


# ---------------------------------------------------------------- which model answers

def test_no_model_given_is_the_latest_run_when_there_is_one(tmp_path):
    (tmp_path / "runs" / "latest").mkdir(parents=True)
    choice = resolve_model(None, tmp_path / "runs", tmp_path / "bundle")
    assert (choice.folder, choice.bundled) == (tmp_path / "runs" / "latest", False)
    assert choice.name == str(tmp_path / "runs" / "latest")


def test_no_model_given_and_no_run_is_the_bundled_model(tmp_path):
    choice = resolve_model(None, tmp_path / "runs", tmp_path / "bundle")
    assert (choice.folder, choice.name, choice.bundled) == (tmp_path / "bundle", BUILTIN, True)


def test_builtin_names_the_bundled_model_even_with_a_latest_run(tmp_path):
    (tmp_path / "runs" / "latest").mkdir(parents=True)
    choice = resolve_model(BUILTIN, tmp_path / "runs", tmp_path / "bundle")
    assert (choice.folder, choice.name, choice.bundled) == (tmp_path / "bundle", BUILTIN, True)


def test_any_other_value_is_that_folder(tmp_path):
    choice = resolve_model("some/run", tmp_path / "runs", tmp_path / "bundle")
    assert (choice.folder, choice.name, choice.bundled) == (Path("some/run"), "some/run", False)


# ---------------------------------------------------------------- a bundle as a release writes it

def test_a_bundle_is_one_self_contained_onnx_file_with_its_hashes(bundle, trained_run):
    assert sorted(path.name for path in bundle.iterdir()) == ["MODEL_CARD.md", "model.json", "model.onnx"]
    info = json.loads((bundle / "model.json").read_text())
    assert info["files"] == {name: bundled.sha256_file(bundle / name) for name in ("model.onnx", "MODEL_CARD.md")}
    assert info["model_id"] == "test-bundle" and info["bundled"]["recipe"] == "test"
    check_bundled(bundle)


def test_the_bundle_answers_as_its_run_and_says_it_is_builtin(bundle, trained_run, wav, tmp_path):
    from heartbeat.predict import load_predictor

    answer = load_model(BUILTIN, tmp_path / "runs", bundled_dir=bundle).predict_file(wav)
    original = load_predictor(trained_run["run"]).predict_file(wav)

    assert answer.model == BUILTIN and json.loads(answer.to_json())["model"] == BUILTIN
    assert answer.label == original.label
    assert np.allclose(list(answer.probabilities.values()), list(original.probabilities.values()), atol=1e-6)


def test_a_release_replaces_the_old_bundle_whole(bundle, trained_run, tmp_path):
    (bundle / "leftover.txt").write_text("from an older release")
    release.write_bundle(run_copy(trained_run["run"], tmp_path / "run"), bundle, CARD + "v2\n", {"recipe": "test"}, max_bytes=NO_LIMIT)
    assert not (bundle / "leftover.txt").exists()
    assert about(bundle).endswith("v2\n")
    assert not [path for path in bundle.parent.iterdir() if path.name.startswith(".")]  # no staging left


def test_a_bundle_over_the_size_limit_is_refused_and_the_old_one_kept(bundle, trained_run, tmp_path):
    before = (bundle / "model.json").read_bytes()
    with pytest.raises(ValueError, match="over the"):
        release.write_bundle(run_copy(trained_run["run"], tmp_path / "run"), bundle, CARD, {"recipe": "test"})  # the default limit: 5 MiB
    assert (bundle / "model.json").read_bytes() == before
    check_bundled(bundle)


# ---------------------------------------------------------------- a broken bundle: one line, the file, the fix

def _delete(bundle: Path, name: str) -> None:
    (bundle / name).unlink()


def _corrupt(bundle: Path, name: str) -> None:
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / name).write_bytes(bytes(data))


@pytest.mark.parametrize("damage, name, problem", [
    (_delete, "model.onnx", "missing"), (_corrupt, "model.onnx", "corrupt"),
    (_delete, "model.json", "missing"), (_corrupt, "model.json", "unreadable"),
    (_corrupt, "MODEL_CARD.md", "corrupt"),
])
def test_a_damaged_bundle_is_one_line_naming_the_file_and_the_fix(bundle, tmp_path, damage, name, problem):
    damage(bundle, name)

    with pytest.raises(ModelError) as caught:
        load_model(None, tmp_path / "no-runs", bundled_dir=bundle)

    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(str(bundle / name)) and problem in message
    assert "pip install --force-reinstall heartbeat" in message and "make release-model" in message


def test_a_bundle_without_recorded_hashes_is_refused(bundle, tmp_path):
    info = json.loads((bundle / "model.json").read_text())
    del info["files"]
    (bundle / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="records no sha256"):
        check_bundled(bundle)


def test_a_recorded_name_outside_the_folder_is_refused(bundle, tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    info = json.loads((bundle / "model.json").read_text())
    info["files"]["../../elsewhere.txt"] = bundled.sha256_file(outside)
    (bundle / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="not a file of the folder"):
        check_bundled(bundle)


def test_about_is_the_card(bundle):
    assert about(bundle) == CARD


# ---------------------------------------------------------------- the card's figures come from the CV

def test_cv_table_spreads_figures_over_runs_beside_both_baselines():
    import pandas as pd

    classes = ["extrastole", "murmur", "normal"]
    rows = []
    for seed, fold, predicted in [(3, 0, "normal"), (3, 1, "truth")]:
        for label in ["normal"] * 4 + ["murmur"] * 2 + ["extrastole"] * 2:
            rows.append({"seed": seed, "fold": fold, "label": label,
                         "predicted": label if predicted == "truth" else "normal", "classical_predicted": "murmur"})
    table = release.cv_table(pd.DataFrame(rows), classes)

    lines = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table.splitlines()[2:]}
    # one run always says normal (balanced accuracy 1/3), the other is right (1): mean 0.667, sd 0.471
    assert lines["balanced accuracy"][0] == "0.667 ± 0.471"
    assert lines["recall murmur"][1].startswith("1.000 ± 0.000")  # the classical column always says murmur
    assert lines["youden"][2].startswith("0.000 ± 0.000")  # the majority baseline flags nothing
    assert "majority baseline (always normal)" in table.splitlines()[0]


# ---------------------------------------------------------------- the shipped bundle (needs heartbeat/models/builtin/)

def test_the_shipped_bundle_matches_its_recorded_hashes_and_size():
    info = json.loads((bundled.BUNDLED_DIR / "model.json").read_text())
    assert info["files"]["model.onnx"] == bundled.sha256_file(bundled.BUNDLED_DIR / "model.onnx")
    assert "MODEL_CARD.md" in info["files"]
    check_bundled()
    assert sum(path.stat().st_size for path in bundled.BUNDLED_DIR.iterdir()) <= release.MAX_BUNDLE_BYTES
    assert not (bundled.BUNDLED_DIR / "model.onnx.data").exists()  # one self-contained file
    assert not info["bundled"].get("stand_in"), "a stand-in model was shipped"


def test_every_bundled_file_is_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    listed = {Path(pattern).name for pattern in package_data["heartbeat.models"]}
    assert listed == {"model.json", "model.onnx", bundled.CARD_FILE}
