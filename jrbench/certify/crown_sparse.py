"""CROWN's backward step through a max pool whose windows do not overlap and the ReLU just below it,
on the windows' chosen inputs only, and the convolution below them from those inputs.

Going backwards, a max pool hands each window's coefficient to one input, its chosen input (the one
with the largest lower bound; DeepPoly's relaxation, :func:`jrbench.certify.crown._maxpool_back`).
When the windows do not overlap, each input receives at most one coefficient, so the ReLU below
can be applied at the chosen inputs before the coefficients are spread over the map: a 2 x 2 pool
leaves a quarter of the entries. The convolution below then needs only the chosen inputs whose
ReLU can pass a coefficient (not those always off, for a ReLU): cut into bands of rows, its
backward step is a product per band with the rows of the convolution's matrix at those entries
(built per example), which on a LeNet costs less than the convolution over the whole, mostly zero,
map; when it does not (few specifications), the convolution runs on the map.

The relaxations, the constants and the rounding slack are those of the unfused steps (the slack of
each step's products and sums: gamma(n) times ||Lambda||_1 times the largest magnitude its terms
reach), so the bounds are the same up to the order of floating-point sums. What the step needs of
the bounds (:func:`prepare`) does not depend on the coefficients: the backward passes of several
layers and of the margins share it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .relaxations import _adjoint, _dots, _l1, _pool_windows, _relu_lines, _relu_slope, _star_index
from .rounding import gamma, up

BUILD_COST = 100  # building the bands' matrices costs about as much as this many specifications' products
DENSE_COST = 3.0  # a convolution's multiply-adds (float64, CPU) cost about this many of a matrix product's


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def fusable(layers, i: int) -> bool:
    """Whether layer ``i`` is a max pool with non-overlapping windows right above a ReLU."""
    if i < 1 or layers[i].kind != "maxpool2d" or layers[i - 1].kind != "activation":
        return False
    m = layers[i].module
    (kh, kw), (sy, sx), (dy, dx) = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.dilation)
    return sy >= kh and sx >= kw and (dy, dx) == (1, 1) and not m.ceil_mode


class Prepared(NamedTuple):
    """Per example, what the fused step needs of the pool's and the ReLU's bounds (N, C, L) at the
    pool's windows: each window's chosen input (flat position), whether its max is decided, its
    largest upper bound, the ReLU's bounds and CROWN lines there, which chosen inputs can pass a
    coefficient, the constant per unit of a negative coefficient with the two unit sums for the
    slack (N, C L, 3); and the reaches of both steps (N, 1)."""

    flat: torch.Tensor
    decided: torch.Tensor
    top: torch.Tensor
    ls: torch.Tensor
    us: torch.Tensor
    lower_slope: torch.Tensor
    upper_slope: torch.Tensor
    keep: torch.Tensor
    per_unit: torch.Tensor
    pool_reach: torch.Tensor
    relu_reach: torch.Tensor

    def rows(self, ex: torch.Tensor) -> "Prepared":
        return Prepared(*(t[ex] for t in self))


def prepare(pool, relu, lp, upp, lr, ur) -> Prepared:
    """:class:`Prepared` for max pool ``pool`` (input bounds lp, upp) over ReLU ``relu`` (input
    bounds lr, ur): it depends on the bounds only, not on the coefficients, so the backward passes
    of several layers' bounds and of the margins share it."""
    m = pool.module
    c, h, w = pool.input_shape
    lw, uw = _pool_windows(m, lp, -math.inf), _pool_windows(m, upp, -math.inf)
    best, star = lw.max(2)  # (N, C, L)
    decided = best >= uw.scatter(2, star[:, :, None], -math.inf).amax(2)
    top = uw.amax(2)
    index = _pool_windows(m, torch.arange(h * w, dtype=lp.dtype, device=lp.device).view(1, 1, h, w), -1.0)
    flat = _star_index(index, star)  # (N, C, L)
    a = _relu_slope(relu.module)
    ls, us = lr.flatten(2).gather(2, flat), ur.flatten(2).gather(2, flat)  # the ReLU at the chosen inputs
    lower_slope, upper_slope, intercept, _ = _relu_lines(ls, us, a, None)
    keep = (us > 0) | (a != 0)  # a ReLU that is always off passes nothing
    # per unit of a negative coefficient: the constant (the ReLU's intercept through a decided
    # window, else the window's largest upper bound), passing a decided window, and 1
    per_unit = torch.stack([torch.where(decided, intercept, top), decided.to(lp), torch.ones_like(top)], -1)
    pool_reach = (_pool_windows(m, torch.maximum(-lp, upp), 0.0).amax(2) + top.abs()).flatten(1).amax(-1, keepdim=True)
    intercept_all = _relu_lines(lr, ur, a, None)[2]  # the reach over the whole layer, as the unfused step
    relu_reach = (torch.maximum(-lr, ur) + intercept_all).flatten(1).amax(-1, keepdim=True)
    return Prepared(flat, decided, top, ls, us, lower_slope, upper_slope, keep, per_unit.flatten(1, 2), pool_reach,
                    relu_reach)


def pool_relu_back(pool, relu, lam, prep: Prepared, alpha, sound: bool):
    """Max pool ``pool`` and ReLU ``relu`` backwards for lam (N, S, *pool output), from
    :func:`prepare`: (values (N, S, C, L) at the windows' chosen inputs, constant (N, S), rounding
    slack (N, S) or None unless ``sound``). ``alpha``: the ReLU's lower slopes (alpha-CROWN) or None."""
    m = pool.module
    n_, s_ = lam.shape[:2]
    c, h, w = pool.input_shape
    decided, top = prep.decided, prep.top
    lam_w = lam.reshape(n_, s_, c, decided.shape[-1])
    a = _relu_slope(relu.module)
    if alpha is None:
        # both at once: a coefficient >= 0 reaches the ReLU and takes its lower slope; one < 0 takes
        # the upper slope through a decided window (else it goes to the constant at the window's
        # largest upper bound), and adds the ReLU's intercept
        neg = lam_w.clamp(max=0)
        pos = lam_w - neg  # exactly
        values = pos * prep.lower_slope.unsqueeze(1) + neg * (decided * prep.upper_slope).unsqueeze(1)
        sums = _dots(neg.flatten(2), prep.per_unit)  # the constant, sum of neg through decided windows, of all neg
        const = sums[..., 0]
        if sound:  # ||lam||_1, and ||coefficients at the ReLU||_1 (|lam| >= 0, or through a decided window)
            positive = pos.flatten(2).sum(-1)
            l1, l1_relu = positive - sums[..., 2], positive - sums[..., 1]
    else:
        pos, neg = lam_w.clamp(min=0), lam_w.clamp(max=0)
        coef = pos + neg * decided.unsqueeze(1)
        const = (neg * (~decided * top).unsqueeze(1)).flatten(2).sum(-1)
        alpha_s = alpha.flatten(3).gather(3, prep.flat.unsqueeze(1).expand(n_, s_, *prep.flat.shape[1:]))
        lower_slope, upper_slope, intercept, _ = _relu_lines(prep.ls.unsqueeze(1), prep.us.unsqueeze(1), a, alpha_s)
        neg_c = coef.clamp(max=0)
        values = coef * lower_slope + neg_c * (upper_slope - lower_slope)
        const = const + (neg_c * intercept).flatten(2).sum(-1)
        if sound:
            l1, l1_relu = _l1(lam_w), _l1(coef)
    if not sound:
        return values, const, None
    kh, kw = _pair(m.kernel_size)
    slack = up(up(gamma(kh * kw + decided.shape[-1] + lam_w[0, 0].numel()) * l1 * prep.pool_reach)
               + up(gamma(8 + c * h * w) * l1_relu * prep.relu_reach))
    return values, const, slack


def dense(values: torch.Tensor, flat: torch.Tensor, shape) -> torch.Tensor:
    """The coefficients on the whole map (N, S, *shape) from their values at the chosen inputs."""
    n_, s_, c, _ = values.shape
    zeros = values.new_zeros(n_, s_, c, math.prod(shape[1:]))
    return zeros.scatter(3, flat.unsqueeze(1).expand_as(values), values).reshape(n_, s_, *shape)


def conv_back(layer, values, flat, keep, reach, sound: bool):
    """Conv2d ``layer`` backwards from coefficients ``values`` (N, S, C, L) at the chosen inputs
    ``flat`` of the pool above (its outputs; ``keep``: those that can be nonzero; ``reach`` (N, 1):
    the largest |A| |h| + |b| over its outputs): (lam on its input, constant, slack or None). The
    entries that can be nonzero are cut into bands of output rows; each band is a product with the
    rows of the convolution's matrix at its entries, restricted to the input rows the band
    reaches, and the bands' products are added up where they overlap. When the whole convolution
    costs less (DENSE_COST, BUILD_COST), it runs on the map."""
    m = layer.module
    n_, s_, c, length = values.shape
    w = m.weight.detach().to(values)
    c_out, h_out, w_out = _out_shape(layer)
    plan = None if isinstance(m.padding, str) or m.groups != 1 else _bands(layer, flat, keep, h_out)
    if plan is None or plan[0] * (s_ + BUILD_COST) > DENSE_COST * s_ * c_out * h_out * w_out * w[0].numel():
        lam = dense(values, flat, (c_out, h_out, w_out)).reshape(n_ * s_, c_out, h_out, w_out)
        if isinstance(m.padding, str):
            new = _adjoint(lambda t: torch.nn.functional.conv2d(t, w, None, m.stride, m.padding, m.dilation,
                                                                  m.groups), layer.input_shape, lam)
        else:
            new = torch.nn.grad.conv2d_input((n_ * s_, *layer.input_shape), w, lam, m.stride, m.padding,
                                             m.dilation, m.groups)
        new = new.view(n_, s_, *layer.input_shape)
    else:
        new = _banded(layer, values, flat, keep, w, plan)
    const = (values.sum(-1) * m.bias.detach().to(values)).sum(-1) if m.bias is not None else values.new_zeros(n_, s_)
    if not sound:
        return new, const, None
    # each input coefficient sums at most c_out kh kw nonzero products, in any order (the empty
    # slots of a band add exact zeros): the slack of the whole convolution's step holds
    return new, const, up(gamma(w[0].numel() + c_out * h_out * w_out) * _l1(values) * reach)


def _bands(layer, flat, keep, h_out):
    """The cheapest cut into bands of ``rows`` output rows: (multiply-adds per specification, rows,
    entries per band (padded), band height on the input)."""
    m = layer.module
    c_in, _, w_in = layer.input_shape
    (sy, sx), (_, px), (dy, dx) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
    kh, kw = m.weight.shape[-2:]
    w_out = _out_shape(layer)[2]
    width = max((w_out - 1) * sx + (kw - 1) * dx + 1, px + w_in)
    y = (flat // w_out).flatten(1)
    best = None
    for rows in (1, 2, 4, 8, 16):
        if rows > 1 and rows >= 2 * h_out:
            break
        step = rows * sy
        height = -(-((rows - 1) * sy + (kh - 1) * dy + 1) // step) * step  # a whole number of steps
        band = torch.where(keep.flatten(1), y // rows, -1)
        nb = -(-h_out // rows)
        counts = torch.zeros(band.shape[0], nb + 1, dtype=torch.long, device=band.device)
        counts.scatter_add_(1, band + 1, torch.ones_like(band))
        per_band = int(counts[:, 1:].max()) if nb else 0
        cost = nb * per_band * c_in * height * width
        if best is None or cost < best[0]:
            best = (cost, rows, per_band, height)
    return best


def _banded(layer, values, flat, keep, w, plan):
    """lam on the conv's input from the values at output positions ``flat``, band by band."""
    m = layer.module
    _, rows, per_band, height = plan
    n_, s_, c, length = values.shape
    c_in, h_in, w_in = layer.input_shape
    if per_band == 0:  # no entry kept (every ReLU above is off over the ball): nothing reaches the input
        return values.new_zeros(n_, s_, c_in, h_in, w_in)
    (sy, sx), (py, px), (dy, dx) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
    kh, kw = w.shape[-2:]
    _, h_out, w_out = _out_shape(layer)
    width = max((w_out - 1) * sx + (kw - 1) * dx + 1, px + w_in)
    step = rows * sy
    nb = -(-h_out // rows)
    dev = values.device
    flat2 = flat.flatten(1)  # (N, CL)
    y, x = flat2 // w_out, flat2 % w_out
    band = torch.where(keep.flatten(1), y // rows, nb)  # dropped entries in a spare band
    order = band.argsort(dim=1, stable=True)
    band_sorted = band.gather(1, order)
    counts = torch.zeros(n_, nb + 1, dtype=torch.long, device=dev)
    counts.scatter_add_(1, band_sorted, torch.ones_like(band_sorted))
    start = counts.cumsum(1) - counts  # first sorted place of each band
    rank = torch.arange(order.shape[1], device=dev) - start.gather(1, band_sorted)
    slot = torch.where(band_sorted < nb, band_sorted * per_band + rank, nb * per_band)  # a spare slot
    entry = torch.zeros(n_, nb * per_band + 1, dtype=torch.long, device=dev).scatter_(1, slot, order)
    filled = torch.zeros(n_, nb * per_band + 1, dtype=torch.bool, device=dev).scatter_(
        1, slot, torch.ones_like(slot, dtype=torch.bool))
    entry, filled = entry[:, :-1], filled[:, :-1]  # (N, nb * per_band)
    # the rows of the convolution's matrix at each slot, on its band's input rows (zero for empty slots)
    ey, ex = y.gather(1, entry), x.gather(1, entry)
    local_y = ey % rows * sy  # the row within the band's first input row
    ry = local_y[:, :, None, None] + dy * torch.arange(kh, device=dev)[:, None]  # (N, slots, kh, 1)
    rx = (ex * sx)[:, :, None, None] + dx * torch.arange(kw, device=dev)  # (N, slots, 1, kw), padded width
    cols = (ry * width + rx)[:, :, None] + torch.arange(c_in, device=dev)[:, None, None] * (height * width)
    src = w[entry // length] * filled[:, :, None, None, None]  # (N, slots, C_in, kh, kw)
    mat = values.new_zeros(n_, nb * per_band, c_in * height * width)
    mat.scatter_(2, cols.flatten(2), src.flatten(2))
    # specifications last: each slot's values a row (a copy, then row gathers)
    rows_t = values.flatten(2).transpose(1, 2).reshape(n_ * c * length, s_)
    base = torch.arange(n_, device=dev)[:, None] * (c * length)
    vals = rows_t.index_select(0, (entry + base).flatten()).view(n_, nb, per_band, s_)
    prod = torch.matmul(vals.transpose(2, 3), mat.view(n_, nb, per_band, -1))  # (N, nb, S, C_in*height*width)
    blocks = max(nb * step + height - step, py + h_in)
    total = values.new_zeros(n_, s_, c_in, blocks, width)
    for b in range(nb):  # the bands overlap on the input
        total[:, :, :, b * step:b * step + height] += prod[:, b].view(n_, s_, c_in, height, width)
    if (blocks, width) == (h_in, w_in):
        return total
    return total[:, :, :, py:py + h_in, px:px + w_in].contiguous()


def _out_shape(layer) -> tuple[int, int, int]:
    """(C, H, W) of a Conv2d layer's output."""
    m = layer.module
    _, h, w = layer.input_shape
    (sy, sx), (py, px), (dy, dx) = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
    kh, kw = m.weight.shape[-2:]
    return m.weight.shape[0], (h + 2 * py - dy * (kh - 1) - 1) // sy + 1, (w + 2 * px - dx * (kw - 1) - 1) // sx + 1
