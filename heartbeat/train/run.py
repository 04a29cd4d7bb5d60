"""Stage 2: train a recipe on the spectrograms and write the run: read -> split -> fit -> write.

- read: stage 1's manifest and dataset.json (heartbeat.train.inputs), checked before any training;
- split: recordings to the training or the validation side, all windows of a recording on the
  same side (heartbeat.train.contract.make_plan); --valid-fraction 0 puts every one on the
  training side (a final model, whose figures come from the CV);
- fit: the recipe's `fit(study, plan, sources) -> Fit` (heartbeat.train.recipes.published or .heartbeat);
- write the run: predictions per recording, the network (torch weights and ONNX), config.json
  with the settings that ran, the report and its explanation pictures (heartbeat.report.explanations:
  a few validation recordings through the exported ONNX model; a failure there is a warning, not an error). heartbeat.train.runfolder owns the folder's layout.
Everything runs on --device (heartbeat.train.device); the ONNX export runs on a CPU copy.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from heartbeat.data import audio
from heartbeat.fileio import (atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text,
                              exclusive_lock)
from heartbeat.report import explanations
from heartbeat.report import metrics
from heartbeat.report import run_report as report
from heartbeat.text import spreadsheet_frame
from heartbeat.train import device as devices
from heartbeat.train import inputs
from heartbeat.train import model
from heartbeat.train import runfolder
from heartbeat.train import split
from heartbeat.train.contract import Fit, Plan, Sources, Study, TrainResult, make_plan
from heartbeat.train.recipes import features
from heartbeat.train.settings import MAX_IMAGE_SIZE, MAX_SEED, TrainError, TrainSettings  # noqa: F401 (re-exported)

# fastai's layers call torch.jit.script at import; the deprecation is theirs to act on, not our users'.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

TRAINING_MODES = {  # the resolved mode -> what config.json and the report say of it
    "features": "features: frozen body (BatchNorm statistics included) run once, head trained on its outputs",
    "finetune": "finetune: frozen body with trainable BatchNorm (fastai default), head trained on images",
    "scratch": "scratch: whole network trained on images from random weights (no pretrained body to freeze)",
    "heartbeat": "heartbeat recipe: a small CNN on the native 128 mel bands, trained from scratch on augmented "
                 "random windows (heartbeat.train.recipes.heartbeat)",
}
RECIPE_MODULES = {  # --recipe -> the module whose fit(study, plan, sources) trains it
    "published": "heartbeat.train.recipes.published",
    "heartbeat": "heartbeat.train.recipes.heartbeat",
}


# ---------------------------------------------------------------- the study

def train(spectrograms_dir: str | Path, run_dir: str | Path | None = None, settings: TrainSettings | None = None,
          *, runs_dir: str | Path | None = None, split_table: pd.DataFrame | None = None,
          progress: bool = True, explain: bool = True, study: Study | None = None) -> TrainResult:
    """Read, split, fit, write the run; returns the result. The run folder appears only when complete.

    With no run_dir, the run gets a new folder in runs_dir (default data/runs), named by
    time and settings.name, and runs_dir/latest is pointed at it. split_table (columns
    recording, patient_id, label, split) replaces settings.split: cross-validation passes its folds.
    explain: draw the report's explanation pictures (cross-validation's fold runs skip them: nobody opens
    fifteen folds' pictures, and they cost seconds per fold). study: spectrograms_dir as inputs.read_study read
    it with settings.label_map (cross-validation reads it once for all its folds); default: read it here.

    Everything that can be checked is checked before any training (settings, device, manifest,
    feature cache, output folder, `latest`); a run whose loss is not finite is never written.
    """
    settings = settings or TrainSettings()
    settings.validate()
    settings = settings.effective()  # the recipe's own epochs, batch size (and rate) where none were given
    started = time.time()
    devices.resolve_device(settings.device)  # a device that is not there is refused first
    study = inputs.read_study(spectrograms_dir, settings.label_map) if study is None else study
    if features.uses_feature_cache(settings):
        features.feature_cache_dir(study.spectrograms_dir)
    with (runfolder.run_location(run_dir, runs_dir, settings.name or settings.split) as (runs_dir, run_dir),
          exclusive_lock(run_dir)):  # FolderBusy while another command writes this run
        runfolder.check_new_run(run_dir)  # again, under the lock: another command may have published it meanwhile
        sources = read_sources(settings, progress)
        with atomic_directory(run_dir) as work_dir:  # the run folder appears complete, or not at all
            plan = make_plan(study, settings, split_table, progress=progress)
            sources = dataclasses.replace(sources, scratch_dir=work_dir / runfolder.SCRATCH_DIR)
            fitted = fit(study, plan, sources)
            result = write_run(work_dir, run_dir.name, study=study, fitted=fitted, plan=plan, sources=sources,
                               seconds=time.time() - started, explain=explain)
        if runs_dir is not None:
            runfolder.point_latest(runs_dir, run_dir)  # as each run finishes: `latest` is the last to finish
    return dataclasses.replace(result, run_dir=run_dir)


def fit(study: Study, plan: Plan, sources: Sources) -> Fit:
    """The run's recipe's fit, looked up as it is called (a test may have replaced it)."""
    return importlib.import_module(RECIPE_MODULES[plan.settings.recipe]).fit(study, plan, sources)


def read_sources(settings: TrainSettings, progress: bool) -> Sources:
    """The pretrained body the settings ask for (WeightsError if it cannot be had), and its digest."""
    if not settings.pretrained:
        return Sources(None, None, "none: trained from scratch")
    state, description = model.load_pretrained_state(settings.weights, offline=settings.offline, progress=progress)
    return Sources(state, model.state_digest(state), description)


# ---------------------------------------------------------------- write the run

def write_run(work_dir: Path, run_name: str, *, study: Study, fitted: Fit, plan: Plan, sources: Sources,
              seconds: float, explain: bool = True) -> TrainResult:
    """Every file of the run folder: split, logs, predictions, the network, config.json, the report."""
    atomic_write_text(work_dir / runfolder.SPLIT_FILE, plan.split_table.to_csv(index=False))
    atomic_write_text(work_dir / runfolder.EPOCHS_FILE, fitted.epoch_log.to_csv(index=False))
    atomic_write_text(work_dir / runfolder.LR_FIND_CSV, fitted.lr_curve.to_csv(index=False))
    predictions = None
    if plan.has_validation:
        predictions = recording_predictions(plan.valid_windows.reset_index(drop=True), fitted.window_probs, study.classes)
        # For people (a spreadsheet) and for `heartbeat report`, which reads the quoted text cells back (heartbeat.text).
        atomic_write_text(work_dir / runfolder.PREDICTIONS_FILE, spreadsheet_frame(predictions).to_csv(index=False))
    save_network(work_dir, run_name, fitted, study.classes, plan, sources.body_digest)
    ran = plan.settings_that_ran(lr=fitted.lr, lr_suggestion=fitted.lr_suggestion)
    atomic_write_json(work_dir / runfolder.CONFIG_FILE, run_config(study, plan, sources, fitted, ran, seconds))
    problems = []
    if plan.has_validation:
        explained = write_explanations(work_dir, study, plan, predictions) if explain else explanations.Explanations(
            note=explanations.NOT_ASKED_NOTE)  # from the ONNX model save_network wrote
        problems += [explained.note] if explained.failed else []
        figures = report.write_report(work_dir, predictions, study.classes, majority_class=plan.majority_class,
                                      context={**report_context(run_name, study, plan, sources, ran),
                                               "explanations": explained.record()},
                                      epoch_log=fitted.epoch_log, lr_find=fitted.lr_curve,
                                      spectrograms=study.spectrograms_dir)
    else:
        figures = None
        atomic_write_text(work_dir / runfolder.REPORT_FILE, final_model_report(run_name, plan))
    shutil.rmtree(work_dir / runfolder.SCRATCH_DIR, ignore_errors=True)
    return TrainResult(work_dir, figures, ran, study.classes, predictions, problems)


def write_explanations(work_dir: Path, study: Study, plan: Plan, predictions: pd.DataFrame) -> explanations.Explanations:
    """A few validation recordings' explanation pictures (report.explanations) into work_dir/explanations/."""
    explained = explanations.explain_validation(work_dir, predictions, study.classes, study.spectrograms_dir,
                                                plan.settings.recipe)
    for name, data in explained.files.items():
        atomic_write_bytes(work_dir / name, data)
    return explained


def run_config(study: Study, plan: Plan, sources: Sources, fitted: Fit, ran: dict, seconds: float) -> dict:
    """config.json: the settings that ran, the audio settings, the data, the classes, where the weights came from."""
    return {
        "train_settings": ran, "audio_settings": audio.SETTINGS.to_dict(),
        "spectrograms": str(study.spectrograms_dir.resolve()), "dataset": study.dataset, "classes": study.classes,
        "majority_class": plan.majority_class, "training_mode": TRAINING_MODES[plan.mode],
        "weights": sources.weights_description,
        "class_weights": dict(zip(study.classes, map(float, fitted.class_weights))),
        "n_windows": {"train": int((~plan.windows["is_valid"]).sum()), "valid": int(plan.windows["is_valid"].sum())},
        "seconds": round(seconds, 1), **runfolder.provenance(),
    }


def final_model_report(run_name: str, plan: Plan) -> str:
    """report.md of a run without a validation side (--valid-fraction 0): why it has no figures."""
    n_recordings = len(plan.split_table)
    return (f"# heartbeat run {run_name}\n\n"
            f"Trained on all {n_recordings} recordings: no validation side; its figures come from the CV "
            f"(`heartbeat cv` with the same settings).\n\n"
            f"Training: {TRAINING_MODES[plan.mode]}; {plan.settings.epochs} epochs, seed {plan.settings.seed}.\n")


def save_network(work_dir: Path, run_name: str, fitted: Fit, classes: list[str], plan: Plan,
                 body_digest: str | None) -> None:
    """model.json and the ONNX export for predict; the export is the network's one copy where training changed the body.

    A features-mode run (the pretrained body untouched) keeps its head in head.safetensors, so its export may fold
    BatchNorm into the convolutions (exact_weights=False): a quicker, leaner predict start (model.export_onnx).
    """
    network = fitted.network.to(devices.cpu())
    image_size = plan.settings.image_size
    model_info = {
        "model_id": run_name, **fitted.arch, "classes": classes, "image_size": image_size,
        "input_band_norm": plan.settings.input_band_norm(),  # predict prepares its images as training did
        "audio_settings": audio.SETTINGS.to_dict(), "onnx_file": model.ONNX_FILE,
        "input": "grayscale spectrogram window in [0, 1], (n, 1, image_size, image_size); output: class probabilities",
        "combine_windows": "mean of window probabilities",
    }
    model.save_model(work_dir, network, model_info, body_trained=fitted.body_trained, body_state_digest=body_digest)
    model.export_onnx(network, image_size, work_dir / model.ONNX_FILE, exact_weights=fitted.body_trained)


def report_context(run_name: str, study: Study, plan: Plan, sources: Sources, ran: dict) -> dict:
    """What the report says of the run besides its figures: split sizes, the settings that ran, notes."""
    split_table = plan.split_table
    train_side, valid_side = (split_table[split_table["split"] == side] for side in ("train", "valid"))
    leaked = split.leaked_patients(split_table)
    notes = []
    if plan.settings.split == "random":
        notes.append(f"Random split by recording (the published protocol): {leaked} patients have recordings on both "
                     "sides, so validation figures are optimistic. The patient-grouped split (the default) does not allow this.")
    if not study.dataset["groups_are_patients"]:
        notes.append(report.recording_groups_sentence(study.dataset["format"]))
    if plan.mode == "scratch":
        notes.append("No pretrained weights: the whole network was trained from scratch.")
    elif plan.settings.weights:
        notes.append(f"Pretrained body read from {plan.settings.weights}.")
    return {
        "title": f"heartbeat run {run_name}", "split": plan.settings.split, "weights": sources.weights_description,
        "training_mode": TRAINING_MODES[plan.mode], "n_train_recordings": int(len(train_side)),
        "n_train_patients": int(train_side["patient_id"].nunique()),
        "n_valid_patients": int(valid_side["patient_id"].nunique()), "leaked_patients": leaked, "notes": notes,
        "settings": ran, "lr_suggestion": ran["lr_suggestion"], "lr_used": ran["lr"],
    }


def recording_predictions(valid_windows: pd.DataFrame, window_probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per recording: its windows' probabilities combined (metrics.combine_windows) and the argmax class."""
    rows = []
    for recording, group in valid_windows.groupby("recording", sort=True):
        probabilities = metrics.combine_windows(window_probs[group.index.to_numpy()])
        rows.append({
            "recording": recording, "patient_id": group["patient_id"].iloc[0], "label": group["label"].iloc[0],
            "predicted": classes[int(np.argmax(probabilities))], "windows": len(group),
            **{f"prob_{name}": float(p) for name, p in zip(classes, probabilities)},
        })
    return pd.DataFrame(rows)

