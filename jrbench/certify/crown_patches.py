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

Eligible chains (:func:`eligible`): Normalize, Conv2d (integer padding), BatchNorm2d, ReLU or
LeakyReLU, MaxPool2d (dilation 1, no ceil mode), Identity and Dropout below a (C, H, W) layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import relaxations as crown
from .relaxations import InputSet
from .rounding import down, gamma, up

_PLAIN = (nn.Identity, nn.Dropout, nn.Dropout2d)


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


def _windows(t: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(S, C, h, w): the windows of t (C, H, W) at offsets (oy, ox) (S,), zero outside t."""
    c, hh, ww = t.shape
    pad = max(h, w) + int(max(0, -int(oy.min()), -int(ox.min()), int(oy.max()) + h - hh, int(ox.max()) + w - ww))
    padded = F.pad(t, (pad, pad, pad, pad))
    rows = (oy[:, None] + pad + torch.arange(h, device=t.device))[:, :, None]  # (S, h, 1)
    cols = (ox[:, None] + pad + torch.arange(w, device=t.device))[:, None, :]  # (S, 1, w)
    return padded[:, rows, cols].permute(1, 0, 2, 3)  # (C, S, h, w) -> (S, C, h, w)


def _inside(oy, ox, h, w, hh, ww, device) -> torch.Tensor:
    """(S, 1, h, w) float mask: window positions inside the (hh, ww) map."""
    ry = oy[:, None] + torch.arange(h, device=device)
    rx = ox[:, None] + torch.arange(w, device=device)
    return (((ry >= 0) & (ry < hh))[:, :, None] & ((rx >= 0) & (rx < ww))[:, None, :])[:, None].double()


def lower_bounds(bounds, k: int, neurons: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """(S,) sound lower bounds of signs[s] * h_k[neurons[s]] over one example's input set (bounds
    of one example, N = 1), h_k the (C, H, W) input of layer k; neurons are flat indices."""
    layers = bounds.layers
    c, hh, ww = layers[k].input_shape
    dev = bounds.lower[0].device
    s = len(neurons)
    ch, pos = neurons // (hh * ww), neurons % (hh * ww)
    oy, ox = pos // ww, pos % ww
    lam = torch.zeros(s, c, 1, 1, dtype=torch.float64, device=dev)
    lam[torch.arange(s, device=dev), ch, 0, 0] = signs.double()
    const = torch.zeros(s, dtype=torch.float64, device=dev)
    slack = torch.zeros(s, dtype=torch.float64, device=dev)
    for i in reversed(range(k)):
        layer, m = layers[i], layers[i].module
        l, u = bounds.lower[i][0], bounds.upper[i][0]
        mag_max = torch.maximum(-l, u).max()
        n_terms = lam[0].numel()
        if layer.kind == "conv2d":
            (sy, sx), (py, px), (dy, dx) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
            w = m.weight.detach().to(lam)
            reach = crown._affine_reach(layer, torch.maximum(-l, u)[None])[0, 0]
            slack = up(slack + up(gamma(w[0].numel() + n_terms) * crown._l1(lam[None])[0] * reach))
            if m.bias is not None:
                const = down(const + (lam.sum((-2, -1)) * m.bias.detach().to(lam)).sum(-1))
            lam = F.conv_transpose2d(lam, w, None, (sy, sx), 0, 0, m.groups, (dy, dx))
            oy, ox = oy * sy - py, ox * sx - px
            lam = lam * _inside(oy, ox, lam.shape[-2], lam.shape[-1], *layer.input_shape[1:], dev)
        elif layer.kind in ("normalize", "batchnorm"):
            scale, shift, _ = crown._diag(layer, lam)
            reach = crown._affine_reach(layer, torch.maximum(-l, u)[None])[0, 0]
            slack = up(slack + up(gamma(16 + n_terms) * crown._l1(lam[None])[0] * reach))
            const = down(const + (lam * shift).flatten(1).sum(-1))
            lam = lam * scale
        elif layer.kind == "activation":
            a = crown._relu_slope(m)
            lw, uw = (_windows(t, oy, ox, lam.shape[-2], lam.shape[-1]) for t in (l, u))
            lower_slope, upper_slope, intercept, _ = crown._relu_lines(lw, uw, a, None)
            neg = lam.clamp(max=0)
            reach = mag_max + intercept.max()
            slack = up(slack + up(gamma(8 + n_terms) * crown._l1(lam[None])[0] * reach))
            const = down(const + (neg * intercept).flatten(1).sum(-1))
            lam = lam * lower_slope + neg * (upper_slope - lower_slope)
        elif layer.kind == "maxpool2d":
            lam, oy, ox, c_step, s_step = _maxpool(layer, lam, oy, ox, l, u, mag_max)
            const = down(const + c_step)
            slack = up(slack + s_step)
        # identity layers (Identity, Dropout in eval mode): nothing to do
    x0, lo, hi = (_windows(t[0], oy, ox, lam.shape[-2], lam.shape[-1]) for t in
                  (bounds.input_set.x0, bounds.input_set.lo, bounds.input_set.hi))
    window_set = InputSet(x0, bounds.input_set.eps, bounds.input_set.norm, lo, hi)
    return down(down(const + window_set.lower(lam[:, None])[:, 0]) - slack)


def _maxpool(layer, lam, oy, ox, l, u, mag_max):
    """Max pool backwards on windows: DeepPoly's relaxation as :func:`crown._maxpool_back`."""
    m = layer.module
    c, hh, ww = layer.input_shape
    (kh, kw), (sy, sx), (py, px) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
    lw, uw = crown._pool_windows(m, l[None], -math.inf), crown._pool_windows(m, u[None], -math.inf)
    best, star = lw.max(2)
    decided = best >= uw.scatter(2, star[:, :, None], -math.inf).amax(2)
    top = uw.amax(2)
    index = crown._pool_windows(m, torch.arange(hh * ww, dtype=l.dtype, device=l.device).view(1, 1, hh, ww), -1.0)
    flat = crown._star_index(index, star)[0]  # (C, L) input positions of each window's star
    ho, wo = lam.shape[-2:]
    out_h, out_w = (hh + 2 * py - kh) // sy + 1, (ww + 2 * px - kw) // sx + 1
    shape = (c, out_h, out_w)
    star_w = _windows(flat.view(shape).double(), oy, ox, ho, wo).long()  # (S, C, ho, wo)
    dec_w = _windows(decided[0].view(shape).double(), oy, ox, ho, wo)
    top_w = _windows(top[0].view(shape).clamp_min(-1e300), oy, ox, ho, wo)
    neg = lam.clamp(max=0)
    coef = lam.clamp(min=0) + neg * dec_w
    const = (neg * (1 - dec_w) * top_w).flatten(1).sum(-1)
    ny, nx = oy * sy - py, ox * sx - px
    h_in, w_in = (ho - 1) * sy + kh, (wo - 1) * sx + kw
    ry, rx = star_w // ww - ny[:, None, None, None], star_w % ww - nx[:, None, None, None]
    target = (ry.clamp(0, h_in - 1) * w_in + rx.clamp(0, w_in - 1)).flatten(2)
    new = lam.new_zeros(lam.shape[0], c, h_in * w_in)
    new.scatter_add_(2, target, coef.flatten(2))
    reach = mag_max + top.abs().max()  # |max of a window| <= the largest |input| and <= |top|
    slack = up(gamma(kh * kw + lam[0].numel()) * crown._l1(lam[None])[0] * reach)
    return new.view(lam.shape[0], c, h_in, w_in), ny, nx, const, slack

