"""Command line: a thin layer over the library functions.

Only argparse and the standard library are imported at the top, so `heartbeat --help` and
`heartbeat --version` answer at once; each command imports what it needs when it runs.
Errors the user can fix (bad data, bad input files, missing weights) are one line on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from heartbeat import __version__

EXIT_FAILED = 1  # the command ran but some input failed
EXIT_USAGE = 2  # the command could not run (argparse uses 2 as well)


class UserError(Exception):
    """An error whose message is the whole story: printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_spectrograms)


def _run_spectrograms(args) -> int:
    from heartbeat.dataset import DatasetError
    from heartbeat.spectrograms import build_spectrograms

    try:
        summary = build_spectrograms(
            args.data, args.out, jobs=args.jobs, include_unlabelled=args.include_unlabelled, progress=not args.quiet
        )
    except DatasetError as error:
        raise UserError(str(error)) from None
    for path, reason in summary.failed:
        print(f"heartbeat: {path}: {reason}", file=sys.stderr)
    print(summary.line())
    return EXIT_FAILED if summary.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
