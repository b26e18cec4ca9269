"""Complete verification of small ReLU networks by mixed-integer linear programming (Tjeng, Xiao,
Tedrake 2019, "Evaluating Robustness of Neural Networks with Mixed Integer Programming",
arXiv:1711.07356), solved by HiGHS through ``highspy``.

Question: is min over the L-inf ball of radius eps around x, intersected with the pixel box [0, 1],
of min_{j != y} (f_y(x') - f_j(x')) positive? The answer is one of

- ``verified``: for every class j the solver proved a lower bound of f_y - f_j above the tolerance
  ``TOL`` (or CROWN's sound bound is already positive);
- ``falsified``: a point of the ball ∩ [0, 1] whose class is not y, confirmed by plain forward
  passes of the model (its own dtype, float32 for jrbench models, and float64): the argmax is not
  the label or ties with it;
- ``unknown``: neither within the time budget, or the solver's answer lies within its tolerances
  (a bound in [0, TOL], or a solution with a negative margin that the forward pass does not
  confirm). Unknown is never turned into a guess.

Why a MILP: the exact minimum of a piecewise-linear network over a box is a MILP once every
nonlinearity whose sign can change gets a binary variable; HiGHS is a maintained exact
(branch-and-bound) solver, and big-M constraints whose M are tight pre-activation bounds (here
CROWN's, :mod:`jrbench.certify.crown`) are the standard tight encoding of Tjeng et al.; a neuron
that the bounds decide gets no binary at all. L-inf only: an L2 ball needs a quadratic constraint,
which HiGHS's MILP solver does not take.

Encoding (the model's chain of layers, :func:`jrbench.certify.crown.crown_chain`):

- variables x_i in [lo_i, hi_i], the box [x - eps, x + eps] ∩ [0, 1] (``InputSet.make``);
- affine layers (Normalize, Linear, Conv2d with any stride, padding, dilation and groups, eval
  BatchNorm, AvgPool2d) are folded: each neuron is kept as a sparse affine expression of the
  variables so far (a Conv2d's sparse matrix by index arithmetic: the grid of input positions,
  padded like the input, unfolded into the kernel's windows; an AvgPool2d's by pushing unit
  vectors through it in float64); Flatten, Unflatten, Identity and Dropout keep the expressions;
- at a nonlinear layer, each input neuron that is used gets a variable z with the CROWN bounds
  [l, u] and the equality z = its expression (an expression that is one variable already reuses
  it and tightens its bounds);
- ReLU / LeakyReLU(a), 0 <= a <= 1: l >= 0: y = z; u <= 0: y = a z (nothing when a = 0);
  otherwise a variable y in [a l, u] and a binary d with y >= z, y >= a z,
  y <= z - (1 - a) l (1 - d), y <= a z + (1 - a) u d (d = 1: the active side);
- MaxPool2d: in each window the inputs whose upper bound does not beat the largest lower bound
  (the "star") are dropped; a window left with one input is that input; otherwise a variable
  y >= x_i for every remaining input and binaries d_i with sum d_i = 1 and
  y <= x_i + (max_{k != i} u_k - l_i)(1 - d_i), plus the valid cut y <= sum_i (x_i - l_i) + max_i l_i
  that tightens the LP relaxation;
- the logits stay expressions; the objective of class j is f_y - f_j (the same model, another
  objective), classes in the order of CROWN's margin lower bound, weakest first; classes CROWN
  already certifies are skipped. With no binary at all (the bounds decide every neuron) HiGHS
  solves an LP, whose optimum is the bound.

The search for one class stops as soon as the sign is known: a callback on improving solutions
runs every solution whose objective is below ``TOL`` through the model (clipped to the box and to
float32 pixels of the ball) and stops the solve at a confirmed counterexample; a callback on the
solver's interrupt points stops it when the dual bound exceeds ``TOL``. The example has one time
budget, ``timeout_s``, measured from the call's start (bounds and model building included) and
shared by its classes; HiGHS checks its time limit between steps of its own, so a call can overrun
the budget a little (up to about two seconds on LeNet). HiGHS runs with ``random_seed`` 0, small
MIP gaps and its light presolve (the full MIP presolve does not look at the time limit and spent
seconds on dense layers without reducing anything).

``margin_lower``: the smallest, over the classes, of the best lower bound of f_y - f_j proved
(CROWN's, or the MILP's dual bound when larger); for a falsified example, the float64 margin
f_y - max_j f_j at the counterexample.

Tolerance: HiGHS works in floating point with absolute feasibility and optimality tolerances of
about 1e-7 to 1e-6 on its (scaled) rows, and the big-M rows let a binary within its integrality
tolerance move a neuron by M times that; errors reach the objective through the weights. A class
counts as proved when its dual bound exceeds TOL = 1e-5 + 1e-6 * S, S the largest magnitude of the
logits' sound bounds over the ball (so the relative part follows the logits' scale). A proved
class is therefore a statement up to solver tolerances, not a rounding-sound certificate like
CROWN's; a falsified example is exact (it rests on the forward passes alone).

HiGHS prints a banner on the first construction of a solver in a process; it is sent to the null
device (standard output's file descriptor is redirected for that moment). Library code never
prints; bad input raises :class:`jrbench.errors.UserError`.
"""
from __future__ import annotations

import ctypes
import math
import numbers
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..errors import UserError
from ..models.architectures import eval_mode
from ..models.lipschitz import Layer, strictly_correct
from . import crown

FLAG = "--complete"
TOL_ABS = 1e-5  # absolute part of the tolerance on the solver's bounds (see the module docstring)
TOL_REL = 1e-6  # relative part, times the largest |logit bound| over the ball
UNIT_BUDGET = 1 << 22  # float64 elements of one chunk of unit-vector images (32 MB)


@dataclass
class Outcome:
    """The verdict on one example at one eps (see the module docstring)."""

    status: str  # "verified", "falsified" or "unknown"
    margin_lower: float  # proved lower bound of min over the ball of min_j (f_y - f_j) (-inf if none);
    # falsified: the (float64) margin at the counterexample
    counterexample: torch.Tensor | None  # (C, H, W) float32 CPU pixels in the ball ∩ [0, 1], when falsified
    seconds: float
    note: str


def supports(model: nn.Module) -> str | None:
    """None when complete verification covers ``model`` (CROWN's layers), else the refusal message."""
    try:
        crown.crown_chain(model, FLAG)
    except UserError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- the MILP
class _Milp:
    """Columns (bounds, integrality) and rows (sparse blocks with row bounds) built up layer by layer."""

    def __init__(self):
        self.lo = np.zeros(0)
        self.hi = np.zeros(0)
        self.integer = np.zeros(0, dtype=bool)
        self.blocks: list[sp.coo_matrix] = []
        self.row_lo: list[np.ndarray] = []
        self.row_hi: list[np.ndarray] = []

    @property
    def ncols(self) -> int:
        return len(self.lo)

    def add_cols(self, lo, hi, integer: bool = False) -> np.ndarray:
        lo, hi = np.asarray(lo, dtype=np.float64).ravel(), np.asarray(hi, dtype=np.float64).ravel()
        start = self.ncols
        self.lo = np.concatenate([self.lo, lo])
        self.hi = np.concatenate([self.hi, np.maximum(lo, hi)])
        self.integer = np.concatenate([self.integer, np.full(len(lo), integer)])
        return np.arange(start, self.ncols)

    def tighten(self, cols: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Intersect the bounds of ``cols`` with [lo, hi] (both sound, so the intersection holds the
        true values; a crossing by rounding is closed at the midpoint)."""
        new_lo = np.maximum(self.lo[cols], lo)
        new_hi = np.minimum(self.hi[cols], hi)
        cross = new_lo > new_hi
        mid = (new_lo + new_hi) / 2
        self.lo[cols] = np.where(cross, mid, new_lo)
        self.hi[cols] = np.where(cross, mid, new_hi)

    def add_rows(self, rows, cols, vals, n_rows: int, lo, hi) -> None:
        """Rows ``lo <= sum vals x[cols] <= hi`` given as triplets (row numbers 0 .. n_rows - 1)."""
        block = sp.coo_matrix((np.asarray(vals, dtype=np.float64), (np.asarray(rows), np.asarray(cols))),
                              shape=(n_rows, self.ncols))
        self.blocks.append(block)
        self.row_lo.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (n_rows,)).copy())
        self.row_hi.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (n_rows,)).copy())

    def add_expr_rows(self, expr: "_Expr", idx: np.ndarray, rows, cols, vals, lo, hi, sign: float = -1.0) -> None:
        """Rows ``lo - sign c <= (new terms) + sign M x <= hi - sign c`` for the expressions ``idx``
        of ``expr`` (row r of the block uses expression idx[r]); new terms as triplets."""
        m = expr.matrix[idx].tocoo()
        n_rows = len(idx)
        all_rows = np.concatenate([np.asarray(rows, dtype=np.int64), m.row.astype(np.int64)])
        all_cols = np.concatenate([np.asarray(cols, dtype=np.int64), m.col.astype(np.int64)])
        all_vals = np.concatenate([np.asarray(vals, dtype=np.float64), sign * m.data])
        shift = sign * expr.const[idx]
        self.add_rows(all_rows, all_cols, all_vals, n_rows, np.asarray(lo) - shift, np.asarray(hi) - shift)

    def matrix(self) -> sp.csc_matrix:
        n = self.ncols
        if not self.blocks:
            return sp.csc_matrix((0, n))
        return sp.vstack([sp.coo_matrix((b.data, (b.row, b.col)), shape=(b.shape[0], n)) for b in self.blocks]).tocsc()


@dataclass
class _Expr:
    """Neurons as affine expressions of the MILP's columns: ``matrix`` (n, columns) CSR, ``const`` (n,)."""

    matrix: sp.csr_matrix
    const: np.ndarray

    def widen(self, ncols: int) -> "_Expr":
        m = self.matrix
        return _Expr(sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], ncols)), self.const)

    def then(self, a: sp.spmatrix, b: np.ndarray) -> "_Expr":
        """The expressions of a @ h + b."""
        return _Expr(sp.csr_matrix(a @ self.matrix), a @ self.const + b)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().reshape(-1)


def _unit_images(fn, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    """The sparse matrix (outputs, inputs) of a linear map ``fn`` (no bias) on float64 tensors of
    shape (B, *in_shape): column i is fn(e_i), pushed in chunks of unit vectors."""
    n_in = math.prod(in_shape)
    with torch.no_grad():
        n_out = fn(torch.zeros((1, *in_shape), dtype=torch.float64)).numel()
        chunk = max(1, UNIT_BUDGET // max(1, n_in + n_out))
        parts = []
        for start in range(0, n_in, chunk):
            k = min(chunk, n_in - start)
            e = torch.zeros((k, n_in), dtype=torch.float64)
            e[torch.arange(k), torch.arange(start, start + k)] = 1.0
            out = fn(e.reshape(k, *in_shape)).reshape(k, -1).numpy()
            parts.append(sp.csr_matrix(out))
    return sp.vstack(parts).T.tocsr()


def _conv_matrix(m: nn.Conv2d, w: torch.Tensor, shape: tuple[int, ...]) -> sp.csr_matrix:
    """The sparse matrix (outputs, inputs) of Conv2d ``m`` without bias on inputs of ``shape``, by
    index arithmetic: the grid of input positions is padded like the input (-1 for zero padding;
    reflect, replicate and circular padding copy positions) and unfolded into the kernel's windows."""
    c, h, wd = shape
    grid = torch.arange(c * h * wd, dtype=torch.float64).reshape(1, c, h, wd)
    pad = tuple(m._reversed_padding_repeated_twice)
    if m.padding_mode == "zeros":
        grid = torch.nn.functional.pad(grid, pad, value=-1.0)
    else:
        grid = torch.nn.functional.pad(grid, pad, mode=m.padding_mode)
    kh, kw = m.kernel_size
    cols = torch.nn.functional.unfold(grid, (kh, kw), dilation=m.dilation, stride=m.stride)[0].long()  # (c k, L)
    out_c, per_group = w.shape[0], w.shape[1]
    k = per_group * kh * kw
    group = torch.arange(out_c) // (out_c // m.groups)
    rows_in = group[:, None] * k + torch.arange(k)[None]  # (out_c, k): the rows of the unfold each output uses
    n_pos = cols.shape[1]
    col = cols[rows_in]  # (out_c, k, L)
    val = w.reshape(out_c, k, 1).expand(out_c, k, n_pos)
    row = (torch.arange(out_c)[:, None, None] * n_pos + torch.arange(n_pos)[None, None]).expand(out_c, k, n_pos)
    keep = (col >= 0) & (val != 0)
    return sp.csr_matrix((val[keep].numpy(), (row[keep].numpy(), col[keep].numpy())),
                         shape=(out_c * n_pos, c * h * wd))


def _affine(layer: Layer) -> tuple[sp.spmatrix, np.ndarray]:
    """(A, b): the affine layer as h -> A h + b on flattened (C-order) float64 tensors."""
    m, kind, shape = layer.module, layer.kind, tuple(layer.input_shape)
    n_in = math.prod(shape)
    if kind in ("normalize", "batchnorm"):
        like = torch.zeros((1, *shape), dtype=torch.float64)
        scale, shift, _ = crown._diag(layer, like)
        return sp.diags(_np(scale.expand_as(like))), _np(shift.expand_as(like))
    if kind == "linear":
        w = m.weight.detach().to("cpu", torch.float64).numpy()
        b = m.bias.detach().to("cpu", torch.float64).numpy() if m.bias is not None else np.zeros(w.shape[0])
        rest = n_in // w.shape[1]  # a Linear over the last axis of a larger tensor
        a = sp.csr_matrix(w) if rest == 1 else sp.kron(sp.identity(rest, format="csr"), sp.csr_matrix(w), "csr")
        return a, np.tile(b, rest)
    if kind == "conv2d":
        w = m.weight.detach().to("cpu", torch.float64)
        a = _conv_matrix(m, w, shape)
        if m.bias is None:
            return a, np.zeros(a.shape[0])
        spatial = a.shape[0] // w.shape[0]
        return a, np.repeat(m.bias.detach().to("cpu", torch.float64).numpy(), spatial)
    if kind == "avgpool2d":
        a = _unit_images(m, shape)
        return a, np.zeros(a.shape[0])
    raise AssertionError(kind)


def _materialize(milp: _Milp, expr: _Expr, idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Column numbers holding the expressions ``idx`` (bounds [lo, hi]): an expression that is one
    column with coefficient 1 reuses it (its bounds tightened); others get a new column z and the
    row z = expression."""
    m = expr.matrix[idx]
    nnz = np.diff(m.indptr)
    first = m.indptr[:-1]
    single = (nnz == 1) & (expr.const[idx] == 0)
    single[single] &= m.data[first[single]] == 1.0
    cols = np.full(len(idx), -1, dtype=np.int64)
    cols[single] = m.indices[first[single]]
    if single.any():
        milp.tighten(cols[single], lo[single], hi[single])
    rest = np.flatnonzero(~single)
    if len(rest):
        new = milp.add_cols(lo[rest], hi[rest])
        cols[rest] = new
        r = np.arange(len(rest))
        milp.add_expr_rows(expr.widen(milp.ncols), idx[rest], r, new, np.ones(len(rest)), 0.0, 0.0)
    return cols


def _single(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, ncols: int) -> sp.csr_matrix:
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, ncols))


def _activation(milp: _Milp, expr: _Expr, layer: Layer, l: np.ndarray, u: np.ndarray) -> tuple[_Expr, int]:
    """ReLU / LeakyReLU(a) (module docstring); returns the output expressions and the binaries added."""
    a = crown._relu_slope(layer.module)
    if a == 1.0:
        return expr, 0
    n = len(l)
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    used = active | unstable | (inactive & (a > 0))
    idx = np.flatnonzero(used)
    z = np.full(n, -1, dtype=np.int64)
    z[idx] = _materialize(milp, expr, idx, l[idx], u[idx])
    out_rows, out_cols, out_vals = [], [], []
    keep = np.flatnonzero(active | (inactive & (a > 0)))
    out_rows.append(keep)
    out_cols.append(z[keep])
    out_vals.append(np.where(active[keep], 1.0, a))
    k = np.flatnonzero(unstable)
    if len(k):
        lk, uk, zk = l[k], u[k], z[k]
        y = milp.add_cols(a * lk, uk)
        d = milp.add_cols(np.zeros(len(k)), np.ones(len(k)), integer=True)
        r = np.arange(len(k))
        one = np.ones(len(k))
        milp.add_rows(np.r_[r, r], np.r_[y, zk], np.r_[one, -one], len(k), 0.0, np.inf)  # y >= z
        if a > 0:
            milp.add_rows(np.r_[r, r], np.r_[y, zk], np.r_[one, -a * one], len(k), 0.0, np.inf)  # y >= a z
        # y <= z - (1 - a) l (1 - d)
        milp.add_rows(np.r_[r, r, r], np.r_[y, zk, d], np.r_[one, -one, -(1 - a) * lk], len(k), -np.inf,
                      -(1 - a) * lk)
        # y <= a z + (1 - a) u d
        milp.add_rows(np.r_[r, r, r], np.r_[y, zk, d], np.r_[one, -a * one, -(1 - a) * uk], len(k), -np.inf, 0.0)
        out_rows.append(k)
        out_cols.append(y)
        out_vals.append(one)
    rows, cols, vals = np.concatenate(out_rows), np.concatenate(out_cols), np.concatenate(out_vals)
    return _Expr(_single(n, rows, cols, vals, milp.ncols), np.zeros(n)), len(k)


def _maxpool(milp: _Milp, expr: _Expr, layer: Layer, l: torch.Tensor, u: torch.Tensor) -> tuple[_Expr, int]:
    """MaxPool2d (module docstring); l, u (C, H, W) bounds of its input."""
    m = layer.module
    c, h, w = layer.input_shape
    grid = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)
    index = crown._pool_windows(m, grid, -1.0)[0, 0].long().numpy()  # (K, L), -1 for padding
    valid = index >= 0
    pos = np.arange(c)[:, None, None] * (h * w) + np.where(valid, index, 0)[None]  # (C, K, L)
    lf, uf = _np(l), _np(u)
    lw = np.where(valid[None], lf[pos], -np.inf)
    uw = np.where(valid[None], uf[pos], -np.inf)
    star = lw.argmax(1)  # (C, L)
    best = np.take_along_axis(lw, star[:, None], 1)[:, 0]
    kk = np.arange(lw.shape[1])[None, :, None]
    cand = valid[None] & ((uw > best[:, None]) | (kk == star[:, None]))
    count = cand.sum(1)
    n_out = count.size
    out = np.arange(n_out).reshape(count.shape)  # output neuron of (channel, window)
    decided = count == 1
    # decided windows: the star's expression
    star_pos = np.take_along_axis(pos, star[:, None], 1)[:, 0]
    dec_out, dec_in = out[decided], star_pos[decided]
    if not (~decided).any():
        perm = sp.csr_matrix((np.ones(len(dec_out)), (dec_out, dec_in)), shape=(n_out, len(lf)))
        return expr.then(perm, np.zeros(n_out)), 0
    # undecided windows: a column per window, a binary per remaining input
    ch, win_k, win_l = np.nonzero(cand & ~decided[:, None])
    in_pos = pos[ch, win_k, win_l]
    needed = np.unique(in_pos)
    x_col = np.full(len(lf), -1, dtype=np.int64)
    x_col[needed] = _materialize(milp, expr, needed, lf[needed], uf[needed])
    und = np.flatnonzero(~decided.ravel())
    window = np.full(n_out, -1, dtype=np.int64)
    window[und] = np.arange(len(und))
    uc = np.where(cand, uw, -np.inf)
    top = uc.max(1)  # (C, L)
    top_arg = uc.argmax(1)
    second = np.sort(uc, axis=1)[:, -2] if uc.shape[1] > 1 else np.full(top.shape, -np.inf)
    y = milp.add_cols(best.ravel()[und], top.ravel()[und])
    o = out[ch, win_l]
    yi = y[window[o]]
    xi = x_col[in_pos]
    li = lf[in_pos]
    others = np.where(top_arg[ch, win_l] == win_k, second[ch, win_l], top[ch, win_l])
    big = others - li  # > 0 for every remaining input of an undecided window
    d = milp.add_cols(np.zeros(len(xi)), np.ones(len(xi)), integer=True)
    r = np.arange(len(xi))
    one = np.ones(len(xi))
    milp.add_rows(np.r_[r, r], np.r_[yi, xi], np.r_[one, -one], len(xi), 0.0, np.inf)  # y >= x_i
    # y <= x_i + big (1 - d_i)
    milp.add_rows(np.r_[r, r, r], np.r_[yi, xi, d], np.r_[one, -one, big], len(xi), -np.inf, big)
    milp.add_rows(window[o], d, one, len(und), 1.0, 1.0)  # sum_i d_i = 1
    # a valid cut for the LP relaxation: y <= sum_i (x_i - l_i) + max_i l_i (the max is one x_i, every
    # other x_i is >= its l_i)
    w_idx = window[o]
    rhs = np.bincount(w_idx, weights=-li, minlength=len(und)) + best.ravel()[und]
    milp.add_rows(np.r_[np.arange(len(und)), w_idx], np.r_[y, xi], np.r_[np.ones(len(und)), -one], len(und),
                  -np.inf, rhs)
    head = _Expr(sp.csr_matrix((np.ones(len(und)), (und, y)), shape=(n_out, milp.ncols)), np.zeros(n_out))
    perm = sp.csr_matrix((np.ones(len(dec_out)), (dec_out, dec_in)), shape=(n_out, len(lf)))
    tail = expr.widen(milp.ncols).then(perm, np.zeros(n_out))
    return _Expr(sp.csr_matrix(head.matrix + tail.matrix), tail.const), len(xi)


def _build(bounds: crown.Bounds) -> tuple[_Milp, _Expr, int, int]:
    """(the MILP's columns and rows, the logits as expressions, number of input columns, binaries)."""
    milp = _Milp()
    lo0, hi0 = _np(bounds.input_set.lo[0]), _np(bounds.input_set.hi[0])
    n_in = len(lo0)
    x = milp.add_cols(lo0, hi0)
    expr = _Expr(sp.identity(n_in, format="csr"), np.zeros(n_in))
    binaries = 0
    for i, layer in enumerate(bounds.layers):
        if layer.kind in crown.AFFINE:
            a, b = _affine(layer)
            expr = expr.widen(milp.ncols).then(a, b)
        elif layer.kind == "activation":
            expr, k = _activation(milp, expr.widen(milp.ncols), layer, _np(bounds.lower[i][0]), _np(bounds.upper[i][0]))
            binaries += k
        elif layer.kind == "maxpool2d":
            expr, k = _maxpool(milp, expr.widen(milp.ncols), layer, bounds.lower[i][0], bounds.upper[i][0])
            binaries += k
        elif layer.kind != "identity":
            raise AssertionError(layer.kind)
    return milp, expr.widen(milp.ncols), len(x), binaries


_BANNER_LOCK = threading.Lock()
_banner_done = False
_threads_seen: int | None = None


def _new_highs():
    """A silent ``highspy.Highs``: the banner of the process's first one goes to the null device."""
    global _banner_done
    import highspy

    with _BANNER_LOCK:
        if _banner_done:
            h = highspy.Highs()
        else:
            sys.stdout.flush()
            saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, 1)
                h = highspy.Highs()
                try:
                    ctypes.CDLL(None).fflush(None)
                except (OSError, AttributeError):  # no C library to flush: nothing buffered there
                    pass
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(null)
            _banner_done = True
    h.setOptionValue("output_flag", False)
    return h


def _pass_model(h, milp: _Milp) -> None:
    import highspy

    a = milp.matrix()
    lp = highspy.HighsLp()
    lp.num_col_ = milp.ncols
    lp.num_row_ = a.shape[0]
    lp.col_cost_ = np.zeros(milp.ncols)
    lp.col_lower_ = milp.lo
    lp.col_upper_ = milp.hi
    lp.row_lower_ = np.concatenate(milp.row_lo) if milp.row_lo else np.zeros(0)
    lp.row_upper_ = np.concatenate(milp.row_hi) if milp.row_hi else np.zeros(0)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_ = milp.ncols
    lp.a_matrix_.num_row_ = a.shape[0]
    lp.a_matrix_.start_ = a.indptr.astype(np.int32)
    lp.a_matrix_.index_ = a.indices.astype(np.int32)
    lp.a_matrix_.value_ = a.data
    if milp.integer.any():
        lp.integrality_ = [highspy.HighsVarType.kInteger if t else highspy.HighsVarType.kContinuous
                           for t in milp.integer]
    status = h.passModel(lp)
    if status == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS refused the verification MILP (passModel failed)")


# ----------------------------------------------------------------------------- forward checks
class _Checker:
    """Counterexample confirmation: a candidate (flat float64 pixels) is clipped to the box, cast to
    float32 pixels that lie in the ball ∩ [0, 1], and run through the model in its own dtype and in
    float64; confirmed when neither pass has the label strictly on top."""

    def __init__(self, model: nn.Module, x: torch.Tensor, label: int, eps: float, lo: np.ndarray, hi: np.ndarray):
        self.model, self.label, self.eps = model, label, eps
        self.x32 = x.detach().to("cpu", torch.float32)
        x64 = self.x32.double()
        self.low = torch.clamp(x64 - eps, min=0.0)
        self.high = torch.clamp(x64 + eps, max=1.0)
        self.lo, self.hi = lo, hi
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        self.state64 = {k: (v.detach().double() if v.is_floating_point() else v)
                        for k, v in list(model.named_parameters()) + list(model.named_buffers())}

    def pixels(self, flat: np.ndarray) -> torch.Tensor:
        """(C, H, W) float32 pixels of the ball ∩ [0, 1] next to ``flat``."""
        c = torch.from_numpy(np.clip(np.asarray(flat, dtype=np.float64), self.lo, self.hi)).reshape(self.x32.shape)
        c32 = c.float()
        for _ in range(4):  # the cast can step one float32 out of the ball: step back towards x
            bad = (c32.double() < self.low) | (c32.double() > self.high)
            if not bool(bad.any()):
                break
            c32 = torch.where(bad, torch.nextafter(c32, self.x32), c32)
        bad = (c32.double() < self.low) | (c32.double() > self.high)
        return torch.where(bad, self.x32, c32)

    def margins(self, c32: torch.Tensor) -> tuple[bool, bool, float]:
        """(misclassified in the model's dtype, misclassified in float64, float64 margin f_y - max_j f_j)."""
        y = torch.tensor([self.label], device=self.device)
        with eval_mode(self.model), torch.no_grad():
            f = self.model(c32[None].to(self.device, self.dtype))
            f64 = torch.func.functional_call(self.model, self.state64, (c32[None].to(self.device, torch.float64),))
        wrong = not bool(strictly_correct(f, y)[0])
        wrong64 = not bool(strictly_correct(f64, y)[0])
        row = f64[0].double()
        margin = float(row[self.label] - row.scatter(0, y, -math.inf).max())
        return wrong, wrong64, margin

    def confirm(self, flat: np.ndarray) -> tuple[torch.Tensor, float] | None:
        c32 = self.pixels(flat)
        wrong, wrong64, margin = self.margins(c32)
        return (c32, margin) if wrong and wrong64 else None


# ----------------------------------------------------------------------------- checks
def _check(model: nn.Module, x, label, eps, timeout_s, threads) -> int:
    """The number of classes; :class:`UserError` for bad arguments."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"verify {FLAG}: x must be a torch tensor of pixels, not {type(x).__name__}.")
    shape = tuple(getattr(model, "input_shape", ()))
    if tuple(x.shape) != shape:
        raise UserError(f"verify {FLAG}: x must be one example of shape {shape} (channels, height, width), "
                        f"got {tuple(x.shape)}.")
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()) or bool(((x < 0) | (x > 1)).any()):
        raise UserError(f"verify {FLAG}: x must hold finite pixels in [0, 1].")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 <= eps < math.inf):
        raise UserError(f"verify {FLAG}: eps must be a finite number >= 0 (pixel units), not {eps!r}.")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real) or not timeout_s >= 0:
        raise UserError(f"verify {FLAG}: timeout_s must be a number of seconds >= 0, not {timeout_s!r}.")
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise UserError(f"verify {FLAG}: threads must be a positive integer, not {threads!r}.")
    classes = getattr(model, "num_classes", None)
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or classes is None \
            or not 0 <= int(label) < int(classes):
        raise UserError(f"verify {FLAG}: label must be a class number in [0, {classes}), not {label!r}.")
    return int(classes)


def _check_bounds(bounds, layers: list[Layer], x64: torch.Tensor, eps: float) -> None:
    if not isinstance(bounds, crown.Bounds):
        raise UserError(f"verify {FLAG}: bounds must come from crown.compute_bounds, not {type(bounds).__name__}.")
    s = bounds.input_set
    ok = (len(bounds.layers) == len(layers) and len(bounds.lower) == len(layers) + 1
          and all(a.kind == b.kind and tuple(a.input_shape) == tuple(b.input_shape)
                  for a, b in zip(bounds.layers, layers))
          and s.norm == "linf" and s.eps == float(eps) and tuple(s.x0.shape) == (1, *x64.shape)
          and bool((s.x0.cpu() == x64).all()))
    if not ok:
        raise UserError(f"verify {FLAG}: bounds must be crown.compute_bounds of this model for this one example "
                        "(a batch of 1) and this eps, on the L-inf ball.")


# ----------------------------------------------------------------------------- verification
def verify(model: nn.Module, x: torch.Tensor, label: int, eps: float, timeout_s: float = 60.0,
           bounds: crown.Bounds | None = None, threads: int = 1) -> Outcome:
    """Complete verification of ``model`` at ``x`` (C, H, W) pixels in [0, 1] with class ``label``
    over the L-inf ball of radius ``eps`` ∩ [0, 1] (module docstring; Tjeng et al. 2019,
    arXiv:1711.07356), within ``timeout_s`` seconds for the whole example. ``bounds``: CROWN bounds
    (crown.compute_bounds of this example, batch of 1) when already computed; ``threads``: HiGHS's
    threads (its scheduler is process-wide: a change restarts it)."""
    global _threads_seen
    start = time.perf_counter()
    deadline = start + float(timeout_s)
    classes = _check(model, x, label, eps, timeout_s, threads)
    label, eps = int(label), float(eps)
    layers = crown.crown_chain(model, FLAG)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x64 = x.detach().to("cpu", torch.float64)

    def done(status, margin, cx, note):
        return Outcome(status, float(margin), cx, time.perf_counter() - start, note)

    s = crown.InputSet.make(x.detach()[None].to(device), eps, "linf")
    checker = _Checker(model, x, label, eps, _np(s.lo), _np(s.hi))
    wrong, _, margin = checker.margins(checker.x32)
    if wrong:
        return done("falsified", margin, checker.x32.clone(), "the clean example is misclassified")

    if bounds is None:
        bounds = crown.compute_bounds(model, s, layers)
    else:
        _check_bounds(bounds, layers, x64, eps)
    with torch.no_grad():
        spec = crown._margin_spec(torch.tensor([label], device=bounds.lower[0].device), classes,
                                  bounds.input_set.x0)
        low = crown.backward(bounds, len(layers), spec)[0].cpu().double().numpy()
    low[label] = math.inf
    if (low > 0).all():
        return done("verified", low.min(), None, "certified by CROWN")
    scale = float(torch.maximum(bounds.lower[-1].abs(), bounds.upper[-1].abs()).max())
    tol = TOL_ABS + TOL_REL * scale
    if time.perf_counter() >= deadline:
        spent = time.perf_counter() - start
        return done("unknown", low.min(), None, f"timeout after {spent:.3g} s (budget {float(timeout_s):g} s), "
                    "before the MILP; the bound is CROWN's")

    milp, logits, n_in, binaries = _build(bounds)
    import highspy

    kind = "MILP" if binaries else "LP (every neuron decided by the bounds)"
    h = _new_highs()
    if _threads_seen is not None and _threads_seen != threads:
        h.resetGlobalScheduler(True)
    _threads_seen = threads
    # presolve_mode 2 ("light"): the full MIP presolve (probing) does not look at the time limit and
    # took seconds on dense layers without reducing anything
    for name, value in (("threads", int(threads)), ("random_seed", 0), ("mip_rel_gap", 1e-6),
                        ("mip_abs_gap", 1e-7), ("presolve_mode", 2)):
        h.setOptionValue(name, value)
    _pass_model(h, milp)

    found: dict = {}

    def on_solution(e):
        try:
            value = e.data_out.objective_function_value
            if "hit" in found or "error" in found or not value < tol:
                return
            hit = checker.confirm(np.asarray(e.data_out.mip_solution)[:n_in])
            if hit is not None:
                found["hit"] = hit
            else:
                found.setdefault("unconfirmed", value)
        except Exception as err:  # noqa: BLE001  raised again after the solve
            found["error"] = err

    def on_interrupt(e):  # the flag persists between calls and solves: set it every time
        e.interrupt(bool("hit" in found or "error" in found or e.data_out.mip_dual_bound > tol))

    h.cbMipImprovingSolution.subscribe(on_solution)
    h.cbMipInterrupt.subscribe(on_interrupt)

    best = low.copy()  # per class: the best lower bound proved (CROWN's or the MILP's)
    order = [j for j in np.argsort(low, kind="stable").tolist() if j != label and low[j] <= 0]
    open_notes, timed_out = [], False
    try:
        for j in order:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            cost = logits.matrix[label] - logits.matrix[j]
            cost = np.asarray(cost.todense()).ravel()
            h.changeColsCost(milp.ncols, np.arange(milp.ncols, dtype=np.int32), cost)
            h.changeObjectiveOffset(float(logits.const[label] - logits.const[j]))
            h.setOptionValue("time_limit", float(remaining))
            found.clear()
            h.run()
            if "error" in found:
                raise found["error"]
            status = h.getModelStatus()
            info = h.getInfo()
            if "hit" not in found and info.primal_solution_status == highspy.kSolutionStatusFeasible:
                # the final solution (a pure LP, or a MIP solved without an improving-solution call)
                sol = np.asarray(h.getSolution().col_value)
                value = float(sol @ cost) + float(logits.const[label] - logits.const[j])
                if value < tol:
                    hit = checker.confirm(sol[:n_in])
                    if hit is not None:
                        found["hit"] = hit
                    else:
                        found.setdefault("unconfirmed", value)
            if "hit" in found:
                cx, margin = found["hit"]
                return done("falsified", margin, cx, f"{kind} for class {j} found a point of margin {margin:.6g}; "
                            "counterexample confirmed by a forward pass (model dtype and float64)")
            if binaries:
                dual = info.mip_dual_bound
            else:  # no binary: HiGHS solves an LP, whose optimum is the bound
                dual = info.objective_function_value if status == highspy.HighsModelStatus.kOptimal else -math.inf
            if math.isfinite(dual):
                best[j] = max(best[j], dual)
            if best[j] > tol:
                continue
            name = h.modelStatusToString(status)
            if "unconfirmed" in found:
                open_notes.append(f"class {j}: a MILP solution of margin {found['unconfirmed']:.3g} not confirmed "
                                  "by the forward pass (solver tolerance)")
            elif time.perf_counter() >= deadline or "time limit" in name.lower():
                timed_out = True
                open_notes.append(f"class {j}: time limit (bound {best[j]:.3g})")
                break
            elif status == highspy.HighsModelStatus.kOptimal:
                open_notes.append(f"class {j}: optimum {info.objective_function_value:.3g}, bound {best[j]:.3g}, "
                                  f"within the tolerance {tol:.2g}")
            else:
                open_notes.append(f"class {j}: the solver stopped ({name}; bound {best[j]:.3g})")
    finally:
        h.clearCallbacks()
        h.clear()

    margin_lower = float(best.min())
    tail = f"; {binaries} binaries"
    if not open_notes and not timed_out:
        return done("verified", margin_lower, None, f"{kind} proved every margin > {tol:.2g}{tail}")
    spent = time.perf_counter() - start
    head = f"timeout after {spent:.3g} s (budget {float(timeout_s):g} s)" if timed_out else "unresolved"
    return done("unknown", margin_lower, None, "; ".join([head] + open_notes) + tail)
