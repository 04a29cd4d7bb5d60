"""The benchmark scripts' shared helpers (scripts/benchlib.py) and the device benchmark (scripts/bench_device.py).

The benchmarks themselves need the real data and minutes of CPU; these tests check the parts
that decide what they print: per-process peak RSS, the machine line, turn-taking repeats, the
device table, and the device choice with the GPU's availability patched.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_device  # noqa: E402  (after the path is set)
import benchlib  # noqa: E402

ALLOCATE = "import sys; block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096]); print('done'); sys.exit(3)"


def test_timed_reports_each_process_own_peak_rss_exit_code_and_output():
    # Measured from a fresh, small interpreter, as a benchmark script is: Linux carries the parent's
    # peak RSS into a child through fork and exec, and this test process may have trained models.
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import benchlib; "
        f"big = benchlib.timed([sys.executable, '-c', {ALLOCATE!r}]); "
        "small = benchlib.timed([sys.executable, '-c', 'pass']); "
        "print(json.dumps([big.returncode, big.stdout, big.peak_rss_mib, small.returncode, small.peak_rss_mib]))"
    )
    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    output = subprocess.run([sys.executable, "-c", probe, scripts], capture_output=True, text=True, check=True).stdout
    big_code, big_stdout, big_mib, small_code, small_mib = json.loads(output)
    assert (big_code, big_stdout) == (3, "done\n")
    assert big_mib > 290  # the 300 MiB it touched
    # wait4 counts the small process alone; RUSAGE_CHILDREN would still report the big one
    assert small_mib < 100 and small_code == 0


def test_checked_exits_with_the_commands_output_when_it_fails(capsys):
    with pytest.raises(SystemExit, match="the thing failed \\(exit 3\\)"):
        benchlib.run_checked([sys.executable, "-c", ALLOCATE], "the thing")
    assert "done" in capsys.readouterr().err


def test_machine_line_names_the_flags_present_and_missing():
    cpuinfo = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    assert benchlib.machine_line("Some CPU", 2, benchlib.cpu_flags(cpuinfo), "x86_64") == (
        "cpu: Some CPU, 2 CPUs; has avx2 avx512f avx512_vnni; lacks avx512_bf16 amx_bf16 amx_int8 avx512_fp16")
    arm = benchlib.machine_line("Neoverse", 4, benchlib.cpu_flags("Features\t: fp asimd bf16\n"), "aarch64")
    assert arm == "cpu: Neoverse, 4 CPUs; has asimd bf16; lacks sve i8mm"
    assert "ISA flags unknown" in benchlib.machine_line("M2", 8, benchlib.cpu_flags(""), "arm64")


def test_interleaved_takes_turns_and_keeps_each_measures_results():
    order = []

    def measure(label):
        def run():
            order.append(label)
            return benchlib.Timed(len(order), 0, "", "", 0)
        return run

    results = benchlib.interleaved(2, {"a": measure("a"), "b": measure("b")})
    assert order == ["a", "b", "a", "b"]
    assert [run.seconds for run in results["a"]] == [1, 3] and benchlib.median_seconds(results["b"]) == 3


def test_device_table_compares_each_row_with_the_cpu_fp32_row_of_its_pass():
    rows = [bench_device.Row("features pass", "cpu", "Xeon", "fp32", 8.0, 16),
            bench_device.Row("features pass", "cpu", "Xeon", "bf16 autocast", 4.0, 16),
            bench_device.Row("finetune epoch", "cpu", "Xeon", "fp32", 20.0, 16),
            bench_device.Row("features pass", "cuda:0", "A100", "bf16 autocast", 0.5, 16),
            bench_device.Row("finetune epoch", "cuda:0", "A100", "fp32", 2.0, 16)]
    lines = bench_device.table(rows)
    assert lines[0].startswith("| pass | device | device name | precision | seconds | windows/s |")
    assert lines[3] == "| features pass | cpu | Xeon | bf16 autocast | 4.00 | 4.00 | 2.00x |"
    assert lines[5] == "| features pass | cuda:0 | A100 | bf16 autocast | 0.50 | 32.00 | 16.00x |"
    assert lines[6].endswith("| 2.00 | 8.00 | 10.00x |")


def pretend_available(monkeypatch, cuda: bool, mps: bool) -> None:
    """Patch torch's GPU checks; functools.wraps keeps __wrapped__, which torch's compiler looks up on import."""
    import torch

    for module, answer in ((torch.cuda, cuda), (torch.backends.mps, mps)):
        monkeypatch.setattr(module, "is_available", functools.wraps(module.is_available)(lambda answer=answer: answer))


def test_devices_and_precisions_follow_what_torch_reports(monkeypatch):
    import torch

    pretend_available(monkeypatch, cuda=False, mps=True)
    assert [str(device) for device in bench_device.devices()] == ["cpu", "mps"]
    pretend_available(monkeypatch, cuda=True, mps=True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert [str(device) for device in bench_device.devices()] == ["cpu", "cuda:1"]

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert bench_device.reduced_precision(torch.device("cuda", 0)) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert bench_device.reduced_precision(torch.device("cuda", 0)) == torch.bfloat16
    assert bench_device.reduced_precision(torch.device("mps")) == torch.float16
    assert bench_device.precision_name(None) == "fp32" and bench_device.precision_name(torch.float16) == "fp16 autocast"


def test_bench_device_without_a_gpu_prints_the_cpu_rows(monkeypatch, capsys):
    import torch

    pretend_available(monkeypatch, cuda=False, mps=False)
    monkeypatch.setattr(sys, "argv", ["bench_device.py", "--windows", "4", "--image-size", "32"])
    assert bench_device.main() == 0
    out = capsys.readouterr().out
    assert out.startswith("cpu: ") and "no GPU found: CPU only" in out
    rows = [line for line in out.splitlines() if line.startswith("| f")]
    cpu_precisions = ["fp32", "bf16 autocast"] if bench_device.reduced_precision(torch.device("cpu")) else ["fp32"]
    assert [row.split(" | ")[0:4:3] for row in rows] == (
        [["| features pass", precision] for precision in cpu_precisions] + [["| finetune epoch", "fp32"]])
    assert rows[0].endswith("| 1.00x |") and rows[-1].endswith("| 1.00x |")
    assert "4 windows of 32 px (random pixels)" in out and all(row.split(" | ")[1] == "cpu" for row in rows)
