"""Stage 1 under bad input, through the real command line (`python -m heartbeat spectrograms`).

Every input is made by the tests: recordings of every kind (broken and unusual-but-valid),
bad set_b.csv files, unusable --out folders, old manifests that are corrupt or malicious, and
a run killed with SIGKILL. For each case: the exit code, one stderr line naming the file, and
nothing outside the output folder changed (a snapshot of the neighbourhood before and after).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from badinput import REPO, assert_one_line_error, hold_lock, run_cli, snapshot
from conftest import clicks, write_wav

RATE = 4000
TIMESTAMP = "1305030823364"
CSV_HEADER = "dataset,fname,label,sublabel\r\n"
BASE_LABELS = ("normal", "murmur", "extrastole")


def recording_name(number: int, label: str = "normal") -> str:
    return f"{label}__{number}_{TIMESTAMP}_A.wav"


def write_csv(data: Path, names: list[str], labels: list[str] | None = None) -> None:
    labels = labels or ["normal"] * len(names)
    rows = "".join(f"b,set_b/{name},{label},\r\n" for name, label in zip(names, labels))
    (data / "set_b.csv").write_text(CSV_HEADER + rows, newline="")


def spectrograms(data: Path, out: Path, *flags: str, timeout: float = 120):
    return run_cli("spectrograms", "--data", data, "--out", out, "--quiet", *flags, timeout=timeout)


def manifest_rows(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_complete(out: Path, recordings: set[str]) -> None:
    """OUT's manifest lists exactly these recordings, and every image it names is a file in images/."""
    rows = manifest_rows(out)
    assert {row["recording"] for row in rows} == recordings
    for row in rows:
        assert row["image"].startswith("images/") and (out / row["image"]).is_file()


# ---------------------------------------------------------------- recordings (one batch run)

def sound(seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    return clicks(seconds, rate)


def wav(seconds=2.0, rate=RATE, subtype="PCM_16", channels=1, file_format="WAV"):
    def write(path: Path) -> None:
        signal_ = sound(seconds, rate)
        samples = np.stack([signal_, 0.5 * signal_], axis=1) if channels == 2 else signal_
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), samples, rate, subtype=subtype, format=file_format)  # format from content, not name
    return write


def raw(data: bytes):
    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return write


def samples(values: np.ndarray, rate: int = RATE, subtype: str = "PCM_16"):
    return lambda path: write_wav(path, values, rate, subtype)


def header_only(path: Path) -> None:
    wav()(path)
    path.write_bytes(path.read_bytes()[:30])  # cut inside the header


def data_cut_halfway(path: Path) -> None:
    wav(seconds=4.0)(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header promises more than is there


def nan_samples(path: Path) -> None:
    values = sound()
    values[1000:1100] = np.nan
    write_wav(path, values, RATE, "FLOAT")


def fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)  # reading it would block forever


def folder(path: Path) -> None:
    path.mkdir(parents=True)


# (case, writer, None if the recording must be made, else a fragment of its one-line reason)
RECORDING_CASES = [
    ("0-byte", raw(b""), ""),
    ("truncated-header", header_only, ""),
    ("not-audio", raw(b"this is a text file, not a recording\n" * 20), ""),
    ("nan", nan_samples, ""),
    ("silent", samples(np.zeros(2 * RATE, dtype=np.float32)), ""),
    ("too-short", wav(seconds=0.3), ""),
    ("rate-below-floor", wav(seconds=3.0, rate=500), "1000"),
    ("declares-1-hz", samples(sound(1.0) * 1.0, rate=1), "1000"),  # 4000 samples at 1 Hz: 67 minutes, 7 KB
    ("longer-than-max-seconds", wav(seconds=25.0), "max-seconds"),
    ("fifo", fifo, "not a regular file"),
    ("folder", folder, "directory"),
    ("stereo", wav(channels=2), None),
    ("8-bit", wav(subtype="PCM_U8"), None),
    ("24-bit", wav(subtype="PCM_24"), None),
    ("32-bit", wav(subtype="PCM_32"), None),
    ("float", wav(subtype="FLOAT"), None),
    ("2-khz", wav(rate=2000), None),
    ("8-khz", wav(rate=8000), None),
    ("44.1-khz", wav(rate=44100), None),
    ("flac", wav(subtype="PCM_16", file_format="FLAC"), None),
    ("ogg", wav(subtype="VORBIS", file_format="OGG"), None),
    ("just-under-max-seconds", wav(seconds=19.0), None),
    ("truncated-data", data_cut_halfway, None),  # made from the samples it holds, with a warning
]
WARNED = {"truncated-data": "is truncated"}  # made, and one warning line naming the file and this


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Every recording case in one dataset, run once with --jobs 2 --max-seconds 20."""
    root = tmp_path_factory.mktemp("batch")
    data, out = root / "data", root / "out"
    names = {}
    for number, (case, write, _) in enumerate(RECORDING_CASES, start=101):
        names[case] = recording_name(number)
        write(data / "set_b" / names[case])
    write_csv(data, list(names.values()))
    before = snapshot(root, exclude=out)
    result = spectrograms(data, out, "--jobs", "2", "--max-seconds", "20")
    return SimpleNamespace(root=root, data=data, out=out, names=names, result=result, before=before,
                           after=snapshot(root, exclude=out), made={row["recording"] for row in manifest_rows(out)})


def test_batch_exit_code_one_line_per_bad_recording_and_nothing_else_touched(batch):
    refused = [case for case, _, reason in RECORDING_CASES if reason is not None]
    assert batch.result.returncode == 1, batch.result.stderr
    assert "Traceback" not in batch.result.stderr
    assert len(batch.result.error_lines()) == len(refused) + len(WARNED), batch.result.error_lines()
    assert f"{len(refused)} failed" in batch.result.stdout
    assert batch.after == batch.before


@pytest.mark.parametrize("case, reason", [(case, reason) for case, _, reason in RECORDING_CASES],
                         ids=[case for case, _, _ in RECORDING_CASES])
def test_recording(batch, case, reason):
    name = batch.names[case]
    lines = [line for line in batch.result.error_lines() if name in line]
    if case in WARNED:
        assert len(lines) == 1 and name in batch.made, batch.result.error_lines()
        assert lines[0].startswith(f"heartbeat: warning: {batch.data / 'set_b' / name}: {WARNED[case]}")
    elif reason is None:
        assert lines == [] and name in batch.made
    else:
        assert len(lines) == 1, batch.result.error_lines()
        assert lines[0].startswith(f"heartbeat: {batch.data / 'set_b' / name}: ") and reason in lines[0]
        assert name not in batch.made


# ---------------------------------------------------------------- a small good dataset for the other cases

@pytest.fixture(scope="module")
def base_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("base") / "data"
    names = [recording_name(number, label) for number, label in enumerate(BASE_LABELS, start=101)]
    for name in names:
        write_wav(data / "set_b" / name, sound(), RATE)
    write_csv(data, names, list(BASE_LABELS))
    return data


@pytest.fixture
def case_root(tmp_path, base_data) -> Path:
    """A fresh copy of the good dataset in tmp_path/data; the output goes to tmp_path/out."""
    shutil.copytree(base_data, tmp_path / "data")
    return tmp_path


def base_recordings(data: Path) -> set[str]:
    return {path.name for path in (data / "set_b").glob("*.wav")}


# ---------------------------------------------------------------- set_b.csv

def csv_text(text: str):
    return lambda csv_path: csv_path.write_text(text, newline="")


def csv_bytes(data: bytes):
    return lambda csv_path: csv_path.write_bytes(data)


def csv_folder(csv_path: Path) -> None:
    csv_path.unlink()
    csv_path.mkdir()


FIRST = recording_name(101)
CSV_CASES = [
    ("missing-column", csv_text(f"dataset,fname,sublabel\r\nb,set_b/{FIRST},\r\n"), "missing column"),
    ("missing-file", csv_text(CSV_HEADER + f"b,set_b/{recording_name(999)},normal,\r\n"), "no matching file"),
    ("duplicate", csv_text(CSV_HEADER + f"b,set_b/{FIRST},normal,\r\n" * 2), "duplicate"),
    ("dotdot-path", csv_text(CSV_HEADER + f"b,../{FIRST},normal,\r\n"), "leaves the data folder"),
    ("not-utf8", csv_bytes(CSV_HEADER.encode() + f"b,set_b/{FIRST},normal,caf\xe9\r\n".encode("latin-1")), "UTF-8"),
    ("binary", csv_bytes(bytes(range(256)) * 64), "UTF-8"),
    ("binary-with-nul", csv_bytes(b"\x00\x01\x02\x03" * 1000), "not a text csv"),
    ("control-characters", csv_text(CSV_HEADER.replace("label", "la\x1b[2Jbel")), "not a text csv"),
    ("empty", csv_bytes(b""), "missing column"),
    ("folder", csv_folder, "not a regular file"),
]


@pytest.mark.parametrize("case, spoil, reason", CSV_CASES, ids=[case for case, _, _ in CSV_CASES])
def test_bad_csv_is_one_line_exit_2_and_nothing_is_written(case_root, case, spoil, reason):
    data, out = case_root / "data", case_root / "out"
    spoil(data / "set_b.csv")
    before = snapshot(case_root)
    result = spectrograms(data, out)
    line = assert_one_line_error(result, str(data / "set_b.csv"), code=2)
    assert reason in line
    assert snapshot(case_root) == before  # not even an empty output folder


# ---------------------------------------------------------------- --out

def out_is_file(root: Path) -> tuple[Path, Path]:
    (root / "out").write_text("a file, not a folder")
    return root / "out", root / "out"


def out_under_file(root: Path) -> tuple[Path, Path]:
    (root / "notes.txt").write_text("a file")
    return root / "notes.txt" / "specs", root / "notes.txt" / "specs"


def out_broken_link(root: Path) -> tuple[Path, Path]:
    (root / "out").symlink_to(root / "nowhere")
    return root / "out", root / "out"


def images_is_link(root: Path) -> tuple[Path, Path]:
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "victim.png").write_bytes(b"precious")
    (root / "out").mkdir()
    (root / "out" / "images").symlink_to(root / "elsewhere", target_is_directory=True)
    return root / "out", root / "out" / "images"


def images_is_file(root: Path) -> tuple[Path, Path]:
    (root / "out").mkdir()
    (root / "out" / "images").write_text("a file")
    return root / "out", root / "out" / "images"


def manifest_is_folder(root: Path) -> tuple[Path, Path]:
    (root / "out" / "manifest.csv").mkdir(parents=True)
    return root / "out", root / "out" / "manifest.csv"


def out_read_only(root: Path) -> tuple[Path, Path]:
    (root / "out").mkdir()
    (root / "out").chmod(0o555)
    return root / "out", root / "out"


def out_on_sysfs(root: Path) -> tuple[Path, Path]:
    return Path("/sys/heartbeat-test-out"), Path("/sys/heartbeat-test-out")  # nobody may create folders there


OUT_CASES = [
    pytest.param(out_is_file, id="out-is-a-file"),
    pytest.param(out_under_file, id="out-under-a-file"),
    pytest.param(out_broken_link, id="out-is-a-broken-link"),
    pytest.param(images_is_link, id="images-is-a-link-out-of-OUT"),
    pytest.param(images_is_file, id="images-is-a-file"),
    pytest.param(manifest_is_folder, id="manifest-is-a-folder"),
    pytest.param(out_read_only, id="out-not-writable",
                 marks=pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")),
    pytest.param(out_on_sysfs, id="out-cannot-be-created",
                 marks=pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs")),
]


@pytest.mark.parametrize("spoil", OUT_CASES)
def test_unusable_out_is_one_line_exit_2_before_any_work(case_root, spoil):
    data = case_root / "data"
    out, named = spoil(case_root)
    before = snapshot(case_root)
    try:
        result = spectrograms(data, out)
    finally:
        if out.is_dir() and not out.is_symlink():
            out.chmod(0o755)
    assert_one_line_error(result, str(named), code=2)
    assert snapshot(case_root) == before


# ---------------------------------------------------------------- an old manifest.csv that is not ours

def old_manifest(content: bytes):
    return lambda path: path.write_bytes(content)


def manifest_fifo(path: Path) -> None:
    os.mkfifo(path)  # reading it would block forever


def manifest_link_out(path: Path) -> None:
    victim = path.parent.parent / "victim.csv"
    victim.write_text("image,recording\nimages/x.png,x.wav\n")
    path.symlink_to(victim)


def manifest_huge(path: Path) -> None:
    with open(path, "wb") as handle:
        handle.truncate(100 * 2**20)  # sparse: 100 MB that take no disk space and must not be read


HEADER_LINE = (b"image,recording,label,sublabel,patient_id,timestamp,position,window,start_s,duration_s,"
               b"native_sample_rate,source_size,source_mtime_ns,settings_hash\n")
MANIFEST_CASES = [
    ("binary", old_manifest(bytes(range(256)) * 16)),
    ("not-utf8", old_manifest(HEADER_LINE + b"images/caf\xe9.png" + b",x" * 13 + b"\n")),
    ("foreign-columns", old_manifest(b"name,size\nx.png,3\n")),
    ("wrong-number-of-fields", old_manifest(HEADER_LINE + b"images/x_w00.png,x.wav\n")),
    ("nul-bytes", old_manifest(HEADER_LINE + b"\x00" * 100 + b"\n")),
    ("fifo", manifest_fifo),
    ("link-out-of-OUT", manifest_link_out),
    ("100-MB", manifest_huge),
]


@pytest.mark.parametrize("case, spoil", MANIFEST_CASES, ids=[case for case, _ in MANIFEST_CASES])
def test_unusable_old_manifest_in_its_own_folder_is_one_warning_and_everything_is_remade(case_root, case, spoil):
    data, out = case_root / "data", case_root / "out"
    assert spectrograms(data, out, "--jobs", "1").returncode == 0  # OUT is this stage's: its other files say so
    (out / "manifest.csv").unlink()
    spoil(out / "manifest.csv")
    before = snapshot(case_root, exclude=out)
    result = spectrograms(data, out, "--jobs", "1", timeout=60)  # a FIFO must not make it wait for ever
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith(f"heartbeat: warning: {out / 'manifest.csv'}: "), lines
    assert "3 made" in result.stdout
    assert_complete(out, base_recordings(data))
    assert snapshot(case_root, exclude=out) == before


# ---------------------------------------------------------------- a malicious old manifest (the data-loss defect)

def test_old_manifest_rows_pointing_outside_images_are_never_deleted_or_reused(case_root):
    data, out = case_root / "data", case_root / "out"
    assert spectrograms(data, out, "--jobs", "1").returncode == 0
    victims = {name: f"precious {name}".encode() for name in ("victim.png", "absolute.png", "linked.png")}
    for name, content in victims.items():
        (case_root / name).write_bytes(content)
    (out / "images" / "link.png").symlink_to(case_root / "linked.png")
    (out / "images" / "sub").mkdir()
    (out / "images" / "sub" / "nested.png").write_bytes(b"inside OUT, but not a plain image of images/")
    stale = f"images/{Path(recording_name(199)).stem}_w00.png"  # a genuine stale image of a removed recording
    (out / stale).write_bytes(b"stale")

    rows = manifest_rows(out)
    fields = list(rows[0])
    gone = {**rows[0], "recording": recording_name(199)}
    planted = ["../victim.png", str(case_root / "absolute.png"), "images/link.png", "images/sub/nested.png",
               "images/../../victim.png"]
    rows += [{**gone, "image": image} for image in planted + [stale]]
    rows[0] = {**rows[0], "image": "../victim.png"}  # a current recording's row, otherwise up to date
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    before = snapshot(case_root, exclude=out)

    result = spectrograms(data, out, "--jobs", "1")
    assert result.returncode == 0, result.stderr
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith(f"heartbeat: warning: {out / 'manifest.csv'}: 6 row(s)"), lines
    assert "1 made, 2 skipped" in result.stdout  # the recording with the tampered row is remade, not trusted
    assert snapshot(case_root, exclude=out) == before
    assert {name: (case_root / name).read_bytes() for name in victims} == victims
    assert os.readlink(out / "images" / "link.png") == str(case_root / "linked.png")
    assert (out / "images" / "sub" / "nested.png").is_file()
    assert not (out / stale).exists()  # a stale image of this stage still goes
    assert_complete(out, base_recordings(data))


# ---------------------------------------------------------------- SIGKILL

def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def hold_live_temporary(target: Path) -> subprocess.Popen:
    """A live writer: a process holding fileio.atomic_path(target) open until killed."""
    code = ("import sys, time\nfrom heartbeat.fileio import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n    print(tmp, flush=True)\n"
            "    time.sleep(120)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_workers_die_with_the_parent_and_the_rerun_cleans_up(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    names = [recording_name(number) for number in range(101, 121)]
    for name in names:
        write_wav(data / "set_b" / name, sound(20.0), RATE)  # 4 windows each: long enough to be killed midway
    write_csv(data, names)

    command = [sys.executable, "-m", "heartbeat", "spectrograms", "--data", str(data), "--out", str(out), "--jobs", "2"]
    parent = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    workers: list[int] = []
    live = None
    try:
        deadline = time.monotonic() + 60
        while not any((out / "images").glob("*.png")) and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.01)
        workers = children_of(parent.pid)
        assert parent.poll() is None, "the run ended before it could be killed: give it more recordings"
        assert len(workers) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(map(is_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(is_running, workers)), "worker processes outlived their killed parent"
        assert not (out / "manifest.csv").exists()

        # What a dead run leaves (here planted, as a kill mid-write would), beside a live writer's temporary.
        dead_image = out / "images" / f".{Path(names[0]).stem}_w00.a1b2c3.tmp.png"
        dead_image.write_bytes(b"half a png")
        dead_manifest = out / ".manifest.d4e5f6.tmp.csv"
        dead_manifest.write_text("image,rec")
        not_ours = out / ".features.g7h8i9.tmp"  # another stage's name: not this stage's to remove
        not_ours.write_text("x")
        live = hold_live_temporary(out / "images" / "live.png")
        live_tmp = Path(live.stdout.readline().strip())

        result = spectrograms(data, out, "--jobs", "2")
        assert result.returncode == 0, result.stderr
        temporaries = sorted(path.name for path in out.rglob("*.tmp*"))
        assert temporaries == sorted([live_tmp.name, not_ours.name])
        assert_complete(out, set(names))
    finally:
        for pid in workers:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)  # only when the test failed: workers this test started
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if live is not None:
            live.kill()
            live.wait()


@pytest.mark.parametrize("case, spoil", MANIFEST_CASES, ids=[case for case, _ in MANIFEST_CASES])
def test_foreign_manifest_in_a_folder_not_ours_is_refused_and_kept(case_root, case, spoil):
    data, out = case_root / "data", case_root / "out"
    (out / "images").mkdir(parents=True)
    spoil(out / "manifest.csv")
    before = snapshot(case_root)
    result = spectrograms(data, out, "--jobs", "1", timeout=60)
    line = assert_one_line_error(result, str(out / "manifest.csv"), code=2)
    assert "not replaced" in line
    assert snapshot(case_root) == before


@pytest.mark.parametrize("name, content", [
    ("dataset.json", b'{"name": "my own dataset description", "license": "CC-BY"}\n'),
    ("audio_settings.json", b"[1, 2, 3]\n"),
    ("manifest.csv", b"file,label\na.wav,normal\n"),
])
def test_foreign_file_in_out_is_refused_naming_it(case_root, name, content):
    data, out = case_root / "data", case_root / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    before = snapshot(case_root)
    line = assert_one_line_error(spectrograms(data, out, "--jobs", "1"), str(out / name), code=2)
    assert "not replaced" in line
    assert snapshot(case_root) == before


# ---------------------------------------------------------------- OUT in the data folder

@pytest.mark.parametrize("where", ["data", "data/specs", "data/set_b"])
def test_out_that_is_or_is_inside_the_data_folder_is_refused(case_root, where):
    data = case_root / "data"
    (data / "manifest.csv").write_text("the user's own manifest\n")
    before = snapshot(case_root)
    line = assert_one_line_error(spectrograms(data, case_root / where), "inside the data folder", code=2)
    assert str(case_root / where) in line
    assert snapshot(case_root) == before


def test_out_reached_through_a_link_into_the_data_folder_is_refused(case_root):
    data = case_root / "data"
    (case_root / "out").symlink_to(data / "set_b", target_is_directory=True)
    before = snapshot(case_root)
    assert_one_line_error(spectrograms(data, case_root / "out"), "inside the data folder", code=2)
    assert snapshot(case_root) == before


# ---------------------------------------------------------------- zero recordings: the earlier output stays

def labels_csv(data: Path, labels: list[str]) -> list[str]:
    """The csv layout's DATA/labels.csv naming the recordings in set_b/ (sorted) with these labels; its flags."""
    rows = "".join(f"set_b/{name},{label}\n" for name, label in zip(sorted(base_recordings(data)), labels))
    (data / "labels.csv").write_text("file,label\n" + rows)
    return ["--format", "csv"]


def no_labelled_rows(data: Path) -> list[str]:
    return labels_csv(data, [])  # the header alone


def every_label_dropped(data: Path) -> list[str]:
    return ["--label-map", ",".join(f"{label}=drop" for label in BASE_LABELS)]


def only_unlabelled_rows(data: Path) -> list[str]:
    names = sorted(base_recordings(data))
    write_csv(data, names, [""] * len(names))
    return []


@pytest.mark.parametrize("spoil", [no_labelled_rows, every_label_dropped, only_unlabelled_rows])
def test_zero_labelled_recordings_is_one_line_exit_2_and_the_earlier_output_stays(case_root, spoil):
    data, out = case_root / "data", case_root / "out"
    assert spectrograms(data, out, "--jobs", "1").returncode == 0
    flags = spoil(data)
    before = snapshot(case_root)
    line = assert_one_line_error(spectrograms(data, out, "--jobs", "1", *flags), str(data), code=2)
    assert "no labelled recordings" in line
    assert snapshot(case_root) == before  # images, manifest.csv and dataset.json byte for byte


# ---------------------------------------------------------------- labels

def test_labels_differing_only_in_case_get_a_warning_naming_both(case_root):
    data, out = case_root / "data", case_root / "out"
    result = spectrograms(data, out, "--jobs", "1", *labels_csv(data, ["Murmur", "murmur", "normal"]))
    assert result.returncode == 0, result.stderr
    lines = result.error_lines()
    assert len(lines) == 1 and lines[0].startswith("heartbeat: warning: "), lines
    assert "'Murmur'" in lines[0] and "'murmur'" in lines[0] and "case" in lines[0]
    assert {row["label"] for row in manifest_rows(out)} == {"Murmur", "murmur", "normal"}  # still distinct


@pytest.mark.parametrize("word", ["DROP", "Drop"])
def test_drop_in_another_case_is_one_line_saying_it_is_lowercase(case_root, word):
    data, out = case_root / "data", case_root / "out"
    before = snapshot(case_root)
    line = assert_one_line_error(spectrograms(data, out, "--label-map", f"normal={word}"), "--label-map", code=2)
    assert "lowercase" in line and word in line
    assert snapshot(case_root) == before


# ---------------------------------------------------------------- worker caps

def test_jobs_beyond_the_cap_is_refused_at_parse_time(case_root):
    before = snapshot(case_root)
    result = spectrograms(case_root / "data", case_root / "out", "--jobs", "1025")
    line = assert_one_line_error(result, "--jobs", code=2)
    assert "1024" in line
    assert snapshot(case_root) == before


def test_jobs_are_capped_at_the_cpus_and_the_recordings(case_root, monkeypatch):
    from heartbeat.data import parallel
    from heartbeat.data import spectrograms as stage
    from heartbeat import workers

    pools = []

    class SpyPool(parallel.ProcessPoolExecutor):
        def __init__(self, max_workers=None, **options):
            pools.append(max_workers)
            super().__init__(max_workers=max_workers, **options)

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", SpyPool)
    monkeypatch.setattr(workers, "available_cpus", lambda: 64)  # a big machine: the 3 recordings are the cap
    stage.build_spectrograms(case_root / "data", case_root / "out", jobs=1000, progress=False)
    monkeypatch.setattr(workers, "available_cpus", lambda: 2)  # a small one: its CPUs are
    stage.build_spectrograms(case_root / "data", case_root / "out2", jobs=1000, progress=False)
    assert pools == [3, 2]


def test_evaluate_threads_beyond_the_cap_are_refused_at_parse_time(tmp_path):
    result = run_cli("evaluate", "--data", tmp_path, "--out", tmp_path / "out", "--threads", "10000")
    line = assert_one_line_error(result, "--threads", code=2)
    assert "1024" in line and not (tmp_path / "out").exists()


def test_evaluate_threads_are_capped_at_the_cpus(monkeypatch):
    import onnxruntime

    from heartbeat import predict, workers

    threads = []

    class SpySession:  # what predict's session is opened with; no model needed
        def __init__(self, path, options, providers):
            threads.append(options.intra_op_num_threads)

    monkeypatch.setattr(onnxruntime, "InferenceSession", SpySession)
    monkeypatch.setattr(workers, "available_cpus", lambda: 3)
    for asked in (10000, None, 2):
        predict._open_session(Path("model.onnx"), asked)
    assert threads == [3, 3, 2]


@pytest.mark.parametrize("command, flag", [("spectrograms", "--jobs"), ("evaluate", "--threads")])
def test_help_states_the_cap(command, flag, capsys):
    from heartbeat import cli

    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    help_of_flag = text[text.rindex(flag):]  # the flag's own entry, not the usage line
    assert "never more than the CPUs this process may use, at most 1024" in help_of_flag[:400]


# ---------------------------------------------------------------- a full disk in OUT

def test_write_failure_in_out_is_one_error_about_out_and_the_manifest_stays(case_root, monkeypatch, capsys):
    import errno

    from heartbeat import cli
    from heartbeat.data import manifest, parallel

    data, out = case_root / "data", case_root / "out"
    assert spectrograms(data, out, "--jobs", "1").returncode == 0
    for path in (data / "set_b").iterdir():  # every recording must be remade
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    before = snapshot(case_root)

    def disk_full(path, data_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    for module in (parallel, manifest):  # the images, then the manifest and its json files
        monkeypatch.setattr(module, "atomic_write_bytes", disk_full)
    code = cli.main(["spectrograms", "--data", str(data), "--out", str(out), "--jobs", "1", "--quiet"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"heartbeat: error: {out}: cannot be written"), lines
    assert os.strerror(errno.ENOSPC) in lines[0]
    assert snapshot(case_root) == before


# ---------------------------------------------------------------- two runs into one OUT

def test_run_into_an_out_another_command_is_writing_is_refused_and_changes_nothing(case_root):
    from heartbeat.data.spectrograms import LOCK_NAME

    data, out = case_root / "data", case_root / "out"
    assert spectrograms(data, out, "--jobs", "1").returncode == 0
    labels_csv(data, ["normal", "murmur", "murmur"])  # another label map: this run would rewrite the manifest
    holder = hold_lock(out, out / LOCK_NAME)
    try:
        before = snapshot(case_root)
        line = assert_one_line_error(spectrograms(data, out, "--jobs", "1", "--format", "csv"), str(out), code=2)
        assert "another heartbeat command is writing it" in line
        assert snapshot(case_root) == before
    finally:
        holder.kill()
        holder.wait()
    result = spectrograms(data, out, "--jobs", "1", "--format", "csv")  # its holder dead, the lock is free again
    assert result.returncode == 0, result.stderr
    assert not (out / LOCK_NAME).exists()
