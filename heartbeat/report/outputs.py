"""How the report's files are made: numbers and tables as markdown text, values as strict JSON, all files
written together (none renamed into place until every one is staged)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np

from heartbeat.fileio import atomic_path
from heartbeat.text import printable


def json_bytes(value) -> bytes:
    # allow_nan=False: plain has made NaN and infinity None, so the file is strict JSON.
    return (json.dumps(value, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_all(folder: Path, files: dict[str, bytes]) -> None:
    """Write every file atomically, renaming none until all are staged: a failure while staging
    (disk full, an interrupt) leaves every earlier file as it was."""
    with contextlib.ExitStack() as staged:
        for name, data in files.items():
            staged.enter_context(atomic_path(folder / name)).write_bytes(data)


def format_number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def format_count(value) -> str:
    return "n/a" if value is None else str(value)


def format_setting(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_text(lines: list[str]) -> str:
    """report.md's text from its lines, each with its control characters escaped (heartbeat.text): a title or
    a cell holds file and folder names, and a newline or ESC in one must not break the page or a terminal."""
    return "\n".join(printable(line) for line in lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(values):
        # A "|" inside a cell would end the cell early.
        return "| " + " | ".join(str(value).replace("|", "\\|") for value in values) + " |"

    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(row) for row in rows)]


def figures_table(rows, baseline_class: str) -> list[str]:
    """The table of (figure, model's value, majority baseline's value) rows, as report.md shows them."""
    return markdown_table(["figure", "model", f"majority baseline (always {baseline_class})"],
                          [[name, format_number(model), format_number(baseline)] for name, model, baseline in rows])


def confusion_section(confusion: dict, picture: str) -> list[str]:
    """report.md's confusion matrix: the picture, then the counts as a table (true class on rows)."""
    return ["## Confusion matrix", "", f"![confusion matrix]({picture})", "", *markdown_table(
        ["true \\ predicted", *confusion["classes"]],
        [[name, *(str(count) for count in row)] for name, row in zip(confusion["classes"], confusion["matrix"])],
    ), "", "Rows are the true class, columns the predicted class; counts are recordings.", ""]


def plain(value):
    """A JSON-ready copy: numpy scalars/arrays to Python, paths to strings, NaN and infinity to None."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return str(value)
    return value
