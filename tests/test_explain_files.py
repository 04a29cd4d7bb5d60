"""predict --explain DIR's library side: unique picture names, the folder check, one picture per file."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import write_wav
from heartbeat.explain_files import explain_file, folder_problem, picture_names
from heartbeat.predict import load_predictor
from test_explain import BANDS, FRAMES, add_burst, background, region_model, TONE_HZ, FRAME


def test_picture_names_are_unique_and_come_from_the_file_name_alone():
    names = picture_names(["a/rec.wav", "b/rec.wav", "rec-2.flac", "../../etc/x.wav", "c/REC.ogg", "noext"])
    assert names == ["rec.png", "rec-2.png", "rec-2-2.png", "x.png", "REC-3.png", "noext.png"]
    assert all("/" not in name for name in names)


def test_a_file_where_the_folder_should_be_is_one_line(tmp_path):
    target = tmp_path / "pictures"
    target.write_text("not a folder")
    problem = folder_problem(target)
    assert problem and len(problem.splitlines()) == 1 and str(target) in problem and "not a folder" in problem
    assert target.read_text() == "not a folder"


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    problem = folder_problem(tmp_path / "file" / "pictures")
    assert problem and len(problem.splitlines()) == 1 and "cannot write pictures there" in problem


def test_a_missing_folder_is_made_and_each_file_gets_its_picture(tmp_path):
    signal = background(3.0)
    add_burst(signal, TONE_HZ, FRAMES[0] * FRAME + 0.02, FRAMES[1] * FRAME - 0.02)
    predictor = load_predictor(region_model(tmp_path / "model", BANDS, FRAMES, threshold=0.5))
    files = [write_wav(tmp_path / folder / "rec.wav", signal, 4000) for folder in ("a", "b")]
    out = tmp_path / "pictures" / "new"

    assert folder_problem(out) is None
    for file, name in zip(files, picture_names(files)):
        explain_file(predictor, file, out / name)

    assert sorted(path.name for path in out.iterdir()) == ["rec-2.png", "rec.png"]
    with Image.open(out / "rec.png") as picture:
        assert picture.size == (1000, 800) and np.asarray(picture).std() > 0
