"""ResNet-34's pretrained weights: where they are kept, how they are fetched, how they are read safely.

The ImageNet weights live where torchvision keeps them, the torch hub cache
($TORCH_HOME/hub/checkpoints/, torch.hub.get_dir()), so one copy serves torchvision, fastai and
this project. When the file is not there it is downloaded as torchvision does it: from
ResNet34_Weights.IMAGENET1K_V1's URL, with a progress bar on stderr, into a temporary file beside
the destination that is renamed into place only when its sha256 starts with the hex after the
last '-' of the file name (torchvision's check_hash rule); a download with another hash is
deleted. `offline` (--offline) or HEARTBEAT_OFFLINE=1 never opens a connection. Whatever stops the
download (offline, no network, a wrong hash), WeightsError names the expected file and the remedies
in one line. The URL and the opener are parameters, so the download path can be tested offline.

Every weights file, downloaded or named with --weights, is read with torch.load(weights_only=True):
plain tensors only, so a planted pickle cannot run code. The ImageNet classifier (fc) is not used
(fastai's head replaces it), so a ResNet-34 saved with another classifier is accepted.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from http.client import HTTPException
from pathlib import Path

import torch

from heartbeat.train.device import cpu
from heartbeat.fileio import atomic_path, remove_dead_leftovers
from heartbeat.text import first_line, on_terminal

# No network must fail within about 10 s, never hang: the limit for getting an answer, and for
# each silence while the file arrives (a stalled download fails instead of waiting forever).
TIMEOUT_S = 10.0
CHUNK_BYTES = 1 << 20  # read, hash and write 1 MiB at a time: memory stays flat whatever the file's size
# A ResNet-34 is 87 MB in fp32 (175 MB in fp64); a file far larger is not one, and would be read whole
# into memory by torch.load (or fill the disk, if a server kept sending).
MAX_WEIGHTS_BYTES = 512 << 20
OFFLINE_ENV = "HEARTBEAT_OFFLINE"  # set to 1: never download, as --offline
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")  # ImageNet's classifier; fastai cuts it off and adds its own head


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had; the message names the file and the remedies."""


class DownloadError(OSError):
    """A download that did not give the file; the message is the reason, in a few words."""


def imagenet_url() -> str:
    """Where torchvision downloads ResNet-34's ImageNet weights (IMAGENET1K_V1) from."""
    from torchvision.models import ResNet34_Weights

    return ResNet34_Weights.IMAGENET1K_V1.url


def hub_checkpoint_path(url: str) -> Path:
    """Where torchvision keeps the file at `url`: $TORCH_HOME/hub/checkpoints/<its name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def imagenet_weights_path() -> Path:
    """Where torchvision keeps ResNet-34's ImageNet weights: $TORCH_HOME/hub/checkpoints/resnet34-b627a593.pth."""
    return hub_checkpoint_path(imagenet_url())


def hash_prefix(file_name: str) -> str | None:
    """torchvision's check_hash rule: in "resnet34-b627a593.pth", b627a593 starts the file's sha256."""
    match = re.search(r"-([0-9a-f]+)\.[^-]*$", file_name)
    return match.group(1) if match else None


def offline_requested(offline: bool = False) -> bool:
    return offline or os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_pretrained_state(weights_path: str | Path | None, *, offline: bool = False, progress: bool = True,
                          url: str | None = None, opener=urllib.request.urlopen) -> tuple[dict, str]:
    """ResNet-34 state dict from `weights_path`, or from the hub cache when None (downloaded from `url`,
    torchvision's by default, if it is not there and not offline); and a description for the report."""
    if weights_path is not None:
        return read_resnet34_state(Path(weights_path)), f"file {weights_path}"
    url = url or imagenet_url()
    path = hub_checkpoint_path(url)
    if not (path.exists() or path.is_symlink()):  # anything already there is read (and judged) as it is
        _download_to_cache(url, path, offline=offline, progress=progress, opener=opener)
    return read_resnet34_state(path, in_cache=True), "ImageNet (torchvision IMAGENET1K_V1, hub cache)"


def _download_to_cache(url: str, path: Path, *, offline: bool, progress: bool, opener) -> None:
    missing = f"ImageNet weights for ResNet-34 not found: expected {path} (the torch hub cache, set by TORCH_HOME)"
    others = ("or pass --weights PATH to a torchvision-format ResNet-34 state dict; "
              "--no-pretrained trains from scratch instead.")
    if offline_requested(offline):
        raise WeightsError(f"{missing}; not downloaded, as --offline or {OFFLINE_ENV}=1 asks. Run without them "
                           f"to download it from {url}, or copy that file there, {others}")
    try:
        fetch(url, path, opener=opener, progress=progress)
    except (OSError, ValueError, HTTPException) as error:  # urllib's errors are OSErrors; ValueError: a bad URL
        raise WeightsError(f"{missing}; downloading it from {url} failed ({_reason(error)}). Copy that file there "
                           f"from a machine with internet, {others}") from None


def fetch(url: str, destination: Path, *, opener=urllib.request.urlopen, timeout: float = TIMEOUT_S,
          progress: bool = True) -> None:
    """Download `url` to `destination` through a temporary file beside it, kept only when its sha256
    starts with the name's hash prefix (if the name has one). Raises DownloadError (or urllib's OSError)."""
    destination = Path(destination)
    remove_dead_leftovers(destination.parent, prefix=f".{destination.stem}.")  # a killed download's temporary
    expected = hash_prefix(destination.name)
    response = _open_within(opener, url, timeout)
    with response, atomic_path(destination) as tmp:  # on any error the temporary is deleted, nothing is kept
        digest = _copy_hashing(response, tmp, _declared_size(response), f"downloading {destination}", progress)
        if expected and not digest.startswith(expected):
            raise DownloadError(f"its sha256 starts {digest[:len(expected)]}, not {expected} as its name says; "
                                f"the download was deleted")


def _open_within(opener, url: str, timeout: float):
    """opener(url, timeout=timeout), given up after `timeout` seconds.

    The socket timeout bounds connecting and reading, but not the name lookup, which can stall for
    long on a broken network: the opening runs in a helper thread that is left behind if it is late.
    """
    outcome: dict = {}

    def open_url():
        try:
            outcome["response"] = opener(url, timeout=timeout)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=open_url, name="weights-download", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise DownloadError(f"no answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


def _declared_size(response) -> int | None:
    """The Content-Length, when the server gave one (file:// responses have it too); refused above the limit."""
    length = getattr(response, "headers", {}).get("Content-Length")
    size = int(length) if length and str(length).isdigit() else None
    if size is not None and size > MAX_WEIGHTS_BYTES:
        raise DownloadError(f"{size} bytes declared, more than the {MAX_WEIGHTS_BYTES >> 20} MB limit for a ResNet-34")
    return size


def _copy_hashing(response, target: Path, size: int | None, label: str, progress: bool) -> str:
    """Copy the response to `target` in chunks, with a progress bar on stderr; returns its sha256 (hex)."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    received = 0
    bar_drawn = progress and on_terminal(sys.stderr)
    if progress and not bar_drawn:  # a log gets one line instead of the bar's redrawn frames
        print(label, file=sys.stderr, flush=True)
    with open(target, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                                         desc=label, disable=not bar_drawn, leave=False) as bar:
        while chunk := response.read(CHUNK_BYTES):
            received += len(chunk)
            if received > MAX_WEIGHTS_BYTES:
                raise DownloadError(f"more than the {MAX_WEIGHTS_BYTES >> 20} MB limit for a ResNet-34 arrived")
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _reason(error: Exception) -> str:
    """A failed download's reason in one line: "HTTP 404: Not Found", "[Errno -2] Name or service not known"."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}: {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else DownloadError(str(error.reason))
    return first_line(error)


def read_resnet34_state(path: Path, *, in_cache: bool = False) -> dict:
    """A torchvision ResNet-34 state dict from `path`, read without running code, checked key by key.

    A classifier (fc) of another shape, or none, is replaced by zeros of ImageNet's shape: fastai
    cuts fc off, and the rest of the file then loads strictly into torchvision's resnet34.
    """
    def refuse(problem: str) -> WeightsError:
        remedy = "delete it to download it again" if in_cache else "--weights expects a torchvision ResNet-34 state dict"
        return WeightsError(f"{path}: {problem}; {remedy}")

    problem = _file_problem(path)
    if problem:
        raise refuse(problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns on stderr about pickle protocols; the outcome says enough
            state = torch.load(path, map_location=cpu(), weights_only=True)  # a weights file must never run code
    except Exception as error:  # torch raises many kinds for a file that is not a checkpoint
        raise refuse(_load_problem(error)) from None
    reference = _reference_state()
    problem = _tensor_dict_problem(state) or _resnet34_problem(state, reference)
    if problem:
        raise refuse(problem)
    return _with_imagenet_classifier(state, reference)


def _file_problem(path: Path) -> str | None:
    """Why `path` cannot be a weights file (missing, not a regular file, empty, too large), or None."""
    try:
        status = path.stat()  # follows links: a link to a good file is a good file
    except FileNotFoundError:
        return "weights file not found"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"  # e.g. a symbolic link loop
    if not path.is_file():
        return "not a regular file"  # a folder, or a FIFO that torch.load would wait on forever
    if status.st_size == 0:
        return "empty file (0 bytes)"
    if status.st_size > MAX_WEIGHTS_BYTES:
        return f"{status.st_size} bytes, more than the {MAX_WEIGHTS_BYTES >> 20} MB limit for a ResNet-34"
    return None


def _load_problem(error: Exception) -> str:
    """torch.load's failure in a few words of our own.

    torch's weights_only message advises loading again with weights_only=False, i.e. running the
    file's code: that advice is never repeated, only the detail of what was refused.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and "weights only load failed" in lines[0].lower():
        detail = next((line for line in lines[1:] if "weights_only" not in line and "likely succeed" not in line
                       and not line.startswith(("Please file an issue", "Check the documentation"))), "")
        if "global" in detail.lower():
            return f"not a tensor state dict: holds a pickled object that weights_only loading refuses ({detail.rstrip('.')})"
        return f"not a loadable state dict ({detail or 'weights_only loading cannot read it'})"
    return f"not a loadable state dict ({lines[0] if lines else type(error).__name__})"


def _tensor_dict_problem(state) -> str | None:
    if not isinstance(state, dict):
        return f"not a tensor state dict: holds a {type(state).__name__}"
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f"not a tensor state dict: {key!r} holds a {type(value).__name__}"
    return None


def _reference_state() -> dict:
    """torchvision's ResNet-34 state dict, shapes and dtypes only (meta tensors: nothing allocated or initialised)."""
    import torchvision

    with torch.device("meta"):
        return torchvision.models.resnet34().state_dict()


def _resnet34_problem(state: dict, reference: dict) -> str | None:
    """What keeps `state` from loading into ResNet-34's body, or None; fc is not judged (it is not used)."""
    body = [key for key in reference if key not in CLASSIFIER_KEYS]
    missing = [key for key in body if key not in state]
    unexpected = [key for key in state if key not in reference]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        return f"not a ResNet-34 state dict: {len(missing)} keys missing, {len(unexpected)} unexpected, e.g. {example!r}"
    for key in body:
        value, expected = state[key], reference[key]
        if value.shape != expected.shape or value.dtype.is_floating_point != expected.dtype.is_floating_point:
            return f"not a ResNet-34 state dict: {key} is {value.dtype} {tuple(value.shape)}, expected {tuple(expected.shape)}"
        if value.layout != torch.strided:
            return f"{key} is a {value.layout} tensor, not a dense one"
        if value.is_floating_point() and not _all_finite(value):
            return f"{key} holds NaN or infinite values"
    return None


def _all_finite(values: torch.Tensor) -> bool:
    # A sum is finite when every value is (10x faster than isfinite over 21 M weights); only a sum
    # that overflows from huge finite values needs the value-by-value check.
    return bool(values.sum().isfinite()) or bool(torch.isfinite(values).all())


def _with_imagenet_classifier(state: dict, reference: dict) -> dict:
    """`state` with fp32 body tensors (the body runs in fp32) and fc of ImageNet's shape (zeros if it had another)."""
    body = {key: value.to(reference[key].dtype) for key, value in state.items() if key not in CLASSIFIER_KEYS}
    classifier = {key: state[key] if key in state and state[key].shape == reference[key].shape
                  else torch.zeros(reference[key].shape) for key in CLASSIFIER_KEYS}
    return {**body, **{key: value.to(torch.float32) for key, value in classifier.items()}}
