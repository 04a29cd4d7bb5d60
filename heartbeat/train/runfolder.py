"""A run folder's layout: its file names, where a new run goes, the `latest` pointer, versions and git commit.

A run is written into a hidden temporary folder (fileio.atomic_directory) and appears under its
final name only when complete; with no --out it gets a new folder in the runs folder, named by
time and name, and runs/latest is pointed at it. report.py and predict.py keep their own copies
of the names they read (they must not import training's dependencies); tests check that they agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from heartbeat import config
from heartbeat.fileio import remove_dead_leftovers
from heartbeat.train.settings import TrainError

CONFIG_FILE = "config.json"  # the resolved settings, classes, majority class, device, versions
SPLIT_FILE = "split.csv"  # recording, patient_id, label, split (train/valid)
EPOCHS_FILE = "epochs.csv"  # one row per epoch: losses and error rate
LR_FIND_CSV = "lr_find.csv"  # the learning-rate finder's curve (lr, loss), so `heartbeat report` can redraw it
LR_FIND_PNG = "lr_find.png"
PREDICTIONS_FILE = "predictions.csv"  # one row per validation recording: probabilities and predicted class
METRICS_FILE = "metrics.json"  # the report's figures and the run's context
REPORT_FILE = "report.md"
SCRATCH_DIR = ".fastai"  # fastai's own scratch files (lr_find's saved model), removed before the run is published
LATEST = config.LATEST  # the symbolic link in the runs folder to the newest run
# A `latest` temporary link lives for microseconds (symlink, then rename); one older than this was left by a killed run.
STALE_LINK_SECONDS = 60


@contextlib.contextmanager
def run_location(run_dir, runs_dir, label: str) -> Iterator[tuple[Path | None, Path]]:
    """(folder whose `latest` pointer to update, or None for an explicit run_dir; the run folder to create).

    Creates and checks the folder the run goes in, and removes what killed runs left there
    (only their hidden temporary folders, and only once their writer is dead). `label` ends
    the name of a new folder in runs_dir; that name stays this run's until the block ends.
    """
    if run_dir is not None:
        run_dir = Path(run_dir)
        check_new_run(run_dir)
        prepare_output_folder(run_dir.parent, run_dir)
        remove_dead_leftovers(run_dir.parent, prefix=f".{run_dir.name}.")
        yield None, run_dir
        return
    runs_dir = Path(runs_dir) if runs_dir is not None else config.RUNS_DIR
    prepare_output_folder(runs_dir, runs_dir)
    check_latest(runs_dir)
    remove_dead_leftovers(runs_dir)
    remove_stale_latest_links(runs_dir)
    with _claimed_run_name(runs_dir, label) as name:
        yield runs_dir, runs_dir / name


def check_new_run(run_dir: Path) -> None:
    """TrainError if run_dir exists: a dangling link too (the finished run would be renamed onto it)."""
    if os.path.lexists(run_dir):
        raise TrainError(f"{run_dir}: already exists (runs are never overwritten; choose another --out)")


@contextlib.contextmanager
def _claimed_run_name(runs_dir: Path, label: str) -> Iterator[str]:
    """<time>-<label>, with -2, -3 ... when taken, claimed for this run until the block ends.

    Seeds started in parallel start in the same second, and a run's folder appears only when it
    is complete: a name is therefore taken by a finished run folder or by a running run's claim,
    the hidden file `.<name>.tmp`. The claim is made atomically (os.link fails if the name exists) and
    held locked, so that after a SIGKILL the next run's remove_dead_leftovers removes it.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while True:
        name = f"{stamp}-{label}" if suffix == 1 else f"{stamp}-{label}-{suffix}"
        claim = _claim(runs_dir, name)
        if claim is None:
            suffix += 1
        elif os.path.lexists(runs_dir / name):  # a run finished under this name before the claim was made
            _release(runs_dir, name, claim)
            suffix += 1
        else:
            break
    try:
        yield name
    finally:
        _release(runs_dir, name, claim)


def _claim(runs_dir: Path, name: str) -> int | None:
    """The locked descriptor of the new claim `.<name>.tmp`, or None if another run holds that name."""
    while True:
        fd, draft = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=runs_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # before the link: a claim is never seen unlocked
            os.link(draft, runs_dir / f".{name}.tmp")
            return fd
        except FileExistsError:
            os.close(fd)
            return None
        except (BlockingIOError, FileNotFoundError):  # another run's clean-up took the draft first: draw again
            os.close(fd)
        finally:
            Path(draft).unlink(missing_ok=True)


def _release(runs_dir: Path, name: str, fd: int) -> None:
    (runs_dir / f".{name}.tmp").unlink(missing_ok=True)
    os.close(fd)


def prepare_output_folder(folder: Path, target: Path) -> None:
    """Create `folder` (where `target` will be written) if needed; TrainError naming target if it cannot be.

    Checked before any training, so that a run never trains for an hour and then cannot be saved.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocking = next((parent for parent in [folder, *folder.parents] if parent.exists() and not parent.is_dir()), None)
        reason = f"{blocking} is a file, not a folder" if blocking is not None else error.strerror or str(error)
        raise TrainError(f"{target}: cannot be created ({reason})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrainError(f"{target}: cannot be created ({folder} is not writable)")


def check_latest(runs_dir: Path) -> None:
    """TrainError if runs_dir/latest is something other than a symbolic link: it is never replaced or deleted."""
    link = runs_dir / LATEST
    if os.path.lexists(link) and not link.is_symlink():
        raise TrainError(f"{link}: not a symbolic link (a file or folder of yours?); it is left as it is: "
                         "move it away, or give --out or another --runs")


def remove_stale_latest_links(runs_dir: Path) -> None:
    """Remove `latest` temporary links a killed run left (older than STALE_LINK_SECONDS; a live one is younger).

    Both names: `.latest.<random>.tmp`, and `.latest.<pid>` of earlier versions.
    """
    for path in runs_dir.glob(f".{LATEST}.*"):
        try:
            if path.is_symlink() and time.time() - os.lstat(path).st_mtime > STALE_LINK_SECONDS:
                path.unlink()
        except OSError:
            pass  # another run removed or renamed it first


def point_latest(runs_dir: Path, run_dir: Path) -> None:
    """runs_dir/latest -> run_dir, replaced atomically (a temporary link renamed over the old one).

    `latest` is checked again: it may have become a file or folder while the run trained, and
    is then left alone (the run itself is complete). The temporary link is removed on any
    error; after a SIGKILL in the microseconds it exists, the next run removes it.
    """
    link = runs_dir / LATEST
    try:
        check_latest(runs_dir)
    except TrainError as error:
        raise TrainError(f"{error}; the run is complete in {run_dir}") from None
    tmp = runs_dir / f".{LATEST}.{secrets.token_hex(6)}.tmp"
    tmp.symlink_to(run_dir.name)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def provenance() -> dict:
    """What config.json records of where a run came from: library versions, git commit, the command line."""
    return {"versions": versions(), "git_commit": git_commit(), "command": " ".join(sys.argv)}


def versions() -> dict:
    import fastai
    import numpy
    import pandas
    import torch
    import torchvision

    from heartbeat import __version__

    return {"heartbeat": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "fastai": fastai.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__}


def git_commit() -> str:
    """The commit the code was run from, "+dirty" with uncommitted changes; "unknown" outside a checkout."""
    def git(*args) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=5)

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "") if head.returncode == 0 else "unknown"
