"""Text for people: names from files made safe for a terminal, a Markdown viewer and a spreadsheet.

File names, folder names and labels come from the user's data or from a model folder that may be
untrusted. Two places read such text as commands rather than as text:

- a terminal: an ESC byte starts an escape sequence (it can move the cursor, rewrite what was
  printed, set the window title), and a newline or carriage return fakes a new line of output.
  `printable` writes such characters as visible escapes (`\\x1b`, `\\n`) in every human-readable
  output: predict's table and messages, report.md.
- a spreadsheet: a cell beginning with `=`, `+`, `-` or `@` (or tab, carriage return) is opened as
  a formula (OWASP, "CSV injection"). `spreadsheet_cell` prefixes such a text cell with `'`, which
  spreadsheets show as text and hide; `from_spreadsheet_cell` gives the original back, so a csv
  the tool reads again (a run's predictions.csv) round-trips exactly.

A progress bar redraws itself with carriage returns: `on_terminal` tells whether it may (in a log
file or a pipe each redraw is one more line of noise, so the bars there are off).

JSON outputs stay exact: json.dumps escapes control characters itself. Standard library only:
predict imports this module and must start fast.
"""

from __future__ import annotations

import sys
import unicodedata

# Bidirectional controls (Unicode's format characters that reorder what follows: "Trojan source"):
# a name holding one can show as another name.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc: C0 and C1 controls and DEL; Zl, Zp: the line and paragraph separators (a line break to some viewers).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})

# OWASP's triggers, and the quote itself so that the prefix can be taken off again unambiguously.
SPREADSHEET_QUOTE = "'"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", SPREADSHEET_QUOTE)


def on_terminal(stream) -> bool:
    """Whether `stream` is a terminal (a bar can redraw itself there); False for files, pipes and closed streams."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def progress_bar(total: int, desc: str, unit: str, progress: bool):
    """A tqdm bar on standard error, drawn only on a terminal (a log gets the caller's one-line summary instead of
    the redrawn frames) and only with progress. tqdm is imported here, at the call: predict imports this module."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (progress and on_terminal(sys.stderr)), file=sys.stderr)


def printable(text: str) -> str:
    """`text` with control characters as visible escapes (ESC -> `\\x1b`, newline -> `\\n`); the rest unchanged.

    A file name's undecodable bytes (PEP 383 surrogate escapes) are left as they are: the caller
    writes them back as the bytes they were, or escapes them on encoding.
    """
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(_escape(char) if _is_control(char) else char for char in text)


def first_line(error: BaseException) -> str:
    """An exception's message's first line (a library's may run to dozens), or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def error_reason(error: BaseException) -> str:
    """Why an operation failed, in one line: an OSError's strerror (its message without the path a caller names
    itself), else first_line."""
    return getattr(error, "strerror", None) or first_line(error)


def _is_control(char: str) -> bool:
    return char in _BIDI_CONTROLS or unicodedata.category(char) in _ESCAPED_CATEGORIES


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")  # \n, \t, \x1b, \u202e


def spreadsheet_cell(value):
    """A csv cell a spreadsheet opens as text: a text cell starting with a formula trigger gets a leading `'`.

    Only text is changed: numbers (a negative probability difference, say) are values, not formulas.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return SPREADSHEET_QUOTE + value
    return value


def from_spreadsheet_cell(value):
    """The cell spreadsheet_cell was given: its leading `'` taken off."""
    if isinstance(value, str) and value.startswith(SPREADSHEET_QUOTE):
        return value[len(SPREADSHEET_QUOTE):]
    return value


def spreadsheet_frame(frame):
    """A copy of a pandas DataFrame with spreadsheet_cell applied to its text columns (numeric ones untouched)."""
    text_columns = [name for name in frame.columns if frame[name].dtype.kind == "O"]  # object or str dtype
    return frame.assign(**{name: frame[name].map(spreadsheet_cell) for name in text_columns})
