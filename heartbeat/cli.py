"""Command line: a thin layer over the library functions.

Only argparse and the standard library are imported at the top, so `heartbeat --help` and
`heartbeat --version` answer at once; each command imports what it needs when it runs.
Errors the user can fix (bad data, bad input files, missing weights) are one line on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from heartbeat import __version__
from heartbeat.train import settings as settings_module
from heartbeat.data.layouts import FORMATS  # standard library only: --help stays quick
from heartbeat.text import printable  # standard library only
from heartbeat.workers import CAP_HELP, worker_number  # standard library only

EXIT_FAILED = 1  # the command ran but some input failed
EXIT_USAGE = 2  # the command could not run (argparse uses 2 as well)
EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE: what a shell reports for a coreutils tool whose reader went away
# --max-seconds' ceiling: a day of sound, far beyond any auscultation. The limit guards memory and time
# per file, so an unbounded value (1e308 overflowed the header check, and every file failed) is refused.
MAX_SECONDS_CEILING = 86400.0


class UserError(Exception):
    """An error whose message is the whole story: printed as one line, exit code 2."""


class _StdoutClosed(Exception):
    """Standard output's reader went away (`heartbeat predict ... | head -n1`): stop quietly, as Unix tools do."""


# Checks of one number, shared with TrainSettings' flags (heartbeat.train.settings imports only the standard library,
# so a bad flag is still reported before torch loads).
MAX_SEED = settings_module.MAX_SEED
_positive_int = settings_module.positive_int
_seed = settings_module.seed_number
_finite_float = settings_module.finite_float


def _fold_count(text: str) -> int:
    return settings_module.whole_number(text, 2)  # one fold would leave nothing to train on


def _max_seconds(text: str) -> float:
    """--max-seconds of `heartbeat spectrograms`: a positive, finite number of seconds."""
    value = _finite_float(text)
    if not 0 < value <= MAX_SECONDS_CEILING:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds up to {MAX_SECONDS_CEILING:g} "
                                         f"(a day), got {text}")
    return value


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
    _add_layout_flags(parser)
    parser.add_argument("--out", default=str(config.SPECTROGRAMS_DIR), help="output folder (default: %(default)s)")
    parser.add_argument("--jobs", type=worker_number, default=None,
                        help=f"worker processes (default: one per CPU; {CAP_HELP}, nor than the recordings to make)")
    parser.add_argument("--include-unlabelled", action="store_true", help="also unlabelled recordings (Dataset B: its 195 test recordings)")
    # default None: the library's audio.DEFAULT_MAX_SECONDS (not imported here: --help must not load numpy)
    parser.add_argument("--max-seconds", type=_max_seconds, default=None,
                        help="refuse recordings longer than this, from their header, before reading them: a tiny file "
                             "can declare hours of sound (default: 600, ten minutes; Dataset B's longest is under 30 s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_spectrograms)


FORMAT_HELP = ("the data's layout: auto (default: detected from its files, and said in one line), pascal-b "
               "(set_b.csv + set_b/), pascal-a (set_a.csv + set_a/), physionet2016 (training-?/REFERENCE.csv), "
               "circor2022 (training_data.csv + training_data/), folders (DATA/<class>/**/*.wav) or csv "
               "(DATA/labels.csv: file,label[,patient])")
LABEL_MAP_HELP = "rename or drop labels, e.g. 'noisynormal=normal,artifact=drop' (default: none)"


def _add_layout_flags(parser) -> None:
    """--format, --label-map and --group-regex: how a data folder is read (heartbeat.data.layouts)."""
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), metavar="FORMAT", help=FORMAT_HELP)
    parser.add_argument("--label-map", default=None, metavar="MAP", help=LABEL_MAP_HELP)
    parser.add_argument("--group-regex", default=None, metavar="REGEX",
                        help="folders layout: a regular expression whose first group (or group 'patient') reads the "
                             "patient from a file name, so that a patient's recordings stay on one side of a split "
                             "(default: each recording is its own group)")


def _label_map(text: str | None) -> dict | None:
    """--label-map's text as a mapping (UserError naming the flag if malformed)."""
    from heartbeat.data.layouts import LayoutError, parse_label_map

    if text is None:
        return None
    try:
        return parse_label_map(text)
    except LayoutError as error:
        raise UserError(str(error)) from None


def _run_spectrograms(args) -> int:
    from heartbeat.data.layouts import LayoutError
    from heartbeat.data.spectrograms import OutputError, build_spectrograms

    limits = {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
    try:
        summary = build_spectrograms(
            args.data, args.out, format=args.format, label_map=_label_map(args.label_map), group_regex=args.group_regex,
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
        raise UserError(_os_error_line(error)) from None
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
    print(_headline(result.metrics, result.run_dir))
    return 0


def _os_error_line(error: OSError) -> str:
    """An OSError as `PATH: reason`, the project's one-line form."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


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
    from heartbeat.report.run_report import RunFolderError, rewrite_report

    run_dir = Path(args.run_dir) if args.run_dir else config.RUNS_DIR / "latest"
    try:
        metrics = rewrite_report(run_dir)
    except RunFolderError as error:  # found before anything was written: the folder is unchanged
        raise UserError(f"{error}; the report was not rewritten") from None
    except OSError as error:  # while writing; the files are staged first, so none was replaced
        raise UserError(f"{run_dir}: the report could not be written ({error})") from None
    print(_headline(metrics, run_dir))
    return 0


def _add_max_seconds(parser) -> None:
    """--max-seconds of predict and evaluate (default None: the library's audio.DEFAULT_MAX_SECONDS, not imported
    here: --help must not load numpy)."""
    parser.add_argument("--max-seconds", type=_max_seconds, default=None, metavar="SECONDS",
                        help="refuse recordings longer than this, from their header, before reading them: a tiny file "
                             "can declare hours of sound (default: 600, ten minutes)")


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
    _add_max_seconds(parser)
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
    file_width = max(len("file"), *(len(printable(name)) for name in args.files))  # as table_row prints them
    failed = 0
    header_printed = False
    try:
        for result in predict_files(predictor, args.files, **limits):
            if isinstance(result, Failure):
                failed += 1
                _print_failure(result)
                continue
            if args.json:
                line = result.to_json()
            else:
                if not header_printed:
                    _print_result(table_header(predictor.classes, file_width))
                    header_printed = True
                line = table_row(result, file_width)
            _print_result(line)  # one line per file as it is done: a long list shows progress
    except ModelError as error:  # the model gives no usable answer: the same for every file, so stop
        raise UserError(str(error)) from None
    return EXIT_FAILED if failed else 0


def _print_failure(failure) -> None:
    """A file that could not be used: one stderr line, its name's control characters escaped (heartbeat.text)."""
    print(f"heartbeat: {printable(failure.file)}: {printable(failure.problem)}", file=sys.stderr, flush=True)


def _print_result(line: str) -> None:
    """Print a line and flush; a file name that is not valid UTF-8 is written as the bytes it was given as.

    Standard output that cannot be written is the command's failure, not the file's: a closed pipe
    stops quietly (_StdoutClosed), a full disk or /dev/full is a UserError.
    """
    try:
        try:
            print(line, flush=True)
        except UnicodeEncodeError:  # the name's undecodable bytes arrive as surrogate escapes (PEP 383)
            sys.stdout.flush()  # what the text layer holds (the table's header) goes first
            sys.stdout.buffer.write(line.encode(sys.stdout.encoding or "utf-8", "surrogateescape") + b"\n")
            sys.stdout.buffer.flush()
    except BrokenPipeError:
        _discard_stdout()
        raise _StdoutClosed from None
    except OSError as error:
        _discard_stdout()
        raise UserError(f"standard output cannot be written ({error.strerror or error}); stopped") from None


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that what Python still buffers is not retried (a second error) at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate", help="run a trained model on another labelled data folder and write its report (ONNX, no torch)",
        description=(
            "Run a trained model on every labelled recording of another data folder, through predict's path (the "
            "same windows, the mean of their probabilities, ONNX Runtime), and write OUT/predictions.csv, "
            "metrics.json, confusion_matrix.png/.json and report.md, every figure beside the evaluated set's own "
            "majority class. Labels the model does not know are not run: they are counted as 'not scored' (map "
            "them with --label-map). A file that cannot be used gets one line on stderr and the others are still "
            "evaluated; exit code 1 if any failed, 2 if the evaluation cannot run (OUT is then left as it was)."
        ),
    )
    parser.add_argument("--model", metavar="RUN", default=None, help="run folder of a trained model (default: data/runs/latest)")
    parser.add_argument("--data", required=True, metavar="DIR", help="the data folder to evaluate on (any layout of --format)")
    _add_layout_flags(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to write the evaluation into (created if needed; a rerun replaces its five files "
                             "and touches nothing else; not inside the data or the model folder)")
    _add_max_seconds(parser)
    parser.add_argument("--threads", type=worker_number, default=None, metavar="N",
                        help=f"ONNX Runtime threads (default: the CPUs this process may use; {CAP_HELP})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from heartbeat import config
    from heartbeat.report.evaluate import EvaluationError, NothingEvaluated, prepare, run

    model_dir = Path(args.model) if args.model else config.RUNS_DIR / "latest"
    limits = {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
    try:
        plan = prepare(model_dir, args.data, args.out, format=args.format, label_map=_label_map(args.label_map),
                       group_regex=args.group_regex, threads=args.threads, **limits)
        print(f"data: {plan.layout.format} ({printable(plan.layout.reason)})", flush=True)
        result = run(plan, progress=not args.quiet)
    except NothingEvaluated as error:  # every file failed: each gets its line, and nothing was written
        for failure in error.failures:
            _print_failure(failure)
        print(f"heartbeat: {printable(str(error))}", file=sys.stderr)
        return EXIT_FAILED
    except EvaluationError as error:
        raise UserError(str(error)) from None
    for failure in result.failures:
        _print_failure(failure)
    metrics, baseline = result.metrics, result.metrics["majority_baseline"]
    not_scored = sum(result.not_scored.values())
    print(f"{result.out_dir}: accuracy {metrics['accuracy']:.3f} (majority baseline, always {baseline['class']}: "
          f"{baseline['accuracy']:.3f}), balanced accuracy {metrics['balanced_accuracy']:.3f} "
          f"(baseline {baseline['balanced_accuracy']:.3f}) on {result.n_scored} scored recordings; "
          f"{not_scored} not scored, {len(result.failures)} failed; report: {result.out_dir}/report.md")
    return EXIT_FAILED if result.failures else 0


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


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is: it unwinds as Ctrl-C's KeyboardInterrupt does, so every
    `finally` and atomic writer removes its temporary (the signals' default action would leave them behind)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _stop(signum, frame):
    for other in STOP_SIGNALS:  # a second signal would interrupt the clean-up itself; SIGKILL still stops it
        signal.signal(other, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def _stopping_on_signals():
    """SIGTERM and SIGHUP stop the command as Ctrl-C does while it runs (forked workers inherit this and clean up
    their own temporaries); the previous handlers come back after (main may be called from a longer-lived program)."""
    try:
        previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread: signals are not this call's to handle
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
    _add_evaluate(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _stopping_on_signals():
            return args.run(args)
    except UserError as error:
        print(f"heartbeat: error: {printable(str(error))}", file=sys.stderr)  # names from files, escaped
        return EXIT_USAGE
    except _StdoutClosed:
        return EXIT_BROKEN_PIPE
    except FileNotFoundError:
        if _working_folder_exists():
            raise
        print("heartbeat: error: the current folder no longer exists (deleted?), so relative paths cannot be "
              "resolved; cd into an existing folder or give absolute paths", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or Stopped: the temporaries are gone by now
        signum = getattr(interrupt, "signum", signal.SIGINT)
        name = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"heartbeat: {name}", file=sys.stderr)
        return 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP


def _working_folder_exists() -> bool:
    """False when the current folder was deleted: os.getcwd() (and every relative path's resolution) fails."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
