"""Benchmark `heartbeat.explain` (occlusion saliency) on a 10-s recording with a heartbeat-recipe model.

    python scripts/bench_explain.py [--model RUN] [--workdir DIR] [--recording FILE] [--repeats N] [--threads N]

Measures, in one process, on the same recording and model (onnxruntime with --threads
intra-op threads, default: the CPUs this process may use):
- explain: explain.explain_signal (every window's image, its probabilities, and one network
  pass per hidden patch), median of --repeats;
- predict: Predictor.predict_signal on the same signal, taking turns with explain; and the ratio;
- draw: explain.draw_explanation (the 3-panel PNG) after one warm-up drawing (which pays
  matplotlib's import once per process).
Target (issue 17, 2 cores): explain <= 2 s per 10-s recording for the heartbeat network.

Without --model, a model is trained first (about half a minute): `heartbeat synth`, stage 1's
spectrograms and `heartbeat train --recipe heartbeat --epochs 1` in --workdir (default: a
temporary folder). Its accuracy means nothing; its network, and so its speed, are the recipe's.
Without --recording, the recording is a synthetic 10-s murmur (synth.heartbeat_signal).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import figures, say, target

import numpy as np

from heartbeat import explain, predict
from heartbeat.data import audio
from heartbeat.data import synth

HEARTBEAT = str(Path(sys.executable).parent / "heartbeat")
SECONDS = 10.0
TARGET_SECONDS = 2.0


def train_model(workdir: Path) -> Path:
    """A heartbeat-recipe run trained for one epoch on synthetic recordings; returns its folder."""
    for step in (["synth", "--out", str(workdir / "data")],
                 ["spectrograms", "--data", str(workdir / "data"), "--out", str(workdir / "spectrograms"), "--quiet"],
                 ["train", "--spectrograms", str(workdir / "spectrograms"), "--runs", str(workdir / "runs"),
                  "--recipe", "heartbeat", "--epochs", "1", "--quiet"]):
        say(f"{benchlib.NAME}: heartbeat {' '.join(step)}")
        subprocess.run([HEARTBEAT, *step], check=True, stdout=subprocess.DEVNULL)
    return workdir / "runs" / "latest"


def seconds_of(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = benchlib.argument_parser(__doc__, data=False)
    parser.add_argument("--model", type=Path, help="a heartbeat-recipe run folder (default: train one)")
    parser.add_argument("--workdir", type=Path, help="where to train the model (default: a temporary folder)")
    parser.add_argument("--recording", type=Path, help="an audio file (default: a synthetic 10-s murmur)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all CPUs allowed)")
    args = benchlib.parse_arguments(parser)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        run = args.model or train_model(args.workdir or Path(scratch))
        predictor = predict.load_predictor(run, threads=args.threads)
        if args.recording:
            signal = audio.load_audio(args.recording)
            what = f"{args.recording.name} ({signal.size / audio.SETTINGS.sample_rate:.1f} s)"
        else:
            signal = synth.heartbeat_signal("murmur", SECONDS, rng=np.random.default_rng(0))
            what = f"synthetic murmur ({SECONDS:g} s)"
        explanation = explain.explain_signal(predictor, signal)  # warm-up: sessions, caches
        predictor.predict_signal(signal)
        explain_times, predict_times = [], []
        for repeat in range(args.repeats):
            explain_times.append(seconds_of(lambda: explain.explain_signal(predictor, signal)))
            predict_times.append(seconds_of(lambda: predictor.predict_signal(signal)))
            say(f"{benchlib.NAME}: round {repeat + 1}/{args.repeats}: explain {explain_times[-1]:.2f} s, "
                f"predict {predict_times[-1]:.3f} s")
        explain.draw_explanation(explanation, predictor.classes, "warm-up")
        draw_times = [seconds_of(lambda: explain.draw_explanation(explanation, predictor.classes, "bench"))
                      for _ in range(3)]
    explain_median, predict_median = statistics.median(explain_times), statistics.median(predict_times)
    windows = explanation.window_starts.size
    patches = len(explain.patch_grid(audio.SETTINGS.n_mels, audio.SETTINGS.image_size,
                                     (explain.PATCH_FRAMES, explain.PATCH_BANDS)))
    figures([
        ("recording", f"{what}, {windows} windows, model {predictor.model_id}"),
        ("patch", f"{explain.PATCH_FRAMES} frames x {explain.PATCH_BANDS} bands, up to {patches} per window "
                  f"(network passes: up to {windows * (patches + 1)})"),
        ("explain (median)", f"{explain_median:.2f} s  {target(f'<= {TARGET_SECONDS:g} s', explain_median <= TARGET_SECONDS)}"),
        ("", f"runs: {', '.join(f'{t:.2f}' for t in explain_times)}"),
        ("predict (median)", f"{predict_median:.3f} s; explain / predict = {explain_median / predict_median:.0f}x"),
        ("draw PNG (median)", f"{statistics.median(draw_times):.2f} s (after a warm-up drawing)"),
    ])
    benchlib.print_load(load_before)


if __name__ == "__main__":
    main()
