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


def _table(t: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(G * L, C, h, w): the windows of t (G, C, H, W) at the L offsets (oy, ox), example-major,
    zero outside t."""
    g, c, hh, ww = t.shape
    pad = int(max(0, -int(oy.min()), -int(ox.min()), int(oy.max()) + h - hh, int(ox.max()) + w - ww))
    padded = torch.nn.functional.pad(t, (pad, pad, pad, pad)) if pad else t
    rows = (oy[:, None] + pad + torch.arange(h, device=t.device))[:, :, None]  # (L, h, 1)
    cols = (ox[:, None] + pad + torch.arange(w, device=t.device))[:, None, :]  # (L, 1, w)
    return padded[:, :, rows, cols].transpose(1, 2).reshape(g * len(oy), c, h, w)


def _inside(oy, ox, h, w, hh, ww) -> torch.Tensor | None:
    """(L, 1, h, w) float mask: window positions inside the (hh, ww) map; None when all are."""
    ry = oy[:, None] + torch.arange(h, device=oy.device)
    rx = ox[:, None] + torch.arange(w, device=ox.device)
    mask = ((ry >= 0) & (ry < hh))[:, :, None] & ((rx >= 0) & (rx < ww))[:, None, :]
    return None if bool(mask.all()) else mask[:, None].double()


def _plan(bounds, k: int, group: slice):
    """The window tables and per-example constants of every layer below ``k`` for the examples
    ``group``: a list, top layer first, of (layer, tables...); and the input set's tables."""
    layers = bounds.layers
    _, hh, ww = layers[k].input_shape
    dev = bounds.lower[0].device
    pos = torch.arange(hh * ww, device=dev)
    oy, ox, h, w = pos // ww, pos % ww, 1, 1
    steps, fused = [], set()
    for i in reversed(range(k)):
        layer, m = layers[i], layers[i].module
        if i in fused:  # a ReLU applied at its max pool's chosen inputs
            continue
        l, u = bounds.lower[i][group], bounds.upper[i][group]
        mag = torch.maximum(-l, u)
        if layer.kind == "conv2d":
            (sy, sx), (py, px), (dy, dx) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
            kh, kw = m.weight.shape[-2:]
            reach = crown._affine_reach(layer, mag)[:, 0]
            oy, ox = oy * sy - py, ox * sx - px
            h, w = (h - 1) * sy + dy * (kh - 1) + 1, (w - 1) * sx + dx * (kw - 1) + 1
            steps.append(("conv2d", layer, reach, _inside(oy, ox, h, w, *layer.input_shape[1:]), (h, w)))
        elif layer.kind in ("normalize", "batchnorm"):
            steps.append(("diag", layer, crown._affine_reach(layer, mag)[:, 0]))
        elif layer.kind == "activation":
            lower_slope, upper_slope, intercept, _ = crown._relu_lines(l, u, crown._relu_slope(m), None)
            reach = mag.flatten(1).amax(1) + intercept.flatten(1).amax(1)
            tables = [_table(t, oy, ox, h, w) for t in (lower_slope, upper_slope - lower_slope, intercept)]
            steps.append(("activation", layer, reach, *tables))
        elif layer.kind == "maxpool2d":
            below = _below(layers, i)
            fuse = below is not None and layers[below].kind == "activation" and _disjoint(m)
            relu = (layers[below], bounds.lower[below][group], bounds.upper[below][group]) if fuse else None
            steps.append(("maxpool2d", layer, *_pool_tables(layer, l, u, mag, oy, ox, h, w, relu)))
            if fuse:
                fused.add(below)
            (kh, kw), (sy, sx), (py, px) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
            oy, ox = oy * sy - py, ox * sx - px
            h, w = (h - 1) * sy + kh, (w - 1) * sx + kw
        # identity layers (Identity, Dropout in eval mode): nothing to do
    s = bounds.input_set
    inputs = [_table(t[group], oy, ox, h, w) for t in (s.x0, s.lo, s.hi)]
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


def _pool_tables(layer, l, u, mag, oy, ox, h, w, relu=None):
    """Max pool backwards on windows (DeepPoly's relaxation as :func:`crown._maxpool_back`): per
    example and position, each window entry's target in the input window, whether its max is
    decided, its largest upper bound; and per example the reach. ``relu``: (layer, lower, upper)
    of a ReLU below a pool whose windows do not overlap: each pool input then receives at most one
    coefficient, so the ReLU's relaxation is applied at the windows' chosen inputs (before the
    scatter, on a quarter of the entries for 2 x 2 windows); its tables follow."""
    m = layer.module
    g, c, hh, ww = l.shape
    (kh, kw), (sy, sx), (py, px) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
    lw, uw = crown._pool_windows(m, l, -math.inf), crown._pool_windows(m, u, -math.inf)
    best, star = lw.max(2)
    decided = best >= uw.scatter(2, star[:, :, None], -math.inf).amax(2)
    top = uw.amax(2)
    index = crown._pool_windows(m, torch.arange(hh * ww, dtype=l.dtype, device=l.device).view(1, 1, hh, ww), -1.0)
    flat = crown._star_index(index, star)  # (G, C, L') input positions of each window's star
    out_h, out_w = (hh + 2 * py - kh) // sy + 1, (ww + 2 * px - kw) // sx + 1
    shape = (g, c, out_h, out_w)
    star_w = _table(flat.view(shape).double(), oy, ox, h, w).long()  # (G * L, C, h, w)
    dec_w = _table(decided.view(shape).double(), oy, ox, h, w)
    top_w = _table(top.view(shape).clamp_min(-1e300), oy, ox, h, w)
    ny, nx = oy * sy - py, ox * sx - px
    h_in, w_in = (h - 1) * sy + kh, (w - 1) * sx + kw
    positions = len(oy)
    ry = (star_w // ww).view(g, positions, c, h, w) - ny[None, :, None, None, None]
    rx = (star_w % ww).view(g, positions, c, h, w) - nx[None, :, None, None, None]
    target = (ry.clamp(0, h_in - 1) * w_in + rx.clamp(0, w_in - 1)).view(g * positions, c, h * w)
    reach = mag.flatten(1).amax(1) + top.abs().flatten(1).amax(1)  # |max of a window| <= max |input|, |top|
    if relu is None:
        return reach, target, dec_w, top_w, (h_in, w_in), None
    layer_r, lr, ur = relu
    lower_slope, upper_slope, intercept, _ = crown._relu_lines(lr, ur, crown._relu_slope(layer_r.module), None)
    relu_reach = torch.maximum(-lr, ur).flatten(1).amax(1) + intercept.flatten(1).amax(1)
    at_star = [_table(t.flatten(2).gather(2, flat).view(shape), oy, ox, h, w)
               for t in (lower_slope, upper_slope - lower_slope, intercept)]
    return reach, target, dec_w, top_w, (h_in, w_in), (relu_reach, *at_star)


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
    for kind, layer, reach, *rest in steps:
        m = layer.module
        n_terms = lam[0].numel()
        if kind == "conv2d":
            inside, (h, w) = rest
            wt = m.weight.detach().to(lam)
            slack = up(slack + up(gamma(wt[0].numel() + n_terms) * crown._l1(lam[None])[0] * reach[ex]))
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
            slack = up(slack + up(gamma(16 + n_terms) * crown._l1(lam[None])[0] * reach[ex]))
            const = down(const + (lam * shift).flatten(1).sum(-1))
            lam = lam * scale
        elif kind == "activation":
            lower_slope, slope_gap, intercept = (t.index_select(0, key) for t in rest)
            neg = lam.clamp(max=0)
            slack = up(slack + up(gamma(8 + n_terms) * crown._l1(lam[None])[0] * reach[ex]))
            const = down(const + (neg * intercept).flatten(1).sum(-1))
            lam = lam * lower_slope + neg * slope_gap
        elif kind == "maxpool2d":
            target, dec_w, top_w, (h_in, w_in), relu = rest
            dec, top = dec_w.index_select(0, key), top_w.index_select(0, key)
            neg = lam.clamp(max=0)
            coef = lam.clamp(min=0) + neg * dec
            const = down(const + (neg * (1 - dec) * top).flatten(1).sum(-1))
            kh, kw = _pair(m.kernel_size)
            slack = up(slack + up(gamma(kh * kw + n_terms) * crown._l1(lam[None])[0] * reach[ex]))
            if relu is not None:  # the ReLU below, at each window's chosen input (one coefficient each)
                relu_reach, *tables = relu
                lower_slope, slope_gap, intercept = (t.index_select(0, key) for t in tables)
                neg = coef.clamp(max=0)
                n_relu = lam.shape[1] * h_in * w_in
                slack = up(slack + up(gamma(8 + n_relu) * crown._l1(coef[None])[0] * relu_reach[ex]))
                const = down(const + (neg * intercept).flatten(1).sum(-1))
                coef = coef * lower_slope + neg * slope_gap
            new = lam.new_zeros(s, lam.shape[1], h_in * w_in)
            new.scatter_add_(2, target.index_select(0, key), coef.flatten(2))
            lam = new.view(s, lam.shape[1], h_in, w_in)
    x0, lo, hi = (t.index_select(0, key) for t in inputs)
    window_set = InputSet(x0, bounds.input_set.eps, bounds.input_set.norm, lo, hi)
    return down(down(const + window_set.lower(lam[:, None])[:, 0]) - slack)
