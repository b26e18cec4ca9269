"""Linear-relaxation certificates: CROWN (Zhang et al. 2018, arXiv:1811.00866) and alpha-CROWN
(Xu et al. 2021, arXiv:2011.13824), for L-inf and L2 balls intersected with the pixel box [0, 1].

A bound on a linear function of the logits (the margin f_y - f_j, folded into the last layer) is
propagated backwards through the model's chain of layers (:func:`jrbench.models.lipschitz.layer_chain`):
an affine layer maps the coefficients exactly (Lambda <- Lambda W, constant += Lambda b); a ReLU or
LeakyReLU(a), 0 <= a <= 1, with pre-activation bounds l < 0 < u is bounded above by its chord
(slope (u - a l) / (u - l)) and below by a line through 0 of slope in [a, 1] (CROWN: 1 when u > -l,
else a; alpha-CROWN optimizes it per example, margin and neuron by projected gradient steps, and
every slope in [a, 1] stays sound); a max-pool window is bounded below by its input with the
largest lower bound and above by that input when its lower bound beats every other input's upper
bound, else by the largest upper bound (DeepPoly, Singh et al. 2019). The coefficients reach the
pixels last: over the L-inf box [x - eps, x + eps] ∩ [0, 1], min a.x = sum(min(a lo, a hi)); over
the L2 ball ∩ [0, 1], the larger of the box's bound, a.x0 - eps ||a||_2, and (for margins) the
Lagrangian dual max_mu sum_i min_{t in [lo_i, hi_i]} (a_i t + mu (t - x0_i)^2) - mu eps^2, which any
mu >= 0 keeps sound.

Pre-activation bounds: interval bounds everywhere first (:mod:`jrbench.certify.ibp`), then, layer by
layer, the inputs of each ReLU (or max pool) that are not already exact get the same backward pass
run from that layer (one lower and one upper specification per neuron that can matter: the unstable
ones, and for a ReLU feeding a max pool every neuron that can be positive), and each neuron keeps
the tighter of its two bounds. The input of the first nonlinearity is an affine map of a box: exact
for L-inf; for L2 its ball bound (row norms) is intersected with the box's.

Cost (the passes give the same bounds, up to the order of floating-point sums): a convolutional
layer's neurons run on cropped windows, many examples together
(:mod:`jrbench.certify.crown_patches`); other layers' neurons run with examples of about as many
neurons together, the step through the affine layer below taken once for all; a max pool whose
windows do not overlap and the ReLU below it are one step, and the convolution below them a
product with the rows of its matrix at the windows' chosen inputs (:mod:`jrbench.certify.crown_sparse`).

Arithmetic: float64 on the input's device. Every step adds the rounding slack of its products and
sums (:func:`jrbench.certify.rounding.gamma` times the sum of |Lambda| times the magnitudes its layer's
input can reach, from the sound bounds) and rounds the constant downward; the relaxation's slopes and
intercepts round outward. So a certified margin holds for the network in exact arithmetic with the
model's weights. Layers without a rule here (Tanh, Sigmoid, Hardtanh, ceil-mode pooling) are
refused with a message naming the layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models.architectures import eval_mode
from ..models.lipschitz import Layer, layer_chain, strictly_correct
from . import crown_sparse
from .relaxations import (FLAG, InputSet, _adjoint, _affine_reach, _diag, _l1, _pool_windows, _relu_lines,
                          _relu_slope, _star_index)
from .rounding import U, down, gamma, up

PATCHES = True  # convolutional layers' bounds on cropped windows (jrbench.certify.crown_patches)
FUSE = True  # a max pool and the ReLU below it backwards at once (jrbench.certify.crown_sparse)
GROUP_BUDGET = 1 << 21  # float64 elements of one group's specifications on the largest layer (16 MB)
AFFINE = ("normalize", "linear", "conv2d", "batchnorm", "avgpool2d")


# ----------------------------------------------------------------------------- the chain
def crown_chain(model: nn.Module, flag: str = FLAG) -> list[Layer]:
    """The model's layer chain, or :class:`UserError` naming the first layer CROWN has no rule for."""
    layers = layer_chain(model, flag, ibp=True)
    for layer in layers:
        m = layer.module
        why = None
        if layer.kind == "activation" and _relu_slope(m) is None:
            why = f"{type(m).__name__}: linear relaxations are written for ReLU and LeakyReLU (slope in [0, 1])"
        if layer.kind == "maxpool2d" and m.ceil_mode:
            why = "MaxPool2d with ceil_mode=True"
        if why is not None:
            raise UserError(f"certify {flag} has no rule for layer {layer.path} ({why}); interval bounds "
                            "(--ibp) and the Lipschitz bound cover more layers.")
    return layers


def supports(model: nn.Module) -> str | None:
    """None when CROWN covers ``model``, else the :class:`UserError` message."""
    try:
        crown_chain(model)
    except UserError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- the input set
# ----------------------------------------------------------------------------- one layer backwards
def _affine_back(layer: Layer, lam: torch.Tensor, mag_in: torch.Tensor):
    """(Lambda A, Lambda . b, ||Lambda||_1 max(|A| mag_in + |b|), n) for an affine layer h -> A h + b;
    lam (N, S, *out). The third bounds sum |Lambda| (|A| mag_in + |b|), whose gamma(n) multiple covers
    the step's rounding."""
    m, kind = layer.module, layer.kind
    n_, s_ = lam.shape[:2]
    in_shape = layer.input_shape
    slack = _l1(lam) * _affine_reach(layer, mag_in)
    if kind in ("normalize", "batchnorm"):
        scale, shift, _ = _diag(layer, lam)
        if lam.dim() > 3:  # per channel: the channel sums times the shifts
            bias_term = (lam.flatten(3).sum(-1) * shift.flatten()).sum(-1)
        else:
            bias_term = (lam * shift.unsqueeze(1)).flatten(2).sum(-1)
        return lam * scale.unsqueeze(1), bias_term, slack, 16
    if kind == "linear":
        w = m.weight.detach().to(lam)
        bias_term = (lam * m.bias.detach().to(lam)).flatten(2).sum(-1) if m.bias is not None else lam.new_zeros(n_, s_)
        return lam @ w, bias_term, slack, w.shape[1]
    if kind == "conv2d":
        w = m.weight.detach().to(lam)
        out = lam.reshape(n_ * s_, *lam.shape[2:])
        if not isinstance(m.padding, str):
            new = torch.nn.grad.conv2d_input((n_ * s_, *in_shape), w, out, m.stride, m.padding, m.dilation, m.groups)
        else:
            new = _adjoint(lambda t: F.conv2d(t, w, None, m.stride, m.padding, m.dilation, m.groups), in_shape, out)
        bias_term = (lam.sum((-2, -1)) * m.bias.detach().to(lam)).sum(-1) if m.bias is not None \
            else lam.new_zeros(n_, s_)
        return new.reshape(n_, s_, *in_shape), bias_term, slack, w[0].numel()
    if kind == "avgpool2d":
        out = lam.reshape(n_ * s_, *lam.shape[2:])
        k = m.kernel_size if isinstance(m.kernel_size, int) else math.prod(m.kernel_size)
        return _adjoint(m, in_shape, out).reshape(n_, s_, *in_shape), lam.new_zeros(n_, s_), slack, k * k + 4
    raise AssertionError(kind)


def _relu_back(layer: Layer, lam, l, u, mag_in, alpha):
    """ReLU/LeakyReLU backwards. Stable neurons scale their coefficient by 1 or a; the relaxation's
    two lines are applied to the columns where some example's neuron is unstable (all columns when
    alpha is optimized, or when most are unstable)."""
    a = _relu_slope(layer.module)
    n_, s_ = lam.shape[:2]
    lf, uf = l.flatten(1), u.flatten(1)
    cols = ((lf < 0) & (uf > 0)).any(0).nonzero().flatten()
    if alpha is not None or 3 * len(cols) > lf.shape[1]:
        lower_slope, upper_slope, intercept, _ = _relu_lines(l.unsqueeze(1), u.unsqueeze(1), a, alpha)
        pos = lam.clamp(min=0)
        new = lam * upper_slope + pos * (lower_slope - upper_slope)
        t = intercept.flatten(2)
        bias_term = (lam.flatten(2) * t).sum(-1) - (pos.flatten(2) * t).sum(-1)  # sum of min(lam, 0) t
        reach = (mag_in.unsqueeze(1) + intercept).flatten(2).amax(-1)
        return new, bias_term, _l1(lam) * reach, 8
    flat = lam.flatten(2)
    new = flat * torch.where(lf >= 0, torch.ones_like(lf), torch.full_like(lf, a)).unsqueeze(1)  # float64 slopes
    reach = mag_in.flatten(1).amax(-1, keepdim=True)
    bias_term = lam.new_zeros(n_, s_)
    if len(cols):
        lower_slope, upper_slope, intercept, _ = _relu_lines(lf[:, None, cols], uf[:, None, cols], a, None)
        sub = flat[:, :, cols]
        neg = sub.clamp(max=0)
        new[:, :, cols] = sub * lower_slope + neg * (upper_slope - lower_slope)
        bias_term = (neg * intercept).sum(-1)
        reach = reach + intercept.flatten(1).amax(-1, keepdim=True)
    return new.reshape(lam.shape), bias_term, _l1(lam) * reach, 8


def _maxpool_back(layer: Layer, lam, l, u, mag_in):
    m = layer.module
    n_, s_ = lam.shape[:2]
    c, h, w = layer.input_shape
    lw, uw = _pool_windows(m, l, -math.inf), _pool_windows(m, u, -math.inf)
    best, star = lw.max(2)  # (N, C, L)
    others = uw.scatter(2, star[:, :, None], -math.inf).amax(2)
    decided = best >= others  # the window's max is its input star exactly
    top = uw.amax(2)
    index = _pool_windows(m, torch.arange(h * w, dtype=l.dtype, device=l.device).view(1, 1, h, w), -1.0)
    flat = _star_index(index, star)
    lam_w = lam.reshape(n_, s_, c, star.shape[-1])
    pos, neg = lam_w.clamp(min=0), lam_w.clamp(max=0)
    coef = pos + neg * decided.unsqueeze(1)
    bias_term = (neg * (~decided * top).unsqueeze(1)).flatten(2).sum(-1)
    new = lam.new_zeros(n_, s_, c, h * w)
    new.scatter_add_(3, flat.unsqueeze(1).expand(n_, s_, c, flat.shape[-1]), coef)
    reach = _pool_windows(m, mag_in, 0.0).amax(2) + top.abs()
    slack = _l1(lam_w) * reach.flatten(1).amax(-1, keepdim=True)
    return new.reshape(n_, s_, c, h, w), bias_term, slack, lw.shape[2] + lw.shape[3]


def _step_back(layer: Layer, lam, l, u, alpha, sound: bool):
    """One layer backwards: (lam on the layer's input, constant term, rounding slack)."""
    mag = torch.maximum(-l, u)
    if layer.kind in AFFINE:
        new, const, slack, n = _affine_back(layer, lam, mag)
    elif layer.kind == "activation":
        new, const, slack, n = _relu_back(layer, lam, l, u, mag, alpha)
    elif layer.kind == "maxpool2d":
        new, const, slack, n = _maxpool_back(layer, lam, l, u, mag)
    else:  # Flatten, Unflatten, Identity, Dropout in eval mode
        return lam.reshape(*lam.shape[:2], *layer.input_shape), None, None
    if not sound:
        return new, const, None
    return new, const, up(gamma(n + math.prod(lam.shape[2:])) * slack)


# ----------------------------------------------------------------------------- bounds
@dataclass
class Bounds:
    """Sound float64 bounds of every layer's input: ``lower[i]``, ``upper[i]`` (N, *input_shape of
    layer i); index len(layers) is the output (logits). ``parent``: (the bounds of all examples,
    the indices of these) for a selection (:func:`_select`); ``cache``: what backward passes share
    (:func:`_per_example`)."""

    layers: list[Layer]
    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    input_set: InputSet
    parent: tuple | None = None
    cache: dict = field(default_factory=dict)


def _per_example(bounds: Bounds, key, layers: tuple[int, ...], make):
    """``make(root)`` for the bounds of all examples (computed once while the bounds of ``layers``
    stay the same tensors), at this selection's examples: tensors (or a tuple of them) with the
    examples first."""
    root, ex = bounds.parent if bounds.parent is not None else (bounds, None)
    deps = tuple(t for i in layers for t in (root.lower[i], root.upper[i]))
    hit = root.cache.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], deps)):
        hit = root.cache[key] = (deps, make(root))
    value = hit[1]
    if ex is None:
        return value
    return value.rows(ex) if hasattr(value, "rows") else value[ex]


def backward(bounds: Bounds, k: int, lam: torch.Tensor, alphas: dict | None = None, sound: bool = True,
             dual_steps: int = 0, const: torch.Tensor | None = None, slack: torch.Tensor | None = None) -> torch.Tensor:
    """(N, S) lower bounds of lam . h_k (+ ``const``) over the input set, h_k the input of layer k
    (k = len(layers): the logits), lam (N, S, *shape of h_k); sound (outward rounding, ``slack`` the
    rounding slack so far) unless ``sound`` is False (the alpha optimizer's differentiable pass)."""
    const = lam.new_zeros(lam.shape[:2]) if const is None else const
    slack = lam.new_zeros(lam.shape[:2]) if slack is None else slack
    layers, lower, upper = bounds.layers, bounds.lower, bounds.upper
    i = k - 1
    while i >= 0:
        alpha = alphas.get(i) if alphas else None
        if FUSE and crown_sparse.fusable(layers, i):  # max pool and the ReLU below at once
            alpha = alphas.get(i - 1) if alphas else None
            prep = _per_example(bounds, ("pool_relu", i), (i, i - 1), lambda b, i=i: crown_sparse.prepare(
                b.layers[i], b.layers[i - 1], b.lower[i], b.upper[i], b.lower[i - 1], b.upper[i - 1]))
            values, c, s = crown_sparse.pool_relu_back(layers[i], layers[i - 1], lam, prep, alpha, sound)
            steps = [(c, s)]
            i -= 2
            if i >= 0 and layers[i].kind == "conv2d":
                reach = _per_example(bounds, ("reach", i), (i,), lambda b, i=i: _affine_reach(
                    b.layers[i], torch.maximum(-b.lower[i], b.upper[i])))
                lam, c, s = crown_sparse.conv_back(layers[i], values, prep.flat, prep.keep, reach, sound)
                steps.append((c, s))
                i -= 1
            else:
                lam = crown_sparse.dense(values, prep.flat, layers[i + 1].input_shape)
        else:
            lam, c, s = _step_back(layers[i], lam, lower[i], upper[i], alpha, sound)
            steps = [(c, s)]
            i -= 1
        for c, s in steps:
            if c is not None:
                const = down(const + c) if sound else const + c
            if s is not None:
                slack = up(slack + s)
    if not sound:
        return const + _plain_concretize(lam, bounds.input_set)
    return down(down(const + bounds.input_set.lower(lam, dual_steps)) - slack)


def _plain_concretize(lam, s: InputSet) -> torch.Tensor:
    """The box (L-inf) or ball (L2) bound without rounding slack: the alpha optimizer's objective."""
    a = lam.flatten(2)
    if s.norm == "linf" or s.eps == 0:
        return (a.clamp(min=0) * s.lo.flatten(1)[:, None] + a.clamp(max=0) * s.hi.flatten(1)[:, None]).sum(-1)
    box = (a.clamp(min=0) * s.lo.flatten(1)[:, None] + a.clamp(max=0) * s.hi.flatten(1)[:, None]).sum(-1)
    ball = (a * s.x0.flatten(1)[:, None]).sum(-1) - s.eps * a.norm(dim=-1)
    return torch.maximum(box, ball)


def _ibp_step(layer: Layer, l: torch.Tensor, u: torch.Tensor):
    from .ibp import _box, _center, _step

    return _box(*_step(layer.kind, layer.module, *_center(l, u)))


def _next_kind(layers, i: int) -> str | None:
    for layer in layers[i + 1:]:
        if layer.kind != "identity":
            return layer.kind
    return None


def _prev_kind(layers, i: int) -> str | None:
    for layer in reversed(layers[:i]):
        if layer.kind != "identity":
            return layer.kind
    return None


def compute_bounds(model: nn.Module, input_set: InputSet, layers: list[Layer] | None = None) -> Bounds:
    """Interval bounds of every layer's input, tightened by CROWN at the input of each ReLU and max
    pool (see the module docstring); the model in eval mode, float64."""
    layers = layers if layers is not None else crown_chain(model)
    lower, upper = [input_set.lo], [input_set.hi]
    bounds = Bounds(layers, lower, upper, input_set)
    seen_nonlinear = False
    with eval_mode(model), torch.no_grad():
        for i, layer in enumerate(layers):
            if layer.kind in ("activation", "maxpool2d"):
                if seen_nonlinear and _prev_kind(layers, i) != "activation":
                    _refine(bounds, i)
                seen_nonlinear = True
            l, u = _ibp_step(layer, lower[i], upper[i])
            if not seen_nonlinear and input_set.norm == "l2" and layer.kind in ("linear", "conv2d"):
                l, u = _l2_prefix(layers, i, input_set, l, u)
            lower.append(l)
            upper.append(u)
    return bounds


def _l2_prefix(layers, i: int, s: InputSet, l, u):
    """Tighten the box after the first general affine layer ``i`` (only diagonal maps before it) by
    the L2 ball: center +- eps ||row||_2 of the composite map, intersected with the box."""
    from .ibp import _step

    if any(layer.kind not in ("normalize", "batchnorm", "identity") for layer in layers[:i]):
        return l, u
    scale = torch.ones((1, *layers[0].input_shape), dtype=torch.float64, device=l.device)
    mu, r = s.x0, torch.zeros_like(s.x0)
    for layer in layers[:i]:
        if layer.kind != "identity":
            d, _, _ = _diag(layer, scale)
            scale = scale * d.abs() * (1 + 4 * U)
        else:
            scale = layer.module(scale)  # Flatten, Unflatten: the scales follow the shape
        mu, r = _step(layer.kind, layer.module, mu, r)
    m = layers[i].module
    w = m.weight.detach().to(l)
    sq = scale * scale * (1 + 4 * U)
    if layers[i].kind == "linear":
        rows = F.linear(sq, w * w)  # over the last axis, as the layer
        n = w.shape[1]
    else:
        rows = F.conv2d(sq, w * w, None, m.stride, m.padding, m.dilation, m.groups)
        n = w[0].numel()
    radius = up(s.eps * up(torch.sqrt(up(rows * (1 + gamma(n))))))
    center, rounding = _step(layers[i].kind, m, mu, r)
    low, high = down(center - up(rounding + radius)), up(center + up(rounding + radius))
    return torch.maximum(l, low.reshape(l.shape)), torch.minimum(u, high.reshape(u.shape))


def _pool_candidates(m: nn.MaxPool2d, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) bool: inputs of max-pool windows that are not decided (no input's lower bound
    beats every other's upper bound) and that can be the window's max (u >= the window's best l)."""
    n, c, h, w = l.shape
    lw, uw = _pool_windows(m, l, -math.inf), _pool_windows(m, u, -math.inf)
    best, star = lw.max(2)
    decided = best >= uw.scatter(2, star[:, :, None], -math.inf).amax(2)
    cand = (uw >= best[:, :, None]) & ~decided[:, :, None]  # (N, C, K, L)
    index = _pool_windows(m, torch.arange(h * w, dtype=l.dtype, device=l.device).view(1, 1, h, w), -1.0)
    flat = index[0, 0].long().expand_as(cand)  # (N, C, K, L) input positions, -1 for padding
    out = torch.zeros(n, c, h * w + 1, dtype=l.dtype, device=l.device)
    pos = torch.where(flat >= 0, flat, h * w)  # padding goes to a spare column
    out.scatter_add_(2, pos.reshape(n, c, -1), cand.reshape(n, c, -1).to(l))
    return out[:, :, :h * w].reshape(n, c, h, w) > 0


def _needed(bounds: Bounds, i: int) -> torch.Tensor:
    """(N, *shape) bool: the neurons of layer i's input whose CROWN bounds can change a relaxation:
    unstable ReLU inputs, and the candidates of undecided max-pool windows (through a ReLU)."""
    l, u = bounds.lower[i], bounds.upper[i]
    layers = bounds.layers
    if layers[i].kind == "maxpool2d":
        return _pool_candidates(layers[i].module, l, u)
    need = (l < 0) & (u > 0)
    if _next_kind(layers, i) == "maxpool2d":
        pool = next(layer for layer in layers[i + 1:] if layer.kind != "identity")
        if pool.input_shape == tuple(l.shape[1:]):
            slope = _relu_slope(layers[i].module)
            act = lambda t: torch.where(t >= 0, t, slope * t)  # noqa: E731  monotone: bounds map to bounds
            need = need | (_pool_candidates(pool.module, act(l), act(u)) & (u > 0))
        else:
            need = need | (u > 0)
    return need


def _first_step(bounds: Bounds, i: int, neurons: torch.Tensor):
    """The backward step through the affine layer just below layer ``i`` for the unit specifications
    of ``neurons`` (flat indices into layer i's input), the same for every example: (index of that
    layer, coefficients on its input (S, *shape), constants (S,), ||coefficients||_1 (S,), n)
    where the rounding slack of an example is gamma(n) ||.||_1 times its reach; None when the layer
    below is not affine."""
    j = i - 1
    while j >= 0 and bounds.layers[j].kind == "identity":
        j -= 1
    if j < 0 or bounds.layers[j].kind not in AFFINE:
        return None
    layer = bounds.layers[j]
    d = math.prod(bounds.layers[i].input_shape)
    lam = bounds.lower[0].new_zeros(1, len(neurons), d)
    lam[0, torch.arange(len(neurons), device=lam.device), neurons] = 1.0
    lam = lam.reshape(1, len(neurons), *layer_output_shape(bounds, j))
    mag = torch.zeros((1, *layer.input_shape), dtype=lam.dtype, device=lam.device)
    new, const, _, n = _affine_back(layer, lam, mag)
    return j, new[0], const[0], _l1(lam)[0], n + d


def layer_output_shape(bounds: Bounds, j: int) -> tuple[int, ...]:
    return tuple(bounds.lower[j + 1].shape[1:])


def _refine(bounds: Bounds, i: int) -> None:
    """CROWN lower and upper bounds of the input of nonlinear layer ``i`` for the neurons where
    they can matter (:func:`_needed`), each example its own list of neurons; each neuron keeps the
    tighter of its interval and CROWN bounds. Convolutional layers go through the windowed pass
    (:mod:`jrbench.certify.crown_patches`); otherwise the step through the affine layer below is
    the same for every example and is taken once, and examples with about as many neurons run
    together (their lists padded with zero specifications to the longest)."""
    from . import crown_patches

    l, u = bounds.lower[i], bounds.upper[i]
    layer = bounds.layers[i]
    n, d = l.shape[0], l[0].numel()
    need = _needed(bounds, i).reshape(n, d)
    union = need.any(0).nonzero().flatten()
    if len(union) == 0:
        return
    lf, uf = l.reshape(n, d).clone(), u.reshape(n, d).clone()
    if PATCHES and crown_patches.eligible(bounds.layers, i):
        ex, idx = need.nonzero(as_tuple=True)  # sorted by example
        signs = torch.tensor([1.0, -1.0], dtype=torch.float64, device=l.device).repeat(len(idx))
        out = crown_patches.lower_bounds(bounds, i, ex.repeat_interleave(2), idx.repeat_interleave(2), signs)
        out = out.view(-1, 2)
        lf[ex, idx] = torch.maximum(lf[ex, idx], out[:, 0])
        uf[ex, idx] = torch.minimum(uf[ex, idx], -out[:, 1])
        bounds.lower[i], bounds.upper[i] = lf.reshape(l.shape), uf.reshape(u.shape)
        return
    first = _first_step(bounds, i, union)
    position = torch.full((d,), -1, dtype=torch.long, device=l.device)
    position[union] = torch.arange(len(union), device=l.device)
    largest = max(math.prod(x.shape[1:]) for x in bounds.lower[:i + 1])
    counts = need.sum(1)
    order = counts.argsort(stable=True)
    for group in _groups(counts[order].tolist(), 2 * largest):
        ex = order[group]
        width = int(counts[ex].max())
        order_ex = need[ex].to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]  # needed first
        one = _select(bounds, ex)
        step = max(1, GROUP_BUDGET // (2 * largest * len(ex)))  # one example with many neurons: in chunks
        if first is not None:
            j, rows, consts, norms, n_ops = first
            reach = _affine_reach(bounds.layers[j], torch.maximum(-one.lower[j], one.upper[j]))
        for c0 in range(0, width, step):
            idx = order_ex[:, c0:c0 + step]
            valid = need[ex].gather(1, idx)
            s = idx.shape[1]
            if first is None:
                lam = l.new_zeros(len(ex), 2 * s, d)
                lam[:, :s].scatter_(2, idx[:, :, None], valid[:, :, None].to(l))
                lam[:, s:] = -lam[:, :s]
                out = backward(one, i, lam.reshape(len(ex), 2 * s, *layer.input_shape))
            else:
                p = position[idx]
                keep = valid.to(l)
                sub = rows[p] * keep.view(*keep.shape, *([1] * (rows.dim() - 1)))
                lam = torch.cat([sub, -sub], 1)
                const = torch.cat([consts[p] * keep, -consts[p] * keep], 1)
                slack = up(gamma(n_ops) * torch.cat([norms[p], norms[p]], 1) * reach)
                out = backward(one, j, lam, const=const, slack=slack)
            rows_ex, cols = ex[:, None].expand(-1, s)[valid], idx[valid]
            lf[rows_ex, cols] = torch.maximum(lf[rows_ex, cols], out[:, :s][valid])
            uf[rows_ex, cols] = torch.minimum(uf[rows_ex, cols], -out[:, s:][valid])
    bounds.lower[i], bounds.upper[i] = lf.reshape(l.shape), uf.reshape(u.shape)


def _groups(sorted_counts: list[int], per_spec: int) -> list[slice]:
    """Consecutive groups of examples (sorted by their number of specifications) whose padded
    specifications (group size times 2 x the largest count, ``per_spec`` elements each) fit
    GROUP_BUDGET."""
    groups, start = [], 0
    for k, c in enumerate(sorted_counts):
        if k > start and (k + 1 - start) * c * per_spec > GROUP_BUDGET:
            groups.append(slice(start, k))
            start = k
    groups.append(slice(start, len(sorted_counts)))
    return groups


def _select(bounds: Bounds, ex: torch.Tensor) -> Bounds:
    """The bounds of the examples ``ex`` (an index tensor)."""
    s = bounds.input_set
    root = bounds if bounds.parent is None else bounds.parent[0]
    rows = ex if bounds.parent is None else bounds.parent[1][ex]
    return Bounds(bounds.layers, [t[ex] for t in bounds.lower], [t[ex] for t in bounds.upper],
                  InputSet(s.x0[ex], s.eps, s.norm, s.lo[ex], s.hi[ex]), parent=(root, rows))


# ----------------------------------------------------------------------------- margins
def _margin_spec(labels: torch.Tensor, classes: int, like: torch.Tensor) -> torch.Tensor:
    """(N, C, C): row j is e_y - e_j (row y is zero)."""
    eye = torch.eye(classes, dtype=like.dtype, device=like.device)
    return (eye[labels][:, None, :] - eye[None]).contiguous()


def margin_lower_bounds(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "linf",
                        alpha_steps: int = 0, alpha_lr: float = 0.1, dual_steps: int = 30) -> torch.Tensor:
    """(N, C) float64 lower bounds of f_y - f_j over the ``norm`` ball of radius ``eps`` (pixels)
    around x (N, C, H, W) intersected with [0, 1]; +inf on the label's own column. ``alpha_steps``
    > 0: alpha-CROWN (that many Adam steps on the lower slopes, learning rate ``alpha_lr``; the
    result is never looser than CROWN's, both being sound)."""
    layers = crown_chain(model, "--alpha-crown" if alpha_steps else FLAG)
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise UserError(f"certify {FLAG}: the model takes inputs of shape {tuple(model.input_shape)} "
                        f"(channels, height, width) but got {tuple(x.shape[1:])}.")
    s = InputSet.make(x, eps, norm)
    y = labels.to(x.device).long().view(-1)
    with eval_mode(model):
        with torch.no_grad():
            bounds = compute_bounds(model, s, layers)
            classes = bounds.lower[-1].shape[1]
            if classes < 2:  # no other class: no margin to bound
                return torch.full((len(y), classes), math.inf, dtype=torch.float64, device=s.x0.device)
            spec, others = _margin_spec(y, classes, s.x0), _others(y, classes)
            spec = spec.gather(1, others[:, :, None].expand(-1, -1, classes))  # the label's own row is 0
            low = _backward_in_groups(bounds, spec, None, dual_steps)
        if alpha_steps > 0:
            alphas = _optimize_alphas(bounds, spec, alpha_steps, alpha_lr)
            with torch.no_grad():
                low = torch.maximum(low, _backward_in_groups(bounds, spec, alphas, dual_steps))
    out = low.new_full((len(y), classes), math.inf)
    return out.scatter(1, others, low)


def _backward_in_groups(bounds: Bounds, spec: torch.Tensor, alphas: dict | None, dual_steps: int) -> torch.Tensor:
    """:func:`backward` from the logits, examples in groups whose coefficients on the largest layer
    fit GROUP_BUDGET (smaller tensors run faster on a CPU)."""
    largest = max(math.prod(t.shape[1:]) for t in bounds.lower)
    size = max(1, GROUP_BUDGET // max(1, spec.shape[1] * largest))
    n = spec.shape[0]
    if size >= n:
        return backward(bounds, len(bounds.layers), spec, alphas, dual_steps=dual_steps)
    out = []
    for e0 in range(0, n, size):
        ex = torch.arange(e0, min(n, e0 + size), device=spec.device)
        part = {i: a[ex] for i, a in alphas.items()} if alphas else None
        out.append(backward(_select(bounds, ex), len(bounds.layers), spec[ex], part, dual_steps=dual_steps))
    return torch.cat(out)


def _others(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, C - 1): the classes other than each label, in order."""
    grid = torch.arange(classes - 1, device=labels.device).expand(len(labels), -1)
    return grid + (grid >= labels[:, None]).long()


def _optimize_alphas(bounds: Bounds, spec: torch.Tensor, steps: int, lr: float) -> dict:
    """alpha-CROWN: per example, margin and unstable neuron, the lower slope of each ReLU in [0, 1]
    (LeakyReLU: the share of the way from a to 1), by Adam on the sum of the margins' lower bounds
    (intermediate bounds stay CROWN's). Returns the best slopes seen per margin."""
    n, s = spec.shape[:2]
    params = {}
    for i, layer in enumerate(bounds.layers):
        if layer.kind == "activation":
            l, u = bounds.lower[i], bounds.upper[i]
            if bool(((l < 0) & (u > 0)).any()):
                init = (u > -l).to(l).unsqueeze(1).expand(n, s, *l.shape[1:]).clone()
                params[i] = init.requires_grad_(True)
    if not params:
        return {}
    best = {i: p.detach().clone() for i, p in params.items()}
    best_value = torch.full((n, s), -math.inf, dtype=spec.dtype, device=spec.device)
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    for _ in range(steps + 1):
        with torch.enable_grad():
            value = backward(bounds, len(bounds.layers), spec, params, sound=False)
        better = value.detach() > best_value
        best_value = torch.where(better, value.detach(), best_value)
        for i, p in params.items():
            mask = better.view(n, s, *([1] * (p.dim() - 2)))
            best[i] = torch.where(mask, p.detach(), best[i])
        opt.zero_grad()
        (-value.sum()).backward()
        opt.step()
        with torch.no_grad():
            for p in params.values():
                p.clamp_(0.0, 1.0)
    return best


def certified(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "linf",
              alpha_steps: int = 0, batch_size: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """((N,) bool, (N,) float64 on x's device): certified (strictly correct and every margin's lower
    bound > 0) and the smallest margin lower bound, over the ``norm`` ball of radius ``eps`` ∩ [0, 1]."""
    labels = labels.to(x.device).long().view(-1)
    flags, mins = [], []
    for xb, yb in zip(x.split(batch_size), labels.split(batch_size)):
        with eval_mode(model), torch.no_grad():
            correct = strictly_correct(model(xb), yb)
        low = margin_lower_bounds(model, xb, yb, eps, norm, alpha_steps=alpha_steps).amin(1)
        flags.append(correct & (low > 0))
        mins.append(low)
    if not flags:
        return torch.zeros(0, dtype=torch.bool, device=x.device), torch.zeros(0, dtype=torch.float64, device=x.device)
    return torch.cat(flags), torch.cat(mins)

