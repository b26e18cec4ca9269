"""Interval bound propagation: certified L-inf accuracy (Gowal et al. 2018, arXiv:1810.12715).

The box [x - eps, x + eps] ∩ [0, 1] (pixel units) is pushed through the model's chain of layers
(:func:`jrbench.models.lipschitz.layer_chain`: Normalize, Linear, Conv2d with any stride, padding, dilation
and groups (AOL layers as the Linear / Conv2d they compute), ReLU and other monotone activations
(MaxMin too: each output is monotone in each input), MaxPool2d, AvgPool2d, eval BatchNorm, Flatten,
Identity, Dropout) by :mod:`jrbench.models.interval`, the code that ``--reg ibp`` trains against,
here with ``sound=True``: float64 copies of the weights, on the input's device, with outward
rounding (each affine layer widens its radius by 2 gamma_{n+2} (|W| (|mu| + r) + |b|); conversions
between the box's two forms, Tanh, Sigmoid and LeakyReLU round outward). So rounding cannot make a
bound too tight: a certificate holds for the network in exact arithmetic with the model's weights.
The margins f_y - f_j use the last-layer elision (the final nn.Linear folded into the margins).
The clean prediction is the model's own forward pass; eps = 0 certifies exactly the correctly
classified examples (up to float32 logits within about 1e-6 of a tie).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from ..models import interval
from ..models.lipschitz import layer_chain, strictly_correct
from ..models.architectures import eval_mode

FLAG = "--ibp"


def _box(mu, r):
    return interval.box(mu, r, True)


def _center(lo, hi):
    return interval.center(lo, hi, True)


def _step(kind: str, m: nn.Module, mu: torch.Tensor, r: torch.Tensor):
    """One layer's sound float64 interval step (CROWN's interval bounds use it too)."""
    return interval.step(kind, m, mu, r, True)


def supports(model: nn.Module) -> str | None:
    """None when interval bounds cover ``model``, else the :class:`UserError` message."""
    try:
        layer_chain(model, FLAG, ibp=True)
    except UserError as e:
        return str(e)
    return None


def _check(model: nn.Module, x: torch.Tensor) -> None:
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise UserError(f"certify {FLAG}: the model takes inputs of shape {tuple(model.input_shape)} "
                        f"(channels, height, width) but got {tuple(x.shape[1:])}.")


def interval_bounds(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor):
    """Sound float64 bounds (logit_lower, logit_upper), each (N, C) on the input's device, of the
    logits over the box lower <= x <= upper (pixels, (N, C, H, W)), in eval mode."""
    layers = layer_chain(model, FLAG, ibp=True)
    _check(model, lower)
    if lower.shape != upper.shape or bool((lower > upper).any()):
        raise UserError(f"certify {FLAG}: the box needs lower <= upper, both of one shape.")
    mu, r = interval.propagate(layers, *_center(lower.detach().double(), upper.detach().double()), True)
    return _box(mu, r)


def margin_lower_bounds(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, C) float64 lower bounds of f_y - f_j over the L-inf box [x - eps, x + eps] ∩ [0, 1]
    (pixels, x of shape (N, C, H, W), labels (N,)); +inf on the label's own column. Elides the final
    nn.Linear when there is one."""
    if not (isinstance(eps, (int, float)) and 0 <= eps < math.inf):
        raise UserError(f"certify {FLAG}: eps must be a finite number >= 0 (pixel units), not {eps!r}.")
    layers = layer_chain(model, FLAG, ibp=True)
    _check(model, x)
    if bool(((x < 0) | (x > 1)).any()):
        raise UserError(f"certify {FLAG}: the inputs must be pixels in [0, 1].")
    y = labels.to(x.device).long().view(-1)
    return interval.margin_lower_bounds(layers, x, y, eps, sound=True)


def certified_linf(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float,
                   batch_size: int = 500) -> torch.Tensor:
    """(N,) bool on x's device: the model classifies x correctly (strictly largest logit) and every
    margin lower bound over the L-inf ball of radius ``eps`` (pixels, clipped to [0, 1]) is > 0."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise UserError(f"certify {FLAG}: batch_size must be a positive integer, not {batch_size!r}.")
    layer_chain(model, FLAG, ibp=True)  # refuse before any work
    labels = labels.to(x.device).long().view(-1)
    out = []
    with eval_mode(model), torch.no_grad():
        for xb, yb in zip(x.split(batch_size), labels.split(batch_size)):
            correct = strictly_correct(model(xb), yb)
            out.append(correct & (margin_lower_bounds(model, xb, yb, eps) > 0).all(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)
