"""Beat segmentation on the real Dataset B: how often a rhythm is found, its rates, its regularity per class.

    python experiments/beats_survey.py [--data DIR]

A measurement, not a test (the recordings carry no beat annotations). Runs heartbeat.data.beats.segment
on every labelled recording of set_b (read by heartbeat.data.layouts, loaded by heartbeat.data.audio as
predict loads them) and prints, per class and for all:
- the share with a reliable rhythm, and the reasons when not;
- the heart rate's median and 5-95 % range;
- the irregularity (coefficient of variation of the beat intervals): median and 75th percentile;
- the share of recordings with at least one premature beat.
If segmentation works, extrastoles should be more irregular and hold more premature beats than normals.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # benchlib: the benchmarks' shared helpers

import benchlib  # noqa: E402
from benchlib import figures
from heartbeat.data import audio
from heartbeat.data import beats
from heartbeat.data import layouts


def survey(data) -> dict[str, list[beats.Rhythm]]:
    rhythms: dict[str, list[beats.Rhythm]] = collections.defaultdict(list)
    for recording in layouts.read_pascal_b(data):
        if recording.label is None:
            continue
        try:
            signal = audio.load_audio(recording.path)
        except audio.AudioError as error:
            benchlib.say(f"{recording.source}: {error}")
            continue
        rhythms[recording.label].append(beats.segment(signal, audio.SETTINGS.sample_rate))
    return rhythms


def percentiles(values: list[float], points: tuple[float, ...]) -> str:
    if not values:
        return "-"
    return " / ".join(f"{value:.3g}" for value in np.percentile(values, points))


def rows_for(label: str, rhythms: list[beats.Rhythm]) -> list[tuple[str, str]]:
    reliable = [rhythm for rhythm in rhythms if rhythm.reliable]
    reasons = collections.Counter(re.split(r"[(\d]", rhythm.reason)[0].strip() for rhythm in rhythms if not rhythm.reliable)
    with_premature = sum(1 for rhythm in reliable if rhythm.premature_beats.size)
    share = len(reliable) / len(rhythms) if rhythms else 0.0
    return [
        (f"{label} reliable", f"{len(reliable)}/{len(rhythms)} ({share:.0%})"),
        (f"{label} bpm median, 5 %, 95 %",
         percentiles([rhythm.heart_rate_bpm for rhythm in reliable], (50, 5, 95))),
        (f"{label} irregularity median, 75 %",
         percentiles([rhythm.irregularity for rhythm in reliable], (50, 75))),
        (f"{label} with a premature beat", f"{with_premature}/{len(reliable)}"),
        *[("", f"not reliable: {count} x {reason}") for reason, count in reasons.most_common()],
    ]


def main() -> None:
    args = benchlib.parse_arguments(benchlib.argument_parser(__doc__))
    rhythms = survey(args.data)
    everything = [rhythm for group in rhythms.values() for rhythm in group]
    rows = []
    for label in sorted(rhythms):
        rows += rows_for(label, rhythms[label])
    figures(rows + rows_for("all", everything))


if __name__ == "__main__":
    main()
