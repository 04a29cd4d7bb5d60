"""Tools for the bad-input suites: run the real command line, watch what it touches.

`snapshot` records every file, folder and link under a folder (content hashes, link targets,
never following links), so a test can show that a command changed nothing outside its output
folder. `run_cli` runs `python -m heartbeat ...` in a new process and returns its exit code,
output and peak resident memory (from wait4, the kernel's own count).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> dict[str, tuple]:
    """{relative path: (kind, details)} for everything under root except the `exclude` subtree."""
    root = Path(root)
    excluded = Path(exclude).resolve() if exclude is not None else None
    state: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        folder_path = Path(folder)
        if excluded is not None and (folder_path.resolve() == excluded or excluded in folder_path.resolve().parents):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = folder_path / name
            if excluded is not None and path.resolve() == excluded and not path.is_symlink():
                continue
            relative = str(path.relative_to(root))
            if path.is_symlink():
                state[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                state[relative] = ("dir", oct(path.stat().st_mode))
            elif path.is_file():
                state[relative] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), oct(path.stat().st_mode))
            else:
                state[relative] = ("other", path.stat().st_mode)
    return state


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int

    def error_lines(self) -> list[str]:
        """stderr's lines without progress-bar redraws (tqdm writes carriage returns)."""
        lines = []
        for line in self.stderr.splitlines():
            line = line.split("\r")[-1].strip()
            if line and not line.startswith(("spectrograms:", "body features:")) and "it/s]" not in line and "rec/s]" not in line:
                lines.append(line)
        return lines


# `python -m heartbeat ARGS`, and at exit the peak RSS of that process (VmHWM: its own memory since exec)
# and of the children it waited for, written to the file PEAK_FILE names. wait4's ru_maxrss alone is no
# good here: Linux carries the parent's peak RSS into the child through fork and exec, so a child of a
# test process that trained a model (GBs) would report the test process's peak instead of its own.
RUN_HEARTBEAT = """
import atexit, os, resource, runpy, sys
def record_peak():
    with open("/proc/self/status") as status:
        own = max([int(line.split()[1]) for line in status if line.startswith("VmHWM:")] or [0])
    with open(os.environ["HEARTBEAT_TEST_PEAK_FILE"], "w") as out:
        out.write(str(1024 * max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))
atexit.register(record_peak)
sys.argv[0] = "heartbeat"
runpy.run_module("heartbeat", run_name="__main__", alter_sys=True)
"""


def run_cli(*args: str | os.PathLike, cwd=None, env: dict | None = None, timeout: float = 240) -> CliResult:
    """Run `python -m heartbeat ARGS` to completion: exit code, output, and peak RSS in bytes (see RUN_HEARTBEAT)."""
    with tempfile.NamedTemporaryFile(prefix="peak-rss.") as peak_file:
        result = _run_heartbeat(args, cwd, {**(env or {}), "HEARTBEAT_TEST_PEAK_FILE": peak_file.name}, timeout)
        recorded = Path(peak_file.name).read_text()
    if recorded:  # missing only if the process was killed: then wait4's figure, an upper bound
        result.peak_rss_bytes = int(recorded)
    return result


def _run_heartbeat(args, cwd, env: dict, timeout: float) -> CliResult:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([sys.executable, "-c", RUN_HEARTBEAT, *map(os.fsdecode, args)], cwd=cwd,
                                   env=environment, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                raise subprocess.TimeoutExpired(process.args, timeout)
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return CliResult(process.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                         usage.ru_maxrss * 1024)


def assert_one_line_error(result: CliResult, names: str | list[str], code: int | None = None) -> str:
    """The command failed (with `code` if given) and said so in one stderr line naming the file(s)."""
    lines = result.error_lines()
    assert result.returncode != 0, f"exit code 0; stderr: {result.stderr!r}"
    if code is not None:
        assert result.returncode == code, f"exit code {result.returncode}, expected {code}; stderr: {result.stderr!r}"
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    assert "Traceback" not in result.stderr
    for name in [names] if isinstance(names, str) else names:
        assert str(name) in lines[0], f"{name!r} not named in {lines[0]!r}"
    return lines[0]


def hold_lock(target: str | os.PathLike, lock: str | os.PathLike) -> subprocess.Popen:
    """Another heartbeat command at work on `target`: a process holding fileio.exclusive_lock(target, lock) until
    killed (the caller kills it). Returns once the lock is held."""
    code = ("import sys, time\nfrom heartbeat.fileio import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], sys.argv[2]):\n    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, os.fspath(target), os.fspath(lock)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held", "the lock holder did not start"
    return holder
