"""Models: a registry of classifiers whose first layer normalizes pixels.

Every model maps pixels x in [0, 1], shape (B, C, H, W), to logits (B, K).
It is a :class:`Classifier`: ``normalize`` (z = (x - mean) / std per channel)
followed by ``net`` (z -> logits). The Jacobian regularized in training is
d logits / d z (Hoffman, Roberts, Yaida 2019, and the authors' code, where the
normalization sits in the data transform); attacks and margins work on x.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry
from .onelip import AOLConv2d, AOLLinear, MaxMin


class Normalize(nn.Module):
    """z = (x - mean) / std per channel; mean and std are buffers of shape (1, C, 1, 1)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``normalize`` then ``net``; checks the input shape so a wrong data set fails clearly."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_shape: tuple[int, int, int], num_classes: int, name: str):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.name = name

    def check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise UserError(
                f"model '{self.name}' was built for inputs of shape {self.input_shape} "
                f"(channels, height, width) but got {tuple(x.shape[1:])}; "
                "train it on the data set you evaluate it on."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.net(self.normalize(x))


class PixelClassifier(nn.Module):
    """An outside ``net`` that takes pixels in [0, 1] itself (no normalization, so no z space:
    no ``normalize`` attribute); checks the input shape like :class:`Classifier`."""

    def __init__(self, net: nn.Module, input_shape: tuple[int, int, int], num_classes: int, name: str):
        super().__init__()
        self.net = net
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.name = name

    check_input = Classifier.check_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.net(x)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (dropout off, batch norm on running stats); restore every
    module's training flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: ``build(input_shape, num_classes, dropout) -> net``."""

    name: str
    build: Callable[[tuple[int, int, int], int, float], nn.Module]
    min_size: int
    description: str


MODELS: Registry[ModelSpec] = Registry("model")


def _register(name: str, min_size: int, description: str):
    def add(build):
        MODELS.register(name)(ModelSpec(name, build, min_size, description))
        return build
    return add


def _drop(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


@_register("mlp", 1, "784-200-200-10 ReLU MLP (the authors' MNIST example); input flattened")
def _mlp(shape, num_classes, dropout):
    d = shape[0] * shape[1] * shape[2]
    return nn.Sequential(
        nn.Flatten(), nn.Linear(d, 200), nn.ReLU(), _drop(dropout),
        nn.Linear(200, 200), nn.ReLU(), _drop(dropout), nn.Linear(200, num_classes),
    )


@_register("lenet", 16, "LeNet-5 style: conv6-pool-conv16-pool-fc120-fc84, ReLU")
def _lenet(shape, num_classes, dropout):
    c, h, w = shape
    h2, w2 = (h // 2 - 4) // 2, (w // 2 - 4) // 2  # conv5 pad2, pool2, conv5, pool2
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * h2 * w2, 120), nn.ReLU(), _drop(dropout),
        nn.Linear(120, 84), nn.ReLU(), _drop(dropout), nn.Linear(84, num_classes),
    )


@_register("ddnet", 16, "4 conv + 2 fc CIFAR network of the paper (conv64x2-pool-conv128x2-pool-fc256x2)")
def _ddnet(shape, num_classes, dropout):
    c, h, w = shape
    h2, w2 = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Conv2d(128, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * h2 * w2, 256), nn.ReLU(), _drop(dropout),
        nn.Linear(256, 256), nn.ReLU(), _drop(dropout), nn.Linear(256, num_classes),
    )


@_register("resnet18", 8, "torchvision ResNet-18 adapted to small images (3x3 stem, no max-pool); for GPUs")
def _resnet18(shape, num_classes, dropout):
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(shape[0], 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    if dropout > 0:
        net.fc = nn.Sequential(nn.Dropout(dropout), net.fc)
    return net


@_register("aol-mlp", 1, "1-Lipschitz MLP: AOL linear layers (Prach & Lampert 2022) 784-256-256-10, MaxMin; "
                         "input flattened")
def _aol_mlp(shape, num_classes, dropout):
    d = shape[0] * shape[1] * shape[2]
    return nn.Sequential(
        nn.Flatten(), AOLLinear(d, 256), MaxMin(), _drop(dropout),
        AOLLinear(256, 256), MaxMin(), _drop(dropout), AOLLinear(256, num_classes),
    )


@_register("aol-lenet", 4, "1-Lipschitz LeNet-size CNN: AOL conv3x3-16, conv2x2/2-32, conv3x3-32, conv2x2/2-64, "
                           "fc128, fc; MaxMin")
def _aol_lenet(shape, num_classes, dropout):
    c, h, w = shape
    h2, w2 = h // 2 // 2, w // 2 // 2  # two 2x2 convolutions of stride 2 (space to depth, then mixing)
    return nn.Sequential(
        AOLConv2d(c, 16, 3, padding=1), MaxMin(), AOLConv2d(16, 32, 2, stride=2), MaxMin(),
        AOLConv2d(32, 32, 3, padding=1), MaxMin(), AOLConv2d(32, 64, 2, stride=2), MaxMin(), nn.Flatten(),
        AOLLinear(64 * h2 * w2, 128), MaxMin(), _drop(dropout), AOLLinear(128, num_classes),
    )


def build_model(name: str, input_shape: Sequence[int], num_classes: int,
                mean: Sequence[float], std: Sequence[float], dropout: float = 0.0) -> Classifier:
    """Build registered model ``name`` for images of ``input_shape`` = (C, H, W)."""
    spec = MODELS.get(name)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape[1:]) < spec.min_size:
        raise UserError(
            f"model '{name}' needs images of at least {spec.min_size}x{spec.min_size} pixels "
            f"(channels, height, width); the data set gives {shape}."
        )
    if len(mean) != shape[0] or len(std) != shape[0]:
        raise UserError(f"normalization has {len(mean)} channels but the images have {shape[0]}.")
    return Classifier(spec.build(shape, num_classes, dropout), mean, std, shape, num_classes, name)
