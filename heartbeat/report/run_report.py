"""The run report: metrics.json, confusion matrix (PNG and JSON), training curves, report.md.

Every figure is shown beside the majority-class baseline, because on Dataset B always
answering "normal" is already right about 70% of the time. Every file is written atomically
and the whole report can be rewritten over an existing run folder (`heartbeat report RUN`).

A report is made in memory first (figures, tables, images) and written after: every file is
staged as a temporary beside its destination and the renames happen only once all are staged,
so a failure leaves the earlier report as it was. `heartbeat report` checks everything it reads
before that (heartbeat.report.run_files: RunFolderError names the file) and never reads a file
through a link out of the run folder. The figures are drawn by heartbeat.report.figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from heartbeat.data import layouts
from heartbeat.fileio import entry_kind, remove_dead_leftovers
from heartbeat.report.explanations import EXPLANATIONS_DIR, MAX_RECORDING_WINDOWS, PICTURE_FILE
from heartbeat.report.figures import (confusion_matrix_figure, lr_find_figure, png_bytes, prediction_pictures,
                                      training_curves_figure)
from heartbeat.report.metrics import classification_metrics
from heartbeat.report.outputs import (confusion_section, figures_table, format_count, format_number, format_setting,
                                      json_bytes, markdown_table, markdown_text, plain, write_all)
from heartbeat.report.run_files import (CONFUSION_JSON, CONFUSION_PNG, LR_FIND_PNG, METRICS_FILE, REPORT_FILE,
                                        REPORT_OUTPUTS, RESULTS_PNG, TOP_LOSSES_PNG, TRAINING_CURVES_PNG,
                                        check_context, check_outputs, check_predictions, read_run)

NORMAL_CLASS = "normal"  # where the classes have it, every other class is a heart problem (layouts.normal_class)


def write_report(
    run_dir,
    predictions: pd.DataFrame,
    classes: Sequence[str],
    *,
    majority_class: str,
    context: dict,
    epoch_log: pd.DataFrame | None = None,
    lr_find: pd.DataFrame | None = None,
    spectrograms=None,
) -> dict:
    """Write metrics.json, confusion_matrix.png/.json, training_curves.png (if epoch_log has rows),
    lr_find.png (if lr_find, columns lr and loss, has rows), results.png and top_losses.png (from
    the predictions' prob_<class> columns and the window images of the `spectrograms` folder,
    if it is there) and report.md into run_dir, overwriting earlier ones; return the metrics
    (with "context").

    Everything is made in memory before the first file is written; a ValueError (bad
    predictions, context or epoch log) therefore leaves run_dir as it was.
    """
    run_dir = Path(run_dir)
    classes = list(classes)
    check_predictions(predictions)
    check_context(context)

    metrics = classification_metrics(
        predictions["label"].tolist(), predictions["predicted"].tolist(), classes,
        majority_class=majority_class, normal_class=layouts.normal_class(classes),
    )
    metrics["context"] = plain(context)

    files, pictures_note = _report_files(metrics, predictions, classes, context=context, epoch_log=epoch_log,
                                         lr_find=lr_find, spectrograms=spectrograms)
    n_valid_patients = metrics["context"].get("n_valid_patients")
    if n_valid_patients is None and "patient_id" in predictions.columns:
        n_valid_patients = int(predictions["patient_id"].nunique())
    # Images written by training (curves, lr_find) stay in the folder when the report is
    # rewritten later without the epoch log, so link whatever is there.
    images = {name: name in files or (run_dir / name).exists()
              for name in (TRAINING_CURVES_PNG, LR_FIND_PNG, RESULTS_PNG, TOP_LOSSES_PNG)}
    markdown = _render_markdown(metrics, metrics["context"], n_valid_patients=n_valid_patients, images=images,
                                pictures_note=pictures_note, explained=present_explanations(run_dir, context))
    files[REPORT_FILE] = markdown.encode("utf-8")
    write_all(run_dir, files)
    return metrics


def _report_files(metrics: dict, predictions: pd.DataFrame, classes: list[str], *, context: dict, epoch_log,
                  lr_find, spectrograms) -> tuple[dict[str, bytes], str | None]:
    """({file name: bytes} for every file of the report but report.md, in writing order), and the note saying why
    the prediction pictures were not drawn (None when they were)."""
    split, weights = str(context["split"]), str(context["weights"])
    matrix = metrics["confusion_matrix"]["matrix"]
    files = {
        METRICS_FILE: json_bytes(metrics),
        CONFUSION_PNG: png_bytes(
            confusion_matrix_figure(matrix, classes, f"Validation recordings, {split} split, weights: {weights}")
        ),
        CONFUSION_JSON: json_bytes({"classes": classes, "matrix": matrix, "split": split, "weights": weights}),
    }
    if epoch_log is not None and not epoch_log.empty:
        files[TRAINING_CURVES_PNG] = png_bytes(training_curves_figure(epoch_log))
    if lr_find is not None and not lr_find.empty:
        files[LR_FIND_PNG] = png_bytes(lr_find_figure(lr_find["lr"], lr_find["loss"], context.get("lr_suggestion")))
    pictures, pictures_note = prediction_pictures(predictions, classes, spectrograms)
    files.update(pictures)
    return files, pictures_note


def rewrite_report(run_dir) -> dict:
    """`heartbeat report RUN`: recompute a finished run's report from the files it saved.

    Reads predictions.csv (one row per validation recording), config.json (classes, majority
    class, spectrograms folder), the context stored in metrics.json, epochs.csv and lr_find.csv
    if there are, and the window images for results.png and top_losses.png if the spectrograms
    folder is still there (the report says so when it is not); needs no model and no torch. Every file is read and checked before anything is
    written: a folder that is not a complete run raises RunFolderError (naming the file) and is left unchanged.
    """
    run = read_run(run_dir)
    check_outputs(run.folder)
    for name in REPORT_OUTPUTS:  # what an earlier `heartbeat report` killed while staging left behind
        remove_dead_leftovers(run.folder, prefix=f".{Path(name).stem}.")
    return write_report(run.folder, run.predictions, run.classes, majority_class=run.majority_class,
                        context=run.context, epoch_log=run.epoch_log, lr_find=run.lr_find,
                        spectrograms=run.spectrograms)


def _render_markdown(metrics: dict, context: dict, *, n_valid_patients=None, images: dict | None = None,
                     pictures_note: str | None = None, explained: list[dict] | None = None) -> str:
    """report.md text from the metrics dict and the run context, section by section."""
    images = images or {}
    return markdown_text([
        f"# {context['title']}", "",
        _summary_paragraph(metrics, context, n_valid_patients), "",
        *_figures_section(metrics),
        *_per_class_section(metrics["per_class"]),
        *confusion_section(metrics["confusion_matrix"], CONFUSION_PNG),
        *_pictures_section(images, pictures_note),
        *_explanations_section(context.get("explanations"), explained or []),
        *_training_sections(images),
        *_run_section(context),
        *_settings_section(context.get("settings") or {}),
        *_split_sizes_section(context, metrics["n_recordings"], n_valid_patients),
        *_notes_section(context.get("notes") or []),
    ])


def _figures_section(metrics: dict) -> list[str]:
    return ["## Figures", "", *figures_table(_figure_rows(metrics), metrics["majority_baseline"]["class"]), "",
            heart_problem_sentence(list(metrics["per_class"])) + " Balanced accuracy is the mean recall over "
            "the classes present among the scored recordings.", ""]


def _per_class_section(per_class: dict) -> list[str]:
    return ["## Per class", "", *markdown_table(
        ["class", "precision", "recall", "F1", "support"],
        [[name, format_number(row["precision"]), format_number(row["recall"]), format_number(row["f1"]), str(row["support"])]
         for name, row in per_class.items()],
    ), ""]


def _pictures_section(images: dict, pictures_note: str | None) -> list[str]:
    """results.png and top_losses.png where they are, and the note saying why they are not."""
    lines = ["## Results on validation recordings", ""]
    if images.get(RESULTS_PNG):
        lines += [f"![results on validation recordings]({RESULTS_PNG})", "",
                  "One window per recording, several of each true class: its true class, the predicted class and "
                  "the predicted class's probability (the recording's windows combined); green when right, red when "
                  "wrong. Low frequencies at the bottom.", ""]
    if images.get(TOP_LOSSES_PNG):
        lines += [f"![most confidently wrong recordings]({TOP_LOSSES_PNG})", "",
                  "The most confidently wrong recordings, the highest probability on a wrong class first, with the "
                  "loss (−log of the true class's probability).", ""]
    if pictures_note:
        lines += [pictures_note, ""]
    return lines


def present_explanations(run_dir: Path, context: dict) -> list[dict]:
    """The context's explanation pictures that are in run_dir: explanations/<plain name>.png, a regular file
    (never a link, nor through one). Training writes them; `heartbeat report` links what is still there."""
    pictures = (context.get("explanations") or {}).get("pictures") or []
    folder = run_dir / EXPLANATIONS_DIR
    if folder.is_symlink() or not folder.is_dir():
        return []
    return [picture for picture in pictures
            if PICTURE_FILE.fullmatch(picture["file"]) and entry_kind(run_dir / picture["file"]) == "file"]


def _explanations_section(explanations: dict | None, present: list[dict]) -> list[str]:
    """The explanation pictures with how to read them, and the note saying why some or all are not there."""
    if explanations is None:  # a run from before explanations (or without a validation side)
        return []
    lines = ["## What the model heard", ""]
    if present:
        lines += ["Each picture is one validation recording as `heartbeat predict --explain` draws it from this "
                  "run's model.onnx (from stage 1's window images): its mel spectrogram (low frequencies at the "
                  "bottom), each class's probability window by window, and the occlusion saliency for the predicted "
                  "class, red where hiding a patch lowers its log-odds (evidence for it) and blue where it raises them "
                  "(evidence against).", "",
                  f"Chosen to keep training quick: for each class the right answer the model was surest of, and the "
                  f"most confidently wrong answer, among recordings of at most {MAX_RECORDING_WINDOWS} windows.", ""]
    for picture in present:
        caption = f"{picture['recording']}: {picture['why']} (true {picture['label']}, predicted {picture['predicted']})"
        lines += [f"![{_alt_text(caption)}]({picture['file']})", "", caption, ""]
    missing = len(explanations["pictures"]) - len(present)
    if missing:
        lines += [f"{missing} of the pictures training drew are no longer in the run folder.", ""]
    if explanations["note"]:
        lines += [explanations["note"], ""]
    return lines


def _alt_text(text: str) -> str:
    """Text inside a Markdown image's brackets: a bracket in a recording's name would end it early."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _training_sections(images: dict) -> list[str]:
    """The training curves and the learning-rate finder, each where its picture is."""
    lines = []
    if images.get(TRAINING_CURVES_PNG):
        lines += ["## Training curves", "", f"![training curves]({TRAINING_CURVES_PNG})", ""]
    if images.get(LR_FIND_PNG):
        lines += ["## Learning-rate finder", "", f"![learning-rate finder]({LR_FIND_PNG})", ""]
    return lines


def _run_section(context: dict) -> list[str]:
    return ["## Run", "", *markdown_table(["item", "value"], [
        ["split", str(context["split"])],
        ["weights", str(context["weights"])],
        ["training mode", str(context.get("training_mode", "n/a"))],
        ["suggested learning rate (lr_find)", format_setting(context.get("lr_suggestion"))],
    ]), ""]


def _settings_section(settings: dict) -> list[str]:
    if not settings:
        return []
    return ["## Settings", "", *markdown_table(
        ["setting", "value"], [[str(key), format_setting(value)] for key, value in settings.items()]
    ), ""]


def _split_sizes_section(context: dict, n_valid_recordings: int, n_valid_patients) -> list[str]:
    return ["## Split sizes", "", *markdown_table(["", "recordings", "patients"], [
        ["train", format_count(context.get("n_train_recordings")), format_count(context.get("n_train_patients"))],
        ["validation", format_count(n_valid_recordings), format_count(n_valid_patients)],
    ]), ""]


def _notes_section(notes: list) -> list[str]:
    return ["## Notes", "", *(f"- {note}" for note in notes), ""] if notes else []


def _summary_paragraph(metrics: dict, context: dict, n_valid_patients) -> str:
    baseline = metrics["majority_baseline"]
    patients = f" from {n_valid_patients} patients" if n_valid_patients is not None else ""
    difference = baseline["error_rate"] - metrics["error_rate"]
    if abs(difference) < 5e-4:
        comparison = "the same as the baseline's"
    elif difference > 0:
        comparison = f"{format_number(difference)} lower than the baseline's"
    else:
        comparison = f"{format_number(-difference)} higher than the baseline's"
    return (
        f"On {metrics['n_recordings']} validation recordings{patients} ({context['split']} split, "
        f"weights: {context['weights']}), the model's error rate is **{format_number(metrics['error_rate'])}**; "
        f"a majority baseline that always answers \"{baseline['class']}\" has an error rate of "
        f"**{format_number(baseline['error_rate'])}**, so the model's is {comparison}. "
        f"Balanced accuracy is {format_number(metrics['balanced_accuracy'])} "
        f"(baseline {format_number(baseline['balanced_accuracy'])}) and macro-F1 {format_number(metrics['macro_f1'])} "
        f"(baseline {format_number(baseline['macro_f1'])})."
    )


def recording_groups_sentence(format: str) -> str:
    """The one sentence a report carries when its split groups are recordings, not patients."""
    return (f"Groups are recordings, not patients: the {format} layout names no patient, so a person with several "
            "recordings can be on both sides of a split, and these figures may be optimistic.")


def heart_problem_sentence(classes: Sequence[str]) -> str:
    """What the heart-problem figures mean for these classes, or why there are none."""
    if layouts.normal_class(classes) is None:
        return (f"No heart-problem sensitivity, specificity or Youden index: the classes ({', '.join(classes)}) have "
                f"no {NORMAL_CLASS!r} class to compare the others against (rename one with --label-map).")
    problem_classes = " or ".join(name for name in classes if name != NORMAL_CLASS)
    return (f"Heart problem = any class other than {NORMAL_CLASS} ({problem_classes}), against {NORMAL_CLASS}; "
            "Youden index = sensitivity + specificity − 1.")


def _figure_rows(metrics: dict):
    baseline = metrics["majority_baseline"]
    rows = [
        ("error rate", metrics["error_rate"], baseline["error_rate"]),
        ("accuracy", metrics["accuracy"], baseline["accuracy"]),
        ("balanced accuracy", metrics["balanced_accuracy"], baseline["balanced_accuracy"]),
        ("macro-F1", metrics["macro_f1"], baseline["macro_f1"]),
    ]
    model_heart, baseline_heart = metrics["heart_problem"], baseline["heart_problem"]
    if model_heart is None:  # no normal class: heart_problem_sentence says why
        return rows
    return rows + [
        ("heart-problem sensitivity", model_heart["sensitivity"], baseline_heart["sensitivity"]),
        ("heart-problem specificity", model_heart["specificity"], baseline_heart["specificity"]),
        ("heart-problem Youden index", model_heart["youden"], baseline_heart["youden"]),
    ]
