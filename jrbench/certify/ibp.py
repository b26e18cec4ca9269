"""Interval bound propagation: certified L-inf accuracy (Gowal et al. 2018, arXiv:1810.12715).

The box [x - eps, x + eps] ∩ [0, 1] (pixel units) is pushed through the model's chain of layers
(:func:`jrbench.models.lipschitz.layer_chain`: Normalize, Linear, Conv2d with any stride, padding, dilation
and groups (AOL layers as the Linear / Conv2d they compute), ReLU and other monotone activations
(MaxMin too: each output is monotone in each input), MaxPool2d, AvgPool2d, eval BatchNorm, Flatten,
Identity, Dropout) in center/radius form (mu, r): an affine layer maps it to (W mu + b, |W| r),
monotone maps and max pooling map its corners. The margins f_y - f_j use the last-layer elision:
the box is propagated to the input h of the final nn.Linear and (W_y - W_j) h + (b_y - b_j) is
bounded directly, which is tighter than subtracting logit bounds.

Arithmetic: float64, with float64 copies of the weights, on the input's device. Each affine layer
widens its radius by 2 gamma_{n+2} (|W| (|mu| + r) + |b|), with gamma_n = n u / (1 - n u) and u = 2^-53
(Higham's bound on a length-n dot product's rounding error); conversions between the two forms,
Tanh, Sigmoid and LeakyReLU round outward. So rounding cannot make a bound too tight: a certificate
holds for the network in exact arithmetic with the model's weights. The clean prediction is the
model's own forward pass; eps = 0 certifies exactly the correctly classified examples (up to
float32 logits within about 1e-6 of a tie).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models.lipschitz import final_linear, layer_chain, strictly_correct
from ..models.architectures import eval_mode
from ..models.onelip import MaxMin

FLAG = "--ibp"
_U = 2.0 ** -53  # unit roundoff of float64


def _gamma(n: int) -> float:
    return 2 * (n + 2) * _U / (1 - (n + 2) * _U)


def _up(t: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(t, torch.full_like(t, math.inf))


def _down(t: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(t, torch.full_like(t, -math.inf))


def _box(mu, r):
    return _down(mu - r), _up(mu + r)


def _center(lo, hi):
    mu = (lo + hi) / 2
    return mu, _up(torch.maximum(hi - mu, mu - lo))


def _affine(lin, lin_abs, bias, mu, r, n: int):
    """(lin(mu) + bias, |lin|(r) + rounding slack) for a linear map ``lin`` with fan-in ``n``."""
    slack = _gamma(n) * (lin_abs(mu.abs() + r) + bias.abs())
    return lin(mu) + bias, _up(lin_abs(r) + slack)


def _channels(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def _step(kind: str, m: nn.Module, mu: torch.Tensor, r: torch.Tensor):
    if kind == "normalize":
        std = m.std.detach().to(mu)
        return _affine(lambda t: t / std, lambda t: t / std, -m.mean.detach().to(mu) / std, mu, r, 2)
    if kind in ("linear", "conv2d"):
        w = m.weight.detach().to(mu)
        b = m.bias.detach().to(mu) if m.bias is not None else torch.zeros(w.shape[0]).to(mu)
        if kind == "linear":
            return _affine(lambda t: F.linear(t, w), lambda t: F.linear(t, w.abs()), b, mu, r, w.shape[1])
        args = (m.stride, m.padding, m.dilation, m.groups)
        return _affine(lambda t: F.conv2d(t, w, None, *args), lambda t: F.conv2d(t, w.abs(), None, *args),
                       b.view(-1, 1, 1), mu, r, w[0].numel())
    if kind == "batchnorm":
        scale = (m.running_var.detach().to(mu) + m.eps).rsqrt()
        scale = scale * m.weight.detach().to(mu) if m.weight is not None else scale
        shift = -m.running_mean.detach().to(mu) * scale
        shift = shift + m.bias.detach().to(mu) if m.bias is not None else shift
        a, b = _channels(scale, mu), _channels(shift, mu)
        return _affine(lambda t: t * a, lambda t: t * a.abs(), b, mu, r, 4)
    if kind == "avgpool2d":
        k = m.kernel_size ** 2 if isinstance(m.kernel_size, int) else math.prod(m.kernel_size)
        return _affine(m, m, torch.zeros((), dtype=mu.dtype, device=mu.device), mu, r, k)
    if kind in ("maxpool2d", "activation"):
        lo, hi = _box(mu, r)
        if isinstance(m, MaxMin):  # monotone in each input: the corners map to bounds; max and min are exact
            return _center(MaxMin.exact(lo), MaxMin.exact(hi))
        lo, hi = m(lo), m(hi)
        if not isinstance(m, (nn.MaxPool2d, nn.ReLU, nn.Hardtanh)):  # not exact in floating point
            lo, hi = _down(lo - 4 * _U * lo.abs()), _up(hi + 4 * _U * hi.abs())
        return _center(lo, hi)
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return m(mu), m(r)
    return mu, r  # Identity, Dropout in eval mode


def _propagate(layers, mu, r):
    with torch.no_grad():
        for layer in layers:
            mu, r = _step(layer.kind, layer.module, mu, r)
    return mu, r


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
    mu, r = _propagate(layers, *_center(lower.detach().double(), upper.detach().double()))
    return _box(mu, r)


def margin_lower_bounds(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, C) float64 lower bounds of f_y - f_j over the L-inf box [x - eps, x + eps] ∩ [0, 1]
    (pixels, x of shape (N, C, H, W), labels (N,)); +inf on the label's own column. Elides the final
    nn.Linear when there is one."""
    if not (isinstance(eps, (int, float)) and 0 <= eps < math.inf):
        raise UserError(f"certify {FLAG}: eps must be a finite number >= 0 (pixel units), not {eps!r}.")
    layers = layer_chain(model, FLAG, ibp=True)
    _check(model, x)
    x64 = x.detach().double()
    if bool(((x64 < 0) | (x64 > 1)).any()):
        raise UserError(f"certify {FLAG}: the inputs must be pixels in [0, 1].")
    y = labels.to(x.device).long().view(-1)
    box = _down(x64 - eps).clamp_min(0), _up(x64 + eps).clamp_max(1)
    last = final_linear(layers)
    if last is not None and len(layers[last].input_shape) != 1:
        last = None  # a Linear over the last axis of a larger tensor: no elision
    if last is None:
        lo, hi = _box(*_propagate(layers, *_center(*box)))
        low = lo.gather(1, y[:, None]) - hi
    else:
        mu, r = _propagate(layers[:last], *_center(*box))
        linear = layers[last].module
        w = linear.weight.detach().to(mu)
        b = linear.bias.detach().to(mu) if linear.bias is not None else torch.zeros(w.shape[0]).to(mu)
        mu, r = mu.flatten(1), r.flatten(1)
        columns = []
        for j in range(w.shape[0]):  # one class at a time: memory N x F
            d, db = w[y] - w[j], b[y] - b[j]
            center, radius = (d * mu).sum(1) + db, (d.abs() * r).sum(1)
            slack = _gamma(w.shape[1] + 1) * ((d.abs() * (mu.abs() + r)).sum(1) + db.abs())
            columns.append(_down(center - _up(radius + slack)))
        low = torch.stack(columns, 1)
    return _down(low).scatter(1, y[:, None], math.inf)


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
