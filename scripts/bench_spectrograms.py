"""Benchmark stage 1 against the published recipe on the real Dataset B; prints its figures.

    python scripts/bench_spectrograms.py [--data DIR] [--recipe-files N] [--repeats N]

Measures, in one run on the same files:
- this project's stage: all recordings (--include-unlabelled), a fresh output folder, as a
  user runs it (a new process), wall time and files/s;
- the no-op rerun (nothing changed) wall time;
- peak RSS of the stage's processes (the parent and its largest worker);
- the published recipe on a sample of the same files (per file: librosa.load at 22.05 kHz,
  melspectrogram, power_to_db(ref=np.max), specshow on a matplotlib figure, savefig; one
  process), files/s, and the ratio.
Targets (2-core machine): ratio >= 10x, all 656 in <= 10 s, no-op rerun <= 1 s, RSS <= 1 GiB.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "heartbeat-sounds"

PUBLISHED_RECIPE = r'''
import sys, time
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import librosa, librosa.display

paths, out = sys.argv[2:], Path(sys.argv[1])
# first file untimed: imports and numba compilation are not per-file costs
def one(path, index):
    y, sr = librosa.load(path)                       # resamples to 22050 Hz
    mel = librosa.feature.melspectrogram(y=y, sr=sr)
    db = librosa.power_to_db(mel, ref=np.max)
    fig = plt.figure(figsize=(5.12, 5.12), dpi=100)  # 512x512 px
    ax = fig.add_axes([0, 0, 1, 1]); ax.axis("off")
    librosa.display.specshow(db, sr=sr, ax=ax)
    fig.savefig(out / f"{index}.png", dpi=100)
    plt.close(fig)
one(paths[0], -1)
start = time.perf_counter()
for index, path in enumerate(paths):
    one(path, index)
print(time.perf_counter() - start)
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--recipe-files", type=int, default=60, help="files the (slow) published recipe is timed on")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each, medians reported")
    args = parser.parse_args()
    if not (args.data / "set_b.csv").is_file():
        print(f"bench-spectrograms: no Dataset B at {args.data} (pass --data)", file=sys.stderr)
        return 2
    heartbeat = [sys.executable, "-m", "heartbeat", "spectrograms", "--data", str(args.data), "--include-unlabelled", "--quiet"]
    stage_runs, recipe_runs = [], []
    with tempfile.TemporaryDirectory() as scratch:
        # Interleaved repeats, medians reported: this shared 2-core machine's speed drifts by
        # tens of per cent from one minute to the next, and a noisy moment should hit both.
        for repeat in range(args.repeats):
            out = Path(scratch) / f"spectrograms{repeat}"
            start = time.perf_counter()
            first = subprocess.run([*heartbeat, "--out", str(out)], capture_output=True, text=True)
            stage_runs.append(time.perf_counter() - start)
            if first.returncode != 0:
                print(first.stdout, first.stderr, file=sys.stderr)
                return 1
            if repeat == 0:
                start = time.perf_counter()
                subprocess.run([*heartbeat, "--out", str(out)], check=True, capture_output=True)
                noop_s = time.perf_counter() - start
                # ru_maxrss of children so far (stage runs only): the largest single process of the stage
                peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
                import csv

                with open(out / "manifest.csv", newline="") as handle:
                    rows = list(csv.DictReader(handle))
                recordings = sorted({row["recording"] for row in rows})
                files = len(recordings)
                sample = [str(args.data / "set_b" / name) for name in recordings[:: max(1, files // args.recipe_files)]][: args.recipe_files]
            recipe_out = Path(scratch) / f"recipe{repeat}"
            recipe_out.mkdir()
            recipe = subprocess.run([sys.executable, "-c", PUBLISHED_RECIPE, str(recipe_out), *sample],
                                    capture_output=True, text=True, check=True)
            recipe_runs.append(float(recipe.stdout.strip().splitlines()[-1]))

    stage_s, recipe_s = statistics.median(stage_runs), statistics.median(recipe_runs)
    ours_fps = files / stage_s
    recipe_fps = len(sample) / recipe_s
    print(f"stage 1, this project : {files} files ({len(rows)} images) in {stage_s:.2f} s wall, median of {args.repeats} "
          f"fresh runs ({', '.join(f'{t:.2f}' for t in stage_runs)}) = {ours_fps:.1f} files/s  (target: all 656 in <= 10 s)")
    print(f"stage 1, published    : {len(sample)} files in {recipe_s:.2f} s, median of {args.repeats} "
          f"({', '.join(f'{t:.2f}' for t in recipe_runs)}) = {recipe_fps:.2f} files/s (one process, imports excluded)")
    print(f"speed-up              : {ours_fps / recipe_fps:.1f}x  (target >= 10x)")
    print(f"no-op rerun           : {noop_s:.2f} s wall  (target <= 1 s)")
    print(f"peak RSS              : {peak_rss_mib:.0f} MiB, largest single process of the stage  (target <= 1 GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
