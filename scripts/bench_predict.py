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

Then the bundled model (heartbeat/models/builtin/, or --bundled DIR, e.g. a stand-in bundle written
by scripts/release_model.py --stand-in): cold start of `heartbeat predict --model builtin FILE`
(median of --repeats fresh processes; target <= 0.5 s), all 656 recordings in one call (target
<= 30 s), and what the heart rate adds per 10-s recording (beats.segment in this process, median
over Dataset B's 9-11 s recordings; target <= 20 ms). --bundled-only measures these alone.

Without --model, a model is trained first (several minutes, printed as it goes): stage 1's
spectrograms of the labelled recordings, and `heartbeat train` at 512 px for one epoch on
a stand-in body (torchvision's randomly initialised ResNet-34 weights, so no download is
needed). Its accuracy means nothing; its size and speed are the real model's. With
--workdir the model, spectrograms and export.pkl are kept there and reused by the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import checked, figures, median_seconds, run_checked, say, target, timed

HEARTBEAT = str(Path(sys.executable).parent / "heartbeat")

# A fastai Learner with the trained network, exported the usual way (learn.export).
FASTAI_EXPORT = r'''
import json, sys
from pathlib import Path
import pandas as pd
from fastai.vision.all import CategoryBlock, ImageDataLoaders, Normalize, resnet34, vision_learner
from heartbeat.train import model

run, spectrograms, out = map(Path, sys.argv[1:4])
# A features-mode run keeps its head alone: load_model puts it on the body its config.json names (digest checked).
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


def train_model(data: Path, workdir: Path) -> Path:
    run = workdir / "run"
    if (run / "model.onnx").is_file():
        say(f"bench-predict: reusing the model in {run}")
        return run
    started = time.perf_counter()
    spectrograms = benchlib.make_spectrograms(data, workdir / "spectrograms")
    say("bench-predict: stand-in ResNet-34 weights (torchvision's random initialisation)")
    weights = benchlib.write_stand_in_weights(workdir)
    say("bench-predict: training a 512-px model for 1 epoch (features mode: the body runs once over every "
        "image; several minutes on 2 cores)")
    run_checked([HEARTBEAT, "train", "--spectrograms", str(spectrograms), "--weights", str(weights), "--epochs", "1",
                 "--image-size", "512", "--out", str(run), "--quiet"], "heartbeat train")
    say(f"bench-predict: model trained in {time.perf_counter() - started:.0f} s")
    return run


def export_fastai(run: Path, spectrograms: Path, workdir: Path) -> Path:
    export = workdir / "export.pkl"
    if export.is_file() and export.stat().st_mtime > (run / "model.onnx").stat().st_mtime:
        return export
    run_checked([sys.executable, "-c", FASTAI_EXPORT, str(run), str(spectrograms), str(export)],
                "fastai Learner with the same weights, learn.export")
    return export


def five_second_recording(data: Path, workdir: Path) -> tuple[Path, Path]:
    """The recording closest to 5 s that is one window, and its spectrogram PNG (made as stage 1 makes it)."""
    import soundfile

    from heartbeat.data import audio
    from heartbeat.data import mel
    from heartbeat.data import png

    def distance(path: Path) -> float:
        info = soundfile.info(str(path))
        seconds = info.frames / info.samplerate
        return abs(seconds - 5.0) if seconds <= audio.SETTINGS.window_seconds else float("inf")

    wav = min(sorted((data / "set_b").glob("*.wav")), key=distance)
    image_path = workdir / f"{wav.stem}.png"
    (_, image), = mel.recording_images(audio.load_audio(wav))
    image_path.write_bytes(png.encode_png(image))
    return wav, image_path


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


def bundled_figures(data: Path, bundled_dir: Path, wav: Path, repeats: int) -> list[tuple[str, str]]:
    """The bundled model's cold start, all recordings in one call, and the heart rate's share of the time."""
    from heartbeat import bundled

    if not (bundled_dir / "model.json").is_file():
        return [("bundled model", f"not present in {bundled_dir} (make release-model)")]
    info = json.loads((bundled_dir / "model.json").read_text())
    model = ["--model", "builtin" if bundled_dir.resolve() == bundled.BUNDLED_DIR.resolve() else str(bundled_dir)]
    one = [HEARTBEAT, "predict", *model, str(wav)]
    run_checked(one, "warm-up, heartbeat predict with the bundled model")
    cold = [checked(timed(one), "heartbeat predict, bundled model") for _ in range(repeats)]
    all_wavs = sorted(str(path) for path in (data / "set_b").glob("*.wav"))
    say(f"bench-predict: all {len(all_wavs)} recordings in one call, bundled model ...")
    every = timed([HEARTBEAT, "predict", "--json", *model, *all_wavs])
    predicted = [json.loads(line) for line in every.stdout.splitlines()]
    with_rate = sum(result.get("heart_rate_bpm") is not None for result in predicted)
    segment_ms, n_ten = segment_milliseconds(data)
    start = time.perf_counter()
    bundled.check_bundled(bundled_dir)
    hash_ms = (time.perf_counter() - start) * 1000
    cold_median = median_seconds(cold)
    return [
        ("bundled model", f"{bundled_dir} ({info['model_id']}, {info['image_size']} px, "
                          f"{(bundled_dir / 'model.onnx').stat().st_size / 2**20:.1f} MiB ONNX)"),
        ("cold start, bundled", f"median {cold_median:.3f} s of {len(cold)} fresh processes "
                                f"({benchlib.listed_seconds(cold)}), peak RSS "
                                f"{max(run.peak_rss_mib for run in cold):.0f} MiB  {target('<= 0.5 s', cold_median <= 0.5)}"),
        ("", f"command: heartbeat predict {' '.join(model)} {wav.name}; the sha256 check of the bundled files "
             f"takes {hash_ms:.1f} ms of it"),
        ("all recordings, bundled", f"{len(all_wavs)} files ({len(predicted)} predicted, {with_rate} with a heart rate) "
                                    f"in {every.seconds:.1f} s wall, peak RSS {every.peak_rss_mib:.0f} MiB, exit code "
                                    f"{every.returncode}  {target('<= 30 s', every.seconds <= 30)}"),
        ("heart rate", f"beats.segment: median {segment_ms:.1f} ms per 9-11 s recording ({n_ten} recordings, in "
                       f"process)  {target('<= 20 ms', segment_ms <= 20)}"),
    ]


def segment_milliseconds(data: Path) -> tuple[float, int]:
    """Median time of beats.segment on the loaded signal of each 9-11 s recording (what predict adds per file)."""
    import soundfile

    from heartbeat.data import audio, beats

    times = []
    for path in sorted((data / "set_b").glob("*.wav")):
        if 9.0 <= soundfile.info(str(path)).duration <= 11.0:
            signal = audio.load_audio(path)
            start = time.perf_counter()
            beats.segment(signal, audio.SETTINGS.sample_rate)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, len(times)


def main() -> int:
    parser = benchlib.argument_parser(__doc__)
    parser.add_argument("--model", type=Path, help="a trained 512-px run folder (default: train a stand-in)")
    parser.add_argument("--spectrograms", type=Path, help="with --model: stage 1 output, for the fastai DataLoaders "
                                                         "(default: made in the work folder)")
    parser.add_argument("--workdir", type=Path, help="keep the trained model and export.pkl here (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per cold-start median (default: %(default)s)")
    parser.add_argument("--bundled", type=Path, help="a bundle folder to measure instead of the package's bundled model")
    parser.add_argument("--bundled-only", action="store_true", help="measure the bundled model alone (no 512-px model)")
    args = benchlib.parse_arguments(parser)
    if args.bundled_only:
        from heartbeat import bundled

        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="bench-predict.") as scratch:
            wav, _ = five_second_recording(args.data, Path(scratch))
        rows = bundled_figures(args.data, args.bundled or bundled.BUNDLED_DIR, wav, args.repeats)
        benchlib.print_load(load_before)
        figures(rows)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-predict."))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(args, workdir: Path) -> int:
    import soundfile

    from heartbeat import bundled

    run = args.model or train_model(args.data, workdir)
    spectrograms = args.spectrograms or workdir / "spectrograms"
    if not (spectrograms / "manifest.csv").is_file():
        benchlib.make_spectrograms(args.data, spectrograms, "stage 1 spectrograms (for the fastai DataLoaders)")
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
    cold = benchlib.interleaved(args.repeats, {"heartbeat": lambda: checked(timed(ours), "heartbeat predict"),
                                               "fastai": lambda: checked(timed(theirs), "fastai predict")})

    network_s = network_seconds_per_window(run, png)
    all_wavs = sorted(str(path) for path in (args.data / "set_b").glob("*.wav"))
    say(f"bench-predict: all {len(all_wavs)} recordings in one call ...")
    every = timed([HEARTBEAT, "predict", "--json", "--model", str(run), *all_wavs])
    predicted = [json.loads(line) for line in every.stdout.splitlines()]
    windows = sum(result["windows"] for result in predicted)
    failed = every.stderr.splitlines()

    ours_median, theirs_median = median_seconds(cold["heartbeat"]), median_seconds(cold["fastai"])
    difference = max(abs(a - b) for a, b in zip(ours_json["probabilities"].values(), fastai_json["probabilities"]))
    wav_seconds = soundfile.info(str(wav)).duration

    def cold_start(runs: list[benchlib.Timed]) -> str:
        seconds = [process.seconds for process in runs]
        return (f"median {median_seconds(runs):.3f} s of {len(runs)} fresh processes (min {min(seconds):.3f}, "
                f"max {max(seconds):.3f}), peak RSS {max(process.peak_rss_mib for process in runs):.0f} MiB")

    benchlib.print_load(load_before)
    print(f"model: {run} (image size {info['image_size']} px, {len(info['classes'])} classes)")
    print(f"recording: {wav.name} ({wav_seconds:.2f} s, 1 window)")
    print()
    figures([
        ("cold start, heartbeat", f"{cold_start(cold['heartbeat'])}  {target('<= 1.0 s', ours_median <= 1.0)}"),
        ("", f"command: heartbeat predict --model RUN {wav.name}"),
        ("cold start, fastai", cold_start(cold["fastai"])),
        ("", f"command: python fastai_predict.py export.pkl {png.name}   (load_learner + learn.predict on the "
             f"ready-made spectrogram PNG: excludes making the spectrogram, which favours fastai)"),
        ("ratio", f"{theirs_median / ours_median:.1f}x faster  {target('>= 5x', theirs_median / ours_median >= 5)}"),
        ("", f"same answer: heartbeat {ours_json['label']}, fastai {fastai_json['label']}; "
             f"largest probability difference {difference:.1e}"),
        ("all recordings", f"{len(all_wavs)} files ({len(predicted)} predicted, {len(failed)} failed, {windows} windows) "
                           f"in {every.seconds:.1f} s wall = {every.seconds / max(windows, 1) * 1000:.0f} ms per window, "
                           f"exit code {every.returncode}  {target('<= 60 s', every.seconds <= 60)}"),
        ("", "command: heartbeat predict --json --model RUN set_b/*.wav"),
        ("network alone", f"{network_s * 1000:.0f} ms per 512-px window (onnxruntime in this process, median of 5 "
                          f"runs) x {windows} windows = {network_s * windows:.0f} s of that call"),
        ("peak RSS, all files", f"{every.peak_rss_mib:.0f} MiB  {target('<= 1024 MiB', every.peak_rss_mib <= 1024)}"),
        *[("", line) for line in failed],
        *bundled_figures(args.data, args.bundled or bundled.BUNDLED_DIR, wav, args.repeats),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
