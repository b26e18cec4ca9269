"""Margins of correctly classified examples: how far, in L2 and in PIXEL units, to a class change.

For a correctly classified x (pixels, (C, H, W)) with label y and logits f:

- **random-direction margin** along a unit direction u (L2, pixel space): the smallest t > 0
  with argmax f(x + t u) != y. Bracketed by doubling t from ``t_start`` up to ``t_max``,
  then narrowed to relative tolerance ``rtol`` (false position with bisection as safeguard,
  see ``_find_crossing``). White noise probes these directions.
- **adversarial margin**: the L2 norm of a minimal class-changing perturbation, found by
  DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016), batched over the examples, then
  (``refine=True``) shortened along its own direction to the first class change.
- **first-order estimate**: (top logit - runner-up logit) / ||grad_x (top - runner-up)||_2.

For an affine classifier all three are exact and known in closed form (tests/test_margins.py).
By default nothing is clipped to [0, 1]: these are margins of the function f, and points
x + t u may leave the image domain (``clip=True`` evaluates f(clip(x + t u, 0, 1)) instead).
``adv_success_clipped`` says whether the DeepFool perturbation still changes the class after
clipping. Models: any nn.Module mapping pixels (B, C, H, W) to logits (B, K); run in eval mode.
Examples must not interact (no batch norm in train mode). Tensors stay on x's device and dtype;
randomness comes from a torch.Generator seeded by ``seed`` on that device.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ..errors import UserError
from ..models.architectures import eval_mode
from .spectra import _check_batch_size, logits_and_jacobian, top2_gap


# ---------------------------------------------------------------- predictions

@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """argmax logits for x (B, C, H, W) -> (B,) long, in batches, in eval mode."""
    _check_batch_size(batch_size)
    with eval_mode(model):
        return torch.cat([model(x[s:s + batch_size]).argmax(1)
                          for s in range(0, x.shape[0], batch_size)])


def first_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int,
                  batch_size: int = 1000) -> torch.Tensor:
    """Indices (long, on x's device) of the first ``n`` correctly classified examples.

    Fewer than ``n`` when fewer are correct; the caller decides whether that is an error.
    """
    if int(n) < 1:
        raise UserError(f"the number of examples must be a positive whole number, got {n}.")
    correct = (predict(model, x, batch_size) == y).nonzero().flatten()
    return correct[:int(n)]


def _label_gap(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f_y - max_{j != y} f_j per row, (B,)."""
    own = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    return own - logits.scatter(1, y.unsqueeze(1), float("-inf")).max(dim=1).values


def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dirs: torch.Tensor,
           example: torch.Tensor, t: torch.Tensor, clip: bool,
           batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class changed?, g), each (M,), at the points x[example] + t * dirs.

    g = f_y - max_{j != y} f_j: >= 0 while y wins, <= 0 once another class does.
    ``clip`` clamps the points to [0, 1] first.
    """
    flips, gaps = [], []
    with torch.no_grad():
        for s in range(0, dirs.shape[0], batch_size):
            ex, tb = example[s:s + batch_size], t[s:s + batch_size]
            points = x[ex] + tb.view(-1, *([1] * (x.dim() - 1))) * dirs[s:s + batch_size]
            logits = model(points.clamp(0.0, 1.0) if clip else points)
            flips.append(logits.argmax(1) != y[ex])
            gaps.append(_label_gap(logits, y[ex]))
    if not flips:
        return torch.zeros(0, dtype=torch.bool, device=x.device), t.new_zeros(0)
    return torch.cat(flips), torch.cat(gaps)


def _find_crossing(probe, lo: torch.Tensor, hi: torch.Tensor, g_lo: torch.Tensor,
                   g_hi: torch.Tensor, rtol: float) -> torch.Tensor:
    """Shrink brackets [lo, hi] (class y at lo, another at hi) until hi - lo <= rtol hi -> hi.

    ``probe(i, t)`` -> (changed, g) for brackets i at t. Safeguarded Illinois: false position
    on g = f_y - max_{j!=y} f_j, halving the g of an end kept twice in a row, and a plain
    bisection step whenever the last two steps did not halve the bracket; a probe never lies
    closer than rtol hi / 4 to either end. Exact in two or three probes when g is linear.
    """
    lo, hi = lo.clone(), hi.clone()
    g_lo, g_hi = g_lo.clamp_min(0.0), g_hi.clamp_max(0.0)
    width_1, width_2 = torch.full_like(lo, float("inf")), torch.full_like(lo, float("inf"))
    last = torch.zeros(lo.shape, dtype=torch.int8, device=lo.device)  # +1 lo moved, -1 hi moved
    active = (hi - lo > rtol * hi).nonzero().flatten()
    while active.numel() > 0:
        a = active
        w = hi[a] - lo[a]
        den = g_lo[a] - g_hi[a]
        frac = torch.where(den > 0, g_lo[a] / den.clamp_min(1e-30), torch.full_like(w, 0.5))
        t = lo[a] + w * frac  # false position: the zero of the line through both ends
        t = torch.where(w > 0.5 * width_2[a], lo[a] + 0.5 * w, t)
        pad = 0.25 * rtol * hi[a]
        t = torch.minimum(torch.maximum(t, lo[a] + pad), hi[a] - pad)
        flip, g = probe(a, t)
        width_2[a], width_1[a] = width_1[a], w
        g_lo[a[flip & (last[a] == -1)]] *= 0.5  # Illinois: the kept end's g halves
        g_hi[a[~flip & (last[a] == 1)]] *= 0.5
        hi[a[flip]], g_hi[a[flip]] = t[flip], g[flip].clamp_max(0.0)
        lo[a[~flip]], g_lo[a[~flip]] = t[~flip], g[~flip].clamp_min(0.0)
        last[a] = torch.where(flip, -1, 1).to(torch.int8)
        active = a[hi[a] - lo[a] > rtol * hi[a]]
    return hi


# ---------------------------------------------------------------- random directions

def random_unit_directions(n: int, n_directions: int, shape: tuple[int, ...], seed: int,
                           device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Directions uniform on the L2 unit sphere of pixel space -> (n, n_directions, *shape).

    Gaussian draws from a torch.Generator on ``device`` seeded by ``seed``, each normalized.
    """
    gen = torch.Generator(device=device).manual_seed(int(seed))
    u = torch.randn((n, n_directions, *shape), generator=gen, device=device, dtype=dtype)
    norms = u.flatten(2).norm(dim=2)
    return u / norms.view(n, n_directions, *([1] * len(shape)))


def random_direction_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                             n_directions: int = 10, seed: int = 0, t_start: float = 0.5,
                             t_max: float = 100.0, rtol: float = 1e-3, clip: bool = False,
                             batch_size: int = 1000) -> torch.Tensor:
    """Distance t to the first class change along each random direction -> (B, n_directions).

    x (B, C, H, W) must be correctly classified as y (B,). Directions are
    ``random_unit_directions(B, n_directions, x.shape[1:], seed, x.device, x.dtype)``.
    t is in pixel units (L2); ``inf`` where f(x + t_max u) still predicts y. Doubling from
    ``t_start`` finds a bracket [t/2, t] with no change at t/2 and a change at t;
    ``_find_crossing`` then returns a t with a change, within ``rtol`` (relative) of a point
    without one, so within rtol of a boundary crossing. If the class changes and changes
    back between two doubling points, the crossing found may be a later one; for an affine
    classifier the class never changes back along a ray.
    ``batch_size`` counts points (example, direction) per forward pass.
    """
    _check_ray_args(n_directions, t_start, t_max, rtol, batch_size)
    n, k = x.shape[0], int(n_directions)
    dirs = random_unit_directions(n, k, tuple(x.shape[1:]), seed, x.device, x.dtype).flatten(0, 1)
    example = torch.arange(n, device=x.device).repeat_interleave(k)
    lo = torch.zeros(n * k, device=x.device, dtype=x.dtype)
    hi = torch.full_like(lo, float(t_start))
    found = torch.zeros(n * k, dtype=torch.bool, device=x.device)

    with eval_mode(model):
        at_x = _probe(model, x, y, x, torch.arange(n, device=x.device), lo[:n], clip, batch_size)
        g_lo = at_x[1].repeat_interleave(k)  # g at t = 0, the same for every direction
        g_hi = torch.zeros_like(lo)
        active = torch.arange(n * k, device=x.device)
        while active.numel() > 0:  # bracket: double hi until the class changes or t_max
            flip, g = _probe(model, x, y, dirs[active], example[active], hi[active], clip,
                             batch_size)
            found[active[flip]] = True
            g_hi[active[flip]] = g[flip]
            grow = ~flip & (hi[active] < t_max)
            active, g = active[grow], g[grow]
            lo[active], g_lo[active] = hi[active], g
            hi[active] = torch.clamp(2.0 * hi[active], max=float(t_max))
        dirs, example = dirs[found], example[found]
        t = _find_crossing(
            lambda i, t: _probe(model, x, y, dirs[i], example[i], t, clip, batch_size),
            lo[found], hi[found], g_lo[found], g_hi[found], rtol)
    margins = torch.full_like(lo, float("inf"))
    margins[found] = t
    return margins.view(n, k)


def _check_ray_args(n_directions, t_start, t_max, rtol, batch_size) -> None:
    _check_batch_size(batch_size)
    _check_rtol(rtol)
    if int(n_directions) < 1:
        raise UserError(f"the number of directions must be at least 1, got {n_directions}.")
    if not 0 < t_start < t_max:
        raise UserError(f"need 0 < t_start < t_max (pixel L2 units), got {t_start} and {t_max}.")


def _check_rtol(rtol: float) -> None:
    if not 0 < rtol < 1:
        raise UserError(f"the relative tolerance must lie in (0, 1), got {rtol}.")


def median_over_directions(t: torch.Tensor) -> torch.Tensor:
    """Median along dim 1 (mean of the two middle values for an even count; inf counts)."""
    s = t.sort(dim=1).values
    k = s.shape[1]
    return 0.5 * (s[:, (k - 1) // 2] + s[:, k // 2])


# ---------------------------------------------------------------- DeepFool

@dataclass
class AdversarialMargins:
    """Result of :func:`adversarial_margins`, one entry per example (B,).

    perturbation (B, C, H, W): the reported perturbation r (refined if asked); norm_l2: ||r||_2
    in pixel units, NaN where DeepFool failed; success: argmax f(x + r) != y;
    success_clipped: the DeepFool perturbation r_df (with overshoot, before refinement) still
    changes the class after clipping, argmax f(clip(x + r_df, 0, 1)) != y; iterations: DeepFool
    steps taken (linearizations).
    """

    perturbation: torch.Tensor
    norm_l2: torch.Tensor
    success: torch.Tensor
    success_clipped: torch.Tensor
    iterations: torch.Tensor


def _deepfool_step(logits: torch.Tensor, jac: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One DeepFool step per example: the L2-smallest move onto the nearest linearized boundary.

    logits (b, K), jac (b, K, D), y (b,) -> r (b, D). For k != y: w_k = grad(f_k - f_y),
    distance |f_k - f_y| / ||w_k||; r moves (distance + 1e-4) along w_l / ||w_l|| for the
    nearest class l (the 1e-4 as in the paper's code, to land past the boundary).
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    diff = logits - logits[rows, y].unsqueeze(1)
    w = jac - jac[rows, y].unsqueeze(1)
    w_norm = w.norm(dim=2)
    dist = diff.abs() / w_norm.clamp_min(1e-12)
    dist[rows, y] = float("inf")
    nearest = dist.argmin(dim=1)
    direction = w[rows, nearest] / w_norm[rows, nearest].clamp_min(1e-12).unsqueeze(1)
    return (dist[rows, nearest] + 1e-4).unsqueeze(1) * direction


def deepfool(model: nn.Module, x: torch.Tensor, y: torch.Tensor, overshoot: float = 0.02,
             max_iter: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched multi-class DeepFool in L2, pixel space, no clipping -> (r, success, iterations).

    Every step linearizes f at x + (1 + overshoot) r_total for all examples not yet fooled at
    once (all K class gradients by K vector-Jacobian products over the batch) and adds the
    step of :func:`_deepfool_step`. Returns r = (1 + overshoot) r_total (B, C, H, W),
    success (B,) bool (argmax f(x + r) != y) and the steps taken (B,) long.
    """
    with eval_mode(model):
        return _deepfool(model, x, y, overshoot, max_iter)


def _deepfool(model, x, y, overshoot, max_iter):
    r_total = torch.zeros_like(x)
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    iterations = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)
    for step in range(int(max_iter) + 1):
        logits, jac = logits_and_jacobian(model, x[active] + (1 + overshoot) * r_total[active])
        fooled = logits.argmax(1) != y[active]
        success[active[fooled]] = True
        active, logits, jac = active[~fooled], logits[~fooled], jac[~fooled]
        if active.numel() == 0 or step == int(max_iter):
            break
        r_total[active] += _deepfool_step(logits, jac, y[active]).view(-1, *x.shape[1:])
        iterations[active] += 1
    return (1 + overshoot) * r_total, success, iterations


def adversarial_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        overshoot: float = 0.02, max_iter: int = 50, refine: bool = True,
                        rtol: float = 1e-3, batch_size: int = 500, on_batch=None) -> AdversarialMargins:
    """Smallest class-changing L2 perturbation (pixel units) found by DeepFool, per example.

    x (B, C, H, W) correctly classified as y (B,). ``refine=True`` then narrows the scale
    s in (0, 1] of the DeepFool perturbation r_df to a class change, within ``rtol`` of
    a scale without one, and reports s r_df; for an affine classifier that is the exact
    margin. ``batch_size`` examples per DeepFool batch (memory ~ batch K D floats).
    ``on_batch(b, n)`` is called after the b-th of n DeepFool batches.
    """
    if overshoot < 0 or int(max_iter) < 1:
        raise UserError("DeepFool needs overshoot >= 0 and max_iter >= 1, "
                        f"got {overshoot} and {max_iter}.")
    _check_batch_size(batch_size)
    _check_rtol(rtol)
    parts = []
    with eval_mode(model):
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            parts.append(deepfool(model, xb, yb, overshoot, max_iter))
            if on_batch is not None:
                on_batch(len(parts), -(-x.shape[0] // batch_size))
        r, success, iterations = (torch.cat(p) for p in zip(*parts))
        example = torch.arange(x.shape[0], device=x.device)
        ones = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        clipped = _probe(model, x, y, r, example, ones, True, batch_size)[0] & success
        if refine:
            ok = success.nonzero().flatten()
            r_ok = r[ok]
            g_0 = _probe(model, x, y, r_ok, ok, 0 * ones[ok], False, batch_size)[1]
            g_1 = _probe(model, x, y, r_ok, ok, ones[ok], False, batch_size)[1]
            scale = _find_crossing(
                lambda i, t: _probe(model, x, y, r_ok[i], ok[i], t, False, batch_size),
                torch.zeros_like(g_0), ones[ok], g_0, g_1, rtol)
            r[ok] = r[ok] * scale.view(-1, *([1] * (x.dim() - 1)))
    norm = r.flatten(1).norm(dim=1)
    norm[~success] = float("nan")
    return AdversarialMargins(r, norm, success, clipped, iterations)


# ---------------------------------------------------------------- first order

def first_order_margins(model: nn.Module, x: torch.Tensor, batch_size: int = 1000
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(margin, logit gap), each (B,): gap / ||grad_x (f_top - f_runner_up)||_2, pixel units.

    The distance to the top-2 decision boundary of the linearization of f at x; exact for an
    affine f when the runner-up boundary is the nearest one.
    """
    _check_batch_size(batch_size)
    margins, gaps = [], []
    with eval_mode(model):
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xb)
                top, second, gap = top2_gap(logits)
                rows = torch.arange(xb.shape[0], device=x.device)
                (grad,) = torch.autograd.grad((logits[rows, top] - logits[rows, second]).sum(), xb)
            margins.append(gap.detach() / grad.flatten(1).norm(dim=1))
            gaps.append(gap.detach())
    return torch.cat(margins), torch.cat(gaps)


# ---------------------------------------------------------------- the table

def measure_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_directions: int = 10,
                    seed: int = 0, index: torch.Tensor | None = None, t_start: float = 0.5,
                    t_max: float = 100.0, rtol: float = 1e-3, clip: bool = False,
                    overshoot: float = 0.02, max_iter: int = 50, refine: bool = True,
                    batch_size: int = 500, on_progress=None) -> pd.DataFrame:
    """All three margins, one row per example of x (B, C, H, W) with labels y (B,).

    Columns: index (``index`` if given, e.g. positions in a test set, else 0..B-1), label,
    pred, correct, logit_gap (top - runner-up logit), margin_random_min,
    margin_random_median, margin_random_found_frac (share of directions with a class change
    before ``t_max``), margin_adv_l2, adv_success, adv_success_clipped, adv_iterations,
    margin_first_order. Margins are L2 distances in pixel units (see the module docstring
    for each and for ``clip``); random margins are inf where no change was found.
    Only correctly classified examples are measured: the others keep NaN margins and
    False flags. Pick them with :func:`first_correct`. ``on_progress(done, total, label)`` is
    called after the random directions and after each DeepFool batch.
    """
    preds = predict(model, x, batch_size)
    correct = preds == y
    first_order, gap = first_order_margins(model, x, batch_size)
    n = x.shape[0]
    nan = torch.full((n,), float("nan"), device=x.device, dtype=x.dtype)
    cols = {k: nan.clone() for k in ("random_min", "random_median", "found_frac", "adv")}
    flags = {k: torch.zeros(n, dtype=torch.bool, device=x.device) for k in ("ok", "clipped")}
    iters = torch.zeros(n, dtype=torch.long, device=x.device)
    ok = correct.nonzero().flatten()
    total = 1 + -(-ok.numel() // batch_size)
    report = on_progress or (lambda done, total, label: None)
    report(0, total, "random directions")
    if ok.numel() > 0:
        t = random_direction_margins(model, x[ok], y[ok], n_directions, seed, t_start, t_max,
                                     rtol, clip, batch_size)
        cols["random_min"][ok] = t.min(dim=1).values
        cols["random_median"][ok] = median_over_directions(t)
        cols["found_frac"][ok] = torch.isfinite(t).to(x.dtype).mean(dim=1)
        report(1, total, "random directions")
        adv = adversarial_margins(model, x[ok], y[ok], overshoot, max_iter, refine, rtol, batch_size,
                                  on_batch=lambda b, n: report(1 + b, total, f"DeepFool batch {b}/{n}"))
        cols["adv"][ok], iters[ok] = adv.norm_l2, adv.iterations
        flags["ok"][ok], flags["clipped"][ok] = adv.success, adv.success_clipped
    else:
        report(total, total, "no example classified correctly")
    first_order = torch.where(correct, first_order, nan)
    index = torch.arange(n) if index is None else torch.as_tensor(index)
    table = {"index": index, "label": y, "pred": preds, "correct": correct, "logit_gap": gap,
             "margin_random_min": cols["random_min"],
             "margin_random_median": cols["random_median"],
             "margin_random_found_frac": cols["found_frac"], "margin_adv_l2": cols["adv"],
             "adv_success": flags["ok"], "adv_success_clipped": flags["clipped"],
             "adv_iterations": iters, "margin_first_order": first_order}
    return pd.DataFrame({k: v.detach().cpu().numpy() for k, v in table.items()})
