"""Benchmark the rhythm features (segmentation included) on 10-s 4 kHz recordings; prints its figures.

    python experiments/bench_rhythm.py [--repeats N]

heartbeat.data.rhythm.rhythm_features (which runs heartbeat.data.beats' segmentation once) and beats.segment alone, taking
turns in one process, on a 10-s synthetic normal rhythm (heartbeat.data.synth) and on one with a premature beat.
Target (issue 18): segmentation and rhythm <= 20 ms per 10-s recording.
"""

from __future__ import annotations

import sys
from pathlib import Path

import statistics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # benchlib: the benchmarks' shared helpers

import benchlib  # noqa: E402
from bench_beats import SECONDS, TARGET_MS, milliseconds
from benchlib import figures, target
from heartbeat.data import audio
from heartbeat.data import beats
from heartbeat.data import rhythm
from heartbeat.data.synth import heartbeat_signal


def main() -> None:
    parser = benchlib.argument_parser(__doc__, data=False)
    parser.add_argument("--repeats", type=int, default=51)
    args = benchlib.parse_arguments(parser)
    rows = [("recording", f"{SECONDS:g} s at {audio.SETTINGS.sample_rate} Hz (heartbeat.data.synth)")]
    for kind in ("normal", "extrastole"):
        signal = heartbeat_signal(kind, SECONDS)
        rhythm.rhythm_features(signal)  # first call untimed: imports and caches are not per-file costs
        features_ms, segment_ms = [], []
        for _ in range(args.repeats):
            features_ms.append(milliseconds(lambda: rhythm.rhythm_features(signal)))
            segment_ms.append(milliseconds(lambda: beats.segment(signal)))
        median = statistics.median(features_ms)
        rows += [(f"{kind}: rhythm_features() median", f"{median:.1f} ms over {args.repeats} runs (min "
                  f"{min(features_ms):.1f}, max {max(features_ms):.1f})  " + target(f"<= {TARGET_MS:g} ms",
                                                                                 median <= TARGET_MS)),
                 (f"{kind}: of which segment()", f"{statistics.median(segment_ms):.1f} ms")]
    figures(rows)


if __name__ == "__main__":
    main()
