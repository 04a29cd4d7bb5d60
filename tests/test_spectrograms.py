"""Stage 1 end to end on synthetic recordings: outputs, incrementality, atomicity, bad files, CLI."""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_DATA, needs_real_data
from heartbeat import cli
from heartbeat.data import audio
from heartbeat.data import png
from heartbeat.data import manifest as stage_files
from heartbeat.data.manifest import MANIFEST_COLUMNS
from heartbeat.data.spectrograms import build_spectrograms
from heartbeat.fileio import atomic_path


def manifest(out):
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def image_bytes(out):
    return {path.name: path.read_bytes() for path in sorted((out / "images").glob("*.png"))}


def test_stage_writes_images_and_manifest(dataset_dir, tmp_path):
    out = tmp_path / "specs"
    summary = build_spectrograms(dataset_dir, out, jobs=1, progress=False)
    rows = manifest(out)
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert summary.failed == [] and summary.images == len(rows) and summary.made == summary.recordings
    assert all(row["label"] in {"normal", "murmur", "extrastole"} for row in rows)  # labelled only by default
    recordings = {row["recording"] for row in rows}
    assert len(recordings) == summary.recordings
    for row in rows:
        with Image.open(out / row["image"]) as image:
            assert image.size == (512, 512) and image.mode == "L"
        expected_windows = max(1, -(-int(float(row["duration_s"]) * 4000 + 0.5) // audio.SETTINGS.window_samples))
        assert int(row["window"]) < expected_windows
    long_ones = [row for row in rows if float(row["duration_s"]) > audio.SETTINGS.window_seconds + 0.1]
    assert long_ones and any(row["window"] == "1" for row in long_ones), "long recordings are cut into windows"
    assert (out / "audio_settings.json").is_file()

    with_unlabelled = build_spectrograms(dataset_dir, out, jobs=1, include_unlabelled=True, progress=False)
    assert with_unlabelled.recordings > summary.recordings
    assert with_unlabelled.up_to_date == summary.recordings  # the labelled ones were not redone
    assert any(row["label"] == "" for row in manifest(out))


def test_rerun_is_a_no_op_and_a_changed_source_is_redone(dataset_dir, tmp_path):
    out = tmp_path / "specs"
    build_spectrograms(dataset_dir, out, jobs=2, progress=False)
    before = {path: path.stat().st_mtime_ns for path in (out / "images").iterdir()}
    again = build_spectrograms(dataset_dir, out, jobs=2, progress=False)
    assert again.made == 0 and again.up_to_date == again.recordings
    assert {path: path.stat().st_mtime_ns for path in (out / "images").iterdir()} == before

    changed = sorted((dataset_dir / "set_b").glob("normal_*.wav"))[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = build_spectrograms(dataset_dir, out, jobs=2, progress=False)
    assert third.made == 1 and third.up_to_date == third.recordings - 1

    other_settings = dataclasses.replace(audio.SETTINGS, top_db=60.0)
    fourth = build_spectrograms(dataset_dir, out, jobs=1, progress=False, settings=other_settings)
    assert fourth.made == fourth.recordings


def test_deterministic_and_parallel_equals_serial(dataset_dir, tmp_path):
    build_spectrograms(dataset_dir, tmp_path / "one", jobs=1, progress=False)
    build_spectrograms(dataset_dir, tmp_path / "two", jobs=2, progress=False)
    assert image_bytes(tmp_path / "one") == image_bytes(tmp_path / "two")
    strip = lambda rows: [{k: v for k, v in row.items() if k != "source_mtime_ns"} for row in rows]  # noqa: E731
    assert strip(manifest(tmp_path / "one")) == strip(manifest(tmp_path / "two"))


def test_bad_file_is_listed_and_the_rest_processed(dataset_dir, tmp_path, capsys):
    out = tmp_path / "specs"
    build_spectrograms(dataset_dir, out, jobs=1, progress=False)
    first_images = image_bytes(out)
    victim = sorted((dataset_dir / "set_b").glob("murmur_*.wav"))[0]
    victim.write_bytes(b"RIFF\x00\x00garbage")  # corrupt
    code = cli.main(["spectrograms", "--data", str(dataset_dir), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    error_lines = [line for line in captured.err.splitlines() if victim.name in line]
    assert len(error_lines) == 1 and "not a readable audio file" in error_lines[0]
    assert "1 failed" in captured.out
    rows = manifest(out)
    assert victim.name not in {row["recording"] for row in rows}
    assert len({row["recording"] for row in rows}) > 0
    # earlier outputs survive a run with failures, the failed recording's images included
    assert image_bytes(out) == first_images


def test_interrupted_write_leaves_no_partial_file(dataset_dir, tmp_path, monkeypatch):
    out = tmp_path / "specs"
    build_spectrograms(dataset_dir, out, jobs=1, progress=False)
    manifest_before = (out / "manifest.csv").read_bytes()
    images_before = image_bytes(out)

    calls = {"n": 0}
    real_encode = png.encode_png

    def encode_then_die(image):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return real_encode(image)

    monkeypatch.setattr(png, "encode_png", encode_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_spectrograms(dataset_dir, out, jobs=1, progress=False, settings=dataclasses.replace(audio.SETTINGS, top_db=70.0))
    assert (out / "manifest.csv").read_bytes() == manifest_before
    leftovers = [path.name for path in out.rglob(".*")]
    assert leftovers == []
    for name, data in image_bytes(out).items():
        if data != images_before[name]:  # remade before the interruption: must be a complete PNG
            with Image.open(out / "images" / name) as image:
                image.load()


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the ne")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["result.txt"]


def test_cli_bad_data_folder_is_one_line_and_exit_2(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "set_b").mkdir(parents=True)
    (data / "set_b.csv").write_text("dataset,fname\r\n")
    assert cli.main(["spectrograms", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "set_b.csv" in err and "missing column" in err
    assert not (tmp_path / "o" / "manifest.csv").exists()


def test_cli_version_and_help_answer_without_heavy_imports():
    import subprocess
    import sys

    code = "import sys, heartbeat.cli as c\ntry: c.main(['--version'])\nexcept SystemExit: pass\nprint(sorted(m for m in ('numpy','torch','fastai','librosa','pandas') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "heartbeat 0." in result.stdout and result.stdout.strip().endswith("[]")


@needs_real_data
def test_real_data_a_few_recordings(tmp_path):
    """The stage on a slice of the real download (a copy of a few files; the shared folder is never written)."""
    import shutil

    data = tmp_path / "data"
    (data / "set_b").mkdir(parents=True)
    lines = (REAL_DATA / "set_b.csv").read_text().splitlines()
    keep = [lines[0], lines[1], lines[60], lines[200], lines[450]]
    (data / "set_b.csv").write_text("\r\n".join(keep) + "\r\n")
    from heartbeat.data.dataset import disk_name_candidates

    for line in keep[1:]:
        _, fname, label, sublabel = line.split(",")
        for name in disk_name_candidates(fname.split("/")[-1], label, sublabel):
            if (REAL_DATA / "set_b" / name).exists():
                shutil.copy(REAL_DATA / "set_b" / name, data / "set_b" / name)
    summary = build_spectrograms(data, tmp_path / "out", jobs=1, progress=False, include_unlabelled=True)
    assert summary.failed == [] and summary.recordings == 4 and summary.images >= 4


@pytest.mark.parametrize(
    "image, own",
    [
        ("images/normal__103_1305031931979_B_w00.png", True),
        ("images/x y_w12.png", True),
        ("../victim.png", False),
        ("/tmp/victim.png", False),
        ("images/../victim.png", False),
        ("images/../../victim.png", False),
        ("images/sub/x_w00.png", False),
        ("images//x_w00.png", False),
        ("images/x_w00.jpg", False),
        ("x_w00.png", False),
        ("images/", False),
        ("images/.x_w00.a1b2c3.tmp.png", False),  # a writer's temporary: never ours to delete
        ("images/x\x00.png", False),
    ],
)
def test_only_plain_png_names_inside_images_count_as_this_stages_images(image, own):
    assert stage_files.is_own_image(image) is own


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "ten"])
def test_max_seconds_must_be_a_positive_number(value, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["spectrograms", "--max-seconds", value])
    assert caught.value.code == 2
    assert "--max-seconds" in capsys.readouterr().err


def test_a_log_gets_the_summary_line_without_progress_bar_frames(dataset_dir, tmp_path, capsys):
    # capsys's stderr is no terminal, as a log file or a pipe is: no bar redrawn with carriage returns
    code = cli.main(["spectrograms", "--data", str(dataset_dir), "--out", str(tmp_path / "out"), "--jobs", "1"])
    captured = capsys.readouterr()
    assert code == 0
    assert "\r" not in captured.err and "\r" not in captured.out
    assert "spectrograms:" in captured.out and "made" in captured.out
