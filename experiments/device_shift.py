"""How do CV fold models fare on recordings coloured as another stethoscope might colour them (simulated)?

    python experiments/device_shift.py --data DATA_DIR "name=CV_DIR" ["name=CV_DIR" ...] [--out table.csv]

For every `heartbeat cv` folder given, each fold's model (runs/<seed-fold>/model.onnx, run by
predict's own code: mel.iter_recording_images, Predictor.window_probabilities, the mean of the
windows) classifies its fold's validation recordings, read from DATA_DIR, once as they are and
once after each simulated device shift of the waveform. The shifts lie outside the ranges the
`device_colour` lever trains on (tilt within +-3 dB/octave, low cut 20-80 Hz, high cut
500-2000 Hz, noise floor -70 to -45 dB re the peak), so they test extrapolation, not recall of
the training augmentation:
- lowpass400: 2nd-order Butterworth low-pass at 400 Hz (a narrow-band device);
- highpass150: 2nd-order Butterworth high-pass at 150 Hz (a diaphragm that loses the lowest sounds);
- tilt+6: first-order pre-emphasis 1 - 0.9 z^-1 (about +6 dB per octave above ~70 Hz: a brighter device);
- noise20: white noise 20 dB below the recording's RMS (seeded per recording: a noisier device or room).
A gain is no shift: every image is in dB relative to its own recording's peak.

Prints one row per CV folder and figure (balanced accuracy, heart-problem Youden): mean +- std over
the folder's runs per condition, and each shift's paired difference from clean (mean +- s.e.).
The clean column repeats the CV's own figures (the script checks its probabilities against each
run's predictions.csv to 1e-4). Nothing is chosen from these runs: it is a report, not a selection.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SHIFTS = ("clean", "lowpass400", "highpass150", "tilt+6", "noise20")


def shifted(signal: np.ndarray, shift: str, sample_rate: int, seed: int) -> np.ndarray:
    """The signal as the named simulated device would record it (float32)."""
    from scipy import signal as dsp

    if shift == "clean":
        return signal
    if shift == "lowpass400":
        out = dsp.sosfilt(dsp.butter(2, 400.0, "lowpass", fs=sample_rate, output="sos"), signal)
    elif shift == "highpass150":
        out = dsp.sosfilt(dsp.butter(2, 150.0, "highpass", fs=sample_rate, output="sos"), signal)
    elif shift == "tilt+6":
        out = dsp.lfilter([1.0, -0.9], [1.0], signal)
    elif shift == "noise20":
        rms = float(np.sqrt(np.mean(signal.astype(np.float64) ** 2)))
        out = signal + np.random.default_rng(seed).normal(0.0, rms / 10.0, signal.shape)
    else:
        raise ValueError(f"unknown shift {shift!r}")
    return out.astype(np.float32)


def recording_path(data_dir: Path, recording: str) -> Path:
    """The recording's file: the path inside the data folder, or set_b/ for Dataset B's bare file names."""
    direct = data_dir / recording
    return direct if direct.is_file() else data_dir / "set_b" / recording


def fold_runs(cv_dir: Path) -> list[Path]:
    runs = sorted(path for path in (cv_dir / "runs").iterdir() if (path / "model.onnx").is_file())
    if not runs:
        raise SystemExit(f"{cv_dir}: no fold runs with a model.onnx under runs/")
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the data folder the CV's spectrograms were made from")
    parser.add_argument("folders", nargs="+", help="name=CV_DIR")
    parser.add_argument("--out", type=Path, help="write every run's figures to this csv")
    args = parser.parse_args()
    from heartbeat import predict
    from heartbeat.data import audio
    from heartbeat.data import mel
    from heartbeat.report import metrics
    from heartbeat.text import from_spreadsheet_cell

    folders = dict(item.split("=", 1) for item in args.folders)
    runs_of = {name: fold_runs(Path(folder)) for name, folder in folders.items()}
    validation = {run: pd.read_csv(run / "split.csv").query("split == 'valid'") for runs in runs_of.values()
                  for run in runs}
    recordings = sorted({name for table in validation.values() for name in table["recording"]})
    labels = {row.recording: row.label for table in validation.values() for row in table.itertuples()}
    clean = {name: audio.load_audio(recording_path(args.data, name)) for name in recordings}
    predictors = {run: predict.load_predictor(run, threads=1) for runs in runs_of.values() for run in runs}
    rows = []
    for shift in SHIFTS:
        images = {}
        for index, name in enumerate(recordings):
            signal = shifted(clean[name], shift, audio.SETTINGS.sample_rate, seed=index)
            images[name] = [image for _, image in mel.iter_recording_images(signal)]
        for cv_name, runs in runs_of.items():
            for run in runs:
                predictor = predictors[run]
                names = list(validation[run]["recording"])
                probabilities = np.array([metrics.combine_windows(predictor.window_probabilities(
                    predictor.model_input(image) for image in images[name])) for name in names])
                if shift == "clean":  # predict's path must give the CV's own probabilities
                    saved = pd.read_csv(run / "predictions.csv")  # its names written spreadsheet-safe: read back
                    saved = saved.assign(recording=saved["recording"].map(from_spreadsheet_cell))
                    saved = saved.set_index("recording").loc[names]
                    expected = saved[[f"prob_{c}" for c in predictor.classes]].to_numpy()
                    assert np.abs(probabilities - expected).max() < 1e-4, f"{run}: predict differs from the CV"
                predicted = [predictor.classes[i] for i in probabilities.argmax(axis=1)]
                normal = "normal" if "normal" in predictor.classes else None
                figures = metrics.classification_metrics([labels[name] for name in names], predicted,
                                                         predictor.classes, majority_class=normal or predicted[0],
                                                         normal_class=normal)
                rows.append({"cv": cv_name, "run": run.name, "shift": shift,
                             "balanced_accuracy": figures["balanced_accuracy"],
                             "youden": (figures["heart_problem"] or {}).get("youden", np.nan)})
        print(f"{shift}: done", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    print(markdown(table, list(folders)))
    return 0


def markdown(table: pd.DataFrame, names: list[str]) -> str:
    lines = ["| CV | figure | " + " | ".join(SHIFTS) + " |", "|---|---|" + "---|" * len(SHIFTS)]
    for name in names:
        own = table[table["cv"] == name]
        for figure in ("balanced_accuracy", "youden"):
            by_shift = own.pivot(index="run", columns="shift", values=figure)
            cells = [f"{by_shift['clean'].mean():.3f} ± {by_shift['clean'].std(ddof=1):.3f}"]
            for shift in SHIFTS[1:]:
                difference = by_shift[shift] - by_shift["clean"]
                cells.append(f"{by_shift[shift].mean():.3f} ({difference.mean():+.3f} ± "
                             f"{difference.std(ddof=1) / np.sqrt(len(difference)):.3f})")
            lines.append(f"| {name} | {figure.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
