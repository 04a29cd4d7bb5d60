"""fileio under real interruptions: a write that fails or is killed halfway, a folder killed while it is built.

Each writer runs in its own process and is stopped in the middle of writing real bytes (by the
kernel's file-size limit, or by SIGKILL), so a writer that wrote straight to the destination,
or built a folder in place, would leave a half-written file or folder under the final name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from heartbeat.fileio import TEMP_NAME, atomic_directory, remove_dead_leftovers

REPO = Path(__file__).resolve().parents[1]
OLD = b"the old, complete content\n"
NEW_SIZE = 1 << 20  # 1 MiB: the writer is stopped after half of it


def python(code: str, *args: str) -> subprocess.Popen:
    """A Python process running `code` (sys.argv[1:] = args), its stdout a pipe."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


# Writes NEW_SIZE bytes with atomic_write_bytes under a file-size limit of half of that: the
# kernel stops the write in the middle, with SIGXFSZ (a kill: nothing can clean up) or, when
# the signal is ignored, with an error the writer sees.
WRITE_UNDER_SIZE_LIMIT = f"""
    import resource, signal, sys
    from heartbeat.fileio import atomic_write_bytes
    # Python ignores SIGXFSZ at start-up; "die" restores the kernel's default, which kills
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN if sys.argv[2] == "ignore" else signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({NEW_SIZE // 2}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        atomic_write_bytes(sys.argv[1], b"n" * {NEW_SIZE})
    except OSError as error:
        print(error.errno)
"""

# Opens an atomic file or folder, writes half of its content, says where, and waits to be killed.
HOLD_HALF_WRITTEN = f"""
    import sys, time
    from pathlib import Path
    from heartbeat.fileio import atomic_directory, atomic_path
    target = Path(sys.argv[1])
    if sys.argv[2] == "file":
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"n" * {NEW_SIZE // 2})
            print(tmp, flush=True)
            time.sleep(120)
    else:
        with atomic_directory(target) as work:
            (work / "first.txt").write_text("written")
            print(work, flush=True)
            time.sleep(120)
"""


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.fixture
def killed_later():
    """Processes to SIGKILL and reap at the end of the test, whatever happened."""
    processes = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_write_that_fails_halfway_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "result.bin"
    target.write_bytes(OLD)
    process = python(WRITE_UNDER_SIZE_LIMIT, target, "ignore")
    out, _ = process.communicate(timeout=60)
    assert out.strip() == "27"  # EFBIG: the write really was stopped halfway
    assert target.read_bytes() == OLD
    assert names(tmp_path) == ["result.bin"]  # the temporary went with the error


def test_a_writer_killed_halfway_keeps_the_old_file_and_its_leftover_is_removed(tmp_path):
    target = tmp_path / "result.bin"
    target.write_bytes(OLD)
    process = python(WRITE_UNDER_SIZE_LIMIT, target, "die")
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGXFSZ  # killed by the kernel in the middle of the write
    assert target.read_bytes() == OLD
    leftovers = [name for name in names(tmp_path) if name != "result.bin"]
    assert len(leftovers) == 1 and TEMP_NAME.match(leftovers[0])  # hidden, marked as a temporary
    assert (tmp_path / leftovers[0]).stat().st_size == NEW_SIZE // 2
    assert remove_dead_leftovers(tmp_path) == [tmp_path / leftovers[0]]
    assert names(tmp_path) == ["result.bin"] and target.read_bytes() == OLD


def test_sigkill_mid_write_keeps_the_old_file_and_only_a_dead_writers_leftover_goes(tmp_path, killed_later):
    target = tmp_path / "result.bin"
    target.write_bytes(OLD)
    writer = python(HOLD_HALF_WRITTEN, target, "file")
    killed_later.append(writer)
    tmp = Path(writer.stdout.readline().strip())
    assert tmp.parent == tmp_path and TEMP_NAME.match(tmp.name) and tmp.stat().st_size == NEW_SIZE // 2
    assert target.read_bytes() == OLD  # nothing of the new content under the final name while it is written

    assert remove_dead_leftovers(tmp_path) == []  # its writer is alive: never touched
    assert tmp.exists()

    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert target.read_bytes() == OLD and tmp.exists()
    assert remove_dead_leftovers(tmp_path) == [tmp]
    assert names(tmp_path) == ["result.bin"]


def test_atomic_directory_appears_only_when_complete(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as work:
            assert not final.exists()  # built elsewhere, never in place
            (work / "weights.bin").write_bytes(b"w" * 1000)
            assert not final.exists()
            raise RuntimeError("failed halfway")
    assert names(tmp_path) == []  # neither the folder nor its temporary

    with atomic_directory(final) as work:
        (work / "weights.bin").write_bytes(b"w" * 1000)
        assert not final.exists()
    assert names(tmp_path) == ["run"] and names(final) == ["weights.bin"]


def test_atomic_directory_killed_while_built_never_appears_and_its_leftover_is_removed(tmp_path, killed_later):
    final = tmp_path / "run"
    builder = python(HOLD_HALF_WRITTEN, final, "folder")
    killed_later.append(builder)
    work = Path(builder.stdout.readline().strip())
    assert work.parent == tmp_path and TEMP_NAME.match(work.name) and (work / "first.txt").is_file()
    assert not final.exists()
    assert remove_dead_leftovers(tmp_path) == []  # its writer is alive
    assert work.is_dir()

    builder.send_signal(signal.SIGKILL)
    builder.wait()
    assert not final.exists()
    assert remove_dead_leftovers(tmp_path) == [work]
    assert names(tmp_path) == []


def test_remove_dead_leftovers_never_follows_links_and_only_takes_its_own_names(tmp_path):
    folder, outside = tmp_path / "out", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    dead_folder = folder / ".run.a1b2c3.tmp"  # a dead writer's folder holding a link out of it
    dead_folder.mkdir()
    (dead_folder / "escape").symlink_to(outside, target_is_directory=True)
    (dead_folder / "file-link").symlink_to(outside / "precious.txt")
    (folder / ".x.d4e5f6.tmp").symlink_to(outside, target_is_directory=True)  # a leftover's name on a link
    (folder / ".y.g7h8i9.tmp.png").symlink_to(outside / "precious.txt")
    not_ours = [".hidden", "data.tmp", ".notes.txt", "visible.a1.tmp"]
    for name in not_ours:
        (folder / name).write_text("not a temporary of fileio")
    other_prefix = folder / ".manifest.j1k2.tmp.csv"
    other_prefix.write_text("dead, but not asked for")

    removed = remove_dead_leftovers(folder, prefix=".run.")
    assert removed == [dead_folder] and not os.path.lexists(dead_folder)
    assert names(outside) == ["precious.txt"] and (outside / "precious.txt").read_text() == "keep"
    assert os.path.islink(folder / ".x.d4e5f6.tmp") and os.path.islink(folder / ".y.g7h8i9.tmp.png")
    assert other_prefix.exists() and all((folder / name).exists() for name in not_ours)

    assert remove_dead_leftovers(folder) == [other_prefix]  # every prefix: the dead .csv temporary goes too
    assert names(outside) == ["precious.txt"] and (outside / "precious.txt").read_text() == "keep"
    assert all((folder / name).exists() for name in not_ours)


def test_exclusive_lock_refuses_a_second_holder_and_frees_with_its_holder(tmp_path):
    from heartbeat.fileio import FolderBusy, exclusive_lock, lock_path

    out = tmp_path / "out"
    holder = python("""
        import sys, time
        from heartbeat.fileio import exclusive_lock
        with exclusive_lock(sys.argv[1]):
            print("held", flush=True)
            time.sleep(120)
        """, out)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match="another heartbeat command is writing it") as refused:
            with exclusive_lock(out):
                pass
        assert str(out) in str(refused.value) and "\n" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(out).exists()  # a killed holder cannot remove its lock file, but the kernel dropped its lock
    with exclusive_lock(out):
        with pytest.raises(FolderBusy):  # one holder at a time, in one process too
            with exclusive_lock(out):
                pass
    assert not lock_path(out).exists()  # removed by its last holder


def test_is_inside_resolves_links(tmp_path):
    from heartbeat.fileio import is_inside

    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data" / "sub", target_is_directory=True)
    assert is_inside(tmp_path / "data", tmp_path / "data")
    assert is_inside(tmp_path / "data" / "new" / "out", tmp_path / "data")
    assert is_inside(tmp_path / "link" / "out", tmp_path / "data")
    assert not is_inside(tmp_path / "data2", tmp_path / "data")


# ---------------------------------------------------------------- read_regular: the one bounded, link-safe read

def _refused(path, max_bytes=64, **options):
    from heartbeat.fileio import FileRefused, read_regular

    with pytest.raises(FileRefused) as caught:
        read_regular(path, max_bytes, **options)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return caught.value


def test_read_regular_reads_a_regular_file_up_to_its_limit(tmp_path):
    from heartbeat.fileio import read_regular

    (tmp_path / "exact").write_bytes(b"x" * 64)
    (tmp_path / "empty").write_bytes(b"")
    assert read_regular(tmp_path / "exact", 64) == b"x" * 64
    assert read_regular(tmp_path / "empty", 64) == b""


@pytest.mark.parametrize("case", ["link", "link-inside", "dangling-link", "fifo", "over-the-limit", "sparse-huge",
                                  "folder", "missing", "unreadable"])
def test_read_regular_refuses_what_is_not_a_small_regular_file_in_one_line(tmp_path, case):
    path = tmp_path / "x"
    (tmp_path / "target").write_bytes(b"fine")
    expected = {"link": "link", "link-inside": "link", "dangling-link": "link", "fifo": "not_regular",
                "over-the-limit": "too_big", "sparse-huge": "too_big", "folder": "not_regular", "missing": "missing",
                "unreadable": "unreadable"}[case]
    if case in ("link", "link-inside"):  # no link is followed without links_within, even one that stays near
        path.symlink_to(tmp_path / "target" if case == "link-inside" else "/etc/hostname")
    elif case == "dangling-link":
        path.symlink_to(tmp_path / "nowhere")
    elif case == "fifo":
        os.mkfifo(path)  # a blocking open would wait for a writer for ever
    elif case == "over-the-limit":
        path.write_bytes(b"x" * 65)
    elif case == "sparse-huge":
        with open(path, "wb") as handle:  # no disk space, but the size a reader sees: refused before reading
            handle.truncate(1 << 40)
    elif case == "folder":
        path.mkdir()
    elif case == "unreadable":
        path.write_bytes(b"secret")
        path.chmod(0)
        if os.access(path, os.R_OK):
            pytest.skip("running as root: mode 0 does not stop reading")
    refused = _refused(path)
    assert refused.kind == expected, str(refused)
    if expected == "too_big":
        assert refused.size == path.stat().st_size and "more than the limit of 64" in str(refused)


def test_read_regular_follows_links_only_within_the_folder_it_is_given(tmp_path):
    from heartbeat.fileio import read_regular

    folder, outside = tmp_path / "run", tmp_path / "outside.csv"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "real.csv").write_bytes(b"inside")
    outside.write_bytes(b"outside")
    (folder / "inside.csv").symlink_to(folder / "sub" / "real.csv")
    (folder / "out.csv").symlink_to(outside)
    (folder / "loop.csv").symlink_to("loop.csv")
    (tmp_path / "linked-run").symlink_to(folder, target_is_directory=True)  # `latest`: the folder itself a link

    assert read_regular(folder / "inside.csv", 64, links_within=folder) == b"inside"
    assert read_regular(tmp_path / "linked-run" / "inside.csv", 64, links_within=tmp_path / "linked-run") == b"inside"
    refused = _refused(folder / "out.csv", links_within=folder)
    assert refused.kind == "outside" and refused.target == outside
    assert _refused(folder / "loop.csv", links_within=folder).kind == "unreadable"
    assert _refused(folder / "none.csv", links_within=folder).kind == "missing"


def test_a_dataset_b_csv_linked_out_of_its_data_folder_is_refused_and_one_inside_is_read(tmp_path):
    from heartbeat.data.dataset import DatasetError, read_dataset

    data = tmp_path / "data"
    (data / "set_b").mkdir(parents=True)
    (data / "kept").mkdir()
    csv_text = "dataset,fname,label,sublabel\n"
    (data / "kept" / "set_b.csv").write_text(csv_text)
    (data / "set_b.csv").symlink_to(data / "kept" / "set_b.csv")
    assert read_dataset(data) == []  # a link that stays in the data folder is read

    (tmp_path / "elsewhere.csv").write_text(csv_text)
    (data / "set_b.csv").unlink()
    (data / "set_b.csv").symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(DatasetError) as caught:
        read_dataset(data)
    assert str(caught.value) == f"{data / 'set_b.csv'}: refused, a symbolic link leading outside the data folder"
