"""Where things live: every default path of the project, anchored in one place.

Paths default to the repository's data/ folder (this package sits in the repository and is
installed in editable mode by `make install`). HEARTBEAT_DATA overrides the root of all of
them, for an installed copy used outside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("HEARTBEAT_DATA", PROJECT_ROOT / "data"))
SPECTROGRAMS_DIR = DATA_DIR / "spectrograms"  # stage 1 output: images + manifest.csv
RUNS_DIR = DATA_DIR / "runs"  # one folder per training run, plus the `latest` pointer
LATEST = "latest"  # that pointer: the symbolic link in a runs folder to its newest run
