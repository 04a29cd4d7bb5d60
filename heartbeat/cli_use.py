"""The commands that use a trained model: predict (its own section, first) and evaluate.

Both run the model in ONNX Runtime through heartbeat.predict, never torch; they import it when they run,
so that `heartbeat --help` stays quick.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from heartbeat.cli_shared import (
    EXIT_FAILED, StdoutClosed, UserError, add_layout_flags, add_max_seconds, label_map, print_failure,
)
from heartbeat.text import printable  # standard library only
from heartbeat.workers import CAP_HELP, worker_number  # standard library only


# predict

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
    add_max_seconds(parser)
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
                print_failure(result)
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


def _print_result(line: str) -> None:
    """Print a line and flush; a file name that is not valid UTF-8 is written as the bytes it was given as.

    Standard output that cannot be written is the command's failure, not the file's: a closed pipe
    stops quietly (StdoutClosed), a full disk or /dev/full is a UserError.
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
        raise StdoutClosed from None
    except OSError as error:
        _discard_stdout()
        raise UserError(f"standard output cannot be written ({error.strerror or error}); stopped") from None


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that what Python still buffers is not retried (a second error) at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# evaluate

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
    add_layout_flags(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to write the evaluation into (created if needed; a rerun replaces its five files "
                             "and touches nothing else; not inside the data or the model folder)")
    add_max_seconds(parser)
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
        plan = prepare(model_dir, args.data, args.out, format=args.format, label_map=label_map(args.label_map),
                       group_regex=args.group_regex, threads=args.threads, **limits)
        print(f"data: {plan.layout.format} ({printable(plan.layout.reason)})", flush=True)
        result = run(plan, progress=not args.quiet)
    except NothingEvaluated as error:  # every file failed: each gets its line, and nothing was written
        for failure in error.failures:
            print_failure(failure)
        print(f"heartbeat: {printable(str(error))}", file=sys.stderr)
        return EXIT_FAILED
    except EvaluationError as error:
        raise UserError(str(error)) from None
    for failure in result.failures:
        print_failure(failure)
    metrics, baseline = result.metrics, result.metrics["majority_baseline"]
    not_scored = sum(result.not_scored.values())
    print(f"{result.out_dir}: accuracy {metrics['accuracy']:.3f} (majority baseline, always {baseline['class']}: "
          f"{baseline['accuracy']:.3f}), balanced accuracy {metrics['balanced_accuracy']:.3f} "
          f"(baseline {baseline['balanced_accuracy']:.3f}) on {result.n_scored} scored recordings; "
          f"{not_scored} not scored, {len(result.failures)} failed; report: {result.out_dir}/report.md")
    return EXIT_FAILED if result.failures else 0


def add_commands(commands) -> None:
    """predict and evaluate, in the order `heartbeat --help` lists them."""
    _add_predict(commands)
    _add_evaluate(commands)
