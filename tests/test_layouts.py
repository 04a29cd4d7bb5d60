"""Dataset layouts: every reader on its synthetic folder, the label map, CirCor's labelling rule,
path safety of the csv and folders layouts, and format detection."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import soundfile

from badinput import snapshot
from conftest import clicks, write_wav
from heartbeat.data import dataset
from heartbeat.data.layouts import (
    FORMATS, LayoutError, Recording, apply_label_map, circor_label, detect_format, normal_class, parse_label_map,
    read_recordings,
)
from heartbeat.data.synth import FOLDERS_GROUP_REGEX, LAYOUT_SAMPLE_RATES, write_layout

EXPECTED = {  # format: (reason, classes, groups are patients, extra columns)
    "pascal-b": ("found set_b.csv", ["extrastole", "murmur", "normal"], True, {"sublabel", "timestamp", "position"}),
    "pascal-a": ("found set_a.csv", ["artifact", "extrahls", "murmur", "normal"], False, {"sublabel"}),
    "physionet2016": ("found REFERENCE.csv in training-a, training-b", ["abnormal", "normal"], False, {"subset"}),
    "circor2022": ("found training_data.csv and training_data/", ["absent", "present", "unknown"], True,
                   {"location", "outcome"}),
    "folders": ("no marker file; found class folders holding .wav files: extrastole/, murmur/, normal/",
                ["extrastole", "murmur", "normal"], False, set()),
    "csv": ("found labels.csv", ["extrastole", "murmur", "normal"], True, set()),
}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """One small synthetic folder per layout, written once; tests that change one work on a copy."""
    root = tmp_path_factory.mktemp("layouts")
    return {name: write_layout(root / name, name, seed=2, n_patients=6, recordings_per_patient=(1, 3),
                               seconds=(1.0, 2.0)) for name in FORMATS}


def copy_of(layouts, name, tmp_path) -> Path:
    return Path(shutil.copytree(layouts[name], tmp_path / name, symlinks=True))


def wav(path: Path) -> Path:
    return write_wav(path, clicks(1.0, 4000), 4000)


def csv_rows(path: Path, header: bool = True) -> list[list[str]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[1:] if header else rows


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(LayoutError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- every layout from its synthetic folder

@pytest.mark.parametrize("name", FORMATS)
def test_every_layout_reads_its_synthetic_folder(layouts, name):
    root = layouts[name]
    before = snapshot(root)
    result = read_recordings(root)
    assert snapshot(root) == before  # a reader only reads

    reason, classes, groups_are_patients, extra = EXPECTED[name]
    assert (result.format, result.reason) == (name, reason)
    assert result.classes == classes
    assert result.groups_are_patients is groups_are_patients
    assert result.recordings
    real_root = root.resolve()
    for recording in result.recordings:
        assert recording.path.is_file() and recording.path.resolve().is_relative_to(real_root)
        assert recording.source == recording.path.relative_to(root).as_posix()
        assert set(recording.extra) == extra
        if not groups_are_patients:
            assert recording.group == recording.source
    groups = {recording.group for recording in result.recordings}
    if groups_are_patients:  # some patient has several recordings
        assert len(groups) < len(result.recordings)
    assert soundfile.info(str(result.recordings[0].path)).samplerate == LAYOUT_SAMPLE_RATES[name]


def test_pascal_b_is_dataset_read_dataset(dataset_dir):
    rows = dataset.read_dataset(dataset_dir)
    result = read_recordings(dataset_dir, "pascal-b")
    assert [(r.path, r.label, r.group, r.source) for r in result.recordings] == [
        (row.path, row.label, str(row.patient_id), f"set_b/{row.path.name}") for row in rows]
    assert [r.extra for r in result.recordings] == [
        {"sublabel": row.sublabel or "", "timestamp": row.timestamp, "position": row.position} for row in rows]
    assert any(r.label is None for r in result.recordings)  # the unlabelled test recordings are kept


def test_pascal_a_unlabelled_rows_and_labels_follow_the_csv(layouts):
    root = layouts["pascal-a"]
    expected = {fname: label or None for _, fname, label, _ in csv_rows(root / "set_a.csv")}
    result = read_recordings(root)
    assert {r.source: r.label for r in result.recordings} == expected
    unlabelled = [r for r in result.recordings if r.label is None]
    assert unlabelled and all(Path(r.source).name.startswith("Aunlabelledtest__") for r in unlabelled)
    assert normal_class(result.classes) == "normal"


def test_physionet_labels_and_subsets_follow_each_reference(layouts):
    root = layouts["physionet2016"]
    result = read_recordings(root)
    expected = {}
    for subset in "ab":
        for record, value in csv_rows(root / f"training-{subset}/REFERENCE.csv", header=False):
            expected[f"training-{subset}/{record}.wav"] = ({"-1": "normal", "1": "abnormal"}[value], subset)
    assert {r.source: (r.label, r.extra["subset"]) for r in result.recordings} == expected
    for subset in "ab":  # both labels in both subsets: a leave-one-subset-out split has both
        assert {r.label for r in result.recordings if r.extra["subset"] == subset} == {"normal", "abnormal"}
    assert (root / "training-a/RECORDS").is_file() and list(root.glob("training-a/*.hea"))


def test_circor_recordings_labelled_by_their_patient_row(layouts):
    root = layouts["circor2022"]
    rows = {row["Patient ID"]: row for row in csv.DictReader(open(root / "training_data.csv", newline=""))}
    result = read_recordings(root)
    for recording in result.recordings:
        patient, location = Path(recording.source).stem.split("_")[:2]
        row = rows[patient]
        heard = row["Murmur locations"].split("+")
        expected = {"Unknown": "unknown", "Absent": "absent"}.get(row["Murmur"]) or (
            "present" if location in heard else "absent")
        assert (recording.group, recording.label, recording.extra) == (
            patient, expected, {"location": location, "outcome": row["Outcome"]})
    assert {r.group for r in result.recordings} == set(rows)
    suffixed = [r.source for r in result.recordings if r.source.count("_") == 3]  # training_data/<id>_<loc>_<n>.wav
    assert len(suffixed) == 2
    murmur_patients = {r.group for r in result.recordings if r.label == "present"}
    assert any(r.label == "absent" and r.group in murmur_patients for r in result.recordings)  # heard elsewhere
    assert list(root.glob("training_data/*.hea")) and list(root.glob("training_data/*.txt"))  # ignored
    assert normal_class(result.classes) is None


def test_folders_nested_files_and_group_regex(layouts):
    root = layouts["folders"]
    plain = read_recordings(root)
    assert any(r.source.count("/") == 2 for r in plain.recordings)  # <class>/clinic-2/<file>
    assert all(r.label == r.source.split("/")[0] for r in plain.recordings)
    grouped = read_recordings(root, group_regex=FOLDERS_GROUP_REGEX)
    assert grouped.groups_are_patients and grouped.format == "folders"
    assert [r.group for r in grouped.recordings] == [Path(r.source).name.split("_")[0][1:] for r in plain.recordings]
    assert len({r.group for r in grouped.recordings}) < len(grouped.recordings)
    unnamed = read_recordings(root, group_regex=r"p(\d+)")  # the first group, when none is named "patient"
    assert [r.group for r in unnamed.recordings] == [r.group for r in grouped.recordings]


def test_csv_groups_come_from_the_patient_column(layouts):
    root = layouts["csv"]
    expected = {file: (label, patient) for file, label, patient in csv_rows(root / "labels.csv")}
    result = read_recordings(root)
    assert {r.source: (r.label, r.group) for r in result.recordings} == expected


def test_csv_without_patient_column_groups_by_recording_and_keeps_extra_columns(tmp_path):
    wav(tmp_path / "a" / "one.wav")
    wav(tmp_path / "two.wav")
    (tmp_path / "labels.csv").write_text("file,label,site\na/one.wav,sick,north\n./two.wav,,south\n")
    result = read_recordings(tmp_path)
    assert not result.groups_are_patients and result.classes == ["sick"]
    assert [(r.source, r.label, r.group, r.extra) for r in result.recordings] == [
        ("a/one.wav", "sick", "a/one.wav", {"site": "north"}), ("two.wav", None, "two.wav", {"site": "south"})]


def test_synthetic_layouts_are_reproducible(tmp_path):
    def digests(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    first = digests(write_layout(tmp_path / "a", "circor2022", seed=4, n_patients=3))
    assert first == digests(write_layout(tmp_path / "b", "circor2022", seed=4, n_patients=3))
    assert first != digests(write_layout(tmp_path / "c", "circor2022", seed=5, n_patients=3))
    with pytest.raises(ValueError, match="format"):
        write_layout(tmp_path / "d", "set_c")


# ---------------------------------------------------------------- label map

def test_parse_label_map():
    assert parse_label_map(" murmur=abnormal, extrastole = abnormal,artifact=drop") == {
        "murmur": "abnormal", "extrastole": "abnormal", "artifact": None}


@pytest.mark.parametrize("word", ["DROP", "Drop", "dRoP"])
def test_parse_label_map_says_drop_is_lowercase(word):
    message = error_of(parse_label_map, f"normal={word}")
    assert message.startswith("--label-map: ") and "lowercase" in message and word in message


def test_case_clashes_name_both_labels():
    from heartbeat.data.layouts import case_clashes

    warnings = case_clashes(["Murmur", "extrastole", "murmur", "normal"], "DATA")
    assert len(warnings) == 1 and warnings[0].startswith("DATA: ") and "'Murmur'" in warnings[0] and "'murmur'" in warnings[0]
    assert case_clashes(["murmur", "normal"], "DATA") == []


@pytest.mark.parametrize("text", ["", "murmur", "murmur=", "=normal", "a=b=c", "a=b,a=c", "a=b,", "a=x/y", "a=.hidden"])
def test_parse_label_map_refuses_malformed_text(text):
    assert error_of(parse_label_map, text).startswith("--label-map: ")


def test_label_map_renames_merges_and_drops(layouts):
    root = layouts["pascal-a"]
    plain = read_recordings(root)
    mapped = read_recordings(root, label_map=parse_label_map("murmur=abnormal,extrahls=abnormal,artifact=drop"))
    assert mapped.classes == ["abnormal", "normal"]
    rename = {"murmur": "abnormal", "extrahls": "abnormal", "normal": "normal", None: None}
    assert [(r.source, r.label) for r in mapped.recordings] == [
        (r.source, rename[r.label]) for r in plain.recordings if r.label != "artifact"]
    assert sum(r.label is None for r in mapped.recordings) == sum(r.label is None for r in plain.recordings)


def test_label_map_naming_an_absent_label_is_refused(layouts):
    message = error_of(read_recordings, layouts["pascal-b"], label_map={"murmr": "abnormal"})
    assert message.startswith("--label-map: ") and "murmr" in message and "extrastole, murmur, normal" in message


def test_apply_label_map_leaves_unlabelled_and_unmapped_recordings():
    recordings = [Recording(Path(name), label, name, name) for name, label in
                  [("a", "x"), ("b", None), ("c", "y"), ("d", "z")]]
    assert [(r.source, r.label) for r in apply_label_map(recordings, {"x": "w", "z": None})] == [
        ("a", "w"), ("b", None), ("c", "y")]


# ---------------------------------------------------------------- circor's rule

@pytest.mark.parametrize("murmur, heard, location, label", [
    ("Present", {"AV", "MV"}, "MV", "present"),
    ("Present", {"AV"}, "MV", "absent"),  # heard elsewhere
    ("Present", set(), "MV", "absent"),
    ("Absent", {"MV"}, "MV", "absent"),
    ("Unknown", {"MV"}, "MV", "unknown"),
    ("Unknown", set(), "AV", "unknown"),
])
def test_circor_label(murmur, heard, location, label):
    assert circor_label(murmur, heard, location) == label


def make_circor(root: Path, rows: list[str], files: list[str]) -> Path:
    header = "Patient ID,Recording locations:,Age,Murmur,Murmur locations,Outcome\n"
    (root / "training_data.csv").write_text(header + "".join(row + "\n" for row in rows))
    for name in files:
        wav(root / "training_data" / name)
    (root / "training_data" / "9_AV.hea").write_text("9_AV 1 4000 4000\n")
    return root


def test_circor_reader_case_by_case(tmp_path):
    root = make_circor(tmp_path, ["1,AV+MV+MV,Child,Present,MV,Abnormal", "2,AV,Child,Unknown,nan,Normal",
                                  "3,AV+TV,Infant,Absent,nan,Normal"],
                       ["1_AV.wav", "1_MV_1.wav", "1_MV_2.wav", "2_AV.wav", "3_AV.wav", "3_TV.wav"])
    labels = {r.source: (r.label, r.group) for r in read_recordings(root).recordings}
    assert labels == {"training_data/1_AV.wav": ("absent", "1"), "training_data/1_MV_1.wav": ("present", "1"),
                      "training_data/1_MV_2.wav": ("present", "1"), "training_data/2_AV.wav": ("unknown", "2"),
                      "training_data/3_AV.wav": ("absent", "3"), "training_data/3_TV.wav": ("absent", "3")}


def test_circor_reader_lists_every_problem(tmp_path):
    root = make_circor(tmp_path, ["1,AV,Child,Present,AV,Abnormal", "2,AV,Child,Maybe,nan,Normal",
                                  "4,PV,Child,Absent,nan,Normal", "1,AV,Child,Absent,nan,Normal"],
                       ["1_AV.wav", "1_PV.wav", "2_AV.wav", "3_AV.wav", "junk.wav"])
    message = error_of(read_recordings, root, "circor2022")
    for part in ["6 problem(s)", "line 3 (2): Murmur 'Maybe'", "line 5 (1): duplicate of line 2",
                 "training_data/1_PV.wav: location PV", "training_data/3_AV.wav: patient 3 has no row",
                 "training_data/junk.wav: name is not", "line 4 (4): no recordings"]:
        assert part in message


# ---------------------------------------------------------------- problems of the fixed layouts

def test_pascal_a_names_are_matched_exactly(layouts, tmp_path):
    root = copy_of(layouts, "pascal-a", tmp_path)
    first = sorted((root / "set_a").glob("murmur__*.wav"))[0]
    first.rename(first.with_name(first.name.replace("murmur__", "Murmur__")))
    with open(root / "set_a.csv", "a", newline="") as handle:
        handle.write("a,set_a/normal__209901010000.wav,weird,\r\n")
    message = error_of(read_recordings, root)
    assert message.startswith(f"{root / 'set_a.csv'}: 3 problem(s): ")
    assert f"(set_a/{first.name}): no file of that exact name" in message
    assert "unknown label 'weird'" in message and f"set_a/Murmur__{first.name[8:]}: no row in set_a.csv" in message


def test_physionet_problems(layouts, tmp_path):
    root = copy_of(layouts, "physionet2016", tmp_path)
    reference = root / "training-b/REFERENCE.csv"
    reference.write_text(reference.read_text() + "b0999,1\n../a0001,1\nb0998,0\n")
    wav(root / "training-a/a0999.wav")
    message = error_of(read_recordings, root)
    for part in ["4 problem(s)", "(b0999): no b0999.wav in training-b/", "(../a0001): not a record name",
                 "(b0998): label '0' is neither", "training-a/a0999.wav: no row in REFERENCE.csv"]:
        assert part in message


@pytest.mark.parametrize("name, folder", [("pascal-a", "set_a"), ("pascal-b", "set_b"), ("physionet2016", "training-a"),
                                          ("circor2022", "training_data")])
def test_fixed_layouts_refuse_a_recording_linked_outside(layouts, tmp_path, name, folder):
    root = copy_of(layouts, name, tmp_path)
    victim = sorted((root / folder).glob("*.wav"))[0]
    outside = wav(tmp_path / "elsewhere" / "secret.wav")
    victim.unlink()
    victim.symlink_to(outside)
    message = error_of(read_recordings, root)
    assert victim.name in message and "refused, a symbolic link leading outside the data folder" in message


# ---------------------------------------------------------------- path safety of csv and folders

def test_csv_paths_must_stay_inside_the_folder(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    wav(data / "good.wav")
    wav(outside / "secret.wav")
    (data / "link.wav").symlink_to(outside / "secret.wav")
    (data / "linked-folder").symlink_to(outside)
    (data / "inner.wav").symlink_to(data / "good.wav")  # a link that stays inside is fine, but names good.wav again
    rows = ["good.wav,normal", "../outside/secret.wav,normal", f"{outside / 'secret.wav'},normal",
            "link.wav,normal", "linked-folder/secret.wav,normal", "sub/../../outside/secret.wav,normal",
            r"C:\secret.wav,normal", "missing.wav,normal", "inner.wav,normal", "good.wav,murmur"]
    (data / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    message = error_of(read_recordings, data)
    assert message.startswith(f"{data / 'labels.csv'}: 9 problem(s): ")
    problems = {problem.split(" (")[0]: problem.split("): ", 1)[1] for problem in message.split(": ", 2)[2].split("; ")}
    assert problems == {
        "line 3": "refused, the path leaves the data folder", "line 4": "refused, the path leaves the data folder",
        "line 5": "refused, a symbolic link leading outside the data folder",
        "line 6": "refused, a symbolic link leading outside the data folder",
        "line 7": "refused, the path leaves the data folder", "line 8": "refused, the path leaves the data folder",
        "line 9": "no such file", "line 10": "names the same file as line 2", "line 11": "duplicate of line 2"}


def test_csv_label_and_patient_problems(tmp_path):
    wav(tmp_path / "a.wav")
    wav(tmp_path / "b.wav")
    (tmp_path / "labels.csv").write_text("file,label,patient\na.wav,../../etc,7\nb.wav,normal,\n")
    message = error_of(read_recordings, tmp_path)
    assert "line 2 (a.wav): label '../../etc' is not a usable class name" in message
    assert "line 3 (b.wav): empty patient" in message
    (tmp_path / "labels.csv").write_text("name,label\n")
    assert "missing column(s) file" in error_of(read_recordings, tmp_path)


def test_folders_never_follow_links_out(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    wav(data / "normal" / "a.wav")
    wav(data / "murmur" / "deep" / "b.wav")
    wav(outside / "c.wav")
    wav(data / "stray.wav")
    (data / "normal" / "link.wav").symlink_to(outside / "c.wav")
    (data / "extrastole").symlink_to(outside)  # a class folder that is a link out
    (data / "murmur" / "more").symlink_to(data / "normal")  # a folder link inside: files would count twice
    message = error_of(read_recordings, data, "folders")
    assert message.startswith(f"{data}: 4 problem(s): ")
    for part in ["extrastole/: refused, a symbolic link leading outside",
                 "murmur/more/: a symbolic link to a folder, not followed",
                 "normal/link.wav: refused, a symbolic link leading outside", "stray.wav: not inside a class folder"]:
        assert part in message
    for link in (data / "normal" / "link.wav", data / "extrastole", data / "murmur" / "more", data / "stray.wav"):
        link.unlink()
    hidden = wav(data / "normal" / "._a.wav")  # macOS's resource-fork copy: not a recording
    assert [r.source for r in read_recordings(data).recordings] == ["murmur/deep/b.wav", "normal/a.wav"]
    assert hidden.is_file()


def test_group_regex_problems(layouts):
    root = layouts["folders"]
    message = error_of(read_recordings, root, group_regex=r"^p(?P<patient>10[1-3])_")
    assert "finds no patient id in" in message and "p104_" in message and "p101_" not in message
    assert error_of(read_recordings, root, group_regex="p(").startswith("--group-regex: ")
    assert "has no group" in error_of(read_recordings, root, group_regex=r"p\d+")
    assert error_of(read_recordings, layouts["csv"], group_regex=r"P(\d+)").startswith("--group-regex: ")


def test_many_problems_are_summarised(tmp_path):
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(f"m{i}.wav,normal\n" for i in range(15)))
    message = error_of(read_recordings, tmp_path)
    assert "15 problem(s)" in message and message.endswith("; and 3 more")
    assert "m11.wav" in message and "m12.wav" not in message


# ---------------------------------------------------------------- detection

def test_detection_refuses_two_markers_and_format_chooses(layouts, tmp_path):
    root = copy_of(layouts, "pascal-b", tmp_path)
    shutil.copytree(layouts["pascal-a"], root, dirs_exist_ok=True)  # the Kaggle download holds both sets
    message = error_of(detect_format, root)
    assert message.startswith(f"{root}: ambiguous layout") and "set_b.csv (pascal-b)" in message
    assert "set_a.csv (pascal-a)" in message and "--format" in message
    chosen = read_recordings(root, "pascal-a")
    assert (chosen.format, chosen.reason) == ("pascal-a", "chosen with --format")
    assert chosen.classes == EXPECTED["pascal-a"][1]


def test_detection_of_nothing_recognisable(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here")
    (tmp_path / ".hidden").mkdir()
    wav(tmp_path / ".hidden" / "a.wav")
    message = error_of(detect_format, tmp_path)
    assert message.startswith(f"{tmp_path}: no known layout") and "set_b.csv" in message and "labels.csv" in message
    assert "no such data folder" in error_of(read_recordings, tmp_path / "absent")
    assert error_of(read_recordings, tmp_path, "set_c").startswith("--format: ")


def test_layout_modules_do_not_import_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys, heartbeat.data.layouts, heartbeat.data.synth; "
            "print(sorted({'torch', 'pandas', 'fastai'} & set(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip() == "[]"
