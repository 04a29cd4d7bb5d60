"""The network: ImageNet ResNet-34 body + fastai head; where its weights come from and go to.

Pretrained weights come from a file the user names, or from torchvision's hub cache (TORCH_HOME),
where they are downloaded as torchvision does (hash checked) unless --offline or HEARTBEAT_OFFLINE=1
forbids it; heartbeat.train.weights does that, and reads every weights file without unpickling objects.
When they cannot be had, WeightsError says which file is expected and how to get it.

A run keeps one full copy of its network: the ONNX export that the torch-free predict command
runs. It is exported unfolded, every tensor under its state-dict name (export_onnx), so when the
body was trained (scratch, finetune, unfreeze) load_model reads the network back from the ONNX's
initializers (onnx's protobuf and raw tensor data: nothing to unpickle), bit for bit, and
model.json's weights_file says "model.onnx". In features mode the body is the pretrained one and
is not saved apart: the head alone (about 0.5 M parameters, safetensors) plus the digest of the
pretrained body's weights, which load_model checks when it rebuilds the network from them.
Run folders written before this kept the whole network in model.safetensors (their ONNX had
BatchNorm folded into the convolutions, so it cannot give the weights back): model.json names
that file, and load_model still reads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from heartbeat.data import layouts
from heartbeat.text import first_line
from heartbeat.train import nets

# Where pretrained weights come from: heartbeat.train.weights (named here too, as train and cli use them through this module).
from heartbeat.train.weights import WeightsError, imagenet_weights_path, load_pretrained_state  # noqa: F401

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, what the body was trained on
IMAGENET_STD = (0.229, 0.224, 0.225)
# The same statistics as tensors shaped for (n, 3, h, w) batches; imagenet_normalise moves them to the input's device.
_IMAGENET_STATS = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
WEIGHTS_FILE = "model.safetensors"  # older runs: the whole network, where the body was trained (read, no longer written)
HEAD_FILE = "head.safetensors"  # features mode: the head alone; the body is the pretrained one (digest in model.json)
ONNX_FILE = "model.onnx"  # the network for predict; its weights are beside it in model.onnx.data
ONNX_DATA_FILE = ONNX_FILE + ".data"  # the only file the ONNX's external data may be in
EXPORTED_PREFIX = "network."  # an initializer's name is this + the network's state-dict key (Classifier.network)
MODEL_FILE = "model.json"  # what is needed to rebuild and use the model
CONFIG_FILE = "config.json"  # the run's settings: where its pretrained body came from (train_settings.weights)


class ModelError(RuntimeError):
    """A saved model that cannot be rebuilt; the one-line message names the file and the problem."""


def resnet34_arch(state: dict | None):
    """A torchvision-style architecture function for fastai's vision_learner.

    vision_learner looks the architecture up in fastai's model_meta (where the body is cut,
    the parameter groups, the normalisation statistics); we register this function with
    resnet34's entry so that fastai treats it exactly as torchvision's resnet34, but with the
    weights we were given instead of a download.
    """
    import torchvision
    from fastai.vision.learner import model_meta

    def resnet34(weights=None, **kwargs):
        model = torchvision.models.resnet34()
        if state is not None:
            model.load_state_dict(state)
        return model

    model_meta[resnet34] = model_meta[torchvision.models.resnet34]
    return resnet34


def build_model(n_classes: int, arch: str = "resnet34", net: dict | None = None) -> nn.Module:
    """The trained network's architecture, untrained: model.json's "arch" (and, for heartbeat.train.nets', its "net").

    "resnet34": ResNet-34 body + fastai's default head; nets.ARCH: the `heartbeat` recipe's network.
    """
    if arch == nets.ARCH:
        return nets.build(n_classes, net or {})
    if arch != "resnet34":
        raise ValueError(f"unknown arch {arch!r}")
    from fastai.vision.learner import create_vision_model

    return create_vision_model(resnet34_arch(None), n_classes, pretrained=False)


class Classifier(nn.Module):
    """What predict runs: grayscale image in [0, 1] -> class probabilities.

    Copies the one channel to three, normalises with ImageNet statistics (as fastai's
    Normalize does in training), runs the network and applies softmax.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, grey):  # (n, 1, size, size)
        return torch.softmax(self.network(imagenet_normalise(grey.expand(-1, 3, -1, -1))), dim=1)


def imagenet_normalise(rgb: torch.Tensor) -> torch.Tensor:
    """(n, 3, h, w) images in [0, 1] -> normalised with ImageNet's statistics, on the input's device and dtype.

    The one definition: the exported Classifier and training's features pass both use it, as
    fastai's Normalize does for the image batches.
    """
    mean, std = (stat.to(device=rgb.device, dtype=rgb.dtype) for stat in _IMAGENET_STATS)
    return (rgb - mean) / std


def state_digest(state: dict | None) -> str:
    """A short digest of a state dict's keys and values ("random" for none): which pretrained weights a run used."""
    if state is None:
        return "random"
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_model(run_dir: Path, network: nn.Module, model_info: dict, *, body_trained: bool,
               body_state_digest: str | None) -> None:
    """model.json, and the head's weights in features mode; loading needs no unpickling.

    body_trained: nothing more, as the whole network is the ONNX export's (export_onnx, called
    next by the run, writes it): model.json's weights_file is model.onnx. Otherwise (features
    mode: the body is the pretrained one, untouched) the head alone (head.safetensors), and
    model.json records body_state_digest (state_digest of the pretrained state) so that
    load_model can check the body it is given.
    """
    from heartbeat.fileio import atomic_path, atomic_write_json

    if not body_trained and not body_state_digest:
        raise ValueError("a model whose body was not trained needs the pretrained state's digest to be rebuilt")
    weights_file = ONNX_FILE if body_trained else HEAD_FILE
    if not body_trained:
        from safetensors.torch import save_file

        state = {key: value.detach().cpu().contiguous() for key, value in network[1].state_dict().items()}
        with atomic_path(run_dir / HEAD_FILE) as tmp:
            save_file(state, str(tmp))
    atomic_write_json(run_dir / MODEL_FILE, {**model_info, "weights_file": weights_file, "body_trained": body_trained,
                                             "body_state_digest": None if body_trained else body_state_digest})


def load_model(run_dir: Path, *, pretrained_state: dict | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a saved network in eval mode; returns it and its model.json.

    A run that trained its body has the whole network saved: in its ONNX export, or in
    model.safetensors for runs written before (model.json's weights_file). A features-mode run has its head
    saved, and the body is rebuilt from the pretrained state: `pretrained_state` if given, else
    the weights the run was trained with (config.json's --weights file, or the torch hub cache
    through heartbeat.train.weights). Its digest must be the one model.json records. ModelError
    (one line, naming the file) when anything is missing or does not match.
    """
    run_dir = Path(run_dir)
    info = _read_model_info(run_dir / MODEL_FILE)
    if info.get("body_trained", True):  # runs saved before the lean folder held the whole network
        network = _build_saved(run_dir / MODEL_FILE, info)
        _load_whole_network(network, run_dir, info)
        return network.eval(), info
    if pretrained_state is None:
        pretrained_state = _run_pretrained_state(run_dir)
    digest = state_digest(pretrained_state)
    if digest != info.get("body_state_digest"):
        raise ModelError(f"{run_dir / MODEL_FILE}: the pretrained body given (weights digest {digest}) is not the one "
                         f"this run was trained on (digest {info.get('body_state_digest')}); give the same weights file")
    from fastai.vision.learner import create_vision_model

    network = create_vision_model(resnet34_arch(pretrained_state), len(info["classes"]), pretrained=False)
    _load_weights(network[1], run_dir / HEAD_FILE)
    return network.eval(), info


def _build_saved(path: Path, info: dict) -> nn.Module:
    """build_model for model.json's arch and net; ModelError naming the file if they describe no network."""
    try:
        return build_model(len(info["classes"]), info.get("arch", "resnet34"), info.get("net"))
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{path}: not a network this code can build ({error})") from None


def _read_model_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not UTF-8 or not JSON; Recursion: too deep
        raise ModelError(f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    classes = info.get("classes") if isinstance(info, dict) else None
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(name, str) for name in classes)):
        raise ModelError(f"{path}: not a model description (no list of class names)")
    problem = layouts.first_label_problem(classes)  # a model folder may be untrusted: the data labels' rule
    if problem:
        raise ModelError(f"{path}: {problem} (in classes)")
    return info


def _run_pretrained_state(run_dir: Path) -> dict:
    """The pretrained state a features-mode run was trained on: config.json's --weights file, or the hub cache."""
    config_path = run_dir / CONFIG_FILE
    try:
        settings = json.loads(config_path.read_text(encoding="utf-8")).get("train_settings") or {}
    except (OSError, ValueError, AttributeError) as error:
        raise ModelError(f"{config_path}: cannot be read to find the run's pretrained weights ({error})") from None
    try:
        return load_pretrained_state(settings.get("weights"), offline=bool(settings.get("offline")))[0]
    except WeightsError as error:
        raise ModelError(f"{run_dir / HEAD_FILE}: the run's pretrained body is needed and unavailable: {error}") from None


def _load_whole_network(network: nn.Module, run_dir: Path, info: dict) -> None:
    """The weights of a run that trained its body, from the file model.json names (older runs: no name, safetensors)."""
    weights_file = info.get("weights_file", WEIGHTS_FILE)
    if weights_file == ONNX_FILE:
        _load_onnx_weights(network, run_dir / ONNX_FILE)
    elif weights_file == WEIGHTS_FILE:
        _load_weights(network, run_dir / WEIGHTS_FILE)
    else:  # a model folder may be untrusted: only the two names this code writes, never a path
        raise ModelError(f"{run_dir / MODEL_FILE}: weights_file {str(weights_file)[:100]!r} is not "
                         f"{ONNX_FILE} or {WEIGHTS_FILE}")


def _load_onnx_weights(network: nn.Module, path: Path) -> None:
    """The network's tensors from the ONNX export's initializers, strictly; ModelError naming the file if not.

    Every state-dict entry must be there (export_onnx keeps them under their names) except a
    BatchNorm's num_batches_tracked: a step counter the eval graph does not use, so the exporter
    drops it; the rebuilt network keeps its own (the counter matters only to a BatchNorm without
    momentum, and these have momentum).
    """
    arrays = _onnx_initializers(path)
    state = {}
    for key, current in network.state_dict().items():
        array = arrays.get(EXPORTED_PREFIX + key)
        if array is None and not key.endswith(".num_batches_tracked"):
            raise ModelError(f"{path}: not this model's weights (no tensor {EXPORTED_PREFIX + key})")
        state[key] = current if array is None else torch.from_numpy(array.copy())
    try:
        network.load_state_dict(state)
    except RuntimeError as error:  # shapes that do not fit
        raise ModelError(f"{path}: not this model's weights ({str(error).strip().splitlines()[-1]:.200})") from None


def _onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    """An ONNX file's initializers by name, their external data read only from ONNX_DATA_FILE beside it."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import external_data_helper, numpy_helper

    try:
        graph = onnx.load(str(path), load_external_data=False)
        for tensor in graph.graph.initializer:
            location = external_data_helper.ExternalDataInfo(tensor).location if \
                external_data_helper.uses_external_data(tensor) else None
            if location not in (None, ONNX_DATA_FILE):  # a model folder may be untrusted: no other file is read
                raise ModelError(f"{path}: tensor {tensor.name[:100]!r} names data outside {ONNX_DATA_FILE}")
        external_data_helper.load_external_data_for_model(graph, str(path.parent))
        return {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.graph.initializer}
    except FileNotFoundError as error:
        raise ModelError(f"{error.filename or path}: not found (not a complete run folder)") from None
    except (OSError, ValueError, DecodeError, onnx.checker.ValidationError) as error:  # e.g. data through a symlink
        raise ModelError(f"{path}: not a readable ONNX model ({first_line(error):.200})") from None


def _load_weights(module: nn.Module, path: Path) -> None:
    """safetensors weights into `module`, strictly (every key, every shape); ModelError naming the file if not."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path)))
    except FileNotFoundError:
        raise ModelError(f"{path}: not found (not a complete run folder)") from None
    except (OSError, SafetensorError, RuntimeError) as error:  # RuntimeError: keys or shapes that do not fit
        raise ModelError(f"{path}: not this model's weights ({first_line(error):.200})") from None


def export_onnx(network: nn.Module, image_size: int, path: Path, *, exact_weights: bool = True) -> None:
    """Export Classifier(network) for onnxruntime; the batch dimension stays dynamic.

    Writes the graph to `path` and the weights beside it to `path` + ".data" (ONNX external
    data): onnxruntime then maps the weights from the file instead of parsing and copying
    them out of the graph, which measured 0.12 s less per predict cold start and 90 MB less RSS.

    exact_weights (a run that trained its body): the export is the run's copy of the network
    (load_model reads it back), so every tensor keeps its value and its state-dict name: without
    constant folding the exporter does not fold BatchNorm into the convolutions, and with the
    initializers as graph inputs it does not merge tensors of equal values under one name. The
    initializers are then taken out of the inputs again, so that ONNX Runtime treats them as
    constants and does that folding itself when it opens the model: the same speed per window,
    but, measured on ResNet-34 at 512 px, about 0.2 s more to open and 120 MiB more peak memory.
    So a features-mode run, whose network load_model rebuilds from the pretrained body and
    head.safetensors, exports folded (exact_weights=False).
    """
    import os
    import tempfile

    import onnx

    path = Path(path)
    data_name = path.name + ".data"
    classifier = (nets.Classifier(network) if isinstance(network, nets.HeartNet) else Classifier(network)).eval()
    example = torch.zeros(1, 1, image_size, image_size)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as scratch, torch.no_grad():
        single_file = Path(scratch) / "single.onnx"
        torch.onnx.export(
            classifier, (example,), str(single_file), input_names=["image"], output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=17, dynamo=False,
            do_constant_folding=not exact_weights, keep_initializers_as_inputs=exact_weights or None,
        )
        graph = _weights_as_constants(onnx.load(str(single_file)))
        onnx.save_model(graph, str(Path(scratch) / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        umask = os.umask(0)
        os.umask(umask)
        for name in (data_name, path.name):  # the weights first: the graph refers to them
            os.chmod(Path(scratch) / name, 0o666 & ~umask)  # onnx writes the data file 0600
            os.replace(Path(scratch) / name, path.parent / name)


def _weights_as_constants(graph):
    """An ONNX model whose initializers are no longer also graph inputs: only "image" can be fed, the rest is constant."""
    weights = {tensor.name for tensor in graph.graph.initializer}
    real_inputs = [value for value in graph.graph.input if value.name not in weights]
    del graph.graph.input[:]
    graph.graph.input.extend(real_inputs)
    return graph


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (size, size) images -> float (n, 1, size, size) in [0, 1], the Classifier's input."""
    return torch.from_numpy(np.stack(images)[:, None].astype(np.float32) / 255.0)
