"""Factories for tests/test_outside_models.py, imported by name ('outside_factory:make_model')
as a user's module would be: tiny classifiers of 1x28x28 images, and broken ones."""
from __future__ import annotations

import torch
from torch import nn


class Norm(nn.Module):
    """A model's own input normalization, built in (to compare with --input-normalized)."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


def make_model() -> nn.Module:
    """A linear classifier of 1x28x28 images into 10 classes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def make_wrong_shape() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))


class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(784, 10)

    def forward(self, x):
        return self.lin(x.flatten(1)) * float("nan")


def make_nan() -> nn.Module:
    return NaNModel()


def make_raising() -> nn.Module:
    raise RuntimeError("no GPU driver found")


def make_not_a_module():
    return "a string"


def make_unsupported() -> nn.Module:
    """A classifier with a layer the certificates have no rule for (Softplus)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Softplus(), nn.Linear(32, 10))
