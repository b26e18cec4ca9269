"""Layers that are 1-Lipschitz in L2 by construction, whatever their weights.

- :class:`AOLLinear`, :class:`AOLConv2d`: almost-orthogonal layers (B. Prach, C. H. Lampert,
  "Almost-orthogonal layers for efficient general-purpose Lipschitz networks", ECCV 2022). The
  layer keeps an unconstrained parameter W and applies W D, D diagonal with
  D_ii = (sum_j |W^T W|_ij)^(-1/2): then ||W D||_2 <= 1 (Schur's test: the row sums of
  |(W D)^T (W D)| = D |W^T W| D are at most 1, so its largest eigenvalue is). Rescaling the rows
  instead (D W with D_ii = (sum_j |W W^T|_ij)^(-1/2)) is the same theorem for W^T; each layer takes
  the side whose Gram matrix is smaller (the cost per step is that matrix product). When W is
  orthogonal, D = I: the layers are initialized orthogonal, hence gradient norm preserving at
  the start.
- A convolution (zero padding, dilation 1, any stride) rescales its input channels: the operator's
  W^T W is the convolution with P[c, c', delta] = sum_o sum_u K[o, c, u] K[o, c', u + delta], so
  D_cc = (sum_{c', delta} |P[c, c', delta]|)^(-1/2) bounds the infinite convolution by 1, and the
  padded, cropped and strided one (a restriction of it) too. A convolution whose stride equals its
  kernel, without padding, acts on disjoint patches: it is the matrix K reshaped to
  (c_out, c_in k_h k_w) applied patch by patch, rescaled as a matrix (a tighter rule, per kernel
  entry).
- :class:`MaxMin`: the channels split in halves a, b -> (max(a, b), min(a, b)) (C. Anil, J. Lucas,
  R. Grosse, "Sorting out Lipschitz function approximation", ICML 2019; GroupSort with groups of 2):
  a permutation of each pair, so 1-Lipschitz and gradient norm preserving, unlike ReLU.

:meth:`AOLLinear.plain` and :meth:`AOLConv2d.plain` give the equivalent ordinary ``nn.Linear`` /
``nn.Conv2d`` (the rescaled weight computed in float64, stored in the layer's dtype): the
certificates of :mod:`jrbench.models.lipschitz`, :mod:`jrbench.certify.ibp` and
:mod:`jrbench.certify.crown` see those.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

TINY = 1e-30  # a zero column's Gram sum: any scale leaves its zero weights at zero


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def aol_matrix(w: torch.Tensor) -> torch.Tensor:
    """The AOL rescaling of a matrix ``w`` (m, n): W D (columns) when n <= m, else D W (rows); its
    L2 operator norm is at most 1 in exact arithmetic. Differentiable in ``w``."""
    if w.shape[1] <= w.shape[0]:
        gram = w.T @ w  # (n, n)
        return w * gram.abs().sum(1).clamp_min(TINY).rsqrt()[None, :]
    gram = w @ w.T  # (m, m)
    return w * gram.abs().sum(1).clamp_min(TINY).rsqrt()[:, None]


def aol_kernel(k: torch.Tensor) -> torch.Tensor:
    """The AOL rescaling of a convolution kernel ``k`` (c_out, c_in, k_h, k_w) by input channel, for
    stride 1 and any zero padding (and so any stride): D_cc = (sum_{c', delta} |P[c, c', delta]|)^(-1/2)."""
    kh, kw = k.shape[-2:]
    kt = k.transpose(0, 1)  # (c_in, c_out, k_h, k_w): one "image" of c_out channels per input channel
    p = F.conv2d(kt, kt, padding=(kh - 1, kw - 1))  # (c_in, c_in, 2 k_h - 1, 2 k_w - 1)
    return k * p.abs().sum((1, 2, 3)).clamp_min(TINY).rsqrt()[None, :, None, None]


class AOLLinear(nn.Module):
    """x -> x (W D)^T + b with ||W D||_2 <= 1 (:func:`aol_matrix`); W initialized orthogonal."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.orthogonal_(self.weight)

    def rescaled_weight(self) -> torch.Tensor:
        return aol_matrix(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rescaled_weight(), self.bias)

    @torch.no_grad()
    def plain(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (weight W D computed in float64, stored in W's dtype and device)."""
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        out.weight.copy_(aol_matrix(self.weight.double()))
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class AOLConv2d(nn.Module):
    """A 2-D convolution (zero padding, dilation 1, groups 1) with its kernel rescaled so that its L2
    operator norm is at most 1 at every input size: by input channel (:func:`aol_kernel`), or as a
    matrix on disjoint patches when the stride equals the kernel and there is no padding. The
    kernel is initialized as an isometry: an orthogonal matrix at one tap (patches: an orthogonal
    patch matrix)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding = _pair(padding)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise UserError(f"AOLConv2d needs kernel and stride >= 1 and padding >= 0, got {kernel_size}, "
                            f"{stride}, {padding}.")
        self.patches = self.stride == self.kernel_size and self.padding == (0, 0)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        with torch.no_grad():
            if self.patches:
                nn.init.orthogonal_(self.weight.view(out_channels, -1))
            else:
                tap = torch.empty(out_channels, in_channels)
                nn.init.orthogonal_(tap)
                self.weight[:, :, self.kernel_size[0] // 2, self.kernel_size[1] // 2] = tap

    def rescaled_weight(self) -> torch.Tensor:
        w = self.weight
        if self.patches:
            return aol_matrix(w.reshape(w.shape[0], -1)).reshape(w.shape)
        return aol_kernel(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.rescaled_weight(), self.bias, self.stride, self.padding)

    @torch.no_grad()
    def plain(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` (the rescaled kernel computed in float64, stored in W's dtype)."""
        out = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                        bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        w = self.weight.double()
        out.weight.copy_(aol_matrix(w.reshape(w.shape[0], -1)).reshape(w.shape) if self.patches else aol_kernel(w))
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


class MaxMin(nn.Module):
    """Dimension 1 (channels or features, an even number) split in halves a, b ->
    (max(a, b), min(a, b)), concatenated: 1-Lipschitz and gradient norm preserving.

    Computed as (b + relu(a - b), a - relu(a - b)): the same numbers in exact arithmetic, within
    an ulp of |a - b| in floating point, and its backward pass is three times faster on a CPU
    than that of ``torch.maximum`` / ``torch.minimum`` (the ReLU form is also what
    :mod:`jrbench.certify.relu_form` hands to CROWN). :meth:`exact` takes the max and min
    themselves (exact in floating point; interval bounds use it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._halves(x)
        r = torch.relu(a - b)
        return torch.cat([b + r, a - r], dim=1)

    @classmethod
    def exact(cls, x: torch.Tensor) -> torch.Tensor:
        a, b = cls._halves(x)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)

    @staticmethod
    def _halves(x: torch.Tensor):
        if x.dim() < 2 or x.shape[1] % 2:
            raise UserError(f"MaxMin needs an even number of channels (dimension 1), got shape {tuple(x.shape)}.")
        return x.chunk(2, dim=1)


REPARAMETRIZED = (AOLLinear, AOLConv2d)  # layers whose plain() is the ordinary layer they compute
ONE_LIPSCHITZ = (AOLLinear, AOLConv2d, MaxMin)  # 1-Lipschitz in L2 by construction

