"""The command line's own behaviour: argument errors are one line naming the flag."""

from __future__ import annotations

import pytest

from heartbeat import cli


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
