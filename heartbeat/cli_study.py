"""The study's commands: spectrograms (stage 1), synth, train (stage 2), cv and report.

Each command has an _add_* that declares its flags and a _run_* that calls the library and prints its
headline. Only the standard library, heartbeat.train.settings and heartbeat.data.layouts' names are imported
at the top (`heartbeat --help` stays quick); each _run_* imports the stage it calls.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from heartbeat.cli_shared import (
    EXIT_FAILED, UserError, add_layout_flags, add_max_seconds, label_map, os_error_line,
)
from heartbeat.data.layouts import FORMATS  # standard library only: --help stays quick
from heartbeat.text import printable  # standard library only
from heartbeat.train import settings as settings_module
from heartbeat.workers import CAP_HELP, worker_number  # standard library only

MAX_SEED = settings_module.MAX_SEED
_seed = settings_module.seed_number


def _add_spectrograms(commands) -> None:
    from heartbeat import config

    parser = commands.add_parser(
        "spectrograms",
        help="stage 1: turn every labelled .wav into 512x512 mel-spectrogram PNGs + manifest.csv",
        description=(
            "Turn every labelled recording of DATA (Dataset B's set_b.csv, or any layout of --format) into "
            "mel-spectrogram PNGs (one per 5.11 s window) and write OUT/manifest.csv and OUT/dataset.json. "
            "Incremental: up-to-date images are skipped. Exit code 1 if any recording failed (the others are "
            "still written)."
        ),
    )
    parser.add_argument("--data", default=str(config.DATA_DIR), help="the data folder (default: %(default)s)")
    add_layout_flags(parser)
    parser.add_argument("--out", default=str(config.SPECTROGRAMS_DIR), help="output folder (default: %(default)s)")
    parser.add_argument("--jobs", type=worker_number, default=None,
                        help=f"worker processes (default: one per CPU; {CAP_HELP}, nor than the recordings to make)")
    parser.add_argument("--include-unlabelled", action="store_true", help="also unlabelled recordings (Dataset B: its 195 test recordings)")
    add_max_seconds(parser, note="; Dataset B's longest is under 30 s")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_spectrograms)


def _run_spectrograms(args) -> int:
    from heartbeat.data.layouts import LayoutError
    from heartbeat.data.spectrograms import OutputError, build_spectrograms

    limits = {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
    try:
        summary = build_spectrograms(
            args.data, args.out, format=args.format, label_map=label_map(args.label_map), group_regex=args.group_regex,
            jobs=args.jobs, include_unlabelled=args.include_unlabelled, progress=not args.quiet, **limits,
        )
    except (LayoutError, OutputError) as error:
        raise UserError(str(error)) from None
    print(f"data: {summary.format} ({summary.format_reason})")
    for warning in summary.warnings:
        print(f"heartbeat: warning: {printable(warning)}", file=sys.stderr)
    for path, reason in summary.failed:
        print(f"heartbeat: {printable(str(path))}: {printable(reason)}", file=sys.stderr)
    print(summary.line())
    return EXIT_FAILED if summary.failed else 0


def _add_train_flags(parser, command: str) -> None:
    """The training flags of `train` or `cv`, one per TrainSettings field: flag, default, choices, check and help
    are the field's (heartbeat.train.settings); --weights and --no-pretrained exclude each other."""
    import dataclasses

    from heartbeat import config

    parser.add_argument("--spectrograms", default=str(config.SPECTROGRAMS_DIR), help="stage 1 output folder (default: %(default)s)")
    groups = {}
    for field in dataclasses.fields(settings_module.TrainSettings):
        flag = field.metadata
        if command not in flag["commands"]:
            continue
        exclusive = flag["exclusive"]
        if exclusive and exclusive not in groups:
            groups[exclusive] = parser.add_mutually_exclusive_group()
        target = groups[exclusive] if exclusive else parser
        options = dict(flag["options"])
        if "type" in options and "metavar" not in options:  # --bs BS, not --bs BATCH_SIZE (the field's name)
            options["metavar"] = flag["flag"].lstrip("-").upper().replace("-", "_")
        target.add_argument(flag["flag"], dest=field.name, default=field.default, help=flag["help"], **options)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_settings(args):
    """TrainSettings from the parsed flags, checked (ValueError, one line: e.g. flags that do nothing together)."""
    settings = settings_module.settings_from_arguments(args, args.command)
    settings.validate()
    return settings


@contextlib.contextmanager
def _training_errors():
    """Stage 2's errors the user can fix as one line (UserError, exit 2): bad data, weights, device, a full disk."""
    from heartbeat.fileio import FolderBusy  # standard library only

    try:
        yield
    except (settings_module.TrainError, ValueError, FolderBusy) as error:
        raise UserError(str(error)) from None
    except OSError as error:  # what no check could foresee (a full disk); the output folder was not written
        raise UserError(os_error_line(error)) from None
    except Exception as error:  # WeightsError: imported only here, as it loads torch
        from heartbeat.train.model import WeightsError

        if not isinstance(error, WeightsError):
            raise
        raise UserError(str(error)) from None


def _add_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="stage 2: fine-tune ResNet-34 on the spectrograms (lr_find + one-cycle) and write the report",
        description=(
            "Fine-tune an ImageNet ResNet-34 (frozen body) on stage 1's spectrograms with fastai's lr_find and "
            "fit_one_cycle (the published recipe); or, with --recipe heartbeat, train this project's small CNN "
            "from scratch. Write a run folder with the split, weights, ONNX export, per-epoch log and report. "
            "ImageNet weights come from the torch hub cache or --weights; without them, say --no-pretrained."
        ),
    )
    _add_train_flags(parser, "train")
    parser.add_argument("--out", help="run folder to create (default: a new folder under --runs, and --runs/latest points to it)")
    parser.add_argument("--runs", help="folder of runs (default: data/runs)")
    parser.set_defaults(run=_run_train)


def _run_train(args) -> int:
    with _training_errors():
        settings = _train_settings(args)  # before torch loads: flags that do nothing together are refused at once
        from heartbeat.train.run import train

        result = train(args.spectrograms, args.out, settings, runs_dir=args.runs, progress=not args.quiet)
    for warning in result.warnings:  # the run is complete; these are extras it could not make (the report says why)
        print(f"heartbeat: warning: {printable(warning)}", file=sys.stderr)
    print(_headline(result.metrics, result.run_dir))
    return 0


def _headline(metrics: dict | None, run_dir) -> str:
    if metrics is None:  # --valid-fraction 0: no validation side
        return f"{run_dir}: trained on every labelled recording, no validation figures (see the CV); report: {run_dir}/report.md"
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
    from heartbeat.report.run_files import RunFolderError
    from heartbeat.report.run_report import rewrite_report

    run_dir = Path(args.run_dir) if args.run_dir else config.RUNS_DIR / config.LATEST
    try:
        metrics = rewrite_report(run_dir)
    except RunFolderError as error:  # found before anything was written: the folder is unchanged
        raise UserError(f"{error}; the report was not rewritten") from None
    except OSError as error:  # while writing; the files are staged first, so none was replaced
        raise UserError(f"{run_dir}: the report could not be written ({error})") from None
    print(_headline(metrics, run_dir))
    return 0


def _fold_count(text: str) -> int:
    return settings_module.whole_number(text, 2)  # one fold would leave nothing to train on


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
            "(mean, std, 95 % interval) beside the majority baseline and a classical baseline (log-mel band "
            "statistics + logistic regression, fit on the same folds). --protocol published repeats the blog's random "
            "70:30 split by recording over the seeds instead."
        ),
    )
    _add_train_flags(parser, "cv")
    parser.add_argument("--out", required=True, help="CV folder to create")
    parser.add_argument("--folds", type=_fold_count, default=5, help="number of patient-grouped folds (default: %(default)s)")
    parser.add_argument("--seeds", type=_seed_list, default=None, help="comma-separated seeds, one CV per seed (default: --seed)")
    parser.add_argument("--protocol", choices=("patient", "published"), default="patient",
                        help="patient: stratified group k-fold (default); published: random 70:30 by recording per seed")
    parser.set_defaults(run=_run_cv)


def _run_cv(args) -> int:
    with _training_errors():
        settings = _train_settings(args)
        from heartbeat.report.cv import cross_validate

        summary = cross_validate(args.spectrograms, args.out, settings, folds=args.folds, seeds=args.seeds,
                                 protocol=args.protocol, progress=not args.quiet)
    print(_cv_headline(summary, args.out))
    return 0


def _cv_headline(summary: dict, out_dir) -> str:
    error, baseline = summary["error_rate"], summary["baseline_error_rate"]
    return (f"{out_dir}: error rate {error['mean']:.3f} ± {error['std']:.3f} over {summary['n_runs']} runs "
            f"(majority baseline {baseline['mean']:.3f}); balanced accuracy {summary['balanced_accuracy']['mean']:.3f}; "
            f"report: {out_dir}/report.md")


SYNTH_FORMATS = FORMATS  # synth writes every layout heartbeat.data.layouts reads


# synth writes a demo or test folder (24 patients by default, about 3 MB); 1,000 patients are about 140 MB of WAV and
# minutes of work, and 10**8 would fill the disk for hours: refused at parse time rather than left to run.
MAX_SYNTH_PATIENTS = 1000


def _synth_patients(text: str) -> int:
    try:
        return settings_module.whole_number(text, 1, MAX_SYNTH_PATIENTS)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (synth makes demo and test folders: more than {MAX_SYNTH_PATIENTS} "
                                         "patients would take hours and gigabytes)") from None


def _add_synth(commands) -> None:
    parser = commands.add_parser(
        "synth", help="write a small synthetic heart-sound folder (Dataset B's layout or another) for the demo and tests",
        description=(
            "Write a small folder of heartbeat-like recordings (S1/S2 thumps, murmurs as band-limited noise in "
            "systole, extrastoles as premature beats; several patients with several recordings each) in one of "
            "the public datasets' layouts, quirks included. The default is Dataset B's: OUT/set_b.csv and "
            "OUT/set_b/*.wav with the real download's file-name quirks. Deterministic for a given --seed. Offline."
        ),
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--format", choices=SYNTH_FORMATS, default="pascal-b",
                        help="the layout to write (default: %(default)s, Dataset B)")
    parser.add_argument("--patients", type=_synth_patients, default=24,
                        help=f"number of patients, 1 to {MAX_SYNTH_PATIENTS} (default: %(default)s)")
    parser.add_argument("--seed", type=_seed, default=0, help=f"random seed, 0 to {MAX_SEED} (default: %(default)s)")
    parser.set_defaults(run=_run_synth)


def _run_synth(args) -> int:
    from heartbeat.data.synth import write_dataset_b, write_layout

    try:
        if args.format == "pascal-b":
            root = write_dataset_b(args.out, n_patients=args.patients, seed=args.seed)
        else:
            root = write_layout(args.out, args.format, n_patients=args.patients, seed=args.seed)
    except OSError as error:  # --out is a file, lies under one, or cannot be written
        raise UserError(f"{args.out}: cannot write the dataset there ({error.strerror or error})") from None
    if args.format == "pascal-b":
        rows = (root / "set_b.csv").read_text().count("\n") - 1
        print(f"synth: {rows} recordings from {args.patients} patients -> {root}/set_b.csv, {root}/set_b/")
    else:
        recordings = sum(1 for _ in Path(root).rglob("*.wav"))
        print(f"synth: {recordings} recordings from {args.patients} patients in the {args.format} layout -> {root}")
    return 0


def add_commands(commands) -> None:
    """The study's subcommands, in the order `heartbeat --help` lists them."""
    _add_spectrograms(commands)
    _add_train(commands)
    _add_report(commands)
    _add_cv(commands)
    _add_synth(commands)
