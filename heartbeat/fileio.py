"""Atomic file writes, and the clean-up of what a killed writer left behind.

Every output of this project is written to a temporary file in the destination folder
and then renamed over the destination (an atomic step on POSIX file systems), so a reader
sees either the old complete file or the new complete file, never half of one.

A writer killed with SIGKILL cannot remove its temporary file or folder. So that the next
run can, every temporary name ends in `.tmp` (before any suffix: `.x.ab12.tmp.png`) and its
writer holds an exclusive `flock` on it for as long as it writes. The kernel drops the lock
when the process dies, however it dies: a temporary whose lock can be taken has no living
writer and is removed by `remove_dead_leftovers`; one whose lock is held belongs to a run
that is still alive and is never touched. (A lock is better than a process id in the name:
process ids are reused, and a writer in another container has another id space.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from heartbeat.text import error_reason  # standard library only

# What every temporary name of this module looks like: hidden, a random part, ".tmp", an optional suffix.
TEMP_NAME = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fresh file: nobody else can hold it


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    On any exception the temporary file is removed and `path` is left as it was.
    The temporary name keeps the destination's suffix so that writers that choose a
    format from the suffix (matplotlib, PIL) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        _lock(fd)  # held until the rename: marks the temporary as having a living writer
        yield tmp
        # mkstemp creates the file 0600; outputs are ordinary files, readable like any other.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it to `path` if the block succeeds.

    The folder appears complete or not at all; on any exception the temporary folder is
    removed, and after a SIGKILL the next run's `remove_dead_leftovers` removes it. `path`
    must not exist yet (os.replace cannot replace a non-empty folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    fd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _lock(fd)
        work_dir.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide the folder from other users
        yield work_dir
        os.replace(work_dir, path)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def remove_dead_leftovers(folder: str | os.PathLike, prefix: str = ".") -> list[Path]:
    """Remove the temporary files and folders that a dead writer left in `folder`; return them.

    Only names this module makes (TEMP_NAME) that start with `prefix` are considered, and only
    those whose writer's lock can be taken (the writer is gone). Symbolic links are skipped, never
    followed (this module makes no temporary links). Nothing outside `folder` is touched.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and TEMP_NAME.match(entry.name)):
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            continue  # this module never makes temporary links; not ours to judge
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if entry.is_dir() else 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a living writer holds it (or it cannot be locked: not ours to judge)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def entry_kind(path: str | os.PathLike) -> str:
    """"file" for a regular file itself, "absent", or "other" (a link, which could point anywhere; a folder; a FIFO)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "absent"
    except OSError:  # a name too long, say: nothing this project wrote
        return "other"
    return "file" if stat.S_ISREG(mode) else "other"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    # numpy scalars and arrays turn up in metrics; write them as plain JSON numbers and lists.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------- output folders: one writer at a time, never an input

class FolderBusy(RuntimeError):
    """Another process holds the output lock: another heartbeat command is writing that folder; one-line message."""


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of output `target`: `.<name>.lock` beside it (where its temporaries are made too)."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, lock: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `lock` (default lock_path(target)) for the block; FolderBusy naming target if taken.

    Refuses at once rather than waiting: a second command into the same output is a mistake the user
    should hear of now, and the first may run for hours, so any bounded wait would mostly end in the
    same refusal. The kernel drops the lock when its holder dies, however it dies, so a killed
    command never blocks the next; its lock file is reused and then removed. The file is removed
    while still locked, and a lock taken on a file that was meanwhile removed or replaced is
    retried, so two processes can never both hold it.
    """
    lock = Path(lock) if lock is not None else lock_path(target)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(f"{target}: another heartbeat command is writing it (it holds {lock}); "
                             "try again when that one has finished") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.lstat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            break
        os.close(fd)  # its holder removed it as we opened it: lock the file now in its place
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it, links resolved (neither needs to exist)."""
    real_path, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return real_path == real_folder or real_path.is_relative_to(real_folder)


# ---------------------------------------------------------------- reading an input: one bounded, link-safe read

class FileRefused(ValueError):
    """read_regular's refusal, one line: str() is "PATH: problem". `kind` (missing, link, outside, not_regular,
    too_big, unreadable) lets a caller word it its own way; `size` is set for too_big, `target` for outside."""

    def __init__(self, path, kind: str, problem: str, *, size: int | None = None, target: Path | None = None):
        super().__init__(f"{path}: {problem}")
        self.path, self.kind, self.problem, self.size, self.target = Path(path), kind, problem, size, target


def read_regular(path: str | os.PathLike, max_bytes: int, *, links_within: str | os.PathLike | None = None) -> bytes:
    """The bytes of `path`, a regular file of at most max_bytes; FileRefused (one line) for anything else.

    No link is followed: a link at `path` is refused. With `links_within` (a folder), `path` is
    resolved once and read only if it lies inside that folder, so links that stay in it are allowed.
    Opened with O_NONBLOCK, so a FIFO is refused instead of waited on. The size is checked on the
    open file before a byte is read, and the read is bounded even if the file grows meanwhile:
    memory stays bounded whatever the file is.
    """
    path = Path(path)
    target = path if links_within is None else _resolved_inside(path, Path(links_within))
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileRefused(path, "missing", "not found") from None
    except OSError as error:
        if error.errno == errno.ELOOP and os.path.islink(target):
            raise FileRefused(path, "link", "a symbolic link, not followed") from None
        raise FileRefused(path, "unreadable", f"cannot be read ({error.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(path, "not_regular", "not a regular file")
        if info.st_size <= max_bytes:
            with open(fd, "rb", closefd=False) as handle:
                data = handle.read(max_bytes + 1)
        else:
            data = b""
    except OSError as error:
        raise FileRefused(path, "unreadable", f"cannot be read ({error.strerror or error})") from None
    finally:
        os.close(fd)
    size = max(info.st_size, len(data))
    if size > max_bytes:
        raise FileRefused(path, "too_big", f"{size} bytes, more than the limit of {max_bytes}", size=size)
    return data


def _resolved_inside(path: Path, folder: Path) -> Path:
    """`path` with every link resolved; FileRefused unless it exists and lies inside `folder` (its links resolved too)."""
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        raise FileRefused(path, "missing", "not found") from None
    except (OSError, RuntimeError) as error:  # a link loop: RuntimeError before Python 3.13
        raise FileRefused(path, "unreadable", f"cannot be opened ({error_reason(error)})") from None
    if Path(os.path.realpath(folder)) not in target.parents:
        raise FileRefused(path, "outside", f"a link out of {folder} (to {target}), not followed", target=target)
    return target
