"""Evaluate: run a trained model on another labelled collection and write its report.

`heartbeat evaluate --model RUN --data DIR --out OUT` reads DIR in any layout (heartbeat.data.layouts),
runs every labelled recording whose label is one of the model's classes through the predict path
(predict.predict_files: the training windows, the mean of window probabilities, ONNX, no torch),
and writes into OUT the run report's files for that set: predictions.csv, metrics.json (the keys
of a run's, from metrics.classification_metrics, plus "context"), confusion_matrix.png/.json and
report.md. Every figure stands beside the EVALUATED set's own majority class (its most common label
among the scored recordings), not the training set's.

- Labels the model does not know are not run and not scored: they are counted per label and listed
  as "not scored" (`--label-map old=new` maps them, `old=drop` leaves them out).
- A recording that cannot be used is a Failure (one line for the user); the others go on.
- The metrics' classes are the model's: a prediction of a class the set lacks is an error, and its
  column of the confusion matrix shows it (the row of that class is all zeros).

Writing: OUT receives exactly OUTPUTS, nothing else. Everything is made in memory first, then every
file is staged beside its destination and renamed only once all are staged (outputs.write_all), so a
failure leaves an earlier evaluation in OUT as it was, and a rerun replaces all five files (none can
survive from an older evaluation). Nothing else in OUT is touched. OUT must not be (or be inside) the
data or the model folder, and must not be a link: evaluate never writes where its inputs are.
"""

from __future__ import annotations

import collections
import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from heartbeat.data import audio
from heartbeat.data import layouts
from heartbeat.fileio import entry_kind, is_inside, remove_dead_leftovers
from heartbeat.report.metrics import classification_metrics
from heartbeat.report.outputs import (confusion_section, figures_table, json_bytes, markdown_table, markdown_text, plain,
                                      write_all)
from heartbeat.predict import Failure, ModelError, Predictor, load_predictor, predict_files
from heartbeat.text import printable, progress_bar, spreadsheet_cell

PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_JSON = "confusion_matrix.json"
REPORT_FILE = "report.md"
OUTPUTS = (PREDICTIONS_FILE, METRICS_FILE, CONFUSION_PNG, CONFUSION_JSON, REPORT_FILE)
PREDICTION_COLUMNS = ("recording", "group", "label", "predicted", "windows")  # then prob_<class> per model class
LABEL_MAP_HINT = ("map them to one of the model's classes with --label-map old=new, "
                  f"or leave them out with --label-map old={layouts.DROP}")
_MAX_LISTED = 12  # failed recordings named one by one in report.md before "and N more"


class EvaluationError(ValueError):
    """The evaluation cannot run (bad model, data or output folder); one line naming what and why."""


class NothingEvaluated(EvaluationError):
    """Every recording to score failed: there is nothing to report, and OUT was not written."""

    def __init__(self, message: str, failures: list[Failure]):
        super().__init__(message)
        self.failures = failures


@dataclass(frozen=True)
class EvaluationPlan:
    """What prepare() checked and found: the model, the recordings to run, the ones left out."""
    predictor: Predictor
    model_dir: Path
    data_dir: Path
    out_dir: Path
    layout: layouts.LayoutResult
    to_score: list[layouts.Recording]  # labelled with one of the model's classes, in the layout's order
    not_scored: dict[str, int]  # label the model does not know -> recordings, sorted by label
    n_unlabelled: int
    label_map: dict[str, str | None]
    max_seconds: float


@dataclass(frozen=True)
class EvaluationResult:
    out_dir: Path
    format: str
    reason: str
    n_scored: int
    not_scored: dict[str, int]
    failures: list[Failure]
    metrics: dict  # as metrics.json


# ---------------------------------------------------------------- preparing

def prepare(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
            format: str = "auto", label_map: dict[str, str | None] | None = None, group_regex: str | None = None,
            max_seconds: float = audio.DEFAULT_MAX_SECONDS, threads: int | None = None) -> EvaluationPlan:
    """Check the output folder, read the data folder, open the model; choose the recordings to run.

    Raises EvaluationError (one line) if any of them cannot be used, or if no labelled recording
    has a label the model knows. Writes nothing.
    """
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    check_output_folder(out_dir, {"data": data_dir, "model": model_dir})
    try:
        layout = layouts.read_recordings(data_dir, format, label_map=label_map, group_regex=group_regex)
        predictor = load_predictor(model_dir, threads)
    except (layouts.LayoutError, ModelError) as error:
        raise EvaluationError(str(error)) from None
    labelled = [recording for recording in layout.recordings if recording.label is not None]
    known = set(predictor.classes)
    to_score = [recording for recording in labelled if recording.label in known]
    not_scored = dict(sorted(collections.Counter(r.label for r in labelled if r.label not in known).items()))
    if not labelled:
        raise EvaluationError(f"{data_dir}: no labelled recording to evaluate ({len(layout.recordings)} recording(s), "
                              "none with a label)")
    if not to_score:
        raise EvaluationError(f"{data_dir}: no recording has a label the model knows (its labels: "
                              f"{', '.join(not_scored)}; the model's classes: {', '.join(predictor.classes)}); "
                              f"{LABEL_MAP_HINT}")
    return EvaluationPlan(predictor=predictor, model_dir=model_dir, data_dir=data_dir, out_dir=out_dir, layout=layout,
                          to_score=to_score, not_scored=not_scored, n_unlabelled=len(layout.recordings) - len(labelled),
                          label_map=dict(label_map or {}), max_seconds=max_seconds)


def check_output_folder(out_dir: Path, inputs: dict[str, Path]) -> None:
    """EvaluationError unless out_dir can take OUTPUTS without writing into an input folder or through a link.

    out_dir itself must not be a link (it could point anywhere), nor equal to or inside an input
    folder (links resolved); it is created later, under the nearest existing folder, which must be
    writable; an existing entry under one of OUTPUTS' names must be a regular file (evaluate
    replaces only files it writes, never a folder or a link someone put there).
    """
    if out_dir.is_symlink():
        raise EvaluationError(f"{out_dir}: a symbolic link; give the output folder itself "
                              "(a link could point anywhere)")
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"{out_dir}: not a folder (--out names the folder to write the evaluation into)")
    for what, folder in inputs.items():
        if is_inside(out_dir, folder):
            raise EvaluationError(f"{out_dir}: inside the {what} folder {folder}; evaluate never writes there "
                                  "(choose another --out)")
    existing = next(path for path in (out_dir.absolute(), *out_dir.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise EvaluationError(f"{out_dir}: cannot be created ({existing} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EvaluationError(f"{out_dir}: cannot be written ({existing} is not writable)")
    for name in OUTPUTS:
        if entry_kind(out_dir / name) == "other":
            raise EvaluationError(f"{out_dir / name}: not a regular file (a link, a folder or another kind); "
                                  "evaluate replaces only the files it writes")


# ---------------------------------------------------------------- running

def evaluate(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
             format: str = "auto", label_map: dict[str, str | None] | None = None, group_regex: str | None = None,
             max_seconds: float = audio.DEFAULT_MAX_SECONDS, threads: int | None = None,
             progress: bool = True) -> EvaluationResult:
    """prepare() then run(): the whole evaluation, OUT written. See the module's docstring."""
    plan = prepare(model_dir, data_dir, out_dir, format=format, label_map=label_map, group_regex=group_regex,
                   max_seconds=max_seconds, threads=threads)
    return run(plan, progress=progress)


def run(plan: EvaluationPlan, *, progress: bool = True) -> EvaluationResult:
    """Predict every recording of the plan, make every output in memory, then write them into OUT.

    Raises NothingEvaluated if every recording failed, EvaluationError if the model gives no
    usable answer or OUT cannot be written; OUT is then as it was.
    """
    predictions, failures = [], []
    by_path = {os.fsdecode(recording.path): recording for recording in plan.to_score}
    bar = progress_bar(len(plan.to_score), "evaluate", "rec", progress)
    try:
        for result in predict_files(plan.predictor, [r.path for r in plan.to_score], max_seconds=plan.max_seconds):
            if isinstance(result, Failure):
                failures.append(result)
            else:
                predictions.append((by_path[result.file], result))
            bar.update()
    except ModelError as error:
        raise EvaluationError(str(error)) from None
    finally:
        bar.close()
    if not predictions:
        raise NothingEvaluated(f"none of the {len(failures)} recording(s) to evaluate could be used; "
                               f"{plan.out_dir} was not written", failures)

    files, metrics = make_outputs(plan, predictions, failures)
    write_outputs(plan.out_dir, files)
    return EvaluationResult(out_dir=plan.out_dir, format=plan.layout.format, reason=plan.layout.reason,
                            n_scored=len(predictions), not_scored=plan.not_scored, failures=failures, metrics=metrics)


def majority_class(labels: list[str], classes: list[str]) -> str:
    """The most common of `labels`; a tie goes to the class first in `classes` (the model's order)."""
    counts = collections.Counter(labels)
    return max(classes, key=lambda name: (counts[name], -classes.index(name)))


def make_outputs(plan: EvaluationPlan, predictions: list, failures: list[Failure]) -> tuple[dict[str, bytes], dict]:
    """{file name: bytes} for every one of OUTPUTS, and the metrics (as metrics.json)."""
    from heartbeat.report.figures import confusion_matrix_figure, png_bytes

    classes = plan.predictor.classes
    labels = [recording.label for recording, _ in predictions]
    predicted = [prediction.label for _, prediction in predictions]
    majority = majority_class(labels, classes)
    metrics = classification_metrics(labels, predicted, classes, majority_class=majority,
                                     normal_class=layouts.normal_class(classes))
    metrics["context"] = plain(evaluation_context(plan, predictions, failures, majority))
    matrix = metrics["confusion_matrix"]["matrix"]
    title = printable(f"{plan.data_dir} ({plan.layout.format}), model {plan.predictor.model_id}")  # drawn, not run: still legible
    files = {
        PREDICTIONS_FILE: predictions_csv(predictions, classes).encode("utf-8", "backslashreplace"),
        METRICS_FILE: json_bytes(metrics),
        CONFUSION_PNG: png_bytes(confusion_matrix_figure(matrix, classes, f"Evaluated recordings: {title}")),
        CONFUSION_JSON: json_bytes({"classes": classes, "matrix": matrix, "model_id": plan.predictor.model_id,
                                     "data": _text(plan.data_dir), "format": plan.layout.format}),
        REPORT_FILE: render_markdown(metrics).encode("utf-8", "backslashreplace"),
    }
    return files, metrics


def evaluation_context(plan: EvaluationPlan, predictions: list, failures: list[Failure], majority: str) -> dict:
    """What metrics.json records besides the figures: the model, the data, and what was and was not scored."""
    classes = plan.predictor.classes
    source_of = {os.fsdecode(recording.path): recording.source for recording in plan.to_score}
    return {
        "title": f"Evaluation of model {plan.predictor.model_id} on {_text(plan.data_dir)}",
        "model_id": plan.predictor.model_id,
        "model_dir": _text(plan.model_dir),
        "model_classes": list(classes),
        "normal_class": layouts.normal_class(classes),
        "data_dir": _text(plan.data_dir),
        "format": plan.layout.format,
        "format_reason": plan.layout.reason,
        "label_map": {old: layouts.DROP if new is None else new for old, new in plan.label_map.items()},
        "groups_are_patients": plan.layout.groups_are_patients,
        "n_groups": len({recording.group for recording, _ in predictions}),
        "majority_class": majority,
        "majority_rule": "the evaluated set's most common label among the scored recordings",
        "n_recordings_found": len(plan.layout.recordings),
        "n_unlabelled": plan.n_unlabelled,
        "n_to_score": len(plan.to_score),
        "n_scored": len(predictions),
        "not_scored": dict(plan.not_scored),
        "not_scored_hint": LABEL_MAP_HINT if plan.not_scored else None,
        "failed": [{"recording": _text(source_of.get(failure.file, failure.file)), "problem": failure.problem}
                   for failure in failures],
        "max_seconds": plan.max_seconds,
    }


def predictions_csv(predictions: list, classes: list[str]) -> str:
    """One row per scored recording; probabilities as repr (the shortest text that reads back as the same float).

    For people: a name cell that a spreadsheet would open as a formula is quoted (heartbeat.text).
    """
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*PREDICTION_COLUMNS, *(f"prob_{name}" for name in classes)])
    for recording, prediction in predictions:
        names = [_text(recording.source), _text(recording.group), recording.label, prediction.label]
        writer.writerow([*map(spreadsheet_cell, names), prediction.windows,
                         *(repr(prediction.probabilities[name]) for name in classes)])
    return text.getvalue()


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> None:
    """Stage every file in OUT and rename them only once all are staged (a failure leaves OUT as it was)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:  # what a killed evaluation left while staging, once its writer is dead
            remove_dead_leftovers(out_dir, prefix=f".{Path(name).stem}.")
        write_all(out_dir, files)
    except OSError as error:
        raise EvaluationError(f"{out_dir}: the evaluation could not be written ({error.strerror or error})") from None


def _text(value) -> str:
    """A path or name as text that is valid UTF-8 (a file name's undecodable bytes as \\x escapes)."""
    return os.fsencode(value).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------- report.md

def render_markdown(metrics: dict) -> str:
    """report.md: the model, the data, the counts, every figure beside the majority baseline, the confusion matrix."""
    context = metrics["context"]
    return markdown_text([
        f"# {context['title']}", "", _summary(metrics), "",
        *_model_and_data_section(context),
        *_recordings_section(context),
        "## Figures", "", *figures_table(_figure_rows(metrics), metrics["majority_baseline"]["class"]), "",
        " ".join(_figure_notes(metrics)), "",
        *confusion_section(metrics["confusion_matrix"], CONFUSION_PNG),
    ])


def _model_and_data_section(context: dict) -> list[str]:
    return ["## Model and data", "", *markdown_table(["item", "value"], [
        ["model", f"{context['model_id']} ({context['model_dir']})"],
        ["model's classes", ", ".join(context["model_classes"])],
        ["data", context["data_dir"]],
        ["format", f"{context['format']} ({context['format_reason']})"],
        ["label map", ", ".join(f"{old}={new}" for old, new in context["label_map"].items()) or "none"],
        ["groups", f"{context['n_groups']} " + ("patients" if context["groups_are_patients"]
                                                else "(one per recording: the layout names no patient)")],
    ]), ""]


def _recordings_section(context: dict) -> list[str]:
    """The counts (found, unlabelled, not scored per label, failed, scored), then what was not scored and why."""
    rows = [["recordings found", str(context["n_recordings_found"])],
            ["unlabelled (not evaluated)", str(context["n_unlabelled"])]]
    rows += [[f"not scored: {label}", str(count)] for label, count in context["not_scored"].items()]
    rows += [["failed (could not be used)", str(len(context["failed"]))], ["scored", str(context["n_scored"])]]
    lines = ["## Recordings", "", *markdown_table(["", "recordings"], rows), ""]
    if context["not_scored"]:
        lines += [f"Not scored: labels the model does not know ({', '.join(context['not_scored'])}); "
                  f"{context['not_scored_hint']}.", ""]
    if context["failed"]:
        shown = [f"- {item['recording']}: {item['problem']}" for item in context["failed"][:_MAX_LISTED]]
        more = len(context["failed"]) - _MAX_LISTED
        lines += ["Failed:", "", *shown, *([f"- and {more} more (see metrics.json)"] if more > 0 else []), ""]
    return lines


def _figure_notes(metrics: dict) -> list[str]:
    """What the figures mean here: the baseline, classes the set lacks, and the heart-problem figures."""
    context = metrics["context"]
    notes = ["The baseline always answers the evaluated set's most common class; balanced accuracy is the mean "
             "recall over the classes present among the scored recordings."]
    confusion = metrics["confusion_matrix"]
    predicted_as = dict(zip(confusion["classes"], (sum(column) for column in zip(*confusion["matrix"]))))
    absent = [name for name, row in metrics["per_class"].items() if row["support"] == 0]
    if absent:
        counts = ", ".join(f"{predicted_as[name]} as {name}" for name in absent)
        notes.append(f"The set has no recording of {', '.join(absent)}: recall is n/a there, and a recording "
                     f"predicted as such is an error (here {counts}; the confusion matrix's column shows them).")
    if metrics["heart_problem"] is None:
        notes.append("Heart-problem sensitivity, specificity and Youden index are left out: the model has no "
                     "\"normal\" class to compare a heart problem against.")
    else:
        problems = " or ".join(name for name in metrics["per_class"] if name != context["normal_class"])
        notes.append(f"Heart problem = any class other than {context['normal_class']} ({problems}); "
                     "Youden index = sensitivity + specificity − 1.")
    return notes


def _summary(metrics: dict) -> str:
    context, baseline = metrics["context"], metrics["majority_baseline"]
    return (f"On {metrics['n_recordings']} scored recordings of {context['data_dir']}, the model "
            f"{context['model_id']} is right for **{metrics['accuracy']:.3f}** of them; a majority baseline that "
            f"always answers \"{baseline['class']}\" (the set's most common class) is right for "
            f"**{baseline['accuracy']:.3f}**. Balanced accuracy {metrics['balanced_accuracy']:.3f} "
            f"(baseline {baseline['balanced_accuracy']:.3f}), macro-F1 {metrics['macro_f1']:.3f} "
            f"(baseline {baseline['macro_f1']:.3f}).")


def _figure_rows(metrics: dict) -> list[tuple[str, float | None, float | None]]:
    """(figure, model, majority baseline) for the table; the baseline's recall is 1 for its class, else 0."""
    baseline = metrics["majority_baseline"]
    rows = [("accuracy", metrics["accuracy"], baseline["accuracy"]),
            ("error rate", metrics["error_rate"], baseline["error_rate"]),
            ("balanced accuracy", metrics["balanced_accuracy"], baseline["balanced_accuracy"]),
            ("macro-F1", metrics["macro_f1"], baseline["macro_f1"])]
    for name, row in metrics["per_class"].items():
        baseline_recall = None if row["support"] == 0 else float(name == baseline["class"])
        rows.append((f"recall: {name}", row["recall"], baseline_recall))
    if metrics["heart_problem"] is not None:
        model_heart, baseline_heart = metrics["heart_problem"], baseline["heart_problem"]
        rows += [(f"heart-problem {name}", model_heart[key], baseline_heart[key])
                 for key, name in (("sensitivity", "sensitivity"), ("specificity", "specificity"),
                                   ("youden", "Youden index"))]
    return rows
