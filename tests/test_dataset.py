"""The csv reader: the download's name quirks, patient parsing, and every bad-csv message."""

from __future__ import annotations

import shutil

import pytest

from conftest import REAL_DATA, clicks, needs_real_data, write_wav
from heartbeat.data.dataset import DatasetError, disk_name_candidates, parse_tail, read_dataset

HEADER = "dataset,fname,label,sublabel\r\n"


def make_folder(root, rows, files):
    (root / "set_b").mkdir(parents=True)
    for name in files:
        write_wav(root / "set_b" / name, clicks(1.0, 4000), 4000)
    (root / "set_b.csv").write_text(HEADER + "".join(f"{row}\r\n" for row in rows), newline="")
    return root


@pytest.mark.parametrize(
    "csv_name, label, sublabel, disk_name",
    [
        ("Btraining_normal_103_1305031931979_B.wav", "normal", "", "normal__103_1305031931979_B.wav"),
        ("Btraining_normal_noisynormal_101_1305030823364_B.wav", "normal", "noisynormal", "normal_noisynormal_101_1305030823364_B.wav"),
        ("Btraining_murmur_noisymurmur_162_1307101835989_B_1.wav", "murmur", "noisymurmur", "murmur_noisymurmur_162_1307101835989_B_1.wav"),
        ("Btraining_extrastole_127_1306764300147_C2.wav", "extrastole", "", "extrastole__127_1306764300147_C2.wav"),
        ("Bunlabelledtest_101_1305030823364_A.wav", "", "", "Bunlabelledtest__101_1305030823364_A.wav"),
        ("normal__103_1305031931979_B.wav", "normal", "", "normal__103_1305031931979_B.wav"),
    ],
)
def test_name_rule(csv_name, label, sublabel, disk_name):
    assert disk_name in disk_name_candidates(csv_name, label, sublabel)


def test_tail_parsing():
    assert parse_tail("normal__103_1305031931979_B.wav") == (103, "1305031931979", "B")
    assert parse_tail("murmur_noisymurmur_162_1307101835989_B_1.wav") == (162, "1307101835989", "B_1")
    assert parse_tail("Bunlabelledtest__146_1306778707532_D31.wav") == (146, "1306778707532", "D31")
    with pytest.raises(ValueError):
        parse_tail("recording.wav")


def test_synthetic_download_resolves_every_row(dataset_dir):
    recordings = read_dataset(dataset_dir, audio_info=True)
    csv_rows = dataset_dir.joinpath("set_b.csv").read_text().count("\n") - 1
    assert len(recordings) == csv_rows == len(list((dataset_dir / "set_b").glob("*.wav")))
    assert all(recording.path.is_file() for recording in recordings)
    assert all(recording.sample_rate == 4000 and recording.duration_s > 0.9 for recording in recordings)
    labelled = [recording for recording in recordings if recording.label]
    assert {recording.label for recording in labelled} == {"normal", "murmur", "extrastole"}
    assert any(recording.label is None for recording in recordings)


def test_csv_that_already_matches_the_files(tmp_path):
    from heartbeat.data.synth import write_dataset_b

    root = write_dataset_b(tmp_path / "d", n_patients=6, recordings_per_patient=(1, 1), n_unlabelled=1, csv_matches_files=True)
    assert "Btraining_" not in (root / "set_b.csv").read_text()
    assert len(read_dataset(root)) == 7


def test_problems_are_all_named_in_one_message(tmp_path):
    root = make_folder(
        tmp_path,
        rows=[
            "b,set_b/Btraining_normal_103_1305031931979_B.wav,normal,",
            "b,set_b/Btraining_normal_103_1305031931979_B.wav,normal,",  # duplicate
            "b,set_b/Btraining_murmur_104_1305031931979_A.wav,murmur,",  # no such file
            "b,set_b/Btraining_normal_105_1305031931979_A.wav,wheeze,",  # unknown label
            "b,../secret_106_1305031931979_A.wav,normal,",  # leaves the folder
            "b,/etc/passwd_107_1305031931979_A.wav,normal,",  # absolute
        ],
        files=["normal__103_1305031931979_B.wav", "normal__108_1305031931979_C.wav"],
    )
    with pytest.raises(DatasetError) as caught:
        read_dataset(root)
    message = str(caught.value)
    assert "\n" not in message
    for expected in [
        "6 problem(s)",
        "line 3 (set_b/Btraining_normal_103_1305031931979_B.wav): duplicate of line 2",
        "Btraining_murmur_104_1305031931979_A.wav): no matching file",
        "unknown label 'wheeze'",
        "../secret_106_1305031931979_A.wav): refused",
        "/etc/passwd_107_1305031931979_A.wav): refused",
        "set_b/normal__108_1305031931979_C.wav: no row in set_b.csv",
    ]:
        assert expected in message


def test_missing_column_and_missing_files(tmp_path):
    root = make_folder(tmp_path / "a", rows=[], files=[])
    (root / "set_b.csv").write_text("dataset,fname,sublabel\r\n")
    with pytest.raises(DatasetError, match="missing column.*label"):
        read_dataset(root)
    with pytest.raises(DatasetError, match="no such data folder"):
        read_dataset(tmp_path / "nowhere")
    shutil.rmtree(root / "set_b")
    with pytest.raises(DatasetError, match="set_b: not found"):
        read_dataset(root)


@needs_real_data
def test_real_dataset_b():
    recordings = read_dataset(REAL_DATA)
    labelled = [recording for recording in recordings if recording.label]
    assert len(recordings) == 656
    assert len(labelled) == 461
    assert len({recording.patient_id for recording in labelled}) == 165
    assert sum(recording.label == "normal" for recording in labelled) == 320


@pytest.mark.parametrize(
    "content, message",
    [
        (HEADER.encode() + "b,set_b/caf\xe9_1_2_A.wav,normal,\r\n".encode("latin-1"), "not a UTF-8 text csv"),
        (bytes(range(256)) * 4, "not a UTF-8 text csv"),
        (b"\x00" * 64 + HEADER.encode(), "not a text csv"),
        (HEADER.replace("fname", "fn\x1b[2Jame").encode(), "not a text csv"),
    ],
    ids=["latin-1", "binary", "nul-bytes", "escape-sequence"],
)
def test_a_csv_that_is_not_utf8_text_is_one_line(tmp_path, content, message):
    root = make_folder(tmp_path, rows=[], files=[])
    (root / "set_b.csv").write_bytes(content)
    with pytest.raises(DatasetError) as caught:
        read_dataset(root)
    assert str(caught.value).startswith(f"{root / 'set_b.csv'}: {message}")
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_a_csv_that_is_not_a_regular_file_or_too_big_is_refused_unread(tmp_path, monkeypatch):
    import os

    from heartbeat.data import dataset

    root = make_folder(tmp_path, rows=[], files=[])
    (root / "set_b.csv").unlink()
    os.mkfifo(root / "set_b.csv")  # opening it would wait for a writer for ever
    with pytest.raises(DatasetError, match="set_b.csv: not a regular file"):
        read_dataset(root)
    (root / "set_b.csv").unlink()
    (root / "set_b.csv").write_text(HEADER + "x" * 100)
    monkeypatch.setattr(dataset, "MAX_CSV_BYTES", 64)
    with pytest.raises(DatasetError, match="too big"):
        read_dataset(root)
