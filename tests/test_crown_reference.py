"""CROWN's margin lower bounds equal stored values: those of the implementation before the speed-up
(commit c490457, one example and one window at a time, no fused max pool + ReLU step, no banded
convolutions) on fixed-seed nets, to 1e-9 (relative to the margin, absolute below 1). The new
passes change only the order of floating-point sums and the rounding slack's reach (a tighter
bound on the same quantity), a few 1e-11 here.

To write the stored values again with some checkout of jrbench (the old one, for a new case):
    PYTHONPATH=/path/to/that/checkout python tests/test_crown_reference.py --write
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from jrbench.certify import crown
from jrbench.models.architectures import PixelClassifier, build_model

STORED = Path(__file__).with_name("crown_reference.json")


def _fill(model: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Parameters and batch-norm statistics from a seeded generator (not nn.init, whose algorithm
    may change): weights uniform in +-scale/sqrt(fan_in), biases in +-0.1, BN variances in [0.5, 2]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                bound = scale / math.sqrt(p[0].numel())
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            elif name.endswith("weight"):  # batch norm's scale
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_((torch.rand(b.shape, generator=g) * 2 - 1) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)
    return model.eval()


def _images(n: int, shape, seed: int, sparse: bool) -> torch.Tensor:
    """Pixels in [0, 1], uniform; ``sparse``: digit-like, three quarters 0. (Sparse images through
    average pooling give max-pool windows whose lower bounds tie up to rounding; the window's
    chosen input then depends on the order of sums, and the bounds with it: both are sound, but
    not equal. The stored cases avoid that.)"""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    return torch.where(torch.rand(n, *shape, generator=g) < 0.25, x, torch.zeros(())) if sparse else x


def _small():
    """LeakyReLU, a padded max pool without overlap (fused with the ReLU below), a strided conv."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2, padding=1),
                        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 5))
    return PixelClassifier(net, (1, 13, 13), 5, "small")


def _mixed():
    """Strided/padded/grouped convolutions, batch norm, average pooling, an overlapping max pool."""
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1),
                        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.AvgPool2d(2, 1),
                        nn.MaxPool2d(3, 2, padding=1), nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(12, 5))
    return PixelClassifier(net, (2, 12, 12), 5, "mixed")


def cases():
    """name -> (model, x, labels, [(norm, eps, alpha_steps), ...])."""
    lenet = _fill(build_model("lenet", (1, 28, 28), 10, [0.1307], [0.3081]), 0, scale=2.0)
    out = {}
    for name, model, runs in (("lenet", lenet, [("linf", 0.004, 0), ("l2", 0.05, 0)]),
                              ("small", _fill(_small(), 1, scale=2.0), [("linf", 0.02, 0), ("l2", 0.2, 0),
                                                                        ("linf", 0.02, 3)]),
                              ("mixed", _fill(_mixed(), 2, scale=2.0), [("linf", 0.02, 0), ("l2", 0.2, 0)])):
        x = _images(3, model.input_shape, 10, sparse=name == "lenet")
        with torch.no_grad():
            y = model(x).argmax(1)
        y[-1] = (y[-1] + 1) % model.num_classes  # a misclassified example: its bounds are bounds too
        out[name] = (model, x, y, runs)
    return out


def bounds(model, x, y, norm, eps, alpha_steps) -> list[list[float]]:
    low = crown.margin_lower_bounds(model, x, y, eps, norm, alpha_steps=alpha_steps)
    return [[float(v) if math.isfinite(v) else None for v in row] for row in low.tolist()]


@pytest.fixture(scope="module")
def stored():
    return json.loads(STORED.read_text())


@pytest.mark.parametrize("name", ["lenet", "small", "mixed"])
def test_margin_bounds_equal_the_stored_ones(name, stored):
    model, x, y, runs = cases()[name]
    for norm, eps, alpha_steps in runs:
        key = f"{name} {norm} {eps:g} alpha {alpha_steps}"
        got, want = bounds(model, x, y, norm, eps, alpha_steps), stored[key]
        for row_got, row_want in zip(got, want, strict=True):
            for a, b in zip(row_got, row_want, strict=True):
                if b is None:  # the label's own column
                    assert a is None, key
                else:
                    assert abs(a - b) <= 1e-9 * max(1.0, abs(b)), (key, a, b)


if __name__ == "__main__":
    if "--write" in sys.argv:
        values = {}
        for name, (model, x, y, runs) in cases().items():
            for norm, eps, alpha_steps in runs:
                values[f"{name} {norm} {eps:g} alpha {alpha_steps}"] = bounds(model, x, y, norm, eps, alpha_steps)
        STORED.write_text(json.dumps(values, indent=1) + "\n")
        print(f"wrote {STORED}")
