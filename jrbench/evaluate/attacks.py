"""Robust accuracy under white noise, PGD and FGSM (torchattacks underneath) -> tidy rows.

Papers: PGD, Madry et al. 2018 (arXiv:1706.06083); FGSM, Goodfellow et al. 2015
(arXiv:1412.6572); AutoAttack, Croce and Hein 2020 (arXiv:2003.01690), composed in
:mod:`jrbench.evaluate.autoattack`. Norms: noise is Gaussian per pixel, clipped to [0, 1]; PGD
attacks the L-infinity ball (``torchattacks.PGD``) or the L2 ball (``torchattacks.PGDL2``); FGSM
is L-infinity. Units: pixels in [0, 1]; noise sigma and attack radii eps are pixel units.
Shapes: x (N, C, H, W) float pixels, y (N,) integer labels; the model maps pixels to logits
(N, classes) (its first layer normalizes, see :mod:`jrbench.models.architectures`).

:func:`run_attacks` returns the table (one row per attack, norm and strength: accuracy with its
95% interval) and the per-example record (:data:`EXAMPLE_COLUMNS`). An example is robust only if
correct clean and after every restart. Each example's noise draws and PGD starts come from a CPU
generator seeded by the seed and its index in the test split (:func:`noise_draws`,
:func:`pgd_start_seed`), so neither the batch size nor the device changes a noise, PGD or FGSM
result; ``loss='ce64'`` (the default) ascends each example's float64 cross-entropy. What to run:
:class:`jrbench.evaluate.attack_config.AttackConfig` (also importable from here); shared pieces:
:mod:`jrbench.evaluate.attack_common`; signs of gradient masking:
:mod:`jrbench.evaluate.attack_checks`. The numerics and the randomness in full, with the
measurements behind the float64 loss: docs/commands/attack.md.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import autoattack as AA
from .attack_common import (PerExampleDraws, check_in_ball, check_inputs, correct_mask, derive_seed, index_batches, loss_model, mean_loss_model, model_device, model_dtype, seeded_global_rng)
from ..device import sync_device
from .attack_config import NORMS, AttackConfig  # AttackConfig: public here too (README)
from ..errors import UserError
from ..models.architectures import eval_mode
from ..registry import unknown_name
from ..stats import noise_interval, wilson_interval

GRAD_VANISH_THRESHOLD = 1e-10  # per-example ||d CE / d x||_2 below this counts as vanished
NO_GRAD_STATS = {"grad_vanish_frac": math.nan, "grad_zero_frac": math.nan}
CE_AUTOATTACK_ROWS = ("aa-apgd-ce", "autoattack")  # AutoAttack rows that start with APGD-CE
# One row per (attack, norm, strength). attack: 'noise' | 'pgd' | 'fgsm'; norm: 'gaussian' |
# 'linf' | 'l2'; strength: sigma or eps (pixel units); accuracy = n_correct / n_trials with
# a 95% interval [ci_low, ci_high]; n_examples: the examples of the row (noise rows: its own
# set, by default the whole test set); n_trials = n_examples (attacks) or n_examples * draws
# (noise); steps, alpha (pixel units), restarts: PGD/FGSM settings (NaN for noise); draws:
# noise only; loss: 'ce64' | 'ce32' ('none' for noise); seconds: wall time of the row;
# grad_vanish_frac / grad_zero_frac: gradient_stats of the examples the row's attack attacks
# (the clean-correct ones) under the row's loss, for rows whose attack ascends that
# cross-entropy from the clean point (pgd, fgsm, aa-apgd-ce, autoattack; eps > 0), else NaN
# (noise, eps 0, aa-apgd-t's targeted DLR loss, aa-fab-t, aa-square); seed; targets:
# target classes of AutoAttack's APGD-T and FAB-T (NaN for other rows). AutoAttack rows: attack
# 'aa-apgd-ce' | 'aa-apgd-t' | 'aa-fab-t' | 'aa-square' | 'autoattack', steps = iterations
# (Square: queries), loss = the loss of APGD-CE.
ROW_COLUMNS = [
    "attack", "norm", "strength", "accuracy", "ci_low", "ci_high", "n_examples",
    "n_correct", "n_trials", "steps", "alpha", "restarts", "draws", "loss", "seconds",
    "grad_vanish_frac", "grad_zero_frac", "seed", "targets",
]
# The per-example record: one row per (example, attack, norm, strength, loss), the keys of a
# ROW_COLUMNS row. example: the example's position (its index in the test split, when the
# caller gives it); clean_correct: 0/1; robust: attacks and AutoAttack (and its components,
# cumulative): 1 if correct clean and unbroken, else 0; noise: the share of draws classified
# correctly; broken: clean-correct but made wrong (noise: 1 - robust if clean-correct, else 0);
# example_seed: the seed that chose the examples (-1 when the caller gave none); label; seed.
EXAMPLE_COLUMNS = ["example", "attack", "norm", "strength", "loss", "clean_correct", "robust",
                   "broken", "example_seed", "label", "seed"]


def input_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         loss: str = "ce64", batch_size: int = 500) -> torch.Tensor:
    """Per-example ||d CE(f(x_i), y_i) / d x_i||_2 (pixel space), float64 (N,) on x's device.

    The cross-entropy is each example's own (reduction 'sum', so the batch size does not
    scale it), computed from float64 logits for 'ce64' and float32 logits for 'ce32'."""
    device, dtype = model_device(model, x.device), model_dtype(model)
    wrapped = loss_model(model, loss)
    norms = torch.empty(len(x), dtype=torch.float64, device=x.device)
    for idx in index_batches(torch.arange(len(x), device=x.device), batch_size):
        xb = x[idx].to(device, dtype).requires_grad_(True)
        with torch.enable_grad():
            ce = nn.functional.cross_entropy(wrapped(xb), y[idx].to(device), reduction="sum")
            (grad,) = torch.autograd.grad(ce, xb)
        norms[idx] = grad.flatten(1).double().norm(dim=1).to(x.device)
    return norms


def gradient_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce64",
                   batch_size: int = 500) -> dict[str, float]:
    """Shares of the examples (x, y) whose clean-point loss gradient is < 1e-10
    (``grad_vanish_frac``) or exactly zero / not finite (``grad_zero_frac``); see
    :func:`input_gradient_norms`. NaN for no examples. The table's rows give the statistic of
    the examples their attack attacks (:func:`attacked_gradient_stats`)."""
    with eval_mode(model):
        norms = input_gradient_norms(model, x, y, loss, batch_size)
    zero = (norms == 0) | ~torch.isfinite(norms)
    return {"grad_vanish_frac": float(((norms < GRAD_VANISH_THRESHOLD) | zero).double().mean()),
            "grad_zero_frac": float(zero.double().mean())}


def attacked_gradient_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            clean_correct: torch.Tensor, loss: str = "ce64",
                            batch_size: int = 500) -> dict[str, float]:
    """:func:`gradient_stats` of the examples a gradient attack attacks: the clean-correct ones
    (``clean_correct`` bool (N,)); the statistic of a pgd, fgsm, aa-apgd-ce or autoattack row."""
    idx = clean_correct.nonzero().flatten().to(x.device)
    return gradient_stats(model, x[idx], y[idx], loss, batch_size)


# ----------------------------------------------------------------------------- attacks


def pgd_alpha(eps: float, steps: int, alpha: float | None = None) -> float:
    """PGD step size in pixel units: ``alpha`` if given, else 2.5 * eps / steps (Madry et al.)."""
    return float(alpha) if alpha is not None else 2.5 * eps / steps


class _PerExampleStart:
    """Mixin for torchattacks' PGD and PGDL2: ``atk(x, y, start_seeds=seeds)`` draws example
    i's random start from its own generator seeded with ``seeds[i]``
    (:class:`jrbench.evaluate.attack_common.PerExampleDraws`); the attack itself is
    torchattacks' own. Without ``start_seeds`` (or with ``random_start=False``) the class is
    torchattacks' as is (start from the global RNG)."""

    start_draws = 0  # the global-RNG draws torchattacks makes for the start

    def forward(self, images, labels, start_seeds=None):
        if start_seeds is None or not self.random_start:
            return super().forward(images, labels)
        if len(start_seeds) != len(images):
            raise ValueError(f"{len(start_seeds)} start seeds for {len(images)} images")
        with PerExampleDraws(start_seeds, self.start_draws):
            return super().forward(images, labels)


@functools.cache
def per_example_pgd(norm: str) -> type:
    """``torchattacks.PGD`` ('linf': the start is one uniform draw in the eps cube) or
    ``torchattacks.PGDL2`` ('l2': a normal direction, then a uniform radius) with
    :class:`_PerExampleStart`."""
    import torchattacks

    base, draws = (torchattacks.PGD, 1) if norm == "linf" else (torchattacks.PGDL2, 2)
    return type(f"PerExample{base.__name__}", (_PerExampleStart, base), {"start_draws": draws})


def make_attack(model: nn.Module, attack: str, norm: str, eps: float, *, steps: int = 40,
                alpha: float | None = None, random_start: bool = True, loss: str = "ce64",
                device: torch.device | None = None):
    """The torchattacks object for ``attack`` ('pgd' or 'fgsm') at radius eps (pixels).

    Attacks ``mean_loss_model(model, loss)`` (for 'ce64', float64 logits and each example's own
    gradient whatever the batch size); for 'ce64' PGDL2's division guard is 1e-30. PGD is
    :func:`per_example_pgd`'s class: ``atk(x, y, start_seeds=seeds)`` draws per-example random
    starts (:func:`attack_correct` passes them), ``atk(x, y)`` torchattacks' global-RNG start."""
    import torchattacks

    if attack not in ("pgd", "fgsm"):
        raise unknown_name("attack", attack, ["pgd", "fgsm"])
    if norm not in NORMS or (attack == "fgsm" and norm != "linf"):
        raise unknown_name(f"{attack} norm", norm, ["linf"] if attack == "fgsm" else list(NORMS))
    wrapped = mean_loss_model(model, loss)
    with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints if it finds no device
        if attack == "fgsm":
            atk = torchattacks.FGSM(wrapped, eps=eps)
        elif norm == "linf":
            atk = per_example_pgd(norm)(wrapped, eps=eps, alpha=pgd_alpha(eps, steps, alpha),
                                        steps=steps, random_start=random_start)
        else:
            atk = per_example_pgd(norm)(wrapped, eps=eps, alpha=pgd_alpha(eps, steps, alpha),
                                        steps=steps, random_start=random_start,
                                        eps_for_division=1e-30 if loss == "ce64" else 1e-10)
    if device is not None:
        atk.set_device(device)
    return atk


def attack_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                   norm: str = "linf", eps: float, steps: int = 40, alpha: float | None = None,
                   restarts: int = 1, random_start: bool = True, loss: str = "ce64",
                   seed: int = 0, batch_size: int = 500,
                   clean_correct: torch.Tensor | None = None,
                   example_index: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (N,) on x's device: example i is correct clean and after every restart.

    ``attack`` 'pgd' (norm 'linf' or 'l2') or 'fgsm' (norm 'linf', one deterministic run);
    eps in pixel units; eps == 0 returns the clean result without calling torchattacks.
    PGD's random start of example i in restart r is drawn from a generator seeded with
    :func:`pgd_start_seed` (seed, norm, r, example_index[i]) alone (``example_index`` (N,),
    default 0..N-1), so no result depends on ``batch_size`` or on the other examples (up to
    rounding: the module's "Randomness and the batch size"). Every adversarial batch is
    checked with :func:`check_in_ball`."""
    with eval_mode(model):
        robust = (correct_mask(model, x, y, batch_size) if clean_correct is None
                  else clean_correct.clone())
        if eps == 0:
            return robust
        index = (torch.arange(len(x)) if example_index is None
                 else example_index.detach().cpu()).tolist()
        device, dtype = model_device(model, x.device), model_dtype(model)
        atk = make_attack(model, attack, norm, eps, steps=steps, alpha=alpha,
                          random_start=random_start, loss=loss, device=device)
        for restart in range(1 if attack == "fgsm" else restarts):
            alive = robust.nonzero().flatten()
            for b, idx in enumerate(index_batches(alive, batch_size)):
                xb, yb = x[idx].to(device, dtype), y[idx].to(device)
                starts = ({} if attack == "fgsm" else {"start_seeds": [
                    pgd_start_seed(seed, norm, restart, index[i]) for i in idx.tolist()]})
                # The global RNG only matters to a model that draws randomness itself.
                with seeded_global_rng(derive_seed(seed, attack, norm, restart, "batch", b),
                                       device), torch.enable_grad():
                    adv = atk(xb, yb, **starts)
                check_in_ball(xb, adv, eps, norm)
                with torch.no_grad():
                    still = model(adv).argmax(1) == yb
                robust[idx] = still.to(x.device)
        return robust


def pgd_start_seed(seed: int, norm: str, restart: int, example: int) -> int:
    """The seed of PGD's random start for one example (its index in the test split) in one
    restart: derive_seed(seed, 'pgd', norm, restart, example). Independent of eps (common
    random numbers across the grid), of the batch and of the device."""
    return derive_seed(seed, "pgd", norm, restart, int(example))


def _row(attack: str, norm: str, strength: float, n_examples: int, n_correct: float,
         n_trials: int, ci: tuple[float, float], seconds: float, seed: int, **extra) -> dict:
    row = dict.fromkeys(ROW_COLUMNS, math.nan)
    row.update(attack=attack, norm=norm, strength=float(strength), n_examples=n_examples,
               n_correct=float(n_correct), n_trials=float(n_trials),
               accuracy=n_correct / n_trials, ci_low=ci[0], ci_high=ci[1],
               seconds=seconds, seed=seed, loss="none")
    row.update(extra)
    return row


def attack_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str, norm: str,
                eps_list: Sequence[float], steps: int = 40, alpha: float | None = None,
                restarts: int = 1, random_start: bool = True, loss: str = "ce64",
                seed: int = 0, batch_size: int = 500,
                clean_correct: torch.Tensor | None = None,
                grad_stats: dict[str, float] | None = None,
                record: list[pd.DataFrame] | None = None,
                example_index: torch.Tensor | None = None) -> list[dict]:
    """One row per eps for PGD ('linf'/'l2') or FGSM ('linf'); see :func:`attack_correct`.

    accuracy = n_correct / n_examples with a 95% Wilson interval (examples independent).
    ``grad_stats``: :func:`attacked_gradient_stats` of (x, y) under ``loss`` (computed if
    None), written to the rows with eps > 0 (NaN at eps 0, where nothing is attacked).
    With ``record`` given, appends each eps's per-example frame (:func:`example_frame`) to it."""
    with eval_mode(model):
        clean = correct_mask(model, x, y, batch_size) if clean_correct is None else clean_correct
        stats = grad_stats
        if stats is None and any(eps > 0 for eps in eps_list):
            stats = attacked_gradient_stats(model, x, y, clean, loss, batch_size)
        device, rows = model_device(model, x.device), []
        for eps in eps_list:
            start = time.perf_counter()
            ok = attack_correct(model, x, y, attack=attack, norm=norm, eps=eps, steps=steps,
                                alpha=alpha, restarts=restarts, random_start=random_start,
                                loss=loss, seed=seed, batch_size=batch_size, clean_correct=clean,
                                example_index=example_index)
            sync_device(device)
            k, n = int(ok.sum()), len(x)
            if record is not None:
                record.append(example_frame(attack, norm, eps, loss, clean, ok, y, seed,
                                            example_index))
            fgsm = attack == "fgsm"
            rows.append(_row(attack, norm, eps, n, k, n, wilson_interval(k, n),
                             time.perf_counter() - start, seed, loss=loss,
                             steps=1 if fgsm else steps,
                             alpha=eps if fgsm else pgd_alpha(eps, steps, alpha),
                             restarts=1 if fgsm else restarts,
                             **(stats if eps > 0 else NO_GRAD_STATS)))
        return rows


def noise_draws(seed: int, example_index: torch.Tensor, draws: int, shape: Sequence[int],
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Float32 (B, draws, *shape) on the CPU: the standard normal noise of each example,
    n ~ N(0, I) per pixel. Example i's draws come from a CPU ``torch.Generator`` seeded by
    ``derive_seed(seed, "noise", example_index[i])`` alone, so they do not depend on the batch,
    the batch size, the device (callers move them) or sigma (common random numbers)."""
    gen = generator if generator is not None else torch.Generator()
    out = torch.empty(len(example_index), draws, *shape)
    for row, example in enumerate(example_index.tolist()):
        gen.manual_seed(derive_seed(seed, "noise", int(example)))
        out[row].normal_(generator=gen)  # torch.randn(draws, *shape, generator=gen), in place
    return out


def noise_correct_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, *,
                         draws: int = 5, seed: int = 0, batch_size: int = 500,
                         example_index: torch.Tensor | None = None,
                         clean_correct: torch.Tensor | None = None) -> torch.Tensor:
    """Int (N,) on x's device: for each image, how many of ``draws`` noisy copies
    clip(x + sigma n, 0, 1), n ~ N(0, I) per pixel (sigma in pixel units), the model classifies
    correctly. Example i's noise is :func:`noise_draws` of its ``example_index`` (default
    0..N-1), drawn on the CPU and moved to the model's device, so neither ``batch_size`` nor the
    device changes it. The draws are batched: each forward pass takes up to ``batch_size``
    images, ``batch_size // draws`` examples (at least one) times their draws. sigma 0 is the
    clean result ``draws`` times (``clean_correct`` (N,) bool if given) without a forward pass."""
    index = torch.arange(len(x)) if example_index is None else example_index.detach().cpu()
    device, dtype = model_device(model, x.device), model_dtype(model)
    counts = torch.zeros(len(x), dtype=torch.long, device=x.device)
    gen, per_forward = torch.Generator(), max(1, batch_size // draws)
    with eval_mode(model), torch.no_grad():
        if sigma == 0:
            clean = correct_mask(model, x, y, batch_size) if clean_correct is None else clean_correct
            return clean.to(x.device).long() * draws
        for idx in index_batches(torch.arange(len(x), device=x.device), per_forward):
            xb, yb = x[idx].to(device, dtype), y[idx].to(device)
            noise = noise_draws(seed, index[idx.cpu()], draws, xb.shape[1:], gen).to(device, dtype)
            noisy = (xb.unsqueeze(1) + sigma * noise).clamp(0.0, 1.0).flatten(0, 1)
            pred = model(noisy).argmax(1).view(len(idx), draws)
            counts[idx] = (pred == yb.unsqueeze(1)).sum(1).to(x.device)
    return counts


def noise_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float], *,
               draws: int = 5, seed: int = 0, batch_size: int = 500,
               record: list[pd.DataFrame] | None = None,
               example_index: torch.Tensor | None = None,
               clean_correct: torch.Tensor | None = None) -> list[dict]:
    """One row per sigma: accuracy over all (image, draw) pairs, interval from
    :func:`noise_interval`, n_examples = N, n_trials = N * draws. Noise per example
    (:func:`noise_correct_counts`): no result depends on ``batch_size``. With ``record`` given,
    appends each sigma's per-example frame (robust: the share of draws classified correctly)."""
    device, rows = model_device(model, x.device), []
    with eval_mode(model):
        clean = correct_mask(model, x, y, batch_size) if clean_correct is None else clean_correct
    for sigma in sigmas:
        start = time.perf_counter()
        counts = noise_correct_counts(model, x, y, sigma, draws=draws, seed=seed,
                                      batch_size=batch_size, example_index=example_index,
                                      clean_correct=clean)
        sync_device(device)
        if record is not None:
            record.append(example_frame("noise", "gaussian", sigma, "none", clean,
                                        counts.double() / draws, y, seed, example_index))
        rows.append(_row("noise", "gaussian", sigma, len(x), int(counts.sum()), len(x) * draws,
                         noise_interval(counts, draws), time.perf_counter() - start, seed,
                         draws=draws))
    return rows


def example_frame(attack: str, norm: str, strength: float, loss: str, clean: torch.Tensor,
                  robust: torch.Tensor, y: torch.Tensor, seed: int,
                  example_index: torch.Tensor | None = None) -> pd.DataFrame:
    """The per-example rows (:data:`EXAMPLE_COLUMNS`) of one table row. ``clean`` bool (N,);
    ``robust`` bool (N,) (correct clean and unbroken) or, for noise, the share of draws
    classified correctly (N,); ``example_index`` the examples' positions (default 0..N-1)."""
    clean_np = clean.detach().cpu().numpy().astype(np.int64)
    robust_np = robust.detach().cpu().double().numpy()
    if robust.dtype == torch.bool:
        robust_np = robust_np * clean_np  # an attack never makes a wrong example right
    index = (np.arange(len(clean_np)) if example_index is None
             else example_index.detach().cpu().numpy().astype(np.int64))
    return pd.DataFrame({
        "example": index, "attack": attack, "norm": norm, "strength": float(strength),
        "loss": loss, "clean_correct": clean_np, "robust": robust_np,
        "broken": clean_np * (1.0 - robust_np), "example_seed": -1,
        "label": y.detach().cpu().numpy().astype(np.int64), "seed": seed,
    }, columns=EXAMPLE_COLUMNS)


def autoattack_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str,
                    eps_list: Sequence[float], num_classes: int, n_targets: int | None = None,
                    loss: str = "ce64", seed: int = 0, batch_size: int = 500,
                    clean_correct: torch.Tensor | None = None,
                    grad_stats: dict[str, float] | None = None,
                    record: list[pd.DataFrame] | None = None,
                    example_index: torch.Tensor | None = None) -> list[dict]:
    """Per eps, one row per AutoAttack component (``aa-<component>``: the accuracy after it,
    cumulative) and one ``autoattack`` row (after the last); see
    :func:`jrbench.evaluate.autoattack.autoattack_correct`. Intervals as :func:`attack_rows`.
    ``grad_stats`` (:func:`attacked_gradient_stats`, computed if None) goes to the rows of
    :data:`CE_AUTOATTACK_ROWS` with eps > 0: APGD-CE ascends ``loss`` from the clean-correct
    examples; APGD-T (targeted DLR), FAB-T and Square (no gradient) get NaN."""
    targets = AA.resolve_targets(num_classes, n_targets)
    with eval_mode(model):
        clean = correct_mask(model, x, y, batch_size) if clean_correct is None else clean_correct
        stats = grad_stats
        if stats is None and any(eps > 0 for eps in eps_list):
            stats = attacked_gradient_stats(model, x, y, clean, loss, batch_size)
        rows, n = [], len(x)
        settings = {"apgd-ce": (AA.APGD_STEPS, math.nan), "apgd-t": (AA.APGD_STEPS, targets),
                    "fab-t": (AA.FAB_STEPS, targets), "square": (AA.SQUARE_QUERIES, math.nan)}
        for eps in eps_list:
            out = AA.autoattack_correct(model, x, y, norm=norm, eps=eps, num_classes=num_classes,
                                        n_targets=targets, loss=loss, seed=seed,
                                        batch_size=batch_size, clean_correct=clean)
            named = [(AA.ATTACK_NAMES[c], out.robust_after[c], out.seconds[c], *settings[c])
                     for c in AA.COMPONENTS]
            named.append(("autoattack", out.robust, sum(out.seconds.values()), AA.APGD_STEPS,
                          targets))
            for attack, ok, seconds, steps, n_targets_row in named:
                k = int(ok.sum())
                row_stats = stats if eps > 0 and attack in CE_AUTOATTACK_ROWS else NO_GRAD_STATS
                rows.append(_row(attack, norm, eps, n, k, n, wilson_interval(k, n), seconds, seed,
                                 loss=loss, steps=steps, restarts=AA.RESTARTS,
                                 targets=n_targets_row, **row_stats))
                if record is not None:
                    record.append(example_frame(attack, norm, eps, loss, clean, ok, y, seed,
                                                example_index))
        return rows


@dataclass
class AttackTables:
    """What :func:`run_attacks` returns: ``table``, one row per (attack, norm, strength, loss)
    (:data:`ROW_COLUMNS`), and ``examples``, one row per example and table row
    (:data:`EXAMPLE_COLUMNS`)."""

    table: pd.DataFrame
    examples: pd.DataFrame


def model_num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The width of the model's logits (one forward pass on x[:1])."""
    device, dtype = model_device(model, x.device), model_dtype(model)
    with eval_mode(model), torch.no_grad():
        return int(model(x[:1].to(device, dtype)).shape[1])


def run_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AttackConfig, *,
                num_classes: int | None = None, example_index: torch.Tensor | None = None,
                example_seed: int = -1, on_progress=None,
                noise_set: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                ) -> AttackTables:
    """Run the attacks of ``config`` on (x, y); return the table (one tidy row per (attack,
    norm, strength), columns :data:`ROW_COLUMNS`) and the per-example record
    (:data:`EXAMPLE_COLUMNS`). x: (N, C, H, W) pixels in [0, 1] on any device (batches move
    to the model's device); y: (N,) labels. ``num_classes`` (AutoAttack's target classes): the
    data set's, default the width of the model's logits; ``example_index`` (N,): the examples'
    positions in their split, written to the record's ``example`` (default 0..N-1) and seeding
    each example's noise. ``noise_set`` (x (M, C, H, W), y (M,), example_index (M,)): the
    examples white noise runs on instead of (x, y) (:func:`jrbench.evaluate.api.attack_run` passes
    the whole test set; ``config.noise_examples`` is read there, not here); its rows then say
    n_examples = M and the record has a noise row for each of the M examples.
    ``on_progress(done, total, label)`` is called before the first and after each attack and
    strength (``total``: the number of (attack, norm, strength) runs)."""
    for norm in config.eps_norms():
        if getattr(config, f"eps_{norm}") is None:
            raise UserError(f"eps_{norm} is not set: give radii or use default_eps(dataset, "
                            f"'{norm}') / AttackConfig.for_dataset().")
    check_inputs(x, y)
    if example_index is not None and tuple(example_index.shape) != (len(x),):
        raise UserError(f"example_index must have shape ({len(x)},), got "
                        f"{tuple(example_index.shape)}.")
    noise_x, noise_y, noise_index = (x, y, example_index) if noise_set is None else noise_set
    if noise_set is not None and config.noise:
        check_inputs(noise_x, noise_y)
        if tuple(noise_index.shape) != (len(noise_x),):
            raise UserError(f"the noise set's example_index must have shape ({len(noise_x)},), got "
                            f"{tuple(noise_index.shape)}.")
    if config.autoattack:
        width = model_num_classes(model, x)
        if num_classes is not None and num_classes != width:
            raise UserError(f"the model has {width} logits but the data set {num_classes} "
                            "classes: train the model on the data set you attack it on.")
        AA.resolve_targets(width, config.aa_targets)  # a bad target count fails before any work
        num_classes = width
    common = dict(seed=config.seed, batch_size=config.batch_size)
    rows: list[dict] = []
    record: list[pd.DataFrame] = []
    runs = [("pgd", norm) for norm in config.norms if config.pgd]
    runs += [("fgsm", "linf")] if config.fgsm else []
    total = (len(config.sigmas) if config.noise else 0) + sum(
        len(getattr(config, f"eps_{norm}")) for _, norm in runs) + sum(
        len(eps_list) for eps_list in config.autoattack_grids().values()) * bool(config.autoattack)
    done = 0

    def step(label: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total, label)

    if on_progress is not None:
        on_progress(0, total, "")
    with eval_mode(model):
        if config.noise:
            noise_clean = correct_mask(model, noise_x, noise_y, config.batch_size)
            for sigma in config.sigmas:
                rows += noise_rows(model, noise_x, noise_y, [sigma], draws=config.draws,
                                   record=record, example_index=noise_index,
                                   clean_correct=noise_clean, **common)
                step(f"noise sigma={sigma:g}")
        if config.pgd or config.fgsm or config.autoattack:
            clean = correct_mask(model, x, y, config.batch_size)
            stats = attacked_gradient_stats(model, x, y, clean, config.loss, config.batch_size)
            shared = dict(loss=config.loss, clean_correct=clean, grad_stats=stats, record=record,
                          example_index=example_index, **common)
            for attack, norm in runs:
                for eps in getattr(config, f"eps_{norm}"):
                    rows += attack_rows(model, x, y, attack=attack, norm=norm, eps_list=[eps],
                                        steps=config.steps, alpha=config.alpha,
                                        restarts=config.restarts, random_start=config.random_start,
                                        **shared)
                    step(f"{attack} {norm} eps={eps:g}")
            for norm, eps_list in (config.autoattack_grids().items() if config.autoattack else ()):
                for eps in eps_list:
                    rows += autoattack_rows(model, x, y, norm=norm, eps_list=[eps],
                                            num_classes=num_classes, n_targets=config.aa_targets,
                                            **shared)
                    step(f"autoattack {norm} eps={eps:g}")
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    text, ints = ("attack", "norm", "loss"), ("n_examples", "seed")
    df = df.astype({c: str if c in text else int if c in ints else float for c in ROW_COLUMNS})
    examples = (pd.concat(record, ignore_index=True) if record
                else pd.DataFrame(columns=EXAMPLE_COLUMNS))
    examples["example_seed"] = example_seed
    return AttackTables(df, examples)

