"""Rebuild the bundled model (heartbeat/models/builtin/) and its model card from Dataset B: `make release-model`.

    python scripts/release_model.py [--data DIR] [--work DIR] [--dest DIR] [--check N]

1. stage 1 on the labelled recordings of --data into WORK/spectrograms;
2. `heartbeat train --recipe heartbeat --valid-fraction 0 --seed 1`: the final model on every labelled
   recording, with the recipe's fixed number of epochs (the CV's), into WORK/run;
3. `heartbeat cv` of the same recipe on seeds 3-5 (patient-grouped, 5 folds) into WORK/cv: the card's figures;
4. device_shift.py on that CV into WORK/device_shift.csv: the card's simulated-device figures;
5. the bundle: model.json (+ the files' sha256, + provenance), model.onnx with its weights inlined, and
   MODEL_CARD.md from scripts/model_card_template.md, swapped into --dest at once.
Steps whose output is in WORK already are reused (delete WORK to start over).

--check N rebuilds the model from scratch (WORK/check-run, same seed) and compares its predictions on N real
recordings with the shipped bundle's; exit 1 if any probability differs by more than 1e-4. It replaces nothing.
--stand-in trains on the default 70:30 split instead of every recording: for developing this script before
`heartbeat train --valid-fraction 0` exists. A stand-in is labelled as one and is never written to the package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed

from heartbeat import bundled, release  # noqa: E402
from heartbeat.predict import load_predictor  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "heartbeat-sounds"
RECIPE, SEED, CV_SEEDS, FOLDS = "heartbeat", 1, "3,4,5", 5
TEMPLATE = ROOT / "scripts" / "model_card_template.md"
DEVICE_SHIFT = ROOT / "experiments" / "device_shift.py"  # the simulated-device table of a CV
COMMAND = "make release-model   (python scripts/release_model.py --data DATASET_B)"
PARITY = 1e-4  # two rebuilds on one machine must agree to this (issue 17)


def heartbeat(*arguments: str) -> None:
    """Run a heartbeat command as a user would (this checkout's code), stopping the release if it fails."""
    command = [sys.executable, "-m", "heartbeat", *arguments]
    print("release-model: " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env=_environment())


def _environment() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def train(spectrograms: Path, run: Path, stand_in: bool) -> None:
    split = [] if stand_in else ["--valid-fraction", "0"]  # 0: train on every labelled recording
    heartbeat("train", "--spectrograms", str(spectrograms), "--recipe", RECIPE, *split, "--seed", str(SEED),
              "--quiet", "--out", str(run))


def git_commit() -> str:
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def build_inputs(args) -> tuple[Path, Path, Path, Path]:
    """Steps 1-4 (each skipped when its output exists): spectrograms, run, CV folder, device-shift csv."""
    spectrograms, run, cv, shift = (args.work / name for name in ("spectrograms", "run", "cv", "device_shift.csv"))
    if not (spectrograms / "manifest.csv").is_file():
        heartbeat("spectrograms", "--data", str(args.data), "--out", str(spectrograms))
    if not (run / "model.onnx").is_file():
        train(spectrograms, run, args.stand_in)
    if not (cv / "summary.json").is_file():
        heartbeat("cv", "--spectrograms", str(spectrograms), "--out", str(cv), "--folds", str(FOLDS),
                  "--seeds", args.cv_seeds, "--recipe", RECIPE, "--quiet")
    if not shift.is_file():
        print("release-model: device shift of the CV's fold models", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(DEVICE_SHIFT), "--data", str(args.data), f"recipe={cv}",
                        "--out", str(shift)], check=True, cwd=ROOT, env=_environment(), stdout=subprocess.DEVNULL)
    return spectrograms, run, cv, shift


def card_and_provenance(run: Path, cv: Path, shift: Path, stand_in: bool) -> tuple[str, dict]:
    import pandas as pd

    from heartbeat.text import from_spreadsheet_cell

    info = json.loads((run / "model.json").read_text())
    counts = release.data_counts(pd.read_csv(run / "split.csv"))
    training = ("STAND-IN, NOT FOR SHIPPING: the default 70:30 patient split" if stand_in else
                f"all {counts['recordings']} labelled recordings (--valid-fraction 0)")
    provenance = {"recipe": RECIPE, "seed": SEED, "training": training, "data": counts, "git_commit": git_commit(),
                  "sample_rate": info["audio_settings"]["sample_rate"], "stand_in": stand_in,
                  "weights": release.weight_count(run / "model.onnx"),
                  "cv": str(cv.name), "command": COMMAND,
                  "model_id": f"builtin-{RECIPE}-seed{SEED}" + ("-STAND-IN" if stand_in else "")}
    summary = json.loads((cv / "summary.json").read_text())
    oof = pd.read_csv(cv / "oof.csv", keep_default_na=False)
    oof["label"] = oof["label"].map(from_spreadsheet_cell)
    card = release.model_card(
        TEMPLATE.read_text(encoding="utf-8"), counts=counts, cv_summary=summary,
        cv_markdown=release.cv_table(oof, summary["classes"]),
        shift_markdown=release.device_shift_table(pd.read_csv(shift)), provenance=provenance, command=COMMAND)
    return card, provenance


def largest_difference(model_a: Path, model_b: Path, recordings: list[Path]) -> float:
    """The largest probability difference between two models over the recordings."""
    a, b = load_predictor(model_a, threads=1), load_predictor(model_b, threads=1)
    worst = 0.0
    for path in recordings:
        first, second = a.predict_file(path), b.predict_file(path)
        worst = max(worst, *(abs(first.probabilities[c] - second.probabilities[c]) for c in a.classes))
    return worst


def check(args, spectrograms: Path, cv: Path, shift: Path) -> int:
    """Rebuild from scratch beside WORK and compare with the shipped bundle (which stays as it is)."""
    bundled.check_bundled(args.dest)
    rebuilt_run, rebuilt = args.work / "check-run", args.work / "check-bundle"
    shutil.rmtree(rebuilt_run, ignore_errors=True)
    train(spectrograms, rebuilt_run, args.stand_in)
    card, provenance = card_and_provenance(rebuilt_run, cv, shift, args.stand_in)
    release.write_bundle(rebuilt_run, rebuilt, card, provenance)
    recordings = sorted((args.data / "set_b").glob("*.wav"))[: args.check]
    worst = largest_difference(args.dest, rebuilt, recordings)
    verdict = "same predictions" if worst <= PARITY else "DIFFERENT predictions"
    print(f"release-model --check: {verdict}: largest probability difference {worst:.2e} over {len(recordings)} "
          f"recordings (limit {PARITY:g}) between {args.dest} and a rebuild in {rebuilt}")
    return 0 if worst <= PARITY else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Dataset B (set_b.csv, set_b/)")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "release", help="intermediate outputs")
    parser.add_argument("--dest", type=Path, default=bundled.BUNDLED_DIR, help="the bundle folder to write")
    parser.add_argument("--cv-seeds", default=CV_SEEDS, help="the card's CV seeds (default: %(default)s)")
    parser.add_argument("--check", type=int, metavar="N", help="rebuild and compare with the shipped bundle on N recordings")
    parser.add_argument("--stand-in", action="store_true", help="train on the default split (development only)")
    args = parser.parse_args()
    if args.stand_in and args.dest.resolve() == bundled.BUNDLED_DIR.resolve() and not args.check:
        parser.error("--stand-in is never written into the package: give --dest elsewhere")
    spectrograms, run, cv, shift = build_inputs(args)
    if args.check:
        return check(args, spectrograms, cv, shift)
    card, provenance = card_and_provenance(run, cv, shift, args.stand_in)
    info = release.write_bundle(run, args.dest, card, provenance)
    print(f"release-model: {args.dest}: model {info['model_id']}, files {info[bundled.FILES_KEY]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
