"""Command line: a thin layer over the library functions.

Only argparse and the standard library are imported at the top, so `heartbeat --help` and
`heartbeat --version` answer at once; each command imports what it needs when it runs.
Errors the user can fix (bad data, bad input files, missing weights) are one line on stderr
and a non-zero exit code, never a traceback.

This module holds the parser, main (error handling, signals); the commands are in heartbeat.cli_study
(spectrograms, synth, train, cv, report) and heartbeat.cli_use (predict, evaluate), and what they share in
heartbeat.cli_shared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from heartbeat import __version__, cli_study, cli_use
# The exit codes are part of the command line's interface (tests and scripts read them as cli.EXIT_*).
from heartbeat.cli_shared import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_USAGE, StdoutClosed, UserError  # noqa: F401
from heartbeat.text import printable  # standard library only


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
    cli_study.add_commands(commands)
    cli_use.add_commands(commands)
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
    except StdoutClosed:
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
