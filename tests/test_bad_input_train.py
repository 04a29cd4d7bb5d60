"""Bad input to stage 2 (train, cv): one line, exit 2, nothing touched outside the output folder, no run, no `latest`.

Also what a killed run leaves behind: its hidden temporary folder is removed by the next run
once its writer is dead, never while it is alive, and a killed run never appears under its
final name nor moves `latest`. Tiny data throughout: 6 synthetic patients, 32 px, 1 epoch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from badinput import REPO, assert_one_line_error, hold_lock, run_cli, snapshot
from heartbeat import cli, cli_study, fileio
from heartbeat.train import run as train
from heartbeat.report.cv import cross_validate
from heartbeat.train.recipes.features import feature_cache_dir
from heartbeat.train.run import TrainError, TrainSettings

TINY = ["--no-pretrained", "--image-size", "32", "--epochs", "1", "--quiet"]  # from scratch: no weights file needed


def tiny_settings(weights: Path, **changes) -> TrainSettings:
    """Features mode on a stand-in body: only the small head trains (a from-scratch run takes far longer)."""
    return TrainSettings(weights=str(weights), image_size=32, epochs=1, **changes)


@pytest.fixture(scope="module")
def spectrograms(tmp_path_factory) -> Path:
    """Stage 1's output for 6 synthetic patients (10 recordings, three classes)."""
    from heartbeat.data.spectrograms import build_spectrograms
    from heartbeat.data.synth import write_dataset_b

    root = tmp_path_factory.mktemp("stage2")
    data = write_dataset_b(root / "data", n_patients=6, recordings_per_patient=(1, 2), seconds=(1.0, 3.0))
    build_spectrograms(data, root / "spectrograms", jobs=1, progress=False)
    return root / "spectrograms"


@pytest.fixture
def workspace(spectrograms, tmp_path) -> Path:
    """tmp_path holding a copy of the spectrograms (free to damage) and an `outside.png` no command may touch."""
    shutil.copytree(spectrograms, tmp_path / "spectrograms")
    (tmp_path / "outside.png").write_bytes((spectrograms / "manifest.csv").read_bytes())
    return tmp_path


def run_main(capsys, *args) -> tuple[int, list[str]]:
    """cli.main in this process (no second torch import): exit code and stderr's lines."""
    code = cli.main([str(arg) for arg in args])
    return code, capsys.readouterr().err.strip().splitlines()


def assert_refused(code: int, lines: list[str], names: list[str]) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("heartbeat: error: "), lines
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in {lines[0]!r}"


# ---------------------------------------------------------------- options, checked when arguments are parsed

BAD_OPTIONS = [  # (command, flag, value)
    ("train", "--lr", "-1"), ("train", "--lr", "0"), ("train", "--lr", "nan"), ("train", "--lr", "inf"),
    ("train", "--unfreeze-epochs", "-1"), ("train", "--seed", "-1"), ("train", "--seed", str(2**32)),
    ("train", "--seed", "1.5"), ("train", "--valid-fraction", "-0.1"), ("train", "--valid-fraction", "1"),
    ("train", "--valid-fraction", "nan"), ("train", "--image-size", "0"), ("train", "--image-size", "4096"),
    ("train", "--bs", "0"), ("train", "--epochs", "0"), ("train", "--name", "../outside"),
    ("cv", "--folds", "1"), ("cv", "--seeds", "1,-1"), ("cv", "--seeds", "1,1"), ("cv", "--seeds", ","),
    ("cv", "--lr", "-1"),
]


@pytest.mark.parametrize("command, flag, value", BAD_OPTIONS, ids=[f"{c}{f}={v}" for c, f, v in BAD_OPTIONS])
def test_bad_option_stops_at_parse_time_naming_the_flag(command, flag, value, workspace):
    runs = workspace / "runs"
    before = snapshot(workspace)
    out = ["--runs", runs] if command == "train" else ["--out", runs / "cv"]
    result = run_cli(command, "--spectrograms", workspace / "spectrograms", *out, *TINY, flag, value)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"heartbeat {command}: error: argument {flag}: "), result.stderr
    assert not runs.exists() and snapshot(workspace) == before  # nothing trained, nothing written


@pytest.mark.parametrize("field, value, flag", [
    ("lr", -1.0, "--lr"), ("lr", float("nan"), "--lr"), ("unfreeze_epochs", -1, "--unfreeze-epochs"),
    ("seed", -1, "--seed"), ("seed", 2**32, "--seed"), ("valid_fraction", 1.0, "--valid-fraction"),
    ("image_size", train.MAX_IMAGE_SIZE + 1, "--image-size"), ("batch_size", 0, "--bs"), ("epochs", 0, "--epochs"),
    ("name", "../x", "--name"),
])
def test_library_callers_get_the_same_checks(field, value, flag):
    with pytest.raises(ValueError, match=f"^{flag} "):
        TrainSettings(**{field: value}).validate()


def test_command_line_and_library_share_their_limits():
    parser = cli.build_parser()
    highest = ["--seed", str(train.MAX_SEED), "--image-size", str(train.MAX_IMAGE_SIZE), "--unfreeze-epochs", "0"]
    args = parser.parse_args(["train", *highest])
    cli_study._train_settings(args).validate()  # the largest values one accepts, the other accepts
    for flag, value in [("--seed", train.MAX_SEED + 1), ("--image-size", train.MAX_IMAGE_SIZE + 1)]:
        with pytest.raises(SystemExit):
            parser.parse_args(["train", flag, str(value)])


# ---------------------------------------------------------------- the manifest, checked before any training

def rewrite_manifest(spectrograms: Path, change) -> None:
    path = spectrograms / "manifest.csv"
    lines = path.read_text().splitlines()
    path.write_bytes(change(lines) if callable(change) else change)


def replace_column(lines, column: str, value_of) -> bytes:
    header = lines[0].split(",")
    index = header.index(column)
    rows = [line.split(",") for line in lines[1:]]
    for number, row in enumerate(rows):
        row[index] = value_of(number, row[index])
    return ("\n".join([",".join(header)] + [",".join(row) for row in rows]) + "\n").encode()


def drop_column(lines, column: str) -> bytes:
    index = lines[0].split(",").index(column)
    return ("\n".join(",".join(part for i, part in enumerate(line.split(",")) if i != index) for line in lines) + "\n").encode()


MANIFEST_CASES = {  # case -> (how to damage the manifest, what the one line must say besides the manifest's path)
    "image outside by ../": (lambda lines: replace_column(lines, "image", lambda n, v: "../outside.png" if n == 1 else v),
                             ["line 3", "../outside.png"]),
    "image by absolute path": (lambda lines: replace_column(lines, "image", lambda n, v: "/etc/hostname" if n == 0 else v),
                               ["line 2", "/etc/hostname"]),
    "image in a subfolder": (lambda lines: replace_column(lines, "image", lambda n, v: "images/sub/x.png" if n == 2 else v),
                             ["line 4"]),
    "image not a png": (lambda lines: replace_column(lines, "image", lambda n, v: "images/x.txt" if n == 0 else v), ["line 2"]),
    "no label column": (lambda lines: drop_column(lines, "label"), ["label"]),
    "no patient_id column": (lambda lines: drop_column(lines, "patient_id"), ["patient_id"]),
    "not UTF-8": (lambda lines: "\n".join(lines).replace("normal", "norm\xe9l").encode("latin-1"), ["UTF-8"]),
    "binary": (bytes(range(256)) * 8, ["not a readable csv"]),
    "empty": (b"", ["not a readable csv"]),
    "one class": (lambda lines: replace_column(lines, "label", lambda n, v: "normal" if v else v), ["only one class", "normal"]),
    # any label is a class (classes come from the data), but not one that cannot be a class name
    "unusable label": (lambda lines: replace_column(lines, "label", lambda n, v: "mur=mur" if v == "murmur" else v),
                       ["'mur=mur'", "not a usable class name"]),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bad_manifest_is_refused_before_training(case, workspace, capsys):
    change, words = MANIFEST_CASES[case]
    spectrograms, runs = workspace / "spectrograms", workspace / "runs"
    rewrite_manifest(spectrograms, change)
    before = snapshot(workspace)
    code, lines = run_main(capsys, "train", "--spectrograms", spectrograms, "--runs", runs, *TINY)
    assert_refused(code, lines, [spectrograms / "manifest.csv", *words])
    assert not runs.exists() and snapshot(workspace) == before


def test_image_that_is_a_link_out_of_the_folder_is_refused(workspace, capsys):
    spectrograms, runs = workspace / "spectrograms", workspace / "runs"
    image = sorted((spectrograms / "images").iterdir())[0]
    image.unlink()
    image.symlink_to(workspace / "outside.png")
    before = snapshot(workspace)
    code, lines = run_main(capsys, "cv", "--spectrograms", spectrograms, "--out", runs / "cv", "--folds", "2", *TINY)
    assert_refused(code, lines, [spectrograms / "manifest.csv", f"images/{image.name}"])
    assert not runs.exists() and snapshot(workspace) == before


def test_manifest_leading_outside_is_one_line_from_a_real_process(workspace):
    spectrograms, runs = workspace / "spectrograms", workspace / "runs"
    rewrite_manifest(spectrograms, MANIFEST_CASES["image outside by ../"][0])
    before = snapshot(workspace)
    result = run_cli("train", "--spectrograms", spectrograms, "--runs", runs, *TINY)
    assert_one_line_error(result, [str(spectrograms / "manifest.csv"), "../outside.png"], code=2)
    assert not runs.exists() and snapshot(workspace) == before


# ---------------------------------------------------------------- output folders, the feature cache, `latest`

def make_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a user's file\n")
    return path


OUTPUT_CASES = {  # case -> (set-up returning the output flags, what the one line must name)
    "train --out is a file": (lambda ws: ["--out", make_file(ws / "out" / "run")], ["out/run", "already exists"]),
    "train --out under a file": (lambda ws: ["--out", make_file(ws / "out" / "file") / "run"], ["out/file is a file"]),
    "train --runs under a file": (lambda ws: ["--runs", make_file(ws / "out" / "file") / "runs"], ["out/file is a file"]),
    "train --out a dangling link": (lambda ws: ["--out", link(ws / "out" / "run", ws / "nowhere")],
                                    ["out/run", "already exists"]),
    "latest is a folder": (lambda ws: ["--runs", make_file(ws / "out" / "latest" / "mine.txt").parents[1]],
                           ["out/latest", "not a symbolic link"]),
    "latest is a file": (lambda ws: ["--runs", make_file(ws / "out" / "latest").parent], ["out/latest", "not a symbolic link"]),
    "cv --out is a file": (lambda ws: ["--out", make_file(ws / "out" / "cv")], ["out/cv", "already exists"]),
    "cv --out under a file": (lambda ws: ["--out", make_file(ws / "out" / "file") / "cv"], ["out/file is a file"]),
    "cv --out a dangling link": (lambda ws: ["--out", link(ws / "out" / "cv", ws / "nowhere")], ["out/cv", "already exists"]),
}


def link(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_unusable_output_is_refused_and_left_as_it_is(case, workspace, capsys):
    setup, words = OUTPUT_CASES[case]
    flags = setup(workspace)
    before = snapshot(workspace)  # the output folder included: what is there is the user's, and stays
    command = "cv" if case.startswith("cv") else "train"
    extra = ["--folds", "2"] if command == "cv" else []
    code, lines = run_main(capsys, command, "--spectrograms", workspace / "spectrograms", *flags, *extra, *TINY)
    assert_refused(code, lines, words)
    assert snapshot(workspace) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_that_cannot_be_written_is_refused(workspace, capsys):
    locked = workspace / "locked"
    locked.mkdir(mode=0o555)
    code, lines = run_main(capsys, "train", "--spectrograms", workspace / "spectrograms", "--out", locked / "run", *TINY)
    assert_refused(code, lines, [locked / "run", "not writable"])
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("kind", ["link out of the folder", "file"])
@pytest.mark.parametrize("command", ["train", "cv"])
def test_feature_cache_that_is_not_a_folder_inside_is_refused(kind, command, workspace, capsys):
    spectrograms, elsewhere = workspace / "spectrograms", workspace / "elsewhere"
    elsewhere.mkdir()
    if kind == "file":
        make_file(spectrograms / "features")
    else:
        (spectrograms / "features").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(workspace)
    weights = workspace / "never-read.pth"  # features mode needs a pretrained body; the refusal comes first
    out = ["--out", workspace / "out"] + (["--folds", "2"] if command == "cv" else [])
    code, lines = run_main(capsys, command, "--spectrograms", spectrograms, *out, "--weights", weights,
                           "--image-size", "32", "--epochs", "1", "--quiet")
    assert_refused(code, lines, [spectrograms / "features", "not a link or a file"])
    assert snapshot(workspace) == before and not (workspace / "out").exists()


def test_feature_cache_loses_only_dead_writers_leftovers(spectrograms, tmp_path):
    copy = tmp_path / "spectrograms"
    shutil.copytree(spectrograms, copy, ignore=shutil.ignore_patterns("features"))
    features = copy / "features"
    dead = features / ".0123abcd.x1y2.tmp.safetensors"  # a temporary of a killed writer: nobody holds its lock
    make_file(dead)
    kept = make_file(features / "0123abcd.safetensors")
    with fileio.atomic_path(features / "live.safetensors") as live:  # a writer that is still at work
        live.write_bytes(b"half")
        assert feature_cache_dir(copy) == features
        assert live.exists() and kept.exists() and not dead.exists()


@pytest.mark.parametrize("command", ["train", "cv"])
def test_unforeseen_file_system_error_is_one_line(command, workspace, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(workspace / "out" / "model.onnx"))

    monkeypatch.setattr(train, "train", disk_full)
    monkeypatch.setattr("heartbeat.report.cv.cross_validate", disk_full)
    code, lines = run_main(capsys, command, "--spectrograms", workspace / "spectrograms", "--out", workspace / "out", *TINY)
    assert_refused(code, lines, [workspace / "out" / "model.onnx", "No space left on device"])


@pytest.mark.parametrize("command", ["train", "cv"])
def test_output_another_command_is_writing_is_refused_at_once(command, workspace, capsys):
    out = workspace / "out" / "result"
    out.parent.mkdir()
    holder = hold_lock(out, fileio.lock_path(out))
    try:
        before = snapshot(workspace)
        extra = ["--folds", "2"] if command == "cv" else []
        code, lines = run_main(capsys, command, "--spectrograms", workspace / "spectrograms", "--out", out, *extra, *TINY)
        assert_refused(code, lines, [out, "another heartbeat command is writing it"])
        assert snapshot(workspace) == before  # nothing trained, nothing written
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- a diverged run is never written

def test_run_with_a_non_finite_loss_is_not_written_nor_latest(spectrograms, standin_weights, tmp_path):
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "latest").symlink_to("old")
    settings = tiny_settings(standin_weights, lr=1e30)  # one such step and the validation loss is NaN
    with pytest.raises(TrainError, match="the loss is not finite"):
        train.train(spectrograms, runs_dir=runs, settings=settings, progress=False)
    assert sorted(path.name for path in runs.iterdir()) == ["latest", "old"]  # no run, no temporary left
    assert os.readlink(runs / "latest") == "old"


def test_batch_larger_than_the_training_side_is_one_line(spectrograms, standin_weights, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, lines = run_main(capsys, "train", "--spectrograms", spectrograms, "--runs", runs, "--weights", standin_weights,
                           "--image-size", "32", "--epochs", "1", "--bs", "64", "--quiet")
    assert_refused(code, lines, ["--bs 64", "training images"])
    assert [path.name for path in runs.iterdir()] == []


# ---------------------------------------------------------------- runs started together

def test_runs_started_in_the_same_second_both_survive_and_latest_is_the_last_to_finish(spectrograms, standin_weights,
                                                                                       tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    real_strftime, real_fit = time.strftime, train.fit
    monkeypatch.setattr(time, "strftime", lambda form, *rest: "20250101-120000" if form == "%Y%m%d-%H%M%S"
                        else real_strftime(form, *rest))  # every run starts in the same second
    meanwhile = []

    def fit_while_another_run_starts_and_finishes(*args, **kwargs):
        if not meanwhile:  # the first run is training: a second one starts, and finishes first
            meanwhile.append(None)
            meanwhile[0] = train.train(spectrograms, runs_dir=runs, settings=tiny_settings(standin_weights),
                                       progress=False).run_dir
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit_while_another_run_starts_and_finishes)
    first = train.train(spectrograms, runs_dir=runs, settings=tiny_settings(standin_weights), progress=False).run_dir
    second = meanwhile[0]

    assert (first.name, second.name) == ("20250101-120000-patient", "20250101-120000-patient-2")
    for run in (first, second):
        assert (run / "model.json").is_file() and (run / "report.md").is_file()
    assert os.readlink(runs / "latest") == first.name  # the run that finished last, not the newest name
    assert sorted(path.name for path in runs.iterdir()) == sorted([first.name, second.name, "latest"])  # no claim left


# ---------------------------------------------------------------- SIGKILL: leftovers of dead runs, never of live ones

def start(*args) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "heartbeat", *map(str, args)], env=environment,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen, ready, what: str) -> Path:
    """SIGKILL the process as soon as ready() returns a path; return that path."""
    deadline = time.monotonic() + 180  # generous: the machine may be shared; the loop ends as soon as ready
    while time.monotonic() < deadline:
        found = ready()
        if found is not None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return found
        if process.poll() is not None:
            pytest.fail(f"the process ended ({process.returncode}) before {what}: {process.stderr.read().decode()}")
        time.sleep(0.05)
    process.kill()
    process.wait()
    pytest.fail(f"no {what} within the deadline")


def hidden_temp(folder: Path, prefix: str):
    """A hidden temporary folder in `folder` whose name starts with prefix, or None."""
    return next((path for path in folder.glob(f"{prefix}*.tmp") if path.is_dir()), None) if folder.is_dir() else None


def test_killed_train_leaves_no_run_and_the_next_run_removes_its_leftover(spectrograms, standin_weights, tmp_path):
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "latest").symlink_to("old")
    process = start("train", "--spectrograms", spectrograms, "--runs", runs, *TINY)
    leftover = kill_when(process, lambda: hidden_temp(runs, "."), "a temporary run folder")
    assert leftover.is_dir(), "the killed run's temporary folder should still be there (nobody removed it yet)"
    assert sorted(path.name for path in runs.iterdir() if not path.name.startswith(".")) == ["latest", "old"]
    assert os.readlink(runs / "latest") == "old"

    stale_link, fresh_link = runs / ".latest.dead01.tmp", runs / ".latest.live01.tmp"
    for path in (stale_link, fresh_link):
        path.symlink_to("old")
    hour_ago = time.time() - 3600
    os.utime(stale_link, (hour_ago, hour_ago), follow_symlinks=False)  # a link left by a run killed an hour ago
    with fileio.atomic_directory(runs / "concurrent") as live:  # another run, alive and writing: its lock is held
        run = train.train(spectrograms, runs_dir=runs, settings=tiny_settings(standin_weights), progress=False).run_dir
        assert live.is_dir(), "a live run's temporary folder was removed"
    assert not leftover.exists() and not stale_link.is_symlink() and fresh_link.is_symlink()
    assert os.readlink(runs / "latest") == run.name
    for name in ["config.json", "metrics.json", "model.onnx", "model.json", "report.md"]:
        assert (run / name).is_file(), name


def test_killed_cv_leaves_no_folder_and_the_next_cv_removes_its_leftover(spectrograms, standin_weights, tmp_path):
    out = tmp_path / "cv"
    other = make_file(tmp_path / ".cv2.abcd1234.tmp" / "x")  # a dead leftover of another output: not cv's to judge
    process = start("cv", "--spectrograms", spectrograms, "--out", out, "--folds", "2", "--seeds", "1", *TINY)
    leftover = kill_when(process, lambda: hidden_temp(tmp_path, ".cv."), "a temporary CV folder")
    assert leftover.is_dir() and not os.path.lexists(out)

    # the published protocol's one run per seed: the cheapest complete CV folder
    summary = cross_validate(spectrograms, out, tiny_settings(standin_weights), seeds=[1], protocol="published",
                             progress=False)
    assert summary["n_runs"] == 1 and (out / "summary.json").is_file() and (out / "report.md").is_file()
    assert not leftover.exists() and other.exists()
