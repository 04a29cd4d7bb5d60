"""Classify heart-sound recordings with a trained heartbeat model: the same as `heartbeat predict`.

    python scripts/predict.py FILE [FILE...] [--model RUN] [--json] [--max-seconds SECONDS]

Prints a table (file, predicted class, each class's probability, windows), or with --json one
JSON object per line per file. The model defaults to data/runs/latest. Runs from a checkout
without installing the package (numpy, soundfile, soxr and onnxruntime must be importable).
Exit code 1 if any file failed, 2 if the model cannot be used or gives non-finite probabilities.
Recordings longer than --max-seconds (default 600) or sampled below 1 kHz are refused.
"""

import sys
from pathlib import Path

# A checkout's own package comes first, so the script works without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heartbeat.cli import main  # noqa: E402  (after the path is set)

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
