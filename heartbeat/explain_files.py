"""`heartbeat predict --explain DIR`: one picture (heartbeat.explain) per input file, under a unique name in DIR.

The folder is checked once, before any picture (a file where the folder should be, or a folder
that cannot be created or written, is one problem line; predictions still print). Each picture's
name comes from its file's name alone, never from its folders, so nothing is written outside DIR
whatever the inputs are called; two inputs with the same name get `-2`, `-3`, ... in input order.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from heartbeat.data import audio

PICTURE_SUFFIX = ".png"


def picture_names(files: Sequence[str | os.PathLike]) -> list[str]:
    """One PNG name per input, in order: the file's stem, `-N` added where a name (compared case-blind) repeats."""
    used: set[str] = set()
    names = []
    for file in files:
        stem = Path(os.fsdecode(file)).stem or "recording"
        name, number = stem + PICTURE_SUFFIX, 1
        while name.casefold() in used:  # case-blind: on macOS or Windows A.png and a.png are one file
            number += 1
            name = f"{stem}-{number}{PICTURE_SUFFIX}"
        used.add(name.casefold())
        names.append(name)
    return names


def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why pictures cannot be written into `folder` (one line), or None; a missing folder is created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{os.fsdecode(folder)}: not a folder (--explain needs a folder to write pictures into)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # the real test of writability (os.access is blind for root)
            pass
    except OSError as error:
        return f"{os.fsdecode(folder)}: cannot write pictures there ({error.strerror or error})"
    return None


def explain_file(predictor, path: str | os.PathLike, picture: Path, *,
                 max_seconds: float = audio.DEFAULT_MAX_SECONDS) -> None:
    """Explain one recording with a loaded model and write its picture (atomically) to `picture`.

    Raises audio.AudioError as predict does, OSError if the picture cannot be written.
    """
    from heartbeat.explain import explain_signal, explanation_title, write_explanation

    explanation = explain_signal(predictor, audio.load_audio(path, max_seconds=max_seconds))
    write_explanation(picture, explanation, predictor.classes, explanation_title(path, explanation, predictor.classes))
