"""CROWN's backward pass on cropped windows: the pre-activation bounds of convolutional layers.

A unit specification at neuron (c, y, x) of a convolutional layer reaches, going backwards through
convolutions, ReLUs, max pools and per-channel affine maps, only the neuron's receptive field. Its
coefficients are kept on that window (S specifications, window (C, h, w), and each its offset
(y0, x0) in the layer's coordinates), as auto_LiRPA's "patches" mode does (Xu et al. 2020,
arXiv:2002.12920), instead of on the whole layer: on a LeNet the coefficients at the first
convolution's output are a 10 x 10 window of the 28 x 28 map. The arithmetic and the rounding
slack are those of :func:`jrbench.certify.crown.backward` (the same relaxations, the same bounds),
so the two give the same bounds up to the order of floating-point sums; a window position outside
the layer has coefficient 0 (masked after each convolution), so padding contributes nothing.

The specifications of many examples run together: a window's offset depends only on the
position (y, x) of its neuron, so each layer's relaxation (slopes, intercepts, max-pool choices,
the input box) is cut once per example and position into a table of windows, and each
specification picks its row of that table.

Eligible chains (:func:`eligible`): Normalize, Conv2d (integer padding), BatchNorm2d, ReLU or
LeakyReLU, MaxPool2d (dilation 1, no ceil mode), Identity and Dropout below a (C, H, W) layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import relaxations as crown
from .relaxations import InputSet
from .rounding import down, gamma, up

_PLAIN = (nn.Identity, nn.Dropout, nn.Dropout2d)
TABLE_BUDGET = 1 << 23  # float64 elements of one group of examples' window tables (64 MB)
SPEC_CHUNK = 2048  # specifications per batch


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def eligible(layers, k: int) -> bool:
    """Whether the layers below layer ``k`` (whose input is (C, H, W)) all have a window rule."""
    if len(layers[k].input_shape) != 3:
        return False
    for layer in layers[:k]:
        m = layer.module
        if layer.kind == "conv2d" and isinstance(m.padding, str):
            return False
        if layer.kind == "batchnorm" and not isinstance(m, nn.BatchNorm2d):
            return False
        if layer.kind == "maxpool2d" and (_pair(m.dilation) != (1, 1) or m.ceil_mode):
            return False
        if layer.kind == "identity" and not isinstance(m, _PLAIN):
            return False
        if layer.kind in ("linear", "avgpool2d"):
            return False
    return True


@dataclass(frozen=True)
class _Windows:
    """The windows of every position (y, x) of layer k's (hk, wk) map, on some layer below: at
    offset (ay y + by, ax x + bx), of size (h, w)."""

    hk: int
    wk: int
    ay: int = 1
    by: int = 0
    ax: int = 1
    bx: int = 0
    h: int = 1
    w: int = 1

    def below(self, stride, padding, dilation, kernel) -> "_Windows":
        """The windows on the input of a convolution or pool (stride, padding, dilation, kernel)."""
        (sy, sx), (py, px), (dy, dx), (kh, kw) = map(_pair, (stride, padding, dilation, kernel))
        return _Windows(self.hk, self.wk, self.ay * sy, self.by * sy - py, self.ax * sx, self.bx * sx - px,
                        (self.h - 1) * sy + dy * (kh - 1) + 1, (self.w - 1) * sx + dx * (kw - 1) + 1)

    def offsets(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(L,) row and column offsets of the L = hk wk windows."""
        pos = torch.arange(self.hk * self.wk, device=device)
        return pos // self.wk * self.ay + self.by, pos % self.wk * self.ax + self.bx

    def table(self, t: torch.Tensor) -> torch.Tensor:
        """(G * L, C, h, w): the windows of t (G, C, H, W), example-major, zero outside t."""
        g, c, hh, ww = t.shape
        h, w = self.h, self.w
        pad = max(0, -self.by, -self.bx, self.ay * (self.hk - 1) + self.by + h - hh,
                  self.ax * (self.wk - 1) + self.bx + w - ww)
        padded = (torch.nn.functional.pad(t, (pad, pad, pad, pad)) if pad else t).contiguous()
        s_g, s_c, s_h, s_w = padded.stride()
        view = padded.as_strided((g, self.hk, self.wk, c, h, w), (s_g, self.ay * s_h, self.ax * s_w, s_c, s_h, s_w),
                                 padded.storage_offset() + (self.by + pad) * s_h + (self.bx + pad) * s_w)
        return view.reshape(g * self.hk * self.wk, c, h, w)

    def inside(self, hh: int, ww: int, device) -> torch.Tensor | None:
        """(L, 1, h, w) float mask: window positions inside the (hh, ww) map; None when all are."""
        oy, ox = self.offsets(device)
        ry = oy[:, None] + torch.arange(self.h, device=device)
        rx = ox[:, None] + torch.arange(self.w, device=device)
        mask = ((ry >= 0) & (ry < hh))[:, :, None] & ((rx >= 0) & (rx < ww))[:, None, :]
        return None if bool(mask.all()) else mask[:, None].double()


def _plan(bounds, k: int, group: slice):
    """The window tables and per-example constants of every layer below ``k`` for the examples
    ``group``: a list, top layer first, of (kind, layer, reach, tables...); and the input set's
    tables."""
    layers = bounds.layers
    _, hh, ww = layers[k].input_shape
    dev = bounds.lower[0].device
    win = _Windows(hh, ww)
    steps, fused = [], set()
    for i in reversed(range(k)):
        layer, m = layers[i], layers[i].module
        if i in fused:  # a ReLU applied at its max pool's chosen inputs
            continue
        l, u = bounds.lower[i][group], bounds.upper[i][group]
        mag = torch.maximum(-l, u)
        if layer.kind == "conv2d":
            reach = crown._affine_reach(layer, mag)[:, 0]
            win = win.below(m.stride, m.padding, m.dilation, m.weight.shape[-2:])
            steps.append(("conv2d", layer, reach, win.inside(*layer.input_shape[1:], dev), (win.h, win.w)))
        elif layer.kind in ("normalize", "batchnorm"):
            steps.append(("diag", layer, crown._affine_reach(layer, mag)[:, 0]))
        elif layer.kind == "activation":
            lower_slope, upper_slope, intercept, _ = crown._relu_lines(l, u, crown._relu_slope(m), None)
            reach = mag.flatten(1).amax(1) + intercept.flatten(1).amax(1)
            tables = [win.table(t) for t in (lower_slope, upper_slope - lower_slope, intercept)]
            steps.append(("activation", layer, reach, *tables))
        elif layer.kind == "maxpool2d":
            below = _below(layers, i)
            fuse = below is not None and layers[below].kind == "activation" and _disjoint(m)
            relu = (layers[below], bounds.lower[below][group], bounds.upper[below][group]) if fuse else None
            kind = "pool_relu" if fuse else "maxpool2d"
            steps.append((kind, layer, *_pool_tables(layer, l, u, mag, win, relu)))
            if fuse:
                fused.add(below)
            win = win.below(m.stride or m.kernel_size, m.padding, 1, m.kernel_size)
        # identity layers (Identity, Dropout in eval mode): nothing to do
    s = bounds.input_set
    inputs = [win.table(t[group]) for t in (s.x0, s.lo, s.hi)]
    return steps, inputs


def _below(layers, i: int) -> int | None:
    """The index of the first layer below ``i`` that is not an identity."""
    for j in reversed(range(i)):
        if layers[j].kind != "identity":
            return j
    return None


def _disjoint(m: nn.MaxPool2d) -> bool:
    """Whether the pool's windows do not overlap (each input feeds at most one window)."""
    (kh, kw), (sy, sx) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
    return sy >= kh and sx >= kw


def _pool_tables(layer, l, u, mag, win: _Windows, relu=None):
    """Max pool backwards on windows (DeepPoly's relaxation as :func:`crown._maxpool_back`): per
    example the reach, and per example and position each window entry's target in the input
    window, then whether its max is decided and its largest upper bound. ``relu``: (layer, lower,
    upper) of a ReLU below a pool whose windows do not overlap: each pool input then receives at
    most one coefficient, so the ReLU's relaxation is applied at the windows' chosen inputs (before
    the scatter, on a quarter of the entries for 2 x 2 windows): then the tables are, per entry,
    the slope of a coefficient >= 0 (the ReLU's lower slope), of one < 0 (its upper slope through
    a decided window, else 0) and the constant per unit of a negative coefficient (the ReLU's
    intercept, or the window's largest upper bound when undecided); and the ReLU's reach."""
    m = layer.module
    g, c, hh, ww = l.shape
    lw, uw = crown._pool_windows(m, l, -math.inf), crown._pool_windows(m, u, -math.inf)
    best, star = lw.max(2)
    decided = best >= uw.scatter(2, star[:, :, None], -math.inf).amax(2)
    top = uw.amax(2)
    index = crown._pool_windows(m, torch.arange(hh * ww, dtype=l.dtype, device=l.device).view(1, 1, hh, ww), -1.0)
    flat = crown._star_index(index, star)  # (G, C, L') input positions of each window's star
    (kh, kw), (sy, sx), (py, px) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
    shape = (g, c, (hh + 2 * py - kh) // sy + 1, (ww + 2 * px - kw) // sx + 1)
    h, w = win.h, win.w
    star_w = win.table(flat.view(shape).double()).long()  # (G * L, C, h, w)
    inner = win.below(m.stride or m.kernel_size, m.padding, 1, m.kernel_size)
    ny, nx = inner.offsets(l.device)
    positions = len(ny)
    ry = (star_w // ww).view(g, positions, c, h, w) - ny[None, :, None, None, None]
    rx = (star_w % ww).view(g, positions, c, h, w) - nx[None, :, None, None, None]
    target = (ry.clamp(0, inner.h - 1) * inner.w + rx.clamp(0, inner.w - 1)).view(g * positions, c, h * w)
    reach = mag.flatten(1).amax(1) + top.abs().flatten(1).amax(1)  # |max of a window| <= max |input|, |top|
    top = top.clamp_min(-1e300)
    if relu is None:
        tables = [win.table(t.view(shape).to(l)) for t in (decided, top)]
        return reach, target, *tables, (inner.h, inner.w)
    layer_r, lr, ur = relu
    lower_slope, upper_slope, intercept, _ = crown._relu_lines(lr, ur, crown._relu_slope(layer_r.module), None)
    relu_reach = torch.maximum(-lr, ur).flatten(1).amax(1) + intercept.flatten(1).amax(1)
    lower_s, upper_s, intercept_s = (t.flatten(2).gather(2, flat) for t in (lower_slope, upper_slope, intercept))
    per_entry = (lower_s, decided * upper_s, torch.where(decided, intercept_s, top), decided)
    tables = [win.table(t.view(shape).to(l)) for t in per_entry]
    return reach, target, *tables, (inner.h, inner.w), relu_reach


def _table_size(plan) -> int:
    """Elements of a plan's tables."""
    steps, inputs = plan
    return sum(t.numel() for step in steps for t in step if isinstance(t, torch.Tensor)) + \
        sum(t.numel() for t in inputs)


def lower_bounds(bounds, k: int, examples: torch.Tensor, neurons: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """(S,) sound lower bounds of signs[s] * h_k[examples[s], neurons[s]] over each example's input
    set, h_k the (C, H, W) input of layer k; neurons are flat indices, examples sorted."""
    n = bounds.lower[0].shape[0]
    out = torch.empty(len(neurons), dtype=torch.float64, device=neurons.device)
    if len(neurons) == 0:
        return out
    per_group = max(1, min(n, TABLE_BUDGET // max(1, _table_size(_plan(bounds, k, slice(0, 1))))))
    edges = torch.searchsorted(examples, torch.arange(0, n + per_group, per_group, device=examples.device).clamp(max=n))
    for e0, (a, b) in zip(range(0, n, per_group), zip(edges[:-1].tolist(), edges[1:].tolist())):
        if a == b:
            continue
        steps, inputs = _plan(bounds, k, slice(e0, min(n, e0 + per_group)))
        for c0 in range(a, b, SPEC_CHUNK):
            c1 = min(b, c0 + SPEC_CHUNK)
            out[c0:c1] = _run(bounds, k, steps, inputs, examples[c0:c1] - e0, neurons[c0:c1], signs[c0:c1])
    return out


def _l1(lam: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """(S,) ||lam||_1 of each specification, or ``known``."""
    return known if known is not None else torch.linalg.vector_norm(lam.flatten(1), 1, dim=-1)


def _scatter(values: torch.Tensor, target: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(S, C, h, w): the values (S, C, ...) added at their flat targets (S, C, n) in the window."""
    new = values.new_zeros(values.shape[0], values.shape[1], h * w)
    new.scatter_add_(2, target, values.flatten(2))
    return new.view(values.shape[0], values.shape[1], h, w)


def _run(bounds, k, steps, inputs, ex, neurons, signs) -> torch.Tensor:
    """The lower bounds of one batch of specifications (examples ``ex`` local to the plan's group)."""
    c, hh, ww = bounds.layers[k].input_shape
    dev = neurons.device
    s = len(neurons)
    ch, pos = neurons // (hh * ww), neurons % (hh * ww)
    key = ex * (hh * ww) + pos  # the row of each table
    lam = torch.zeros(s, c, 1, 1, dtype=torch.float64, device=dev)
    lam[torch.arange(s, device=dev), ch, 0, 0] = signs.double()
    const = torch.zeros(s, dtype=torch.float64, device=dev)
    slack = torch.zeros(s, dtype=torch.float64, device=dev)
    l1 = None  # ||lam||_1 when a step already knows it
    for kind, layer, reach, *rest in steps:
        m = layer.module
        n_terms = lam[0].numel()
        if kind == "conv2d":
            inside, (h, w) = rest
            wt = m.weight.detach().to(lam)
            slack = up(slack + up(gamma(wt[0].numel() + n_terms) * _l1(lam, l1) * reach[ex]))
            if m.bias is not None:
                const = down(const + (lam.sum((-2, -1)) * m.bias.detach().to(lam)).sum(-1))
            if lam.shape[-2:] == (1, 1) and m.groups == 1:  # one position: a matrix product
                lam = (lam.view(s, -1) @ wt.reshape(wt.shape[0], -1)).view(s, layer.input_shape[0], h, w)
            else:
                lam = torch.nn.grad.conv2d_input((s, layer.input_shape[0], h, w), wt, lam, m.stride, 0, m.dilation,
                                                 m.groups)
            if inside is not None:
                lam = lam * inside.index_select(0, pos)
        elif kind == "diag":
            scale, shift, _ = crown._diag(layer, lam)
            slack = up(slack + up(gamma(16 + n_terms) * _l1(lam, l1) * reach[ex]))
            const = down(const + (lam * shift).flatten(1).sum(-1))
            lam = lam * scale
        elif kind == "activation":
            lower_slope, slope_gap, intercept = (t.index_select(0, key) for t in rest)
            neg = lam.clamp(max=0)
            slack = up(slack + up(gamma(8 + n_terms) * _l1(lam, l1) * reach[ex]))
            const = down(const + (neg * intercept).flatten(1).sum(-1))
            lam = lam * lower_slope + neg * slope_gap
        elif kind == "maxpool2d":
            target, dec_w, top_w, (h_in, w_in) = rest
            dec, top = dec_w.index_select(0, key), top_w.index_select(0, key)
            neg = lam.clamp(max=0)
            coef = lam.clamp(min=0) + neg * dec
            const = down(const + (neg * (1 - dec) * top).flatten(1).sum(-1))
            kh, kw = _pair(m.kernel_size)
            slack = up(slack + up(gamma(kh * kw + n_terms) * _l1(lam, l1) * reach[ex]))
            lam = _scatter(coef, target.index_select(0, key), h_in, w_in)
        elif kind == "pool_relu":  # the pool and the ReLU below it at the windows' chosen inputs
            target, slope_pos, slope_neg, unit, passes, (h_in, w_in), relu_reach = rest
            positive = lam >= 0
            slope = torch.where(positive, slope_pos.index_select(0, key), slope_neg.index_select(0, key))
            const = down(const + (lam.clamp(max=0) * unit.index_select(0, key)).flatten(1).sum(-1))
            kh, kw = _pair(m.kernel_size)
            slack = up(slack + up(gamma(kh * kw + n_terms) * _l1(lam, l1) * reach[ex]))
            # ||coefficients at the ReLU||_1: each |lam| >= 0 or through a decided window
            norm = (lam * torch.where(positive, 1.0, -passes.index_select(0, key))).flatten(1).sum(-1)
            slack = up(slack + up(gamma(8 + lam.shape[1] * h_in * w_in) * norm * relu_reach[ex]))
            values = lam * slope
            l1 = _l1(values)  # the scatter below moves them: the next step's ||lam||_1
            lam = _scatter(values, target.index_select(0, key), h_in, w_in)
            continue
        l1 = None
    x0, lo, hi = (t.index_select(0, key) for t in inputs)
    window_set = InputSet(x0, bounds.input_set.eps, bounds.input_set.norm, lo, hi)
    return down(down(const + window_set.lower(lam[:, None])[:, 0]) - slack)
