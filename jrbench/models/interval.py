"""Interval bound propagation through a model's chain of layers: the one code path behind
``jrbench certify --ibp`` (:mod:`jrbench.certify.ibp`) and ``--reg ibp`` training
(:mod:`jrbench.penalty.certified_training`); S. Gowal et al., "On the effectiveness of interval
bound propagation for training verifiably robust models", arXiv:1810.12715, 2018.

The box [x - eps, x + eps] ∩ [0, 1] (pixel units) is pushed through the chain
(:func:`jrbench.models.lipschitz.layer_chain`, normalization included) in center/radius form
(mu, r): an affine layer maps it to (W mu + b, |W| r); monotone activations and max pooling map
its corners. The margins f_y - f_j use the last-layer elision: the box is propagated to the input
h of the final nn.Linear and (W_y - W_j) h + (b_y - b_j) is bounded directly, which is tighter than
subtracting logit bounds.

Every function takes ``sound``, which fixes the arithmetic:

- ``sound=True`` (certificates): float64 copies of the inputs and weights, no autograd graph, and
  outward rounding: each affine layer widens its radius by 2 gamma_{n+2} (|W| (|mu| + r) + |b|),
  gamma_n = n u / (1 - n u), u = 2^-53 (Higham's bound on a length-n dot product's rounding
  error); conversions between the two forms, Tanh, Sigmoid and LeakyReLU round outward. A bound
  holds for the network in exact arithmetic with the model's weights.
- ``sound=False`` (training): the same formulas in the input's dtype (float32 in training), without
  the slack and the rounding steps, differentiable with respect to the weights. In exact
  arithmetic both compute the same bounds; in floating point the training bound can be tighter
  than the sound one by a few float32 roundings (about 1e-6 relative), so the two certify the same
  examples except those whose bound lies within that distance of zero (tests/test_ibp_train.py).

Layers run with eval semantics whatever the module's mode: Dropout is the identity, BatchNorm its
running statistics (training refuses BatchNorm: :mod:`jrbench.penalty.certified_training`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .lipschitz import Layer, final_linear
from .onelip import MaxMin

U = 2.0 ** -53  # unit roundoff of float64
CHUNK_ELEMENTS = 1 << 22  # the elision's (N, classes, F) coefficients per chunk of classes
MONOTONE = ("activation", "maxpool2d")


def gamma(n: int) -> float:
    """2 gamma_{n+2}: the relative rounding error of a length-n dot product, doubled for the slack's own sum."""
    return 2 * (n + 2) * U / (1 - (n + 2) * U)


def up(t: torch.Tensor) -> torch.Tensor:
    """The next float towards +inf (elementwise)."""
    return torch.nextafter(t, t.new_full((), math.inf))


def down(t: torch.Tensor) -> torch.Tensor:
    """The next float towards -inf (elementwise)."""
    return torch.nextafter(t, t.new_full((), -math.inf))


def box(mu: torch.Tensor, r: torch.Tensor, sound: bool):
    """(lower, upper) = (mu - r, mu + r), rounded outward when ``sound``."""
    return (down(mu - r), up(mu + r)) if sound else (mu - r, mu + r)


def center(lo: torch.Tensor, hi: torch.Tensor, sound: bool):
    """(mu, r) of the box [lo, hi]; ``sound``: r rounded up so that [mu - r, mu + r] holds the box."""
    mu = (lo + hi) / 2
    if sound:
        return mu, up(torch.maximum(hi - mu, mu - lo))
    return mu, (hi - lo) / 2


def input_box(x: torch.Tensor, eps: float, sound: bool):
    """(mu, r) of the pixel box [x - eps, x + eps] ∩ [0, 1] for x (N, C, H, W) in [0, 1];
    ``sound``: in float64, detached, rounded outward."""
    if sound:
        x = x.detach().double()
        return center(down(x - eps).clamp_min(0), up(x + eps).clamp_max(1), True)
    return center((x - eps).clamp_min(0), (x + eps).clamp_max(1), False)


def _param(t: torch.Tensor, like: torch.Tensor, sound: bool) -> torch.Tensor:
    """A weight or buffer in ``like``'s dtype and device: a detached copy when ``sound``, else
    the tensor itself (its gradient flows)."""
    return t.detach().to(like) if sound else t.to(like)


def _affine(lin, lin_abs, bias, mu, r, n: int, sound: bool):
    """(lin(mu) + bias, |lin|(r)) for a linear map ``lin`` with fan-in ``n``; ``sound`` adds the rounding slack."""
    if not sound:
        return lin(mu) + bias, lin_abs(r)
    slack = gamma(n) * (lin_abs(mu.abs() + r) + bias.abs())
    return lin(mu) + bias, up(lin_abs(r) + slack)


def _channels(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def _weights(m: nn.Module, like: torch.Tensor, sound: bool):
    w = _param(m.weight, like, sound)
    b = _param(m.bias, like, sound) if m.bias is not None else torch.zeros(w.shape[0], dtype=like.dtype,
                                                                            device=like.device)
    return w, b


def step(kind: str, m: nn.Module, mu: torch.Tensor, r: torch.Tensor, sound: bool):
    """The box (mu, r) of a layer's input -> the box of its output (``kind``: the layer's rule in
    :func:`jrbench.models.lipschitz.layer_kind`)."""
    if kind == "normalize":
        std = _param(m.std, mu, sound)
        return _affine(lambda t: t / std, lambda t: t / std, -_param(m.mean, mu, sound) / std, mu, r, 2, sound)
    if kind in ("linear", "conv2d"):
        w, b = _weights(m, mu, sound)
        if kind == "linear":
            return _affine(lambda t: F.linear(t, w), lambda t: F.linear(t, w.abs()), b, mu, r, w.shape[1], sound)
        args = (m.stride, m.padding, m.dilation, m.groups)
        return _affine(lambda t: F.conv2d(t, w, None, *args), lambda t: F.conv2d(t, w.abs(), None, *args),
                       b.view(-1, 1, 1), mu, r, w[0].numel(), sound)
    if kind == "batchnorm":
        scale = (_param(m.running_var, mu, sound) + m.eps).rsqrt()
        scale = scale * _param(m.weight, mu, sound) if m.weight is not None else scale
        shift = -_param(m.running_mean, mu, sound) * scale
        shift = shift + _param(m.bias, mu, sound) if m.bias is not None else shift
        a, b = _channels(scale, mu), _channels(shift, mu)
        return _affine(lambda t: t * a, lambda t: t * a.abs(), b, mu, r, 4, sound)
    if kind == "avgpool2d":
        k = m.kernel_size ** 2 if isinstance(m.kernel_size, int) else math.prod(m.kernel_size)
        return _affine(m, m, torch.zeros((), dtype=mu.dtype, device=mu.device), mu, r, k, sound)
    if kind in MONOTONE:
        return center(*_monotone(m, *box(mu, r, sound), sound), sound)
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return m(mu), m(r)
    return mu, r  # Identity, Dropout (eval semantics)


def _monotone(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor, sound: bool):
    """The bounds (lo, hi) through a monotone layer (activation, max pooling): its corners. MaxMin
    is monotone in each input: its exact max and min of the corners bound it."""
    if isinstance(m, MaxMin):
        return MaxMin.exact(lo), MaxMin.exact(hi)
    lo, hi = m(lo), m(hi)
    if sound and not isinstance(m, (nn.MaxPool2d, nn.ReLU, nn.Hardtanh)):  # not exact in floating point
        lo, hi = down(lo - 4 * U * lo.abs()), up(hi + 4 * U * hi.abs())
    return lo, hi


def propagate(layers: list[Layer], mu: torch.Tensor, r: torch.Tensor, sound: bool,
              trace: list | None = None):
    """The box (mu, r) through ``layers``; ``trace`` (a list) receives the bounds (lower, upper) of
    every layer's input, in order (CROWN-IBP's intermediate bounds). A run of monotone layers
    (activations, max pooling, and the shape-only layers between them) maps the bounds (lower,
    upper) directly, without going back to center and radius between them. ``sound``: no autograd
    graph."""
    bounds = None  # (lower, upper) while inside a run of monotone layers
    with torch.set_grad_enabled(torch.is_grad_enabled() and not sound):
        for layer in layers:
            m, kind = layer.module, layer.kind
            if kind in MONOTONE or (bounds is not None and kind == "identity"):
                bounds = bounds if bounds is not None else box(mu, r, sound)
                if trace is not None:
                    trace.append(bounds)
                if kind in MONOTONE:
                    bounds = _monotone(m, *bounds, sound)
                elif isinstance(m, (nn.Flatten, nn.Unflatten)):
                    bounds = m(bounds[0]), m(bounds[1])
                continue
            if bounds is not None:
                mu, r = center(*bounds, sound)
                bounds = None
            if trace is not None:
                trace.append(box(mu, r, sound))
            mu, r = step(kind, m, mu, r, sound)
        if bounds is not None:
            mu, r = center(*bounds, sound)
    return mu, r


def elision_layer(layers: list[Layer]) -> int | None:
    """Index of the final nn.Linear that the margins fold in (over a flat input), else None."""
    last = final_linear(layers)
    if last is not None and len(layers[last].input_shape) != 1:
        return None  # a Linear over the last axis of a larger tensor: no elision
    return last


def elided_margins(linear: nn.Module, mu: torch.Tensor, r: torch.Tensor, y: torch.Tensor,
                   sound: bool) -> torch.Tensor:
    """(N, C) lower bounds of (W_y - W_j) h + (b_y - b_j) over the box (mu, r) (N, F) of the final
    nn.Linear's input h; +inf on the label's own column. The classes go in chunks of at most
    :data:`CHUNK_ELEMENTS` coefficients (all at once for small batches)."""
    w, b = _weights(linear, mu, sound)
    mu, r = mu.flatten(1), r.flatten(1)
    n, f = mu.shape
    classes = w.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // max(1, n * f))
    wy, by = w[y][:, None, :], b[y][:, None]
    columns = []
    with torch.set_grad_enabled(torch.is_grad_enabled() and not sound):
        for start in range(0, classes, chunk):
            d, db = wy - w[None, start:start + chunk], by - b[None, start:start + chunk]  # (N, c, F), (N, c)
            middle, radius = (d * mu[:, None]).sum(-1) + db, (d.abs() * r[:, None]).sum(-1)
            if sound:
                slack = gamma(f + 1) * ((d.abs() * (mu.abs() + r)[:, None]).sum(-1) + db.abs())
                columns.append(down(middle - up(radius + slack)))
            else:
                columns.append(middle - radius)
    low = torch.cat(columns, 1)
    return (down(low) if sound else low).scatter(1, y[:, None], math.inf)


def margin_lower_bounds(layers: list[Layer], x: torch.Tensor, y: torch.Tensor, eps: float,
                        sound: bool) -> torch.Tensor:
    """(N, C) lower bounds of f_y - f_j over the L-inf box [x - eps, x + eps] ∩ [0, 1] (pixels,
    x (N, C, H, W), labels y (N,) on x's device); +inf on the label's own column. Folds the final
    nn.Linear into the margins (:func:`elided_margins`) when there is one. ``sound``: float64 with
    outward rounding; else differentiable in x's dtype."""
    mu, r = input_box(x, eps, sound)
    last = elision_layer(layers)
    if last is None:
        lo, hi = box(*propagate(layers, mu, r, sound), sound)
        low = lo.gather(1, y[:, None]) - hi
        return (down(low) if sound else low).scatter(1, y[:, None], math.inf)
    mu, r = propagate(layers[:last], mu, r, sound)
    return elided_margins(layers[last].module, mu, r, y, sound)
