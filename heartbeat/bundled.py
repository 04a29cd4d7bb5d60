"""The bundled model: which model a command uses, the one shipped inside the package, and its card.

The package ships one model (heartbeat/models/builtin/: model.json, a self-contained model.onnx
and MODEL_CARD.md), made by scripts/release_model.py (`make release-model`). Its model.json
records the sha256 of every other file ("files"), so a file that an install lost or corrupted is
one line naming it and the fix, not a wrong answer or an onnxruntime traceback.

`resolve_model` says which folder answers: the one given, the bundled one for "builtin", and
by default the newest training run (RUNS_DIR/latest) when there is one, else the bundled one.
Only the standard library, heartbeat.config and heartbeat.predict are imported (predict must start fast).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from heartbeat.config import LATEST
from heartbeat.predict import MODEL_FILE, ONNX_FILE, ModelError, Predictor, load_predictor

BUILTIN = "builtin"  # the --model value that names the bundled model
BUNDLED_DIR = Path(__file__).resolve().parent / "models" / BUILTIN
CARD_FILE = "MODEL_CARD.md"
FILES_KEY = "files"  # model.json: {file name: sha256 hex} of the bundled folder's other files
FIX = "reinstall it with 'pip install --force-reinstall heartbeat', or rebuild it with 'make release-model'"
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelChoice:
    folder: Path
    name: str  # what the JSON output calls it: "builtin", or the folder as given
    bundled: bool


def resolve_model(value: str | None, runs_dir: Path, bundled_dir: Path | None = None) -> ModelChoice:
    """--model's value -> the folder that answers.

    None: runs_dir/latest when it exists (the user's own newest run), otherwise the bundled model;
    "builtin": the bundled model; anything else: that folder (checked when it is loaded).
    bundled_dir: the bundled model's folder (default: BUNDLED_DIR, read at the call: tests replace it).
    """
    bundled_dir = BUNDLED_DIR if bundled_dir is None else bundled_dir
    if value == BUILTIN or (value is None and not (runs_dir / LATEST).exists()):
        return ModelChoice(bundled_dir, BUILTIN, True)
    folder = runs_dir / LATEST if value is None else Path(value)
    return ModelChoice(folder, os.fsdecode(folder), False)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_bundled(folder: Path | None = None) -> None:
    """ModelError (one line: the file, the problem, the fix) unless every bundled file is there with its recorded hash."""
    folder = BUNDLED_DIR if folder is None else folder
    info_path = folder / MODEL_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{info_path}: the bundled model is missing; {FIX}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelError(f"{info_path}: the bundled model's description is unreadable ({error}); {FIX}") from None
    files = info.get(FILES_KEY) if isinstance(info, dict) else None
    if not (isinstance(files, dict) and ONNX_FILE in files and all(isinstance(h, str) for h in files.values())):
        raise ModelError(f"{info_path}: records no sha256 of {ONNX_FILE} under '{FILES_KEY}'; {FIX}")
    for name, expected in sorted(files.items()):
        path = folder / name
        if Path(name).name != name:  # a recorded name is a file of this folder, never a path elsewhere
            raise ModelError(f"{info_path}: '{FILES_KEY}' names {name!r}, not a file of the folder; {FIX}")
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise ModelError(f"{path}: the bundled model's file is missing; {FIX}") from None
        except OSError as error:
            raise ModelError(f"{path}: the bundled model's file is unreadable ({error.strerror}); {FIX}") from None
        if actual != expected:
            raise ModelError(f"{path}: the bundled model's file is corrupt (sha256 differs from {MODEL_FILE}); {FIX}")


def checked_model(value: str | None, runs_dir: Path, bundled_dir: Path | None = None) -> ModelChoice:
    """resolve_model; when the bundled model answers, its files are checked against their hashes first (ModelError)."""
    choice = resolve_model(value, runs_dir, bundled_dir)
    if choice.bundled:
        check_bundled(choice.folder)
    return choice


def load_model(value: str | None, runs_dir: Path, threads: int | None = None,
               bundled_dir: Path | None = None) -> Predictor:
    """checked_model, then load_predictor (predict's model; evaluate loads checked_model's folder itself)."""
    choice = checked_model(value, runs_dir, bundled_dir)
    return load_predictor(choice.folder, threads, name=choice.name)


def about(bundled_dir: Path | None = None) -> str:
    """The bundled model's card (MODEL_CARD.md) as text; ModelError if it is missing or not the one recorded."""
    bundled_dir = BUNDLED_DIR if bundled_dir is None else bundled_dir
    check_bundled(bundled_dir)
    path = bundled_dir / CARD_FILE
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: the bundled model's card is unreadable ({error}); {FIX}") from None
