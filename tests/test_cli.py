"""The command line's own behaviour: argument errors are one line naming the flag."""

from __future__ import annotations

import pytest

from heartbeat import cli, cli_study


@pytest.mark.parametrize("arguments, named", [
    (["train", "--lr", "-1"], "--lr"),
    (["cv", "--out", "x", "--folds", "1"], "--folds"),
    (["spectrograms", "--jobs", "0"], "--jobs"),
    (["predict", "--max-seconds", "nan", "x.wav"], "--max-seconds"),
    (["predict"], "FILE"),
    (["no-such-command"], "no-such-command"),
])
def test_argument_errors_are_one_line_naming_the_flag(capsys, arguments, named):
    with pytest.raises(SystemExit) as refused:
        cli.main(arguments)
    assert refused.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # no usage block before the error
    assert named in lines[0] and lines[0].startswith("heartbeat") and "--help" in lines[0]


def test_synth_formats_are_the_layouts_the_readers_know():
    from heartbeat.data import layouts

    assert cli_study.SYNTH_FORMATS == layouts.FORMATS


@pytest.mark.parametrize("layout", ["pascal-b", "pascal-a", "physionet2016", "circor2022", "folders", "csv"])
def test_synth_format_writes_a_folder_detected_as_that_layout(tmp_path, capsys, layout):
    from heartbeat.data import layouts

    out = tmp_path / "data"
    assert cli.main(["synth", "--out", str(out), "--format", layout, "--patients", "3", "--seed", "1"]) == 0
    detected, reason = layouts.detect_format(out)
    assert detected == layout, reason
    result = layouts.read_recordings(out, layout)
    wavs = sorted(out.rglob("*.wav"))
    assert len(result.recordings) == len(wavs) > 0
    assert f"synth: {len(wavs)} recordings" in capsys.readouterr().out
