"""Tests for heartbeat.data.synth: the synthetic Dataset B folders the other tests and the demo use."""

from __future__ import annotations

import csv
import hashlib
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.signal import find_peaks

from heartbeat.data.synth import CLASSES, SAMPLE_RATE, heartbeat_signal, write_dataset_b

HEADER = "dataset,fname,label,sublabel"
TAIL = re.compile(r"^(?P<patient>\d+)_(?P<timestamp>\d+)_(?P<position>[A-D]\d*)\.wav$")


# ---------------------------------------------------------------- helpers

def read_rows(root: Path) -> list[dict]:
    with open(root / "set_b.csv", newline="") as f:
        return list(csv.DictReader(f))


def disk_name(csv_fname: str, label: str, sublabel: str) -> str:
    """The download's rule, written independently of synth.py: csv fname -> name in set_b/."""
    name = csv_fname.removeprefix("set_b/")
    if not label:
        assert name.startswith("Bunlabelledtest_") and not name.startswith("Bunlabelledtest__")
        return "Bunlabelledtest__" + name.removeprefix("Bunlabelledtest_")
    prefix = f"Btraining_{label}_" + (f"{sublabel}_" if sublabel else "")
    assert name.startswith(prefix), name
    return f"{label}_{sublabel}_{name.removeprefix(prefix)}"


def tail_of(disk: str) -> re.Match:
    match = TAIL.match(disk.split("_", 2)[2])  # drop "<label>_<sublabel>_" / "Bunlabelledtest__"
    assert match, disk
    return match


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def thump_times(x: np.ndarray) -> np.ndarray:
    """Onsets of S1/S2-like sounds: peaks of the smoothed envelope of the signal below 150 Hz."""
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE) > 150] = 0  # murmur and hiss out
    low = np.fft.irfft(spectrum, len(x))
    width = int(0.03 * SAMPLE_RATE)
    envelope = np.convolve(np.abs(low), np.ones(width) / width, mode="same")
    peaks, _ = find_peaks(envelope, height=0.1 * envelope.max(), distance=int(0.12 * SAMPLE_RATE))
    return peaks / SAMPLE_RATE


def rhythm_irregularity(x: np.ndarray) -> float:
    """Longest / shortest spacing between every other thump (S1->S1 and S2->S2).

    For a regular S1-S2 rhythm every such spacing is one heart period, so this is ~1;
    a premature beat followed by a compensatory pause makes it 2 or more.
    """
    t = thump_times(x)
    spacing = t[2:] - t[:-2]
    assert len(spacing) >= 3, "too few heart sounds found"
    return float(spacing.max() / spacing.min())


def band_power(x: np.ndarray, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, len(x)) ** 2


def signal(kind: str, seed: int, **kwargs) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bpm = rng.uniform(60, 95)  # the heart rates write_dataset_b uses
    return heartbeat_signal(kind, 6.0, heart_rate_bpm=bpm, rng=rng, **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset_b(tmp_path_factory.mktemp("synth") / "heartbeat-sounds", seed=3)


# ---------------------------------------------------------------- determinism

def test_same_seed_gives_byte_identical_files_and_other_seed_does_not(tmp_path):
    a = file_digests(write_dataset_b(tmp_path / "a", seed=7))
    b = file_digests(write_dataset_b(tmp_path / "b", seed=7))
    c = file_digests(write_dataset_b(tmp_path / "c", seed=8))
    assert a == b
    assert a["set_b.csv"] != c["set_b.csv"]
    assert set(a) != set(c)


def test_rewriting_into_an_existing_root_overwrites_with_the_same_bytes(tmp_path):
    root = write_dataset_b(tmp_path / "d", seed=5)
    first = file_digests(root)
    (root / "set_b.csv").write_text("garbage")
    next(iter((root / "set_b").glob("*.wav"))).write_bytes(b"garbage")
    assert write_dataset_b(root, seed=5) == root
    assert file_digests(root) == first


def test_recordings_are_not_copies_of_each_other(dataset):
    digests = list(file_digests(dataset / "set_b").values())
    assert len(set(digests)) == len(digests)
    a, b = signal("normal", 1), signal("normal", 2)
    assert not np.array_equal(a, b)
    assert np.array_equal(heartbeat_signal("murmur", 2.0), heartbeat_signal("murmur", 2.0))  # rng=None: seeded


# ---------------------------------------------------------------- csv and names

def test_csv_has_header_crlf_and_the_real_files_grouping(dataset):
    raw = (dataset / "set_b.csv").read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[0].decode() == HEADER
    assert lines[-1] == b"" and b"\n" not in b"".join(lines)  # every line, the last too, ends in CRLF
    rows = read_rows(dataset)
    assert {r["dataset"] for r in rows} == {"b"}
    # Groups as in the real set_b.csv: extrastole, murmur, normal, unlabelled, noisy ones.
    order = [("extrastole", ""), ("murmur", ""), ("normal", ""), ("", ""),
             ("murmur", "noisymurmur"), ("normal", "noisynormal")]
    groups = [order.index((r["label"], r["sublabel"])) for r in rows]
    assert groups == sorted(groups)
    assert set(groups) == set(range(len(order)))  # this seed exercises every name form


def test_csv_names_map_to_the_files_by_the_download_rule(dataset):
    rows = read_rows(dataset)
    mapped = [disk_name(r["fname"], r["label"], r["sublabel"]) for r in rows]
    on_disk = sorted(p.name for p in (dataset / "set_b").iterdir())
    assert sorted(mapped) == on_disk
    # The quirk itself: no csv name exists on disk as written.
    assert not any((dataset / r["fname"]).exists() for r in rows)
    assert any("__" in name for name in mapped if not name.startswith("Bunlabelled"))


def test_csv_matches_files_names_the_files_directly(tmp_path, dataset):
    root = write_dataset_b(tmp_path / "m", seed=3, csv_matches_files=True)
    rows, quirky = read_rows(root), read_rows(dataset)
    assert all((root / r["fname"]).is_file() for r in rows)
    assert sorted(p.name for p in (root / "set_b").iterdir()) == sorted(r["fname"][len("set_b/"):] for r in rows)
    # Only the fname column differs from the default layout of the same seed.
    assert [r["fname"] for r in rows] == [f"set_b/{disk_name(q['fname'], q['label'], q['sublabel'])}" for q in quirky]
    assert [(r["label"], r["sublabel"]) for r in rows] == [(q["label"], q["sublabel"]) for q in quirky]
    assert file_digests(root / "set_b") == file_digests(dataset / "set_b")


# ---------------------------------------------------------------- patients

def patients_of(root: Path) -> dict[int, list[dict]]:
    by_patient = defaultdict(list)
    for row in read_rows(root):
        match = tail_of(disk_name(row["fname"], row["label"], row["sublabel"]))
        by_patient[int(match["patient"])].append({**row, **match.groupdict()})
    return by_patient


@pytest.mark.parametrize("n_patients, weights, seed", [(6, (1, 0, 0), 0), (6, (0, 0, 1), 1), (7, (0.6, 0.25, 0.15), 2),
                                                       (12, (0.6, 0.25, 0.15), 4)])
def test_patient_structure(tmp_path, n_patients, weights, seed):
    root = write_dataset_b(tmp_path / "p", n_patients=n_patients, class_weights=weights, recordings_per_patient=(2, 3),
                           n_unlabelled=5, seconds=(0.5, 1.0), seed=seed)
    by_patient = patients_of(root)
    assert sorted(by_patient) == list(range(101, 101 + n_patients))
    patients_per_class = defaultdict(int)
    for rows in by_patient.values():
        labels = {r["label"] for r in rows} - {""}
        assert len(labels) == 1  # one class per patient
        patients_per_class[labels.pop()] += 1
        assert 2 <= sum(bool(r["label"]) for r in rows) <= 3
        assert len({r["timestamp"] for r in rows}) == 1  # one session
        assert re.fullmatch(r"1\d{12}", rows[0]["timestamp"])
        assert len({r["position"] for r in rows}) == len(rows)
    assert all(patients_per_class[c] >= 2 for c in CLASSES), dict(patients_per_class)
    assert sum(not r["label"] for rows in by_patient.values() for r in rows) == 5
    timestamps = [by_patient[p][0]["timestamp"] for p in sorted(by_patient)]
    assert len(set(timestamps)) == n_patients


def test_noisy_sublabels_only_on_normal_and_murmur_and_both_forms_present(tmp_path):
    # Small datasets are where a class would, by chance, have only noisy or only clean rows.
    for seed in range(10):
        root = write_dataset_b(tmp_path / str(seed), n_patients=6, n_unlabelled=2, seconds=(0.5, 0.6), seed=seed)
        sublabels = defaultdict(set)
        for row in read_rows(root):
            assert row["sublabel"] in {"", f"noisy{row['label']}"}
            assert not (row["label"] in {"extrastole", ""} and row["sublabel"])
            sublabels[row["label"]].add(row["sublabel"])
        for label in ("normal", "murmur"):
            assert sublabels[label] == {"", f"noisy{label}"}, (seed, label)


# ---------------------------------------------------------------- audio files

def test_wavs_are_16_bit_mono_at_the_sample_rate_with_durations_in_range(tmp_path):
    for sample_rate, seconds in [(SAMPLE_RATE, (3.0, 8.0)), (2000, (1.0, 1.5))]:
        root = write_dataset_b(tmp_path / str(sample_rate), n_patients=6, seconds=seconds, sample_rate=sample_rate)
        wavs = sorted((root / "set_b").glob("*.wav"))
        durations = []
        for wav in wavs:
            info = soundfile.info(str(wav))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (sample_rate, 1, "WAV", "PCM_16")
            assert seconds[0] - 1 / sample_rate <= info.duration <= seconds[1] + 1 / sample_rate
            durations.append(info.duration)
        assert np.std(durations) > 0  # drawn, not all the same length
        samples, _ = soundfile.read(str(wavs[0]), dtype="int16")
        assert samples.std() > 100  # real sound, not near-silence


# ---------------------------------------------------------------- the sounds

@pytest.mark.parametrize("kind", CLASSES)
def test_signal_is_finite_bounded_float32_of_the_requested_length(kind):
    for seed, (seconds, bpm, noise) in enumerate([(0.76, 72, 0.02), (4.9, 60, 0.0), (7.3, 140, 0.5), (3.0, 45, 2.0)]):
        x = heartbeat_signal(kind, seconds, heart_rate_bpm=bpm, noise_level=noise, rng=np.random.default_rng(seed))
        assert x.dtype == np.float32 and x.shape == (round(seconds * SAMPLE_RATE),)
        assert np.all(np.isfinite(x)) and np.max(np.abs(x)) <= 1.0
        assert np.max(np.abs(x)) > 0.3


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        heartbeat_signal("artifact", 2.0)


def test_murmur_fills_systole_with_150_to_600_hz_noise():
    for seed in range(8):
        normal, murmur = signal("normal", seed), signal("murmur", seed)
        share = [band_power(x, 150, 600).sum() / np.sum(x.astype(float) ** 2) for x in (normal, murmur)]
        assert share[1] > 5 * share[0], (seed, share)
        # ... and it is gated to part of each cycle, not continuous hiss: in 50 ms frames the
        # loudest tenth of the band energy is far above the quietest half.
        frames = band_power(murmur, 150, 600)[: len(murmur) // 200 * 200].reshape(-1, 200).mean(axis=1)
        assert np.percentile(frames, 90) > 10 * np.percentile(frames, 50), seed


def test_extrastole_beats_are_irregular_and_normal_beats_are_not():
    for seed in range(8):
        assert rhythm_irregularity(signal("normal", seed)) < 1.3, seed
        assert rhythm_irregularity(signal("murmur", seed)) < 1.3, seed
        assert rhythm_irregularity(signal("extrastole", seed)) > 1.7, seed


def test_module_imports_only_numpy_and_soundfile():
    code = ("import sys, heartbeat.data.synth; "
            "print(sorted(m for m in ('scipy', 'torch', 'librosa', 'fastai', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- the command line

def test_synth_command_line_writes_what_the_library_writes(tmp_path, capsys):
    from heartbeat import cli

    assert cli.main(["synth", "--out", str(tmp_path / "cli"), "--patients", "3", "--seed", "4"]) == 0

    library = write_dataset_b(tmp_path / "library", n_patients=3, seed=4)
    assert file_digests(tmp_path / "cli") == file_digests(library)
    assert file_digests(library) != file_digests(write_dataset_b(tmp_path / "other", n_patients=3, seed=5))
    out = capsys.readouterr().out
    assert f"synth: {len(read_rows(library))} recordings from 3 patients -> {tmp_path / 'cli'}/set_b.csv" in out


@pytest.mark.parametrize("arguments, named", [
    (["--out", "{file}"], "{file}"),  # a regular file
    (["--out", "{file}/data"], "{file}/data"),  # under a regular file
    (["--out", "{folder}", "--seed", "-1"], "--seed"),
    (["--out", "{folder}", "--patients", "0"], "--patients"),
    (["--out", "{folder}", "--patients", "100000000"], "--patients"),  # would write for hours: refused at once
])
def test_synth_command_line_refuses_bad_input(arguments, named, tmp_path, capsys):
    from heartbeat import cli

    (tmp_path / "file").write_text("not a folder")
    paths = {"file": tmp_path / "file", "folder": tmp_path / "data"}
    before = sorted(tmp_path.iterdir())

    try:
        code = cli.main(["synth", *(argument.format(**paths) for argument in arguments)])
    except SystemExit as refused:  # refused while parsing: argparse's usage line, then the error
        code = refused.code

    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert named.format(**paths) in err.strip().splitlines()[-1]
    assert len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == before and (tmp_path / "file").read_text() == "not a folder"


def test_synth_patients_cap_says_its_limit_and_why(capsys):
    from heartbeat import cli, cli_study

    with pytest.raises(SystemExit) as refused:
        cli.main(["synth", "--out", "unused", "--patients", str(cli_study.MAX_SYNTH_PATIENTS + 1)])
    err = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and "\n" not in err
    assert f"between 1 and {cli_study.MAX_SYNTH_PATIENTS}" in err and "hours" in err
    assert cli.build_parser().parse_args(["synth", "--out", "x", "--patients", str(cli_study.MAX_SYNTH_PATIENTS)]).patients \
        == cli_study.MAX_SYNTH_PATIENTS
