"""The commands that use a trained model: predict (its own section, first) and evaluate.

Both run the model in ONNX Runtime through heartbeat.predict, never torch; they import it when they run,
so that `heartbeat --help` stays quick. --model names the model the same way for both (heartbeat.bundled:
data/runs/latest when it exists, otherwise the model shipped with the package; 'builtin' names that one).
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
            "Classify each FILE with a trained model (by default your newest run, data/runs/latest, and without one "
            "the model shipped with heartbeat: see --about): the recording is cut into 5.11 s windows as in training "
            "and their probabilities are averaged as in the report. Prints a table, or one JSON object per line with "
            "--json. A file that cannot be used gets one line on stderr and the others are still predicted; "
            "exit code 1 if any failed, 2 if the model cannot be used."
        ),
    )
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="WAV (8/16/24/32-bit integer or float), FLAC or OGG; any sample rate, mono or stereo; "
                             "at least 0.5 s")
    _add_model(parser)
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line per file: file, label, probabilities, windows, model_id, model, "
                             "heart_problem (1 - p(normal)), heart_rate_bpm, beats, beat_irregularity (null: no "
                             "reliable rhythm)")
    parser.add_argument("--about", action="store_true",
                        help="print the bundled model's card (training data, cross-validated figures, what it was "
                             "never tested on, intended use) and exit")
    parser.add_argument("--explain", metavar="DIR", default=None,
                        help="also write one picture per FILE into DIR (created if needed): its mel spectrogram, the "
                             "class probabilities window by window, and which time-frequency regions moved the answer "
                             "(about 2 s per 10-s recording)")
    add_max_seconds(parser)
    parser.set_defaults(run=_run_predict, usage_error=parser.error)  # FILE is required unless --about


def _add_model(parser) -> None:
    """--model of predict and evaluate."""
    parser.add_argument("--model", metavar="RUN", default=None,
                        help="a trained model's run folder, or 'builtin' for the model shipped with heartbeat "
                             "(default: data/runs/latest when it exists, otherwise builtin)")


def _run_predict(args) -> int:
    from heartbeat import bundled, config
    from heartbeat.predict import INTENDED_USE, Failure, ModelError, predict_files, table_header, table_row

    if args.about:
        return _print_about(args.model)
    if not args.files:
        args.usage_error("the following arguments are required: FILE (or --about)")
    try:
        predictor = bundled.load_model(args.model, config.RUNS_DIR)
    except ModelError as error:
        raise UserError(str(error)) from None
    limits = {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
    pictures = _explain_folder(args.explain, args.files)
    file_width = max(len("file"), *(len(printable(name)) for name in args.files))  # as table_row prints them
    failed = 0 if pictures is not False else 1
    header_printed = False
    try:
        for index, result in enumerate(predict_files(predictor, args.files, **limits)):
            if isinstance(result, Failure):
                failed += 1
                print_failure(result)
                continue
            if args.json:
                line = result.to_json()
            else:
                if not header_printed:
                    _print_result(INTENDED_USE)  # once per call, before the table (the JSON lines are for programs)
                    _print_result(table_header(predictor.classes, file_width))
                    header_printed = True
                line = table_row(result, file_width)
            _print_result(line)  # one line per file as it is done: a long list shows progress
            if pictures:
                failed += not _write_picture(predictor, args.files[index], pictures[index], limits)
    except ModelError as error:  # the model gives no usable answer: the same for every file, so stop
        raise UserError(str(error)) from None
    return EXIT_FAILED if failed else 0


def _print_about(model: str | None) -> int:
    """--about: the bundled model's card; a run folder has its own report instead."""
    from heartbeat import bundled, config
    from heartbeat.predict import ModelError

    choice = bundled.resolve_model(model, config.RUNS_DIR)
    if not choice.bundled:
        raise UserError(f"--about describes the bundled model (--model builtin); a run's own report is "
                        f"{os.fsdecode(choice.folder / 'report.md')}")
    try:
        _print_result(bundled.about().rstrip("\n"))
    except ModelError as error:
        raise UserError(str(error)) from None
    return 0


def _explain_folder(folder: str | None, files: list[str]):
    """--explain's picture paths, one per file (None: not asked; False: the folder is unusable, said in one line)."""
    if folder is None:
        return None
    from heartbeat.explain_files import folder_problem, picture_names

    problem = folder_problem(folder)
    if problem:
        print(f"heartbeat: {printable(problem)}; no pictures written", file=sys.stderr, flush=True)
        return False
    return [Path(folder) / name for name in picture_names(files)]


def _write_picture(predictor, file: str, picture: Path, limits: dict) -> bool:
    """One file's --explain picture; False (and one stderr line) if it could not be written."""
    from heartbeat.data.audio import AudioError
    from heartbeat.explain_files import explain_file

    try:
        explain_file(predictor, file, picture, **limits)
    except (AudioError, OSError) as error:
        problem = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        print(f"heartbeat: {printable(file)}: no picture ({printable(problem)})", file=sys.stderr, flush=True)
        return False
    return True


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
    _add_model(parser)
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
    from heartbeat.report.evaluate import EvaluationError, NothingEvaluated, prepare, run

    model_dir = _evaluated_model(args.model)
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


def _evaluated_model(model: str | None) -> Path:
    """--model's folder for evaluate, chosen and checked as predict's (bundled.checked_model)."""
    from heartbeat import bundled, config
    from heartbeat.predict import ModelError

    try:
        return bundled.checked_model(model, config.RUNS_DIR).folder
    except ModelError as error:
        raise UserError(str(error)) from None


def add_commands(commands) -> None:
    """predict and evaluate, in the order `heartbeat --help` lists them."""
    _add_predict(commands)
    _add_evaluate(commands)
