"""Pretrained weights: the hub cache, the download (hash checked, offline, no network), files that must not load.

No test opens a network connection: the `network` fixture refuses (and records) every attempt, and
downloads are served from local files over file:// URLs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from heartbeat import cli
from heartbeat.train import weights
from heartbeat.train.weights import WeightsError, load_pretrained_state

IMAGENET_FILE = "resnet34-b627a593.pth"  # torchvision's IMAGENET1K_V1 file name, as its URL ends


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME, and HEARTBEAT_OFFLINE unset, whatever the environment says."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    return home


@pytest.fixture
def network(monkeypatch) -> list:
    """No network: every name lookup or connection attempt is recorded and fails at once, as with no route."""
    attempts = []

    def unreachable(*args, **kwargs):
        attempts.append(args)
        raise OSError(errno.ENETUNREACH, "Network is unreachable (blocked by the test)")

    for owner, name in ((socket, "create_connection"), (socket, "getaddrinfo"), (socket.socket, "connect"),
                        (socket.socket, "connect_ex")):
        monkeypatch.setattr(owner, name, unreachable)
    return attempts


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if not path.is_dir()) if folder.exists() else []


def served(source: Path, folder: Path, name: str) -> str:
    """`source` under the name `name` in `folder`, as a file:// URL (a download server without a network)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(source)  # a link, not an 87 MB copy
    return (folder / name).as_uri()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_tensors(state: dict, expected: dict, keys) -> None:
    assert all(torch.equal(state[key], expected[key]) for key in keys)


class CreatesMarker:
    """Unpickled unsafely (weights_only=False), this object creates a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_the_hub_cache_path_is_torchvisions(torch_home):
    assert weights.imagenet_weights_path() == torch_home / "hub" / "checkpoints" / IMAGENET_FILE
    assert weights.hash_prefix(IMAGENET_FILE) == "b627a593"
    assert weights.hash_prefix("resnet34.pth") is None


def test_weights_in_the_hub_cache_load_without_a_connection(torch_home, network, standin_weights):
    cached = torch_home / "hub" / "checkpoints" / IMAGENET_FILE
    cached.parent.mkdir(parents=True)
    shutil.copyfile(standin_weights, cached)  # a stand-in: its hash is not the name's, and a cached file is not re-hashed
    state, description = load_pretrained_state(None)
    expected = torch.load(standin_weights, weights_only=True)
    assert state.keys() == expected.keys()
    assert_same_tensors(state, expected, expected)
    assert "hub cache" in description
    assert network == []


def test_no_network_fails_at_once_with_one_line_naming_the_file_and_the_remedies(torch_home, network):
    started = time.monotonic()
    with pytest.raises(WeightsError) as raised:
        load_pretrained_state(None, progress=False)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert network, "no download was attempted"
    assert elapsed < weights.TIMEOUT_S  # the promise: no network fails within about 10 s, never hangs
    assert "\n" not in message
    assert str(torch_home / "hub" / "checkpoints" / IMAGENET_FILE) in message
    assert weights.imagenet_url() in message and "unreachable" in message
    assert "--weights" in message and "--no-pretrained" in message
    assert files_under(torch_home) == []


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_offline_never_opens_a_connection(torch_home, network, monkeypatch, how):
    if how == "environment":
        monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(WeightsError) as raised:
        load_pretrained_state(None, offline=how == "flag")
    message = str(raised.value)
    assert network == []
    assert str(torch_home / "hub" / "checkpoints" / IMAGENET_FILE) in message and "--offline" in message
    assert "--weights" in message and "--no-pretrained" in message
    assert not torch_home.exists()  # offline creates nothing either


def test_a_download_whose_hash_matches_lands_in_the_cache(torch_home, network, standin_weights, tmp_path, capsys):
    digest = sha256(standin_weights)
    name = f"resnet34-{digest[:8]}.pth"
    url = served(standin_weights, tmp_path / "server", name)
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    dead_temp = checkpoints / f".{Path(name).stem}.k1lled.tmp.pth"  # a killed download's temporary: nobody holds its lock
    dead_temp.write_bytes(b"half a download")
    timeouts = []

    def recording_opener(url, timeout):
        timeouts.append(timeout)
        return urllib.request.urlopen(url, timeout=timeout)

    state, _ = load_pretrained_state(None, url=url, opener=recording_opener)
    assert timeouts and 0 < timeouts[0] <= 10  # every wait for the server is bounded: a stalled download fails
    assert files_under(checkpoints) == [checkpoints / name]  # under the URL's name; no temporary left
    assert sha256(checkpoints / name) == digest
    assert not dead_temp.exists()
    assert_same_tensors(state, torch.load(standin_weights, weights_only=True), state)
    assert f"downloading {checkpoints / name}" in capsys.readouterr().err  # the progress bar, on stderr
    assert network == []


def test_a_download_with_the_wrong_hash_is_deleted(torch_home, network, tmp_path):
    source = tmp_path / "wrong.pth"
    source.write_bytes(b"not the weights")
    assert not sha256(source).startswith("00000000")
    url = served(source, tmp_path / "server", "resnet34-00000000.pth")
    with pytest.raises(WeightsError, match="sha256") as raised:
        load_pretrained_state(None, url=url, progress=False)
    assert "resnet34-00000000.pth" in str(raised.value) and "\n" not in str(raised.value)
    assert files_under(torch_home) == []  # neither the file nor a temporary


def test_a_server_that_never_answers_is_given_up(tmp_path):
    release = threading.Event()

    def stalled_opener(url, timeout):  # a name lookup or server that does not answer, whatever the timeout says
        release.wait(5)  # bounded, so that a fetch that does wait fails this test instead of hanging it
        raise OSError("answered too late")

    try:
        with pytest.raises(weights.DownloadError, match="no answer"):
            weights.fetch("https://example.invalid/resnet34-b627a593.pth", tmp_path / "resnet34-b627a593.pth",
                          opener=stalled_opener, timeout=0.05, progress=False)
    finally:
        release.set()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["empty", "pickled list", "random bytes", "tensor dict of another network"])
def test_weights_files_that_are_not_a_resnet34_get_one_line(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "pickled list":
        torch.save([1, 2, 3], path)
    elif content == "random bytes":
        path.write_bytes(os.urandom(64))
    else:
        torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(WeightsError) as raised:
        load_pretrained_state(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "weights_only=False" not in message and "likely succeed" not in message


def test_a_weights_pickle_that_would_run_code_does_not(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "planted.pth"
    torch.save({"conv1.weight": CreatesMarker(marker)}, path)
    with pytest.raises(WeightsError, match="pickled object that weights_only loading refuses") as raised:
        load_pretrained_state(path)
    assert not marker.exists()
    assert "weights_only=False" not in str(raised.value) and "likely succeed" not in str(raised.value)


def test_a_pickle_planted_in_the_hub_cache_does_not_run_code(torch_home, network, tmp_path):
    marker = tmp_path / "code-ran"
    cached = torch_home / "hub" / "checkpoints" / IMAGENET_FILE
    cached.parent.mkdir(parents=True)
    torch.save({"conv1.weight": CreatesMarker(marker)}, cached)
    with pytest.raises(WeightsError, match="delete it to download it again") as raised:
        load_pretrained_state(None)
    assert str(cached) in str(raised.value)
    assert not marker.exists()
    assert network == []  # a file in the cache is used (or refused) as it is, never replaced behind the user's back


def test_a_resnet34_with_another_classifier_is_accepted(tmp_path, standin_weights):
    import torchvision

    original = torch.load(standin_weights, weights_only=True)
    path = tmp_path / "ten-classes.pth"
    torch.save({**original, "fc.weight": torch.ones(10, 512), "fc.bias": torch.ones(10)}, path)
    state, _ = load_pretrained_state(path)
    body = [key for key in original if not key.startswith("fc.")]
    assert_same_tensors(state, original, body)
    torchvision.models.resnet34().load_state_dict(state)  # strict: fc has ImageNet's shape again


def test_train_offline_with_an_empty_cache_stops_before_training(torch_home, network, tmp_path, capsys):
    from heartbeat.data.spectrograms import build_spectrograms
    from heartbeat.data.synth import write_dataset_b

    data = write_dataset_b(tmp_path / "data", n_patients=6, recordings_per_patient=(1, 1), n_unlabelled=0,
                           seconds=(1.0, 2.0), class_weights=(0.34, 0.33, 0.33), seed=1)
    build_spectrograms(data, tmp_path / "spectrograms", jobs=1, progress=False)
    out = tmp_path / "runs" / "run"
    code = cli.main(["train", "--spectrograms", str(tmp_path / "spectrograms"), "--out", str(out), "--offline", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and error.startswith("heartbeat: error: ")
    assert str(torch_home / "hub" / "checkpoints" / IMAGENET_FILE) in error and "--offline" in error
    assert network == [] and not torch_home.exists()
    assert list((tmp_path / "runs").glob("*")) == []  # stopped before the run folder (or its temporary) was begun
