"""Command line: a thin layer over the library functions.

Only argparse and the standard library are imported at the top, so `heartbeat --help` and
`heartbeat --version` answer at once; each command imports what it needs when it runs.
Errors the user can fix (bad data, bad input files, missing weights) are one line on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from heartbeat import __version__

EXIT_FAILED = 1  # the command ran but some input failed
EXIT_USAGE = 2  # the command could not run (argparse uses 2 as well)


class UserError(Exception):
    """An error whose message is the whole story: printed as one line, exit code 2."""


# The limits of train's and cv's numbers, as TrainSettings.validate has them (train.MAX_SEED, train.MAX_IMAGE_SIZE;
# not imported here: that would load torch before a bad flag could be reported).
MAX_SEED = 2**32 - 1  # numpy's seeding takes 0 .. 2**32-1
MAX_IMAGE_SIZE = 2048  # 4x the published 512 px


def _whole_number(text: str, low: int, high: int | None = None) -> int:
    """An integer in [low, high]; ArgumentTypeError otherwise (argparse then names the flag in its message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _seed(text: str) -> int:
    return _whole_number(text, 0, MAX_SEED)


def _image_size(text: str) -> int:
    return _whole_number(text, 1, MAX_IMAGE_SIZE)


def _fold_count(text: str) -> int:
    return _whole_number(text, 2)  # one fold would leave nothing to train on


def _finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _learning_rate(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:  # a negative rate climbs the loss: a diverged model
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _run_name(text: str) -> str:
    """--name: part of one folder's name, so never a path (no '/'), nor hidden (temporary names start with '.')."""
    if "/" in text or "\0" in text or text.startswith("."):
        raise argparse.ArgumentTypeError(f"must be a plain name (no '/', not starting with '.'), got {text!r}")
    return text


def _fraction(text: str) -> float:
    value = _finite_float(text)
    if not 0 < value < 1:  # both sides of the split need recordings
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (both excluded), got {text}")
    return value


def _max_seconds(text: str) -> float:
    """--max-seconds of `heartbeat spectrograms`: a positive, finite number of seconds."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _add_spectrograms(commands) -> None:
    from heartbeat import config

    parser = commands.add_parser(
        "spectrograms",
        help="stage 1: turn every labelled .wav into 512x512 mel-spectrogram PNGs + manifest.csv",
        description=(
            "Turn every labelled recording of DATA/set_b.csv into mel-spectrogram PNGs (one per "
            "5.11 s window) and write OUT/manifest.csv. Incremental: up-to-date images are skipped. "
            "Exit code 1 if any recording failed (the others are still written)."
        ),
    )
    parser.add_argument("--data", default=str(config.DATA_DIR), help="folder holding set_b.csv and set_b/ (default: %(default)s)")
    parser.add_argument("--out", default=str(config.SPECTROGRAMS_DIR), help="output folder (default: %(default)s)")
    parser.add_argument("--jobs", type=_positive_int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--include-unlabelled", action="store_true", help="also the 195 unlabelled test recordings")
    # default None: the library's audio.DEFAULT_MAX_SECONDS (not imported here: --help must not load numpy)
    parser.add_argument("--max-seconds", type=_max_seconds, default=None,
                        help="refuse recordings longer than this, from their header, before reading them: a tiny file "
                             "can declare hours of sound (default: 600, ten minutes; Dataset B's longest is under 30 s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_spectrograms)


def _run_spectrograms(args) -> int:
    from heartbeat.dataset import DatasetError
    from heartbeat.spectrograms import OutputError, build_spectrograms

    limits = {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
    try:
        summary = build_spectrograms(
            args.data, args.out, jobs=args.jobs, include_unlabelled=args.include_unlabelled, progress=not args.quiet,
            **limits,
        )
    except (DatasetError, OutputError) as error:
        raise UserError(str(error)) from None
    for warning in summary.warnings:
        print(f"heartbeat: warning: {warning}", file=sys.stderr)
    for path, reason in summary.failed:
        print(f"heartbeat: {path}: {reason}", file=sys.stderr)
    print(summary.line())
    return EXIT_FAILED if summary.failed else 0


def _add_train_flags(parser) -> None:
    """The training flags, shared by `train` and `cv`; defaults are TrainSettings' (the published ones)."""
    from heartbeat import config

    parser.add_argument("--spectrograms", default=str(config.SPECTROGRAMS_DIR), help="stage 1 output folder (default: %(default)s)")
    parser.add_argument("--split", choices=("patient", "random"), default="patient",
                        help="patient: grouped by patient, no patient on both sides (default); random: the published 70:30 by recording, patients leak")
    parser.add_argument("--valid-fraction", type=_fraction, default=0.3, help="share of recordings for validation (default: %(default)s)")
    parser.add_argument("--seed", type=_seed, default=42,
                        help=f"split, head initialisation and batch order, 0 to {MAX_SEED} (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive_int, default=5, help="one-cycle epochs (default: %(default)s, as published)")
    parser.add_argument("--bs", type=_positive_int, default=4, help="batch size (default: %(default)s, as published)")
    parser.add_argument("--image-size", type=_image_size, default=512,
                        help=f"network input size in px, 1 to {MAX_IMAGE_SIZE}; images are resized (default: %(default)s)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="PATH", help="ResNet-34 state dict in torchvision's format (default: the torch hub cache under TORCH_HOME)")
    weights.add_argument("--no-pretrained", action="store_true", help="no ImageNet weights: train the whole network from scratch")
    parser.add_argument("--offline", action="store_true",
                        help="never download ImageNet weights missing from the hub cache (as HEARTBEAT_OFFLINE=1)")
    parser.add_argument("--mode", choices=("features", "finetune"), default="features",
                        help="features: frozen body run once, head trained on its outputs (default, fast); "
                             "finetune: fastai's frozen body with trainable BatchNorm, as published")
    parser.add_argument("--lr", type=_learning_rate, default=None, help="learning rate (default: lr_find's suggestion)")
    parser.add_argument("--unfreeze-epochs", type=_non_negative_int, default=0, help="optional second stage: unfreeze and train N more epochs")
    parser.add_argument("--balance", choices=("none", "weights", "oversample"), default="none",
                        help="class imbalance: none (published), inverse-frequency loss weights, or oversampling rare classes")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="body forward pass in features mode: fp32 (default; the report then matches predict), "
                             "bf16 (faster on CPUs with bf16 instructions; report and predict can differ slightly), "
                             "auto (bf16 where the CPU has it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_settings(args):
    from heartbeat.train import TrainSettings

    return TrainSettings(
        split=args.split, valid_fraction=args.valid_fraction, seed=args.seed, epochs=args.epochs, batch_size=args.bs,
        image_size=args.image_size, pretrained=not args.no_pretrained, weights=args.weights, offline=args.offline, mode=args.mode,
        lr=args.lr, unfreeze_epochs=args.unfreeze_epochs, balance=args.balance, precision=args.precision,
        name=getattr(args, "name", "") or "",
    )


def _add_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="stage 2: fine-tune ResNet-34 on the spectrograms (lr_find + one-cycle) and write the report",
        description=(
            "Fine-tune an ImageNet ResNet-34 (frozen body) on stage 1's spectrograms with fastai's lr_find and "
            "fit_one_cycle; write a run folder with the split, weights, ONNX export, per-epoch log and report. "
            "ImageNet weights come from the torch hub cache or --weights; without them, say --no-pretrained."
        ),
    )
    _add_train_flags(parser)
    parser.add_argument("--out", help="run folder to create (default: a new folder under --runs, and --runs/latest points to it)")
    parser.add_argument("--runs", help="folder of runs (default: data/runs)")
    parser.add_argument("--name", type=_run_name, default="", help="short name in the run folder's name")
    parser.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from heartbeat.model import WeightsError
    from heartbeat.train import TrainError, train

    try:
        settings = _train_settings(args)
        settings.validate()
        run_dir = train(args.spectrograms, args.out, settings, runs_dir=args.runs, progress=not args.quiet)
    except (TrainError, WeightsError, ValueError) as error:
        raise UserError(str(error)) from None
    except OSError as error:  # what no check could foresee (a full disk); the run folder was not written
        raise UserError(_os_error_line(error)) from None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(_headline(metrics, run_dir))
    return 0


def _os_error_line(error: OSError) -> str:
    """An OSError as `PATH: reason`, the project's one-line form."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


def _headline(metrics: dict, run_dir) -> str:
    baseline = metrics["majority_baseline"]
    return (
        f"{run_dir}: error rate {metrics['error_rate']:.3f} (majority baseline, always {baseline['class']}: "
        f"{baseline['error_rate']:.3f}), balanced accuracy {metrics['balanced_accuracy']:.3f} "
        f"(baseline {baseline['balanced_accuracy']:.3f}) on {metrics['n_recordings']} validation recordings; "
        f"report: {run_dir}/report.md"
    )


def _add_report(commands) -> None:
    parser = commands.add_parser(
        "report", help="rewrite a run's report (metrics.json, confusion matrix, report.md) from its saved predictions",
        description="Recompute a run's metrics and report from its predictions.csv, config and epoch log (no training).",
    )
    parser.add_argument("run_dir", metavar="RUN", nargs="?", default=None, help="run folder (default: data/runs/latest)")
    parser.set_defaults(run=_run_report)


def _run_report(args) -> int:
    from heartbeat import config
    from heartbeat.report import RunFolderError, rewrite_report

    run_dir = Path(args.run_dir) if args.run_dir else config.RUNS_DIR / "latest"
    try:
        metrics = rewrite_report(run_dir)
    except RunFolderError as error:  # found before anything was written: the folder is unchanged
        raise UserError(f"{error}; the report was not rewritten") from None
    except OSError as error:  # while writing; the files are staged first, so none was replaced
        raise UserError(f"{run_dir}: the report could not be written ({error})") from None
    print(_headline(metrics, run_dir))
    return 0


def _add_predict(commands) -> None:
    parser = commands.add_parser(
        "predict", help="classify recordings with a trained model (ONNX Runtime, no torch: starts in under a second)",
        description=(
            "Classify each FILE with a trained model: the recording is cut into 5.11 s windows as in training and "
            "their probabilities are averaged as in the report. Prints a table, or one JSON object per line with "
            "--json. A file that cannot be used gets one line on stderr and the others are still predicted; "
            "exit code 1 if any failed, 2 if the model cannot be used."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="WAV (8/16/24/32-bit integer or float), FLAC or OGG; any sample rate, mono or stereo; at least 0.5 s")
    parser.add_argument("--model", metavar="RUN", default=None, help="run folder of a trained model (default: data/runs/latest)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line per file: file, label, probabilities, windows, model_id")
    # default None: the library's audio.DEFAULT_MAX_SECONDS (not imported here: --help must not load numpy)
    parser.add_argument("--max-seconds", type=_max_seconds, default=None, metavar="SECONDS",
                        help="refuse recordings longer than this, from their header, before reading them: a tiny file "
                             "can declare hours of sound (default: 600, ten minutes)")
    parser.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from heartbeat import config
    from heartbeat.predict import Failure, ModelError, load_predictor, predict_files, table_header, table_row

    run_dir = Path(args.model) if args.model else config.RUNS_DIR / "latest"
    try:
        predictor = load_predictor(run_dir)
    except ModelError as error:
        raise UserError(str(error)) from None
    limits = {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
    file_width = max(len("file"), *(len(name) for name in args.files))
    failed = 0
    header_printed = False
    try:
        for result in predict_files(predictor, args.files, **limits):
            if isinstance(result, Failure):
                failed += 1
                print(f"heartbeat: {result.file}: {result.problem}", file=sys.stderr, flush=True)
                continue
            if args.json:
                line = result.to_json()
            else:
                if not header_printed:
                    print(table_header(predictor.classes, file_width))
                    header_printed = True
                line = table_row(result, file_width)
            _print_result(line)  # one line per file as it is done: a long list shows progress
    except ModelError as error:  # the model gives no usable answer: the same for every file, so stop
        raise UserError(str(error)) from None
    return EXIT_FAILED if failed else 0


def _print_result(line: str) -> None:
    """Print a line and flush; a file name that is not valid UTF-8 is written as the bytes it was given as."""
    try:
        print(line, flush=True)
    except UnicodeEncodeError:  # the name's undecodable bytes arrive as surrogate escapes (PEP 383)
        sys.stdout.flush()  # what the text layer holds (the table's header) goes first
        sys.stdout.buffer.write(line.encode(sys.stdout.encoding or "utf-8", "surrogateescape") + b"\n")
        sys.stdout.buffer.flush()


def _seed_list(text: str) -> list[int]:
    """Comma-separated seeds, each as --seed allows, none repeated (each seed's runs get their own folders)."""
    seeds = [_seed(part.strip()) for part in text.split(",") if part.strip()]
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds, got {text!r}")
    if len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return seeds


def _add_cv(commands) -> None:
    parser = commands.add_parser(
        "cv", help="cross-validation: patient-grouped k-fold (or the published protocol) with a summary over folds",
        description=(
            "Train one run per fold exactly as 'heartbeat train' does, collect every out-of-fold prediction (oof.csv) "
            "and summarise error rate, balanced accuracy, macro-F1 and the heart-problem Youden index over folds "
            "(mean, std, 95%% interval) beside the majority baseline. --protocol published repeats the blog's random "
            "70:30 split by recording over the seeds instead."
        ),
    )
    _add_train_flags(parser)
    parser.add_argument("--out", required=True, help="CV folder to create")
    parser.add_argument("--folds", type=_fold_count, default=5, help="number of patient-grouped folds (default: %(default)s)")
    parser.add_argument("--seeds", type=_seed_list, default=None, help="comma-separated seeds, one CV per seed (default: --seed)")
    parser.add_argument("--protocol", choices=("patient", "published"), default="patient",
                        help="patient: stratified group k-fold (default); published: random 70:30 by recording per seed")
    parser.set_defaults(run=_run_cv)


def _run_cv(args) -> int:
    from heartbeat.cv import cross_validate
    from heartbeat.model import WeightsError
    from heartbeat.train import TrainError

    try:
        settings = _train_settings(args)
        settings.validate()
        summary = cross_validate(args.spectrograms, args.out, settings, folds=args.folds, seeds=args.seeds,
                                 protocol=args.protocol, progress=not args.quiet)
    except (TrainError, WeightsError, ValueError) as error:
        raise UserError(str(error)) from None
    except OSError as error:  # what no check could foresee (a full disk); the CV folder was not written
        raise UserError(_os_error_line(error)) from None
    error, baseline = summary["error_rate"], summary["baseline_error_rate"]
    print(f"{args.out}: error rate {error['mean']:.3f} ± {error['std']:.3f} over {summary['n_runs']} runs "
          f"(majority baseline {baseline['mean']:.3f}); balanced accuracy {summary['balanced_accuracy']['mean']:.3f}; "
          f"report: {args.out}/report.md")
    return 0


def _add_synth(commands) -> None:
    parser = commands.add_parser(
        "synth", help="write a small synthetic Dataset-B-shaped folder (heartbeat-like sounds) for the demo and tests",
        description=(
            "Write OUT/set_b.csv and OUT/set_b/*.wav shaped like the real download, file-name quirks included: "
            "S1/S2 thumps, murmurs as band-limited noise in systole, extrastoles as premature beats; several "
            "patients with several recordings each. Deterministic for a given --seed. Offline."
        ),
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--patients", type=_positive_int, default=24, help="number of patients (default: %(default)s)")
    parser.add_argument("--seed", type=_seed, default=0, help=f"random seed, 0 to {MAX_SEED} (default: %(default)s)")
    parser.set_defaults(run=_run_synth)


def _run_synth(args) -> int:
    from heartbeat.synth import write_dataset_b

    try:
        root = write_dataset_b(args.out, n_patients=args.patients, seed=args.seed)
    except OSError as error:  # --out is a file, lies under one, or cannot be written
        raise UserError(f"{args.out}: cannot write the dataset there ({error.strerror or error})") from None
    rows = (root / "set_b.csv").read_text().count("\n") - 1
    print(f"synth: {rows} recordings from {args.patients} patients -> {root}/set_b.csv, {root}/set_b/")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, without the usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="heartbeat",
        description=(
            "Classify PASCAL heart-sound recordings (Dataset B: normal, murmur, extrastole) from "
            "mel-spectrogram images, and rerun the published study with an honest evaluation."
        ),
        epilog="Run 'heartbeat COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"heartbeat {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_spectrograms(commands)
    _add_train(commands)
    _add_report(commands)
    _add_cv(commands)
    _add_synth(commands)
    _add_predict(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UserError as error:
        print(f"heartbeat: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("heartbeat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
