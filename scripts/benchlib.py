"""What every benchmark script shares: the machine line, the data, stand-in weights, and one way to time.

- `print_machine()`: the CPU's name, core count and the ISA flags the numeric kernels pick
  from (a figure means little without them: bf16 and AMX change stage 2's speed severalfold);
  every benchmark prints it first.
- `argument_parser(doc)`: a parser with `--data` (the real Dataset B beside the checkout);
  `parse_arguments` prints the machine line, then exits 2 if the data are missing.
- `write_stand_in_weights`: torchvision's randomly initialised `resnet34()` in the ImageNet
  file's format; timing does not depend on the values, so no download is needed (and no
  accuracy may ever be reported from it).
- `timed` / `run_checked`: a command in a new process, as a user types it; its wall time and
  its peak RSS from wait4, the kernel's count for that one process tree.
- `interleaved`: repeats that take turns, for medians on this shared, drifting machine.
- `figures` / `target`: the printed lines, `label : figure  [target ...: met|MISSED]`.

Progress goes to stderr, prefixed with the script's name; figures go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "heartbeat-sounds"  # the real Dataset B beside the checkout
NAME = Path(sys.argv[0]).stem.replace("_", "-")  # "bench-train" for scripts/bench_train.py: prefixes progress lines
STAND_IN_WEIGHTS_FILE = "resnet34-stand-in.pth"
# The CPU features torch's oneDNN and onnxruntime choose their kernels by: AVX2/AVX-512 for fp32,
# VNNI for int8, AVX-512 BF16 and AMX for bf16 (stage 2's --precision); NEON (asimd), SVE and BF16 on ARM.
ISA_FLAGS = {
    "x86": ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16"),
    "arm": ("asimd", "sve", "bf16", "i8mm"),
}
# ru_maxrss is in KiB on Linux and in bytes on macOS.
RUSAGE_BYTES = 1 if sys.platform == "darwin" else 1024


# ---------------------------------------------------------------- the machine

def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str) -> set[str] | None:
    """The flags of /proc/cpuinfo's first processor (x86 "flags", ARM "Features"); None when not listed."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def machine_line(name: str, cpus: int, flags: set[str] | None, machine: str) -> str:
    """"cpu: NAME, N CPUs; has ...; lacks ..." over the ISA flags that matter on this kind of CPU."""
    if flags is None:
        return f"cpu: {name}, {cpus} CPUs; ISA flags unknown (no /proc/cpuinfo)"
    relevant = ISA_FLAGS["arm" if machine.lower() in ("aarch64", "arm64") else "x86"]
    has = [flag for flag in relevant if flag in flags]
    lacks = [flag for flag in relevant if flag not in flags]
    return f"cpu: {name}, {cpus} CPUs; has {' '.join(has) or 'none of them'}; lacks {' '.join(lacks) or 'none of them'}"


def print_machine() -> None:
    """The benchmark's first line: which CPU, how many cores, and which of its ISA flags matter."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(machine_line(cpu_name(), cpus, cpu_flags(_cpuinfo()), platform.machine()), flush=True)


def print_load(before: float) -> None:
    """The 1-minute load average before the measurements and now: other tenants' work shows in every figure."""
    print(f"load average {before:.2f} before, {os.getloadavg()[0]:.2f} after (other work on the machine slows every figure)")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


# ---------------------------------------------------------------- arguments and inputs

def argument_parser(doc: str, data: bool = True) -> argparse.ArgumentParser:
    """A parser described by the script's docstring, with --data (the real Dataset B) unless data=False."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if data:
        parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                            help="folder with set_b.csv and set_b/ (default: %(default)s)")
    return parser


def parse_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, after the machine line; exits with code 2 when the benchmark cannot run."""
    args = parser.parse_args()
    print_machine()
    problem = folder_problem(args.data, getattr(args, "keep", None)) if "data" in args else None
    if problem:
        say(problem)
        raise SystemExit(2)
    return args


def folder_problem(data: Path, keep: Path | None = None) -> str | None:
    """The reason the benchmark cannot run, or None."""
    if not (data / "set_b.csv").is_file():
        return f"{NAME}: no Dataset B at {data} (pass --data)"
    if keep and keep.exists() and any(keep.iterdir()):
        return f"{NAME}: {keep} is not empty (its cached features would skew the timing)"
    return None


def stand_in_state() -> dict:
    """ResNet-34's state dict with torchvision's random initialisation (seeded: the same file every time)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet34().state_dict()


def write_stand_in_weights(folder: Path) -> Path:
    import torch

    path = folder / STAND_IN_WEIGHTS_FILE
    torch.save(stand_in_state(), path)
    return path


def make_spectrograms(data: Path, out: Path, what: str = "stage 1 spectrograms of the labelled recordings") -> Path:
    run_checked([sys.executable, "-m", "heartbeat", "spectrograms", "--data", str(data), "--out", str(out), "--quiet"], what)
    return out


@contextlib.contextmanager
def prepared_folder(data: Path, keep: Path | None) -> Iterator[tuple[Path, Path, Path]]:
    """Yield (folder, weights, spectrograms): stand-in weights and stage 1's output in a fresh
    folder (so no cached body features exist); `keep`, or a temporary folder removed after."""
    with tempfile.TemporaryDirectory() as temporary:
        scratch = keep or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        weights = write_stand_in_weights(scratch)
        yield scratch, weights, make_spectrograms(data, scratch / "spectrograms")


# ---------------------------------------------------------------- timing

@dataclass(frozen=True)
class Timed:
    seconds: float  # wall time, process start to exit
    returncode: int
    stdout: str
    stderr: str  # empty when shown on the terminal instead
    peak_rss_bytes: int  # the largest process of the command's tree (itself, or a child it waited for)

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_bytes / 2**20

    @property
    def peak_rss_gib(self) -> float:
        return self.peak_rss_bytes / 2**30


def timed(command: list[str], show_stderr: bool = False) -> Timed:
    """Run `command` in a new process and wait for it; show_stderr lets its progress bars through.

    wait4, not getrusage(RUSAGE_CHILDREN): it returns the rusage of this child alone (with its
    own waited-for children, e.g. stage 1's workers), where RUSAGE_CHILDREN would also count
    every process this benchmark ran before. Output goes to files, not pipes, so that a large
    output cannot block the child while we wait.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=None if show_stderr else err, text=True)
        _, status, rusage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return Timed(seconds, process.returncode, out.read(), err.read(), rusage.ru_maxrss * RUSAGE_BYTES)


def checked(result: Timed, what: str) -> Timed:
    """`result`, or exit the benchmark with the end of the command's output when it failed."""
    if result.returncode != 0:
        say(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"{NAME}: {what} failed (exit {result.returncode})")
    return result


def run_checked(command: list[str], what: str, show_stderr: bool = False) -> Timed:
    """timed(command), announced on stderr; exits the benchmark if it fails."""
    shown = "an inline script" if "-c" in command else " ".join(command[:6]) + (" ..." if len(command) > 6 else "")
    say(f"{NAME}: {what}: {shown}")
    return checked(timed(command, show_stderr), what)


def interleaved(repeats: int, measures: dict[str, Callable[[], Timed]]) -> dict[str, list[Timed]]:
    """Each measure `repeats` times, taking turns (a, b, a, b, ...), with a progress line per round.

    This shared 2-core machine's speed drifts by tens of per cent from one minute to the next:
    taking turns lets a noisy moment hit every measure alike, and medians then drop it.
    """
    results: dict[str, list[Timed]] = {label: [] for label in measures}
    for repeat in range(repeats):
        for label, measure in measures.items():
            results[label].append(measure())
        say(f"{NAME}: round {repeat + 1}/{repeats}: "
            + ", ".join(f"{label} {runs[-1].seconds:.2f} s" for label, runs in results.items()))
    return results


def median_seconds(runs: list[Timed]) -> float:
    return statistics.median(run.seconds for run in runs)


def listed_seconds(runs: list[Timed]) -> str:
    return ", ".join(f"{run.seconds:.2f}" for run in runs)


# ---------------------------------------------------------------- printing

def say(text: str) -> None:
    """A progress line (stderr), kept apart from the figures (stdout)."""
    print(text, file=sys.stderr, flush=True)


def target(description: str, met: bool) -> str:
    return f"[target {description}: {'met' if met else 'MISSED'}]"


def figures(rows: list[tuple[str, str]]) -> None:
    """Print `label : figure` lines with the labels padded to one width; a label "" continues the line above."""
    width = max(len(label) for label, _ in rows)
    for label, text in rows:
        print(f"{label:<{width}} : {text}" if label else f"    {text}")
