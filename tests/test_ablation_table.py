"""experiments/ablation_table.py: the README's ablation rows from cv folders (hand-made folders, no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ablation_table.py"
CLASSES = ["extrastole", "murmur", "normal"]


def write_cv(folder: Path, predicted: list[str], recordings=("a", "b", "c", "d")) -> Path:
    """A cv folder of two runs (seed 3, folds 0 and 1) over four recordings with the given predictions."""
    labels = ["murmur", "normal", "murmur", "normal"]
    folder.mkdir()
    oof = pd.DataFrame({"recording": list(recordings), "label": labels, "seed": 3, "fold": [0, 0, 1, 1],
                        "predicted": predicted, "classical_predicted": ["normal"] * 4})
    oof.to_csv(folder / "oof.csv", index=False)
    figures = {name: [0.5, 0.7] for name in ("balanced_accuracy", "macro_f1", "youden")}
    for prefix in ("baseline_", "classical_"):
        figures.update({prefix + name: [0.3, 0.3] for name in ("balanced_accuracy", "macro_f1", "youden")})
    pd.DataFrame({"seed": [3, 3], "fold": [0, 1], **figures}).to_csv(folder / "folds.csv", index=False)
    summary = {"classes": CLASSES, "seconds": 90.0, "pooled_oof": {"majority_baseline": {"class": "normal"}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def run(*rows: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *rows], capture_output=True, text=True, timeout=60)


def test_rows_hold_each_runs_recall_and_the_baselines(tmp_path):
    # run 0 finds its murmur, run 1 does not: murmur recall 1 and 0, mean 0.5, std 0.707
    cv = write_cv(tmp_path / "cv", ["murmur", "normal", "normal", "normal"])
    result = run(f"a row = with equals={cv}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split(" | ")[-1] == "wall time (min) |"
    row = lines[2].split(" | ")
    assert row[0] == "| a row = with equals"
    assert row[1:4] == ["0.600 ± 0.141"] * 3  # the folds' figures: 0.5 and 0.7
    assert row[4:7] == ["n/a", "0.500 ± 0.707", "1.000 ± 0.000"]  # no extrastole in any run
    assert row[7] == "1.5 |"
    classical, majority = lines[3].split(" | "), lines[4].split(" | ")
    assert classical[0] == "| classical baseline" and classical[5:7] == ["0.000 ± 0.000", "1.000 ± 0.000"]
    assert majority[0] == "| majority baseline" and majority[1] == "0.300 ± 0.000"


def test_folders_of_other_runs_are_refused(tmp_path):
    first = write_cv(tmp_path / "first", ["normal"] * 4)
    other = write_cv(tmp_path / "other", ["normal"] * 4, recordings=("a", "b", "c", "e"))
    result = run(f"one={first}", f"two={other}")
    assert result.returncode == 2 and "not comparable" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("bad", ["no-equals-sign", "row=/nonexistent/folder"])
def test_a_row_without_a_cv_folder_fails(bad):
    result = run(bad)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "not a finished cv folder" in result.stderr
