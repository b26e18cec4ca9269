"""The pieces of linear relaxation shared by CROWN's dense and windowed backward passes
(:mod:`jrbench.certify.crown`, :mod:`jrbench.certify.crown_patches`): the perturbation set and its
sound concretization, the per-channel affine layers, the ReLU and max-pool relaxations' parts, and
the reach that scales a step's rounding slack. float64 throughout, with outward rounding
(:mod:`jrbench.certify.rounding`); the mathematics is in :mod:`jrbench.certify.crown`'s docstring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..models.lipschitz import Layer
from ..models.relaxation_parts import adjoint, pool_windows, relu_slope
from .rounding import U, down, gamma, up

FLAG = "--crown"
NORMS = ("linf", "l2")


_relu_slope = relu_slope  # the rules shared with CROWN-IBP training (jrbench.models.relaxation_parts)
_pool_windows = pool_windows


@dataclass
class InputSet:
    """The perturbation set in pixels: the ball of radius ``eps`` (``norm``) around ``x0`` (N, C, H, W)
    intersected with [0, 1]; ``lo``, ``hi`` the box [x0 - eps, x0 + eps] ∩ [0, 1], rounded outward."""

    x0: torch.Tensor
    eps: float
    norm: str
    lo: torch.Tensor
    hi: torch.Tensor

    @classmethod
    def make(cls, x: torch.Tensor, eps: float, norm: str) -> "InputSet":
        if norm not in NORMS:
            raise UserError(f"certify {FLAG}: norm must be one of {', '.join(NORMS)}, not {norm!r}.")
        if not (isinstance(eps, (int, float)) and 0 <= eps < math.inf):
            raise UserError(f"certify {FLAG}: eps must be a finite number >= 0 (pixel units), not {eps!r}.")
        x0 = x.detach().double()
        if bool(((x0 < 0) | (x0 > 1)).any()):
            raise UserError(f"certify {FLAG}: the inputs must be pixels in [0, 1].")
        lo, hi = down(x0 - eps).clamp_min(0), up(x0 + eps).clamp_max(1)
        return cls(x0, float(eps), norm, lo, hi)

    def select(self, k: int) -> "InputSet":
        """The set of example ``k`` alone."""
        return InputSet(self.x0[k:k + 1], self.eps, self.norm, self.lo[k:k + 1], self.hi[k:k + 1])

    def lower(self, lam: torch.Tensor, dual_steps: int = 0) -> torch.Tensor:
        """(N, S) sound lower bounds of min over the set of lam . x, lam (N, S, C, H, W) float64."""
        a = lam.flatten(2)
        d = a.shape[-1]
        lo, hi = self.lo.flatten(1), self.hi.flatten(1)
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        size = pos - neg  # |a|, exactly
        box = _dot(pos, lo) + _dot(neg, hi)
        best = down(box - up(gamma(d) * _dot(size, hi)))  # |x| <= hi on [0, 1]
        if self.norm == "linf" or self.eps == 0:
            return best
        x0 = self.x0.flatten(1)
        center = _dot(a, x0) - up(gamma(d) * _dot(size, x0))
        norm_a = up(torch.sqrt(up(torch.linalg.vector_norm(a, 2, dim=-1).square() * (1 + gamma(d)))))
        best = torch.maximum(best, down(down(center) - up(self.eps * norm_a)))
        if dual_steps > 0:
            best = torch.maximum(best, self._dual(a, x0[:, None], lo[:, None], hi[:, None], norm_a, dual_steps))
        return best

    def _dual(self, a, x0, lo, hi, norm_a, steps: int) -> torch.Tensor:
        """max over mu >= 0 of g(mu) = sum_i min_{t in [lo_i, hi_i]} (a_i t + mu (t - x0_i)^2) - mu eps^2,
        a lower bound of min a.x over the L2 ball ∩ box for every mu (weak duality). Golden-section
        search on log mu around the ball's optimum ||a|| / (2 eps); the value at the best mu is
        evaluated soundly (the tangent of each convex term at the computed minimizer, rounded)."""
        eps2 = self.eps * self.eps
        step_lo, step_hi, base = lo - x0, hi - x0, _dot(a, x0[:, 0])

        def value(log_mu):  # (N, S) g(mu) at the computed minimizers (for the search only)
            mu = log_mu.exp()
            step = (a * (-0.5 / mu)[..., None]).clamp(min=step_lo, max=step_hi)  # t - x0
            return base + (step * (a + mu[..., None] * step)).sum(-1) - mu * eps2

        center = torch.log(norm_a.clamp_min(1e-300) / (2 * self.eps))
        left, right = center - 9.0, center + 5.0
        ratio = (math.sqrt(5) - 1) / 2
        m1, m2 = right - ratio * (right - left), left + ratio * (right - left)
        v1, v2 = value(m1), value(m2)
        for _ in range(steps):  # golden sections: one of the two inner points carries over
            go_right = v2 > v1
            left = torch.where(go_right, m1, left)
            right = torch.where(go_right, right, m2)
            new = torch.where(go_right, left + ratio * (right - left), right - ratio * (right - left))
            v_new = value(new)
            m1, m2 = torch.where(go_right, m2, new), torch.where(go_right, new, m1)
            v1, v2 = torch.where(go_right, v2, v_new), torch.where(go_right, v_new, v1)
        mu = torch.where(v1 > v2, m1, m2).exp()[..., None]
        t = (x0 - a / (2 * mu)).clamp(min=lo, max=hi)
        slope = a + 2 * mu * (t - x0)  # the derivative of a t + mu (t - x0)^2 at t
        terms = a * t + mu * (t - x0) ** 2 + torch.minimum(slope * (lo - t), slope * (hi - t))
        d = a.shape[-1]
        slack = gamma(8 * d) * (3 * a.abs() + 4 * mu).sum(-1)  # |t|, |t - x0|, |lo - t| <= 1
        total = down(terms.sum(-1) - up(slack))
        return down(total - up(up(mu[..., 0] * eps2) * (1 + 4 * U)))


def _dots(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, S, K): the rows of a (N, S, D) times the K columns of v (N, D, K)."""
    if a.shape[0] <= 32:
        return torch.stack([a[k] @ v[k] for k in range(a.shape[0])])
    return torch.matmul(a, v)


def _dot(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, S): the rows of a (N, S, D) times v (N, D): a matrix-vector product per example when
    there are few examples and many rows (faster on CPUs than a batched product or mul and sum)."""
    if a.shape[1] > 1 and a.shape[0] <= 32:
        return torch.stack([a[k] @ v[k] for k in range(a.shape[0])])
    return (a * v.unsqueeze(1)).sum(-1)


def _diag(layer: Layer, like: torch.Tensor):
    """(scale, shift, |shift| bound) of a per-channel affine layer, float64, channel-broadcast."""
    m = layer.module
    view = (1, -1) + (1,) * (len(layer.input_shape) - 1)
    if layer.kind == "normalize":
        std, mean = m.std.detach().to(like).reshape(view), m.mean.detach().to(like).reshape(view)
        return 1 / std, -mean / std, mean.abs() / std
    scale = (m.running_var.detach().to(like) + m.eps).rsqrt()
    scale = scale * m.weight.detach().to(like) if m.weight is not None else scale
    mean_part = -m.running_mean.detach().to(like) * scale
    shift = mean_part + m.bias.detach().to(like) if m.bias is not None else mean_part
    mag = mean_part.abs() + (m.bias.detach().to(like).abs() if m.bias is not None else 0)
    return scale.reshape(view), shift.reshape(view), mag.reshape(view)


def _affine_reach(layer: Layer, mag_in: torch.Tensor) -> torch.Tensor:
    """(N, 1): the largest |A| mag_in + |b| over an affine layer's outputs (mag_in (N, *in) bounds
    |h|), the factor of the rounding slack of a step through it."""
    m, kind = layer.module, layer.kind
    if kind in ("normalize", "batchnorm"):
        scale, _, shift_mag = _diag(layer, mag_in)
        reach = mag_in * scale.abs() + shift_mag
    elif kind == "linear":
        w = m.weight.detach().to(mag_in)
        reach = F.linear(mag_in, w.abs(), m.bias.detach().to(mag_in).abs() if m.bias is not None else None)
    elif kind == "conv2d":
        w = m.weight.detach().to(mag_in)
        reach = F.conv2d(mag_in, w.abs(), m.bias.detach().to(mag_in).abs() if m.bias is not None else None,
                         m.stride, m.padding, m.dilation, m.groups)
    else:  # average pooling: non-negative weights
        reach = m(mag_in)
    return reach.flatten(1).amax(-1, keepdim=True)


def _adjoint(fn, in_shape, out: torch.Tensor) -> torch.Tensor:
    """A^T out for a linear map ``fn`` (no bias) on inputs of shape (B, *in_shape) (detached unless
    ``out`` requires grad)."""
    return adjoint(fn, in_shape, out, differentiable=False)


def _relu_lines(l: torch.Tensor, u: torch.Tensor, a: float, alpha: torch.Tensor | None):
    """(lower slope, upper slope, upper intercept, unstable) of ReLU/LeakyReLU(a) on [l, u] (any
    shapes that broadcast with ``alpha``), sound under
    rounding: the chord's slope and intercept round up. ``alpha`` in [0, 1] chooses the lower slope
    a + alpha (1 - a) of unstable neurons (None: CROWN's, 1 when u > -l)."""
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    num = up(u - down(a * l)) if a else u
    den = down(u - l)
    chord = up(num / torch.where(unstable, den, torch.ones_like(den)))
    chord = chord.clamp(max=1.0)  # the exact chord slope is < 1; rounding must not pass it
    upper_slope = torch.where(active, 1.0, torch.where(inactive, a, chord))
    intercept = torch.where(unstable, up(up(chord - a) * (-l)), 0.0)
    if alpha is None:
        alpha = (u > -l).to(l)
    lower = a + alpha * (1 - a) if a else alpha
    lower_slope = torch.where(active, 1.0, torch.where(inactive, a, lower))
    return lower_slope, upper_slope, intercept, unstable


def _l1(lam: torch.Tensor) -> torch.Tensor:
    """(N, S) ||lam||_1 over each specification's coefficients."""
    return torch.linalg.vector_norm(lam.flatten(2), 1, dim=-1)




def _star_index(index: torch.Tensor, star: torch.Tensor) -> torch.Tensor:
    """(N, C, L) flat input positions of the chosen window entries ``star`` (N, C, L)."""
    table = index[0, 0].long()  # (K, L)
    return table[star, torch.arange(star.shape[-1], device=star.device)]
