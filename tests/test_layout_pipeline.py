"""Every layout through the stages: synthetic folder -> spectrograms -> train (tiny) -> evaluate.

The readers themselves are tested in test_layouts.py; here we check what the stages make of
them: the detected format, the classes, the groups the split keeps together, the label map,
the report's sentences about groups and the normal class, and that stage 1 stays incremental
for every layout.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from heartbeat.data import layouts
from heartbeat.data import synth
from heartbeat.report.evaluate import evaluate
from heartbeat.report.metrics import classification_metrics
from heartbeat.data.manifest import stage_item
from heartbeat.data.spectrograms import build_spectrograms
from heartbeat.train.run import TrainSettings, train


def make_layout(root, format):
    data = synth.write_layout(root / "data", format, n_patients=6, seconds=(1.0, 2.0))
    regex = synth.FOLDERS_GROUP_REGEX if format == "folders" else None
    return data, regex


def tiny(**changes) -> TrainSettings:
    # the heartbeat recipe's small network, one epoch: the quickest run that goes through every step
    return TrainSettings(recipe="heartbeat", epochs=1, batch_size=2, **changes)


@pytest.mark.parametrize("format", layouts.FORMATS)
def test_every_layout_goes_through_spectrograms_and_train(format, tmp_path):
    data, regex = make_layout(tmp_path, format)
    layout = layouts.read_recordings(data, format, group_regex=regex)
    labelled = [recording for recording in layout.recordings if recording.label]

    out = tmp_path / "spectrograms"
    summary = build_spectrograms(data, out, group_regex=regex, jobs=2, progress=False)  # format detected, in parallel
    assert (summary.format, summary.failed) == (format, [])
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    items = {stage_item(recording, format).recording: recording for recording in labelled}
    assert set(manifest["recording"]) == set(items)
    for row in manifest.itertuples():  # the split groups by the layout's group, extra columns kept
        recording = items[row.recording]
        assert (row.label, row.patient_id, json.loads(row.extra)) == (recording.label, recording.group, recording.extra)
    dataset = json.loads((out / "dataset.json").read_text())
    assert (dataset["format"], dataset["groups_are_patients"]) == (format, layout.groups_are_patients)

    again = build_spectrograms(data, out, group_regex=regex, jobs=1, progress=False)
    assert (again.made, again.up_to_date) == (0, len(labelled))  # incremental for every layout

    result = train(out, tmp_path / "run", tiny(), progress=False)
    assert result.classes == layout.classes == sorted({recording.label for recording in labelled})
    split = pd.read_csv(result.run_dir / "split.csv", dtype=str)
    assert split.groupby("patient_id")["split"].nunique().max() == 1  # no group on both sides
    report = (result.run_dir / "report.md").read_text()
    assert ("Groups are recordings, not patients" in report) == (not layout.groups_are_patients)
    has_normal = "normal" in result.classes
    assert ("heart_problem" in result.metrics and result.metrics["heart_problem"] is not None) == has_normal
    assert ("no 'normal' class to compare" in report) == (not has_normal)
    model_info = json.loads((result.run_dir / "model.json").read_text())
    assert model_info["classes"] == result.classes

    # evaluate, through predict's path, on the same folder: every labelled recording scored once
    evaluation = evaluate(result.run_dir, data, tmp_path / "evaluation", group_regex=regex, progress=False)
    assert (evaluation.format, evaluation.n_scored, evaluation.not_scored, evaluation.failures) == \
        (format, len(labelled), {}, [])
    predictions = pd.read_csv(tmp_path / "evaluation" / "predictions.csv", dtype={"label": str, "predicted": str})
    assert sorted(predictions["recording"]) == sorted(recording.source for recording in labelled)
    saved = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    recomputed = classification_metrics(predictions["label"], predictions["predicted"], result.classes,
                                        majority_class=saved["majority_baseline"]["class"],
                                        normal_class=layouts.normal_class(result.classes))
    assert {key: saved[key] for key in recomputed} == recomputed


def test_label_map_at_stage_one_and_at_training(tmp_path):
    data, _ = make_layout(tmp_path, "pascal-a")
    out = tmp_path / "spectrograms"
    summary = build_spectrograms(data, out, label_map=layouts.parse_label_map("artifact=drop,extrahls=murmur"),
                                 jobs=1, progress=False)
    layout = layouts.read_recordings(data, "pascal-a")
    kept = [r for r in layout.recordings if r.label and r.label != "artifact"]
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert summary.recordings == len(kept) and manifest["recording"].nunique() == len(kept)
    assert sorted(set(manifest["label"])) == ["murmur", "normal"]
    assert json.loads((out / "dataset.json").read_text())["label_map"] == {"artifact": "drop", "extrahls": "murmur"}

    # a relabelling at stage 1 rewrites rows, it does not remake images
    relabelled = build_spectrograms(data, out, label_map=layouts.parse_label_map("artifact=drop"), jobs=1,
                                    progress=False)
    assert (relabelled.made, relabelled.up_to_date) == (0, len(kept))
    assert "extrahls" in set(pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)["label"])

    result = train(out, tmp_path / "run", tiny(label_map="murmur=abnormal,extrahls=drop"),
                   progress=False)
    assert result.classes == ["abnormal", "normal"]
    assert json.loads((result.run_dir / "config.json").read_text())["train_settings"]["label_map"] == \
        "murmur=abnormal,extrahls=drop"


def test_format_change_starts_afresh(tmp_path):
    data, regex = make_layout(tmp_path, "folders")
    out = tmp_path / "spectrograms"
    first = build_spectrograms(data, out, group_regex=regex, jobs=1, progress=False)
    csv_data = synth.write_layout(tmp_path / "other", "csv", n_patients=3, seconds=(1.0, 2.0))
    second = build_spectrograms(csv_data, out, jobs=1, progress=False)
    assert first.made > 0 and second.up_to_date == 0 and second.made == second.recordings
    assert any("another layout (folders, now csv)" in warning for warning in second.warnings)
    images = {path.name for path in (out / "images").iterdir()}
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    assert images == {name.removeprefix("images/") for name in manifest["image"]}  # the folders images are gone


def test_a_file_name_that_is_not_utf8_is_one_failed_recording(tmp_path):
    data, _ = make_layout(tmp_path, "folders")
    first = next((data / "normal").rglob("*.wav"))
    (first.parent / os.fsdecode(b"bad\xff.wav")).write_bytes(first.read_bytes())
    summary = build_spectrograms(data, tmp_path / "spectrograms", jobs=1, progress=False)
    assert [reason for _, reason in summary.failed] == ["its name is not valid UTF-8 text (rename the file)"]
    manifest = pd.read_csv(tmp_path / "spectrograms" / "manifest.csv", dtype=str, encoding="utf-8")
    assert manifest["recording"].nunique() == summary.recordings - 1  # the others are all there
