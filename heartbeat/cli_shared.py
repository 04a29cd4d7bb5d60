"""What the command modules share: exit codes, the one-line UserError, the data-layout and --max-seconds
flags, and the one-line form of a failed file or an OSError.

Standard library only (plus heartbeat.train.settings and heartbeat.data.layouts' names, themselves standard library
only), so that `heartbeat --help` stays quick. heartbeat.cli, heartbeat.cli_study and heartbeat.cli_use import it;
it imports none of them (no cycle).
"""

from __future__ import annotations

import argparse
import sys

from heartbeat.data.layouts import FORMATS  # standard library only: --help stays quick
from heartbeat.text import printable  # standard library only
from heartbeat.train import settings as settings_module

EXIT_FAILED = 1  # the command ran but some input failed
EXIT_USAGE = 2  # the command could not run (argparse uses 2 as well)
EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE: what a shell reports for a coreutils tool whose reader went away

# --max-seconds' ceiling: a day of sound, far beyond any auscultation. The limit guards memory and time
# per file, so an unbounded value (1e308 overflowed the header check, and every file failed) is refused.
MAX_SECONDS_CEILING = 86400.0


class UserError(Exception):
    """An error whose message is the whole story: printed as one line, exit code 2."""


class StdoutClosed(Exception):
    """Standard output's reader went away (`heartbeat predict ... | head -n1`): stop quietly, as Unix tools do."""


def max_seconds(text: str) -> float:
    """--max-seconds of `heartbeat spectrograms`: a positive, finite number of seconds."""
    value = settings_module.finite_float(text)
    if not 0 < value <= MAX_SECONDS_CEILING:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds up to {MAX_SECONDS_CEILING:g} "
                                         f"(a day), got {text}")
    return value


FORMAT_HELP = ("the data's layout: auto (default: detected from its files, and said in one line), pascal-b "
               "(set_b.csv + set_b/), pascal-a (set_a.csv + set_a/), physionet2016 (training-?/REFERENCE.csv), "
               "circor2022 (training_data.csv + training_data/), folders (DATA/<class>/**/*.wav) or csv "
               "(DATA/labels.csv: file,label[,patient])")


LABEL_MAP_HELP = "rename or drop labels, e.g. 'noisynormal=normal,artifact=drop' (default: none)"


def add_layout_flags(parser) -> None:
    """--format, --label-map and --group-regex: how a data folder is read (heartbeat.data.layouts)."""
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), metavar="FORMAT", help=FORMAT_HELP)
    parser.add_argument("--label-map", default=None, metavar="MAP", help=LABEL_MAP_HELP)
    parser.add_argument("--group-regex", default=None, metavar="REGEX",
                        help="folders layout: a regular expression whose first group (or group 'patient') reads the "
                             "patient from a file name, so that a patient's recordings stay on one side of a split "
                             "(default: each recording is its own group)")


def label_map(text: str | None) -> dict | None:
    """--label-map's text as a mapping (UserError naming the flag if malformed)."""
    from heartbeat.data.layouts import LayoutError, parse_label_map

    if text is None:
        return None
    try:
        return parse_label_map(text)
    except LayoutError as error:
        raise UserError(str(error)) from None


def add_max_seconds(parser, note: str = "") -> None:
    """--max-seconds of spectrograms, predict and evaluate (default None: the library's audio.DEFAULT_MAX_SECONDS, not
    imported here: --help must not load numpy). note: added to the help's default, e.g. the data's longest recording."""
    parser.add_argument("--max-seconds", type=max_seconds, default=None, metavar="SECONDS",
                        help="refuse recordings longer than this, from their header, before reading them: a tiny file "
                             f"can declare hours of sound (default: 600, ten minutes{note})")


def os_error_line(error: OSError) -> str:
    """An OSError as `PATH: reason`, the project's one-line form."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


def print_failure(failure) -> None:
    """A file that could not be used: one stderr line, its name's control characters escaped (heartbeat.text)."""
    print(f"heartbeat: {printable(failure.file)}: {printable(failure.problem)}", file=sys.stderr, flush=True)
