"""Benchmark `heartbeat predict` against fastai's load_learner + predict on the real Dataset B.

    python scripts/bench_predict.py [--data DIR] [--model RUN] [--workdir DIR] [--repeats N]

Measures, in one run, on the same 512-px model:
- cold start: the wall time of a new process, as a user types it, `heartbeat predict FILE` on
  one recording of about 5 s (one window); median of --repeats fresh processes;
- the same for fastai: a new process doing `load_learner(export.pkl)` + `learn.predict(PNG)`
  on the same model and the same recording's spectrogram PNG (so fastai is spared making the
  spectrogram: the comparison favours it); the two cold starts are interleaved;
- their ratio;
- all 656 Dataset B recordings (labelled and unlabelled) in one `heartbeat predict` call:
  wall time and the peak RSS of that process.
Targets (2-core machine): cold start <= 1.0 s, >= 5x faster than fastai, all 656 in <= 60 s,
peak RSS <= 1 GiB.

Without --model, a model is trained first (several minutes, printed as it goes): stage 1's
spectrograms of the labelled recordings, and `heartbeat train` at 512 px for one epoch on
a stand-in body (torchvision's randomly initialised ResNet-34 weights, so no download is
needed). Its accuracy means nothing; its size and speed are the real model's. With
--workdir the model, spectrograms and export.pkl are kept there and reused by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "heartbeat-sounds"
BIN = Path(sys.executable).parent
HEARTBEAT = str(BIN / "heartbeat")

STAND_IN_WEIGHTS = r'''
import sys, torch, torchvision
torch.manual_seed(0)
torch.save(torchvision.models.resnet34().state_dict(), sys.argv[1])
'''

# A fastai Learner with the trained network, exported the usual way (learn.export).
FASTAI_EXPORT = r'''
import json, sys
from pathlib import Path
import pandas as pd
from fastai.vision.all import CategoryBlock, ImageDataLoaders, Normalize, resnet34, vision_learner
from heartbeat import model

run, spectrograms, out = map(Path, sys.argv[1:4])
network, info = model.load_model(run)
manifest = pd.read_csv(spectrograms / "manifest.csv", keep_default_na=False)
# Two images per class: only the DataLoaders' transforms and vocabulary go into export.pkl.
sample = manifest[manifest["label"] != ""].groupby("label").head(2).reset_index(drop=True)
sample["is_valid"] = sample.index % 2 == 1
dls = ImageDataLoaders.from_df(
    sample, path=spectrograms, fn_col="image", label_col="label", valid_col="is_valid",
    y_block=CategoryBlock(vocab=info["classes"]), bs=2, num_workers=0,
    batch_tfms=Normalize.from_stats(list(model.IMAGENET_MEAN), list(model.IMAGENET_STD)),
)
learn = vision_learner(dls, resnet34, pretrained=False, n_out=len(info["classes"]))
learn.model.load_state_dict(network.state_dict())
learn.export(out.resolve())
'''

# What a fastai user runs to classify one spectrogram image.
FASTAI_PREDICT = r'''
import json, sys
from fastai.vision.all import load_learner
learn = load_learner(sys.argv[1])
label, index, probabilities = learn.predict(sys.argv[2])
print(json.dumps({"label": str(label), "probabilities": [float(p) for p in probabilities]}))
'''


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_checked(command: list[str], what: str) -> subprocess.CompletedProcess:
    shown = "an inline script" if "-c" in command else " ".join(command[:6]) + (" ..." if len(command) > 6 else "")
    say(f"bench-predict: {what}: {shown}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        say(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"bench-predict: {what} failed (exit {result.returncode})")
    return result


def timed(command: list[str]) -> tuple[float, int, str, str, int]:
    """Wall seconds, exit code, stdout, stderr and peak RSS (MiB) of one fresh process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        # wait4, not wait: it returns the rusage of this child alone (RUSAGE_CHILDREN would
        # include the training and fastai processes run earlier by this benchmark).
        _, status, rusage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return seconds, process.returncode, out.read(), err.read(), int(rusage.ru_maxrss / 1024)


def train_model(data: Path, workdir: Path) -> Path:
    run = workdir / "run"
    if (run / "model.onnx").is_file():
        say(f"bench-predict: reusing the model in {run}")
        return run
    spectrograms = workdir / "spectrograms"
    started = time.perf_counter()
    run_checked([HEARTBEAT, "spectrograms", "--data", str(data), "--out", str(spectrograms), "--quiet"],
                "stage 1 spectrograms of the labelled recordings")
    weights = workdir / "resnet34-stand-in.pth"
    run_checked([sys.executable, "-c", STAND_IN_WEIGHTS, str(weights)],
                "stand-in ResNet-34 weights (torchvision's random initialisation)")
    say("bench-predict: training a 512-px model for 1 epoch (features mode: the body runs once over every "
        "image; several minutes on 2 cores)")
    run_checked([HEARTBEAT, "train", "--spectrograms", str(spectrograms), "--weights", str(weights), "--epochs", "1",
                 "--image-size", "512", "--out", str(run), "--quiet"], "heartbeat train")
    say(f"bench-predict: model trained in {time.perf_counter() - started:.0f} s")
    return run


def export_fastai(run: Path, spectrograms: Path, workdir: Path) -> Path:
    export = workdir / "export.pkl"
    if export.is_file() and export.stat().st_mtime > (run / "model.safetensors").stat().st_mtime:
        return export
    run_checked([sys.executable, "-c", FASTAI_EXPORT, str(run), str(spectrograms), str(export)],
                "fastai Learner with the same weights, learn.export")
    return export


def five_second_recording(data: Path, workdir: Path) -> tuple[Path, Path]:
    """The recording closest to 5 s that is one window, and its spectrogram PNG (made as stage 1 makes it)."""
    import soundfile

    from heartbeat import audio

    def distance(path: Path) -> float:
        info = soundfile.info(str(path))
        seconds = info.frames / info.samplerate
        return abs(seconds - 5.0) if seconds <= audio.SETTINGS.window_seconds else float("inf")

    wav = min(sorted((data / "set_b").glob("*.wav")), key=distance)
    png = workdir / f"{wav.stem}.png"
    (_, image), = audio.recording_images(audio.load_audio(wav))
    png.write_bytes(audio.encode_png(image))
    return wav, png


def network_seconds_per_window(run: Path, png: Path) -> float:
    """The exported network's time for one window, without audio or process start: median of 5 runs."""
    import numpy as np
    from PIL import Image

    from heartbeat.predict import load_predictor

    predictor = load_predictor(run)
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"))
    predictor.window_probabilities([pixels])  # the first run allocates its buffers
    times = []
    for _ in range(5):
        start = time.perf_counter()
        predictor.window_probabilities([pixels])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with set_b.csv and set_b/ (default: %(default)s)")
    parser.add_argument("--model", type=Path, help="a trained 512-px run folder (default: train a stand-in)")
    parser.add_argument("--spectrograms", type=Path, help="with --model: stage 1 output, for the fastai DataLoaders "
                                                         "(default: made in the work folder)")
    parser.add_argument("--workdir", type=Path, help="keep the trained model and export.pkl here (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per cold-start median (default: %(default)s)")
    args = parser.parse_args()
    if not (args.data / "set_b.csv").is_file():
        say(f"bench-predict: no Dataset B at {args.data} (pass --data)")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-predict."))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(args, workdir: Path) -> int:
    import soundfile

    run = args.model or train_model(args.data, workdir)
    spectrograms = args.spectrograms or workdir / "spectrograms"
    if not (spectrograms / "manifest.csv").is_file():
        run_checked([HEARTBEAT, "spectrograms", "--data", str(args.data), "--out", str(spectrograms), "--quiet"],
                    "stage 1 spectrograms (for the fastai DataLoaders)")
    info = json.loads((run / "model.json").read_text())
    export = export_fastai(run, spectrograms, workdir)
    wav, png = five_second_recording(args.data, workdir)
    fastai_script = workdir / "fastai_predict.py"
    fastai_script.write_text(FASTAI_PREDICT)

    ours = [HEARTBEAT, "predict", "--model", str(run), str(wav)]
    theirs = [sys.executable, str(fastai_script), str(export), str(png)]
    load_before = os.getloadavg()[0]
    # One untimed run of each: the model files are then in the page cache for both alike.
    ours_json = json.loads(run_checked([*ours, "--json"], "warm-up, heartbeat predict").stdout)
    fastai_json = json.loads(run_checked(theirs, "warm-up, fastai load_learner + predict").stdout.splitlines()[-1])
    ours_s, theirs_s, ours_rss, theirs_rss = [], [], [], []
    for repeat in range(args.repeats):  # interleaved, so a noisy moment hits both
        seconds, code, *_, rss = timed(ours)
        assert code == 0, "heartbeat predict failed"
        ours_s.append(seconds)
        ours_rss.append(rss)
        seconds, code, *_, rss = timed(theirs)
        assert code == 0, "fastai predict failed"
        theirs_s.append(seconds)
        theirs_rss.append(rss)
        say(f"bench-predict: cold start {repeat + 1}/{args.repeats}: heartbeat {ours_s[-1]:.2f} s, fastai {theirs_s[-1]:.2f} s")

    network_s = network_seconds_per_window(run, png)
    all_wavs = sorted(str(path) for path in (args.data / "set_b").glob("*.wav"))
    say(f"bench-predict: all {len(all_wavs)} recordings in one call ...")
    all_s, all_code, all_out, all_err, all_rss = timed([HEARTBEAT, "predict", "--json", "--model", str(run), *all_wavs])
    predicted = [json.loads(line) for line in all_out.splitlines()]
    windows = sum(result["windows"] for result in predicted)
    failed = all_err.splitlines()
    load_after = os.getloadavg()[0]

    ours_median, theirs_median = statistics.median(ours_s), statistics.median(theirs_s)
    difference = max(abs(a - b) for a, b in zip(ours_json["probabilities"].values(), fastai_json["probabilities"]))
    wav_seconds = soundfile.info(str(wav)).duration

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"machine: {cpu_name()}, {len(os.sched_getaffinity(0))} CPUs; "
          f"load average {load_before:.2f} before, {load_after:.2f} after (other work on the machine slows every figure)")
    print(f"model: {run} (image size {info['image_size']} px, {len(info['classes'])} classes)")
    print(f"recording: {wav.name} ({wav_seconds:.2f} s, 1 window)")
    print()
    print(f"cold start, heartbeat : median {ours_median:.3f} s of {args.repeats} fresh processes "
          f"(min {min(ours_s):.3f}, max {max(ours_s):.3f}), peak RSS {max(ours_rss)} MiB  [target <= 1.0 s: {verdict(ours_median <= 1.0)}]")
    print(f"    command: heartbeat predict --model RUN {wav.name}")
    print(f"cold start, fastai    : median {theirs_median:.3f} s of {args.repeats} fresh processes "
          f"(min {min(theirs_s):.3f}, max {max(theirs_s):.3f}), peak RSS {max(theirs_rss)} MiB")
    print(f"    command: python fastai_predict.py export.pkl {png.name}   (load_learner + learn.predict on the "
          f"ready-made spectrogram PNG: excludes making the spectrogram, which favours fastai)")
    print(f"ratio                 : {theirs_median / ours_median:.1f}x faster  [target >= 5x: {verdict(theirs_median / ours_median >= 5)}]")
    print(f"    same answer: heartbeat {ours_json['label']}, fastai {fastai_json['label']}; "
          f"largest probability difference {difference:.1e}")
    print(f"all recordings        : {len(all_wavs)} files ({len(predicted)} predicted, {len(failed)} failed, {windows} windows) "
          f"in {all_s:.1f} s wall = {all_s / max(windows, 1) * 1000:.0f} ms per window, exit code {all_code}  "
          f"[target <= 60 s: {verdict(all_s <= 60)}]")
    print(f"    command: heartbeat predict --json --model RUN set_b/*.wav")
    print(f"network alone         : {network_s * 1000:.0f} ms per 512-px window (onnxruntime in this process, median of 5 "
          f"runs) x {windows} windows = {network_s * windows:.0f} s of that call")
    print(f"peak RSS, all files   : {all_rss} MiB  [target <= 1024 MiB: {verdict(all_rss <= 1024)}]")
    for line in failed:
        print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
