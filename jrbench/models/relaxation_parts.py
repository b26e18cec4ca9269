"""The layer rules that linear-relaxation bounds share: the certificates' CROWN
(:mod:`jrbench.certify.relaxations`, :mod:`jrbench.certify.crown`; float64, rounded outward,
detached) and CROWN-IBP training (:mod:`jrbench.penalty.crown_ibp`; differentiable, in the model's
dtype). Which activations have a relaxation (ReLU and LeakyReLU with slope in [0, 1]: Zhang et al.
2018), the inputs of each max-pool window, and the adjoint A^T of a linear map A given as a
function. Kept here, below both, because the flow puts the regularizers above the certificates.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def relu_slope(m: nn.Module) -> float | None:
    """The negative-side slope a of a ReLU (0) or LeakyReLU (0 <= a <= 1); None for any other module."""
    if type(m) is nn.ReLU:
        return 0.0
    if isinstance(m, nn.LeakyReLU) and 0 <= m.negative_slope <= 1:
        return float(m.negative_slope)
    return None


def pool_windows(m: nn.MaxPool2d, t: torch.Tensor, fill: float) -> torch.Tensor:
    """(N, C, K, L): the K inputs of each of the L windows of max pool ``m`` over t (N, C, H, W),
    padding with ``fill``."""
    kh, kw = (m.kernel_size,) * 2 if isinstance(m.kernel_size, int) else m.kernel_size
    ph, pw = (m.padding,) * 2 if isinstance(m.padding, int) else m.padding
    padded = F.pad(t, (pw, pw, ph, ph), value=fill)
    cols = F.unfold(padded, (kh, kw), dilation=m.dilation, stride=m.stride or m.kernel_size)
    return cols.reshape(t.shape[0], t.shape[1], kh * kw, -1)


def adjoint(fn, in_shape, out: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """A^T out for a linear map ``fn`` (no bias) on inputs of shape (B, *in_shape); ``out`` (B, *A's
    output). ``differentiable``: the result keeps the graph to ``out`` and to ``fn``'s weights
    (training); else only where ``out`` itself requires grad."""
    with torch.enable_grad():
        probe = out.new_zeros((out.shape[0], *in_shape), requires_grad=True)
        (grad,) = torch.autograd.grad(fn(probe), probe, out, create_graph=differentiable or out.requires_grad)
    return grad
