"""Benchmark 5-fold patient-grouped cross-validation on the real Dataset B; prints its figures.

    python scripts/bench_cv.py [--data DIR] [--folds 5] [--keep DIR]

In one run: stage 1 into a fresh folder (no cached body features, so the one pass of the
frozen body over every image is included), then `heartbeat cv --folds 5` as a user types it
(a new process) with the default training settings (features mode, 512 px, 5 epochs) on the
pretrained path with a stand-in weights file (torchvision's resnet34() with random values:
timing does not depend on the values, accuracy does, so no accuracy is printed). Prints the
wall time, the seconds spent on the body features, and peak RSS. Target (2-core machine):
<= 10 minutes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import benchlib
from benchlib import figures, run_checked, target


def main() -> int:
    parser = benchlib.argument_parser(__doc__)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the spectrograms, weights and CV folder here")
    args = benchlib.parse_arguments(parser)

    with benchlib.prepared_folder(args.data, args.keep) as (scratch, weights, spectrograms):
        load_before = os.getloadavg()[0]
        cv = run_checked([sys.executable, "-m", "heartbeat", "cv", "--spectrograms", str(spectrograms), "--weights", str(weights),
                          "--folds", str(args.folds), "--out", str(scratch / "cv"), "--quiet"],
                         f"heartbeat cv --folds {args.folds}, default settings", show_stderr=True)
        summary = json.loads((scratch / "cv" / "summary.json").read_text())
        run_seconds = [json.loads(path.read_text())["seconds"] for path in sorted((scratch / "cv" / "runs").glob("*/config.json"))]

    benchlib.print_load(load_before)
    figures([
        (f"{args.folds}-fold CV, default settings", f"{cv.seconds:.0f} s wall ({summary['n_runs']} runs, "
                                                    f"{summary['n_oof_predictions']} out-of-fold predictions), "
                                                    f"peak RSS {cv.peak_rss_gib:.2f} GiB  {target('<= 600 s', cv.seconds <= 600)}"),
        ("", f"seconds per run (first one computes the body features): {', '.join(f'{s:.0f}' for s in run_seconds)}"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
