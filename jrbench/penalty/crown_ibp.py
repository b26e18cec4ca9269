"""CROWN-IBP's margin bounds for training (H. Zhang, H. Chen, C. Xiao, S. Gowal, R. Stanforth, B. Li,
D. Boning, C.-J. Hsieh, "Towards stable and efficient training of verifiably robust neural
networks", ICLR 2020, arXiv:1906.06316): differentiable, in the model's dtype.

Interval bounds of every layer's input come first (:func:`jrbench.models.interval.propagate`,
``sound=False``: the pass ``--reg ibp`` trains with); then one backward linear-relaxation pass
(CROWN) from the margin specification f_y - f_j, folded into the final nn.Linear (coefficients
W_y - W_j, constant b_y - b_j), down to the pixels, with those interval bounds as the
pre-activation bounds:

- an affine layer maps the coefficients by its transpose (Lambda <- Lambda W; the constant gains
  Lambda b); convolutions by the transposed convolution;
- a ReLU (LeakyReLU(a), 0 <= a <= 1) with input bounds l < 0 < u: below by the line through 0 of
  slope 1 when u > -l, else a (CROWN's adaptive choice, which CROWN-IBP keeps), above by the chord
  of slope (u - a l) / (u - l); positive coefficients take the lower line, negative ones the upper;
  stable neurons are exact (slope 1 or a);
- a max-pool window: below by its input with the largest lower bound; above by that input when its
  lower bound beats every other input's upper bound, else by the window's largest upper bound
  (DeepPoly, Singh et al. 2019), as :mod:`jrbench.certify.crown` does;
- the pixels last: min over the box [x - eps, x + eps] ∩ [0, 1] of a . x is
  sum(a+ lo + a- hi).

This is the relaxation of :mod:`jrbench.certify.crown` (whose float64, outward-rounded, detached
code certifies), written again here because training needs gradients with respect to the weights
in float32, and because the flow's order puts the regularizers above the certificates (a module
here cannot import ``jrbench.certify``); the layer rules both use (which activations, the max-pool
windows, the adjoint) live below both, in :mod:`jrbench.models.relaxation_parts`. In exact arithmetic, for a network whose interval bounds
are the ones CROWN uses (one hidden ReLU layer, or a convolution, ReLU and max pool before the
final Linear), both give the same bound (tests/test_ibp_train.py compares them in float64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models import interval
from ..models.lipschitz import Layer
from ..models.relaxation_parts import adjoint, pool_windows as _pool_windows, relu_slope

AFFINE = ("normalize", "linear", "conv2d", "avgpool2d")
RULES = "Normalize, Linear, Conv2d, ReLU, LeakyReLU (slope in [0, 1]), MaxPool2d, AvgPool2d, Flatten, Identity, Dropout"


def unsupported(layers: list[Layer]) -> str | None:
    """None when every layer has a rule here (and the chain ends in a flat nn.Linear), else the
    reason, naming the first layer without one."""
    for layer in layers:
        m = layer.module
        why = None
        if layer.kind == "activation" and relu_slope(m) is None:
            why = f"{type(m).__name__}: the linear relaxation is written for ReLU and LeakyReLU (slope in [0, 1])"
        elif layer.kind == "maxpool2d" and m.ceil_mode:
            why = "MaxPool2d with ceil_mode=True"
        elif layer.kind == "avgpool2d" and (m.ceil_mode or m.divisor_override):
            why = "AvgPool2d with ceil_mode or divisor_override"
        elif layer.kind == "batchnorm":
            why = f"{type(m).__name__}"
        if why is not None:
            return f"no CROWN-IBP rule for layer {layer.path} ({why}); it covers {RULES}"
    if interval.elision_layer(layers) is None:
        return "the chain does not end in an nn.Linear over a flat input (the margins fold into it)"
    return None


def _conv_transpose(m: nn.Conv2d, lam: torch.Tensor, in_shape) -> torch.Tensor:
    """W^T lam for convolution ``m`` (no bias); lam (B, C_out, H', W') -> (B, *in_shape)."""
    w = m.weight.to(lam)
    if isinstance(m.padding, str):  # 'same' / 'valid': the adjoint by autograd, kept differentiable
        return _adjoint(lambda t: F.conv2d(t, w, None, m.stride, m.padding, m.dilation, m.groups), in_shape, lam)
    extra = []
    for size, out, s, p, d, k in zip(in_shape[1:], lam.shape[2:], m.stride, m.padding, m.dilation, m.kernel_size):
        extra.append(size - ((out - 1) * s - 2 * p + d * (k - 1) + 1))
    return F.conv_transpose2d(lam, w, None, m.stride, m.padding, tuple(extra), m.groups, m.dilation)


def _adjoint(fn, in_shape, out: torch.Tensor) -> torch.Tensor:
    """A^T out for a linear map ``fn`` on inputs (B, *in_shape), differentiable in ``out`` and ``fn``'s weights."""
    return adjoint(fn, in_shape, out, differentiable=True)


def _affine_back(layer: Layer, lam: torch.Tensor):
    """(Lambda A, Lambda . b) for an affine layer h -> A h + b; lam (N, S, *out)."""
    m, kind = layer.module, layer.kind
    n, s = lam.shape[:2]
    shape = layer.input_shape
    if kind == "normalize":
        std = m.std.to(lam).reshape(1, 1, -1, *([1] * (len(shape) - 1)))
        mean = m.mean.to(lam).reshape(std.shape)
        return lam / std, -(lam * mean / std).flatten(2).sum(-1)
    if kind == "linear":
        const = lam @ m.bias.to(lam) if m.bias is not None else lam.new_zeros(n, s)
        return lam @ m.weight.to(lam), const
    flat = lam.reshape(n * s, *lam.shape[2:])
    if kind == "conv2d":
        const = (lam.sum((-2, -1)) @ m.bias.to(lam)) if m.bias is not None else lam.new_zeros(n, s)
        return _conv_transpose(m, flat, shape).reshape(n, s, *shape), const
    return _adjoint(m, shape, flat).reshape(n, s, *shape), lam.new_zeros(n, s)  # average pooling


def _relu_back(layer: Layer, lam: torch.Tensor, l: torch.Tensor, u: torch.Tensor):
    """(Lambda on the ReLU's input, constant) for the lower bound of Lambda . relu(h), l <= h <= u."""
    a = relu_slope(layer.module)
    l, u = l.unsqueeze(1), u.unsqueeze(1)
    unstable = (l < 0) & (u > 0)
    width = torch.where(unstable, u - l, torch.ones_like(u))
    chord = torch.where(unstable, (u - a * l) / width, torch.where(l >= 0, 1.0, a))
    intercept = torch.where(unstable, (a - chord) * l, torch.zeros_like(l))  # the chord through (l, a l)
    lower = torch.where(unstable, torch.where(u > -l, 1.0, a), torch.where(l >= 0, 1.0, a)).to(lam)
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    return pos * lower + neg * chord, (neg * intercept).flatten(2).sum(-1)


def _maxpool_back(layer: Layer, lam: torch.Tensor, l: torch.Tensor, u: torch.Tensor):
    """(Lambda on the max pool's input, constant) for the lower bound of Lambda . maxpool(h)."""
    m = layer.module
    n, s = lam.shape[:2]
    c, h, w = layer.input_shape
    lw, uw = _pool_windows(m, l, -math.inf), _pool_windows(m, u, -math.inf)
    best, star = lw.max(2)  # (N, C, L)
    others = uw.scatter(2, star[:, :, None], -math.inf).amax(2)
    decided = (best >= others).unsqueeze(1)  # the window's max is its input star exactly
    top = uw.amax(2).unsqueeze(1)
    index = _pool_windows(m, torch.arange(h * w, dtype=l.dtype, device=l.device).view(1, 1, h, w), -1.0)
    table = index[0, 0].long()  # (K, L) input positions
    flat = table[star, torch.arange(star.shape[-1], device=star.device)]  # (N, C, L)
    lam_w = lam.reshape(n, s, c, -1)
    pos, neg = lam_w.clamp(min=0), lam_w.clamp(max=0)
    coef = pos + torch.where(decided, neg, torch.zeros_like(neg))
    const = torch.where(decided, torch.zeros_like(neg), neg * top).flatten(2).sum(-1)
    new = lam.new_zeros(n, s, c, h * w).scatter_add(3, flat.unsqueeze(1).expand(n, s, c, flat.shape[-1]), coef)
    return new.reshape(n, s, c, h, w), const


def margin_lower_bounds(layers: list[Layer], x: torch.Tensor, y: torch.Tensor, eps: float,
                        trace: list | None = None) -> torch.Tensor:
    """(N, C) CROWN-IBP lower bounds of f_y - f_j over the L-inf box [x - eps, x + eps] ∩ [0, 1]
    (pixels, x (N, C, H, W), labels y (N,)), +inf on the label's own column; differentiable, in
    x's dtype. ``trace``: the interval bounds (lower, upper) of every layer's input up to the final
    Linear (:func:`jrbench.models.interval.propagate`), when the caller has them already."""
    why = unsupported(layers)
    if why is not None:
        raise UserError(f"--reg crown-ibp: {why}.")
    last = interval.elision_layer(layers)
    mu0, r0 = interval.input_box(x, eps, False)
    if trace is None:
        trace = []
        interval.propagate(layers[:last], mu0, r0, False, trace)
    linear = layers[last].module
    w = linear.weight.to(x)
    b = linear.bias.to(x) if linear.bias is not None else torch.zeros(w.shape[0], dtype=x.dtype, device=x.device)
    classes = w.shape[0]
    steps = torch.arange(classes - 1, device=x.device)
    others = steps[None] + (steps[None] >= y[:, None]).long()  # (N, C - 1): the classes j != y
    lam = w[y][:, None, :] - w[others]  # (N, C - 1, F): W_y - W_j
    const = b[y][:, None] - b[others]
    for i in reversed(range(last)):
        layer = layers[i]
        if layer.kind in AFFINE:
            lam, c = _affine_back(layer, lam)
            const = const + c
        elif layer.kind in ("activation", "maxpool2d"):
            l, u = trace[i]
            lam, c = (_relu_back if layer.kind == "activation" else _maxpool_back)(layer, lam, l, u)
            const = const + c
        else:  # Flatten, Unflatten, Identity, Dropout (eval semantics)
            lam = lam.reshape(*lam.shape[:2], *layer.input_shape)
    lo, hi = interval.box(mu0, r0, False)
    a = lam.flatten(2)
    low = const + (a.clamp(min=0) * lo.flatten(1)[:, None] + a.clamp(max=0) * hi.flatten(1)[:, None]).sum(-1)
    out = torch.full((len(y), classes), math.inf, dtype=low.dtype, device=low.device)
    return out.scatter(1, others, low)
