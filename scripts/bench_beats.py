"""Benchmark beat segmentation on a 10-s 4 kHz recording; prints its figures.

    python scripts/bench_beats.py [--repeats N]

In one process, taking turns: heartbeat.data.beats.segment on a 10-s synthetic recording (a normal
rhythm from heartbeat.data.synth, written to and read back from a WAV file), and audio.py's read
and images of the same file (load_audio + recording_images), which predict does anyway.
Prints the median of each and their ratio. Target (issue 18): segmentation <= 20 ms per 10-s recording.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import soundfile

import benchlib
from benchlib import figures, target
from heartbeat.data import audio
from heartbeat.data import mel
from heartbeat.data import beats
from heartbeat.data.synth import heartbeat_signal

SECONDS = 10.0
TARGET_MS = 20.0


def milliseconds(work) -> float:
    start = time.perf_counter()
    work()
    return 1000.0 * (time.perf_counter() - start)


def main() -> None:
    parser = benchlib.argument_parser(__doc__, data=False)
    parser.add_argument("--repeats", type=int, default=51)
    args = benchlib.parse_arguments(parser)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ten-seconds.wav"
        soundfile.write(str(path), heartbeat_signal("normal", SECONDS), audio.SETTINGS.sample_rate)
        signal = audio.load_audio(path)
        rhythm = beats.segment(signal)  # first call untimed: imports and caches are not per-file costs
        mel.recording_images(audio.load_audio(path))
        segment_ms, read_mel_ms = [], []
        for _ in range(args.repeats):
            segment_ms.append(milliseconds(lambda: beats.segment(signal)))
            read_mel_ms.append(milliseconds(lambda: mel.recording_images(audio.load_audio(path))))
    segment_median, read_mel_median = statistics.median(segment_ms), statistics.median(read_mel_ms)
    figures([
        ("recording", f"{SECONDS:g} s at {audio.SETTINGS.sample_rate} Hz; found {rhythm.heart_rate_bpm:.1f} bpm, "
                      f"{rhythm.beats} beats" if rhythm.reliable else f"{SECONDS:g} s; no rhythm ({rhythm.reason})"),
        ("segment() median", f"{segment_median:.1f} ms over {args.repeats} runs "
                             f"(min {min(segment_ms):.1f}, max {max(segment_ms):.1f})  "
                             + target(f"<= {TARGET_MS:g} ms", segment_median <= TARGET_MS)),
        ("read + images median", f"{read_mel_median:.1f} ms (audio.load_audio + recording_images)"),
        ("ratio", f"segmentation adds {segment_median / read_mel_median:.2f}x the read and images' time"),
    ])


if __name__ == "__main__":
    main()
