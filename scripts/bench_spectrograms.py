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

import csv
import dataclasses
import sys
import tempfile
from pathlib import Path

import benchlib
from benchlib import checked, figures, listed_seconds, median_seconds, run_checked, target, timed

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


def recipe_sample(spectrograms: Path, data: Path, count: int) -> tuple[list[str], int, int]:
    """`count` recordings spread evenly over stage 1's output, and its recordings and images counts."""
    with open(spectrograms / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    recordings = sorted({row["recording"] for row in rows})
    sample = [str(data / "set_b" / name) for name in recordings[:: max(1, len(recordings) // count)]][:count]
    return sample, len(recordings), len(rows)


def main() -> int:
    parser = benchlib.argument_parser(__doc__)
    parser.add_argument("--recipe-files", type=int, default=60, help="files the (slow) published recipe is timed on")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each, medians reported")
    args = benchlib.parse_arguments(parser)
    heartbeat = [sys.executable, "-m", "heartbeat", "spectrograms", "--data", str(args.data), "--include-unlabelled", "--quiet"]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        outs = iter(scratch / f"spectrograms{repeat}" for repeat in range(args.repeats))

        def stage() -> benchlib.Timed:  # a fresh output folder each time
            return checked(timed([*heartbeat, "--out", str(next(outs))]), "stage 1")

        def recipe() -> benchlib.Timed:  # the recipe times its own loop (imports and the first file excluded)
            out = Path(tempfile.mkdtemp(prefix="recipe", dir=scratch))
            result = checked(timed([sys.executable, "-c", PUBLISHED_RECIPE, str(out), *sample]), "the published recipe")
            return dataclasses.replace(result, seconds=float(result.stdout.strip().splitlines()[-1]))

        # The first round by hand: its output folder also gives the no-op rerun and the recipe's sample.
        first = stage()
        noop = run_checked([*heartbeat, "--out", str(scratch / "spectrograms0")], "no-op rerun")
        sample, files, images = recipe_sample(scratch / "spectrograms0", args.data, args.recipe_files)
        first_recipe = recipe()
        measured = benchlib.interleaved(args.repeats - 1, {"stage 1": stage, "published recipe": recipe})
        stage_runs, recipe_runs = [first, *measured["stage 1"]], [first_recipe, *measured["published recipe"]]

    stage_s, recipe_s = median_seconds(stage_runs), median_seconds(recipe_runs)
    ours_fps, recipe_fps = files / stage_s, len(sample) / recipe_s
    peak_rss_mib = max(first.peak_rss_mib, noop.peak_rss_mib)  # of the first run and its no-op rerun
    figures([
        ("stage 1, this project", f"{files} files ({images} images) in {stage_s:.2f} s wall, median of {args.repeats} "
                                  f"fresh runs ({listed_seconds(stage_runs)}) = {ours_fps:.1f} files/s  "
                                  f"{target('all 656 in <= 10 s', stage_s <= 10)}"),
        ("stage 1, published", f"{len(sample)} files in {recipe_s:.2f} s, median of {args.repeats} "
                               f"({listed_seconds(recipe_runs)}) = {recipe_fps:.2f} files/s (one process, imports excluded)"),
        ("speed-up", f"{ours_fps / recipe_fps:.1f}x  {target('>= 10x', ours_fps / recipe_fps >= 10)}"),
        ("no-op rerun", f"{noop.seconds:.2f} s wall  {target('<= 1 s', noop.seconds <= 1)}"),
        ("peak RSS", f"{peak_rss_mib:.0f} MiB, largest single process of the stage  {target('<= 1 GiB', peak_rss_mib <= 1024)}"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
