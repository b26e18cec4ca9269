"""Robust accuracy under white noise, PGD and FGSM (torchattacks underneath) -> tidy rows.

Everything is in **pixel space**: images x in [0, 1] of shape (N, C, H, W), labels y of
shape (N,). Noise sigma and attack radii eps are pixel units. The model maps pixels to
logits (its first layer normalizes, see ``jrbench.models``).

Attacks:
- ``noise``: x + sigma * n, n ~ N(0, I) per pixel, clipped to [0, 1]; ``draws`` draws per
  image. The draws are the same for every sigma (common random numbers).
- ``pgd``: projected gradient ascent on the cross-entropy (Madry et al. 2018,
  arXiv:1706.06083), ``torchattacks.PGD`` (L-infinity ball) or ``torchattacks.PGDL2`` (L2
  ball), ``steps`` steps of size ``alpha`` (default 2.5 * eps / steps, the Madry et al.
  rule), uniform random start, ``restarts`` restarts: an example counts as broken if any
  restart breaks it. Robust accuracy counts an example as correct only if it is correct
  clean and after every restart (the AutoAttack/RobustBench convention), so only clean
  correct, not yet broken examples are attacked.
- ``fgsm``: one signed-gradient step of size eps (Goodfellow et al. 2015, arXiv:1412.6572),
  ``torchattacks.FGSM``, L-infinity.
- ``autoattack``: standard AutoAttack (Croce and Hein 2020, arXiv:2003.01690) on PGD's norms
  and eps grids: APGD-CE, APGD-T, FAB-T and Square from torchattacks with the paper's
  settings, each on the examples still unbroken (``jrbench.autoattack``). One row per
  component (``aa-apgd-ce``, ``aa-apgd-t``, ``aa-fab-t``, ``aa-square``: the accuracy after
  it, cumulative) and one ``autoattack`` row (after the last).

Besides the table, :func:`run_attacks` returns the per-example record (:data:`EXAMPLE_COLUMNS`):
for every example and every row of the table, whether it was correct clean and robust.

Numerics (``loss``): torchattacks ascends ``nn.CrossEntropyLoss`` (batch mean) on whatever
the model returns. For a confident example (logit gap g) the gradient is about exp(-g)
times the logit gradient, over the batch size; with float32 logits softmax(true) also
rounds to 1.0 once g > 17, and the gradient loses its true-class term. PGD-L2 divides the
gradient by (||grad|| + 1e-10), so such examples barely move. ``loss="ce64"`` (default)
attacks a wrapper that returns the logits as float64 (inputs stay float32 pixels), so the
cross-entropy and its gradient are computed in float64 (exact up to g of about 37), and
gives PGDL2 a division guard of 1e-30 instead of 1e-10, so its step direction no longer
depends on the gradient's scale. ``loss="ce32"`` runs torchattacks as is. Measured on a
LeNet trained on 8,000 real MNIST digits, 500 other digits, PGD-L2 eps 3, 40 steps,
batch 100: accuracy 34.4% (ce32), 21.4% (float32, guard 1e-30), 15.8% (float64, guard
1e-10), 1.4% (ce64); PGD-Linf eps 0.1, batch 500: 43.2% (ce32), 36.2% (ce64).
Per-pixel gradients below about 1e-22 still underflow in float32 when PGDL2 squares them
for the norm; its step then jumps to the sphere along the gradient (the projection keeps
it in the ball).

Randomness: the random starts use the global RNG (torchattacks draws with
``torch.empty_like(x).uniform_()``); each batch is attacked with the global RNG seeded
from (seed, attack, norm, restart, batch) inside ``torch.random.fork_rng``, so results are
deterministic by seed and batch size and the caller's RNG state is left untouched. The
seed does not depend on eps, so every eps sees the same random directions (common random
numbers). Noise uses an explicit ``torch.Generator`` on the input's device.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numbers

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import UserError
from .models import eval_mode
from .registry import unknown_name
from .stats import Z_95, noise_interval, wilson_interval  # noqa: F401  (scipy; re-exported)

NORMS = ("linf", "l2")
LOSSES = ("ce64", "ce32")
GRAD_VANISH_THRESHOLD = 1e-10  # per-example ||d CE / d x||_2 below this counts as vanished
# One row per (attack, norm, strength). attack: 'noise' | 'pgd' | 'fgsm'; norm: 'gaussian' |
# 'linf' | 'l2'; strength: sigma or eps (pixel units); accuracy = n_correct / n_trials with
# a 95% interval [ci_low, ci_high]; n_trials = n_examples (attacks) or n_examples * draws
# (noise); steps, alpha (pixel units), restarts: PGD/FGSM settings (NaN for noise); draws:
# noise only; loss: 'ce64' | 'ce32' ('none' for noise); seconds: wall time of the row;
# grad_vanish_frac / grad_zero_frac: see gradient_stats (NaN for noise); seed; targets:
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
ATTACK_STRENGTH_ORDER = ("fgsm", "pgd", "autoattack")  # weaker to stronger, same norm


class AttackBoundsError(RuntimeError):
    """An adversarial example left its eps ball or [0, 1]: a bug in jrbench or torchattacks."""


def default_eps(dataset_name: str, norm: str) -> list[float]:
    """The default eps grid (pixel units, 0 first) for a data set and norm ('linf' or 'l2'):
    ``eps_linf`` / ``eps_l2`` of the data set's :class:`jrbench.data.Defaults`."""
    from .data import DATASETS

    defaults = DATASETS.get(dataset_name).info.defaults
    if norm not in NORMS:
        raise unknown_name("norm", norm, list(NORMS))
    return list(getattr(defaults, f"eps_{norm}"))


def default_sigmas(dataset_name: str | None = None) -> list[float]:
    """The data set's noise grid (pixel units; 0, 0.1, ..., 1.0 for every registered one)."""
    from .data import DATASETS, Defaults

    if dataset_name is None:
        return list(Defaults.__dataclass_fields__["sigmas"].default)
    return list(DATASETS.get(dataset_name).info.defaults.sigmas)


@dataclass
class AttackConfig:
    """What to run. Radii and sigmas are pixel units. An eps grid of None means "the data
    set's default" and must be filled (:meth:`for_dataset`, :func:`default_eps`) before
    :func:`run_attacks`. FGSM is L-infinity and uses ``eps_linf`` whatever ``norms`` says.
    AutoAttack (off by default: it is slow) runs on the norms that have an AutoAttack grid
    (``autoattack_eps_linf``, ``autoattack_eps_l2``) or, when neither is given, on ``norms``
    with PGD's grids; ``aa_targets`` None means the standard 9 target classes (data sets of
    at least 10 classes)."""

    noise: bool = True
    pgd: bool = True
    fgsm: bool = True
    autoattack: bool = False
    aa_targets: int | None = None   # AutoAttack's APGD-T / FAB-T target classes; None: 9
    autoattack_eps_linf: list[float] | None = None  # AutoAttack's own grids (pixel units)
    autoattack_eps_l2: list[float] | None = None
    sigmas: list[float] = field(default_factory=default_sigmas)
    draws: int = 5                  # noise draws per image
    norms: tuple[str, ...] = NORMS  # PGD norms
    eps_linf: list[float] | None = None
    eps_l2: list[float] | None = None
    steps: int = 40
    alpha: float | None = None      # PGD step (pixel units, every eps); None: 2.5 * eps / steps
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce64"
    batch_size: int = 500
    seed: int = 0

    @classmethod
    def for_dataset(cls, dataset_name: str, **overrides) -> "AttackConfig":
        """A config whose eps and noise grids are the data set's defaults (:func:`default_eps`)."""
        grids = {f"eps_{n}": default_eps(dataset_name, n) for n in NORMS}
        grids["sigmas"] = default_sigmas(dataset_name)
        return cls(**{**grids, **overrides})

    def eps_norms(self) -> list[str]:
        """The norms whose eps grid the selected attacks use."""
        own_aa = self.autoattack_eps_linf is not None or self.autoattack_eps_l2 is not None
        used = set(self.norms) if (self.pgd or (self.autoattack and not own_aa)) else set()
        return [n for n in NORMS if n in used or (n == "linf" and self.fgsm)]

    def autoattack_grids(self) -> dict[str, list[float] | None]:
        """AutoAttack's norm -> eps grid: its own grids where given, else PGD's of ``norms``
        (None until filled); empty when AutoAttack is off."""
        if not self.autoattack:
            return {}
        own = {n: getattr(self, f"autoattack_eps_{n}") for n in NORMS
               if getattr(self, f"autoattack_eps_{n}") is not None}
        return own or {n: getattr(self, f"eps_{n}") for n in NORMS if n in self.norms}

    def validate(self) -> None:
        """Raise :class:`UserError` for anything out of range or unknown (None grids pass)."""
        if not (self.noise or self.pgd or self.fgsm or self.autoattack):
            raise UserError("no attack selected: enable at least one of noise, pgd, fgsm, "
                            "autoattack.")
        own_aa = self.autoattack_eps_linf is not None or self.autoattack_eps_l2 is not None
        if (self.pgd or (self.autoattack and not own_aa)) and len(self.norms) == 0:
            raise UserError(f"norms is empty: PGD and AutoAttack need at least one of "
                            f"{', '.join(NORMS)}.")
        for norm in self.norms:
            if norm not in NORMS:
                raise unknown_name("norm", norm, list(NORMS))
        if self.loss not in LOSSES:
            raise unknown_name("loss", self.loss, list(LOSSES))
        _check_grid("sigma", self.sigmas, upper=None)
        for norm in self.eps_norms():
            if getattr(self, f"eps_{norm}") is not None:
                _check_grid(f"eps_{norm}", getattr(self, f"eps_{norm}"),
                            upper=1.0 if norm == "linf" else None)
        for norm in NORMS:
            if getattr(self, f"autoattack_eps_{norm}") is not None:
                _check_grid(f"autoattack_eps_{norm}", getattr(self, f"autoattack_eps_{norm}"),
                            upper=1.0 if norm == "linf" else None)
        for name in ("draws", "steps", "restarts", "batch_size"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("seed", self.seed, low=0)
        if self.aa_targets is not None:
            _check_int("aa_targets", self.aa_targets, low=1)
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise UserError(f"alpha (the PGD step, pixel units) must be > 0, got {self.alpha}.")


def _check_grid(name: str, values: Sequence[float], upper: float | None) -> None:
    if len(values) == 0:
        raise UserError(f"{name} is empty: give at least one value (pixel units).")
    for v in values:
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise UserError(f"{name} values must be finite numbers >= 0 (pixel units), got {v}.")
        if upper is not None and v > upper:
            raise UserError(f"{name} values must be <= {upper} (pixels lie in [0, 1]), got {v}.")


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}.")


# ----------------------------------------------------------------------------- helpers


class Float64Logits(nn.Module):
    """``model(x).double()``: the loss on top is computed in float64; x stays as given.

    The model is a submodule, so ``parameters()`` (which torchattacks reads for the
    device) and ``eval()`` reach it. The wrapper starts in the model's mode: torchattacks
    puts its model back in training mode after an attack if it found it there, and a new
    module is in training mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).double()


def attack_model(model: nn.Module, loss: str) -> nn.Module:
    """The module torchattacks attacks: float64 logits for 'ce64', the model for 'ce32'."""
    if loss not in LOSSES:
        raise unknown_name("loss", loss, list(LOSSES))
    return Float64Logits(model) if loss == "ce64" else model


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global CPU RNG (and ``device``'s, if CUDA) for the block, then restore."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and the parts' reprs (stable across runs and machines)."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return fallback


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _batches(idx: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(idx.split(batch_size)) if len(idx) else []


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise :class:`UserError` unless x is (N, C, H, W) pixels in [0, 1] and y (N,) labels."""
    if x.dim() != 4 or not x.is_floating_point():
        raise UserError(
            f"images must be a float tensor (N, C, H, W); got {x.dtype} {tuple(x.shape)}.")
    if y.shape != (x.shape[0],) or y.is_floating_point():
        raise UserError(f"labels must be integers of shape ({x.shape[0]},); got {tuple(y.shape)}.")
    if x.shape[0] == 0:
        raise UserError("no examples to attack.")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise UserError(
            f"images must be pixels in [0, 1] (got values in [{lo:.3g}, {hi:.3g}]); "
            "normalization belongs in the model's first layer."
        )


@torch.no_grad()
def correct_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = 500) -> torch.Tensor:
    """Bool (N,) on x's device: the model's prediction on x equals y."""
    device, dtype = _model_device(model, x.device), _model_dtype(model)
    out = torch.empty(len(x), dtype=torch.bool, device=x.device)
    for idx in _batches(torch.arange(len(x), device=x.device), batch_size):
        pred = model(x[idx].to(device, dtype)).argmax(1)
        out[idx] = (pred == y[idx].to(device)).to(x.device)
    return out


def input_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         loss: str = "ce64", batch_size: int = 500) -> torch.Tensor:
    """Per-example ||d CE(f(x_i), y_i) / d x_i||_2 (pixel space), float64 (N,) on x's device.

    The cross-entropy is each example's own (reduction 'sum', so the batch size does not
    scale it), computed from float64 logits for 'ce64' and float32 logits for 'ce32'."""
    device, dtype = _model_device(model, x.device), _model_dtype(model)
    wrapped = attack_model(model, loss)
    norms = torch.empty(len(x), dtype=torch.float64, device=x.device)
    for idx in _batches(torch.arange(len(x), device=x.device), batch_size):
        xb = x[idx].to(device, dtype).requires_grad_(True)
        with torch.enable_grad():
            ce = nn.functional.cross_entropy(wrapped(xb), y[idx].to(device), reduction="sum")
            (grad,) = torch.autograd.grad(ce, xb)
        norms[idx] = grad.flatten(1).double().norm(dim=1).to(x.device)
    return norms


def gradient_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce64",
                   batch_size: int = 500) -> dict[str, float]:
    """Shares of examples whose clean-point loss gradient is < 1e-10 (``grad_vanish_frac``)
    or exactly zero / not finite (``grad_zero_frac``); see :func:`input_gradient_norms`."""
    with eval_mode(model):
        norms = input_gradient_norms(model, x, y, loss, batch_size)
    zero = (norms == 0) | ~torch.isfinite(norms)
    return {"grad_vanish_frac": float(((norms < GRAD_VANISH_THRESHOLD) | zero).double().mean()),
            "grad_zero_frac": float(zero.double().mean())}


def check_in_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str,
                  rel_tol: float = 1e-6) -> None:
    """Raise :class:`AttackBoundsError` unless every x_adv is in [0, 1] and within eps of x.

    ``norm`` is 'linf' (max |x_adv - x| per example) or 'l2' (Euclidean per example).
    Tolerance: eps * rel_tol plus float rounding of the projection, 2 machine epsilons of
    x's dtype per pixel (times sqrt(pixels) in L2)."""
    if x_adv.shape != x.shape or not torch.isfinite(x_adv).all():
        raise AttackBoundsError(
            f"adversarial batch has shape {tuple(x_adv.shape)} or non-finite values")
    if float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
        raise AttackBoundsError(
            f"adversarial pixels outside [0, 1]: [{float(x_adv.min())}, {float(x_adv.max())}]")
    delta = (x_adv - x).flatten(1)
    machine_eps = torch.finfo(x.dtype).eps
    if norm == "linf":
        size, slack = delta.abs().amax(1).double(), 2 * machine_eps
    else:
        size, slack = delta.double().norm(dim=1), 2 * machine_eps * math.sqrt(delta.shape[1])
    limit = eps * (1 + rel_tol) + slack
    worst = int(size.argmax())
    if float(size[worst]) > limit:
        raise AttackBoundsError(
            f"{norm} perturbation of example {worst} in the batch is {float(size[worst]):.9g} "
            f"> eps {eps:.9g} (tolerance {limit - eps:.2g})")


# ----------------------------------------------------------------------------- attacks


def pgd_alpha(eps: float, steps: int, alpha: float | None = None) -> float:
    """PGD step size in pixel units: ``alpha`` if given, else 2.5 * eps / steps (Madry et al.)."""
    return float(alpha) if alpha is not None else 2.5 * eps / steps


def make_attack(model: nn.Module, attack: str, norm: str, eps: float, *, steps: int = 40,
                alpha: float | None = None, random_start: bool = True, loss: str = "ce64",
                device: torch.device | None = None):
    """The torchattacks object for ``attack`` ('pgd' or 'fgsm') at radius eps (pixels).

    Attacks ``attack_model(model, loss)``; for 'ce64' PGDL2's division guard is 1e-30."""
    import torchattacks

    if attack not in ("pgd", "fgsm"):
        raise unknown_name("attack", attack, ["pgd", "fgsm"])
    if norm not in NORMS or (attack == "fgsm" and norm != "linf"):
        raise unknown_name(f"{attack} norm", norm, ["linf"] if attack == "fgsm" else list(NORMS))
    wrapped = attack_model(model, loss)
    with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints if it finds no device
        if attack == "fgsm":
            atk = torchattacks.FGSM(wrapped, eps=eps)
        elif norm == "linf":
            atk = torchattacks.PGD(wrapped, eps=eps, alpha=pgd_alpha(eps, steps, alpha),
                                   steps=steps, random_start=random_start)
        else:
            atk = torchattacks.PGDL2(wrapped, eps=eps, alpha=pgd_alpha(eps, steps, alpha),
                                     steps=steps, random_start=random_start,
                                     eps_for_division=1e-30 if loss == "ce64" else 1e-10)
    if device is not None:
        atk.set_device(device)
    return atk


def attack_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                   norm: str = "linf", eps: float, steps: int = 40, alpha: float | None = None,
                   restarts: int = 1, random_start: bool = True, loss: str = "ce64",
                   seed: int = 0, batch_size: int = 500,
                   clean_correct: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (N,) on x's device: example i is correct clean and after every restart.

    ``attack`` 'pgd' (norm 'linf' or 'l2') or 'fgsm' (norm 'linf', one deterministic run);
    eps in pixel units; eps == 0 returns the clean result without calling torchattacks.
    Every adversarial batch is checked with :func:`check_in_ball`."""
    with eval_mode(model):
        robust = (correct_mask(model, x, y, batch_size) if clean_correct is None
                  else clean_correct.clone())
        if eps == 0:
            return robust
        device, dtype = _model_device(model, x.device), _model_dtype(model)
        atk = make_attack(model, attack, norm, eps, steps=steps, alpha=alpha,
                          random_start=random_start, loss=loss, device=device)
        for restart in range(1 if attack == "fgsm" else restarts):
            alive = robust.nonzero().flatten()
            for b, idx in enumerate(_batches(alive, batch_size)):
                xb, yb = x[idx].to(device, dtype), y[idx].to(device)
                seed_b = derive_seed(seed, attack, norm, restart, b)
                with seeded_global_rng(seed_b, device), torch.enable_grad():
                    adv = atk(xb, yb)
                check_in_ball(xb, adv, eps, norm)
                with torch.no_grad():
                    still = model(adv).argmax(1) == yb
                robust[idx] = still.to(x.device)
        return robust


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
    With ``record`` given, appends each eps's per-example frame (:func:`example_frame`) to it."""
    with eval_mode(model):
        clean = correct_mask(model, x, y, batch_size) if clean_correct is None else clean_correct
        stats = grad_stats or gradient_stats(model, x, y, loss, batch_size)
        device, rows = _model_device(model, x.device), []
        for eps in eps_list:
            start = time.perf_counter()
            ok = attack_correct(model, x, y, attack=attack, norm=norm, eps=eps, steps=steps,
                                alpha=alpha, restarts=restarts, random_start=random_start,
                                loss=loss, seed=seed, batch_size=batch_size, clean_correct=clean)
            _sync(device)
            k, n = int(ok.sum()), len(x)
            if record is not None:
                record.append(example_frame(attack, norm, eps, loss, clean, ok, y, seed,
                                            example_index))
            fgsm = attack == "fgsm"
            rows.append(_row(attack, norm, eps, n, k, n, wilson_interval(k, n),
                             time.perf_counter() - start, seed, loss=loss,
                             steps=1 if fgsm else steps,
                             alpha=eps if fgsm else pgd_alpha(eps, steps, alpha),
                             restarts=1 if fgsm else restarts, **stats))
        return rows


def noise_correct_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, *,
                         draws: int = 5, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """Int (N,): for each image, how many of ``draws`` noisy copies clip(x + sigma n, 0, 1),
    n ~ N(0, I) per pixel, the model classifies correctly. Draw d of batch b comes from a
    ``torch.Generator`` on the model's device seeded by (seed, b, d), the same for every sigma."""
    device, dtype = _model_device(model, x.device), _model_dtype(model)
    counts = torch.zeros(len(x), dtype=torch.long, device=x.device)
    with eval_mode(model), torch.no_grad():
        for b, idx in enumerate(_batches(torch.arange(len(x), device=x.device), batch_size)):
            xb, yb = x[idx].to(device, dtype), y[idx].to(device)
            for d in range(draws):
                gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "noise", b, d))
                noise = torch.randn(xb.shape, generator=gen, device=device, dtype=dtype)
                pred = model((xb + sigma * noise).clamp(0.0, 1.0)).argmax(1)
                counts[idx] += (pred == yb).to(x.device)
    return counts


def noise_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float], *,
               draws: int = 5, seed: int = 0, batch_size: int = 500,
               record: list[pd.DataFrame] | None = None,
               example_index: torch.Tensor | None = None) -> list[dict]:
    """One row per sigma: accuracy over all (image, draw) pairs, interval from
    :func:`noise_interval`, n_trials = N * draws. With ``record`` given, appends each
    sigma's per-example frame (robust: the share of draws classified correctly)."""
    device, rows = _model_device(model, x.device), []
    if record is not None:
        with eval_mode(model):
            clean = correct_mask(model, x, y, batch_size)
    for sigma in sigmas:
        start = time.perf_counter()
        counts = noise_correct_counts(model, x, y, sigma, draws=draws, seed=seed,
                                      batch_size=batch_size)
        _sync(device)
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
    :func:`jrbench.autoattack.autoattack_correct`. Intervals as :func:`attack_rows`."""
    from . import autoattack as AA

    targets = AA.resolve_targets(num_classes, n_targets)
    with eval_mode(model):
        clean = correct_mask(model, x, y, batch_size) if clean_correct is None else clean_correct
        stats = grad_stats or gradient_stats(model, x, y, loss, batch_size)
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
                rows.append(_row(attack, norm, eps, n, k, n, wilson_interval(k, n), seconds, seed,
                                 loss=loss, steps=steps, restarts=AA.RESTARTS,
                                 targets=n_targets_row, **stats))
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
    device, dtype = _model_device(model, x.device), _model_dtype(model)
    with eval_mode(model), torch.no_grad():
        return int(model(x[:1].to(device, dtype)).shape[1])


def run_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AttackConfig, *,
                num_classes: int | None = None, example_index: torch.Tensor | None = None,
                example_seed: int = -1, on_progress=None) -> AttackTables:
    """Run the attacks of ``config`` on (x, y); return the table (one tidy row per (attack,
    norm, strength), columns :data:`ROW_COLUMNS`) and the per-example record
    (:data:`EXAMPLE_COLUMNS`). x: (N, C, H, W) pixels in [0, 1] on any device (batches move
    to the model's device); y: (N,) labels. ``num_classes`` (AutoAttack's target classes): the
    data set's, default the width of the model's logits; ``example_index`` (N,): the examples'
    positions in their split, written to the record's ``example`` (default 0..N-1).
    ``on_progress(done, total, label)`` is called before the first and after each attack and
    strength (``total``: the number of (attack, norm, strength) runs)."""
    config.validate()
    for norm in config.eps_norms():
        if getattr(config, f"eps_{norm}") is None:
            raise UserError(f"eps_{norm} is not set: give radii or use default_eps(dataset, "
                            f"'{norm}') / AttackConfig.for_dataset().")
    check_inputs(x, y)
    if example_index is not None and tuple(example_index.shape) != (len(x),):
        raise UserError(f"example_index must have shape ({len(x)},), got "
                        f"{tuple(example_index.shape)}.")
    if config.autoattack:
        from .autoattack import resolve_targets

        width = model_num_classes(model, x)
        if num_classes is not None and num_classes != width:
            raise UserError(f"the model has {width} logits but the data set {num_classes} "
                            "classes: train the model on the data set you attack it on.")
        resolve_targets(width, config.aa_targets)  # a bad target count fails before any work
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
            for sigma in config.sigmas:
                rows += noise_rows(model, x, y, [sigma], draws=config.draws, record=record,
                                   example_index=example_index, **common)
                step(f"noise sigma={sigma:g}")
        if config.pgd or config.fgsm or config.autoattack:
            clean = correct_mask(model, x, y, config.batch_size)
            stats = gradient_stats(model, x, y, config.loss, config.batch_size)
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


# ----------------------------------------------------------------------------- sanity checks

_GROUP = ["attack", "norm", "loss", "steps", "restarts", "draws"]


def huge_eps_linf(dataset_name: str | None) -> float:
    """An L-infinity radius at which a working attack drives accuracy to about chance: the data
    set's ``huge_eps_linf`` (0.3 for MNIST-like data sets, a heuristic for models without
    adversarial training: Madry et al.'s adversarially trained MNIST model keeps about 89%
    there); 0.5 without a data set, where every image can reach the same all-0.5 image, so no
    model can beat the largest class share."""
    if dataset_name is None:
        return 0.5
    from .data import DATASETS

    return DATASETS.get(dataset_name).info.defaults.huge_eps_linf


def _label(row) -> str:
    steps = f", {row.steps:g} steps" if row.attack == "pgd" else ""
    loss = f" ({row.loss}{steps})" if row.loss != "none" else ""
    return f"{row.attack}-{row.norm}{loss}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _rising(df: pd.DataFrame) -> list[str]:
    out = []
    for _, g in df.groupby(_GROUP, dropna=False, sort=False):
        rows, worst = list(g.sort_values("strength").itertuples()), None
        for j, b in enumerate(rows):
            for a in rows[:j]:
                rise = b.accuracy - a.ci_high
                if a.strength < b.strength and rise > 0 and (worst is None or rise > worst[0]):
                    worst = (rise, a, b)
        if worst:
            _, a, b = worst
            why = ("noise that grows should not help: check the model and data"
                   if a.attack == "noise" else "a larger radius can only help a working "
                   "attack: suspect gradient masking or too few steps")
            out.append(
                f"{_label(a)}: accuracy rises from {_pct(a.accuracy)} at {a.strength:.4g} to "
                f"{_pct(b.accuracy)} at {b.strength:.4g}, above the first's 95% interval "
                f"(up to {_pct(a.ci_high)}); {why}.")
    return out


def _weaker_than(what: str, pairs: dict[str, list]) -> list[str]:
    """One message per PGD group listing where PGD accuracy exceeds the other's interval."""
    out = []
    for label, found in pairs.items():
        eps = ", ".join(f"{p.strength:.4g}" for p, _ in found)
        p, o = max(found, key=lambda t: t[0].accuracy - t[1].ci_high)
        out.append(
            f"{label} is weaker than {what} at eps {eps}: e.g. {_pct(p.accuracy)} at eps "
            f"{p.strength:.4g} against {_pct(o.accuracy)} (95% interval up to "
            f"{_pct(o.ci_high)}) for {_label(o)} at {o.strength:.4g}; PGD should be at "
            "least as strong: suspect gradient masking, a too small step or too few steps.")
    return out


def _pgd_vs_fgsm(df: pd.DataFrame) -> list[str]:
    pgd = df[(df.attack == "pgd") & (df.norm == "linf") & (df.strength > 0)]
    fgsm = df[df.attack == "fgsm"]
    pairs: dict[str, list] = {}
    for p in pgd.itertuples():
        for f in fgsm[(fgsm.loss == p.loss) & np.isclose(fgsm.strength, p.strength)].itertuples():
            if p.accuracy > f.ci_high:
                pairs.setdefault(_label(p), []).append((p, f))
    return _weaker_than("FGSM", pairs)


def _pgd_vs_noise(df: pd.DataFrame, input_dim: int) -> list[str]:
    """Noise of std sigma has an L2 norm that concentrates at sigma * sqrt(D) (within about
    sigma; clipping only shortens it); where that is <= eps the noise lies (up to that
    spread) in PGD's L2 ball, which sits inside the L-infinity ball of the same eps, so
    PGD of either norm should do at least as well."""
    noise = df[(df.attack == "noise") & (df.strength > 0)]
    pairs: dict[str, list] = {}
    for p in df[(df.attack == "pgd") & (df.strength > 0)].itertuples():
        inside = noise[noise.strength * math.sqrt(input_dim) <= p.strength]
        beaten = [o for o in inside.itertuples() if p.accuracy > o.ci_high]
        if beaten:
            pairs.setdefault(_label(p), []).append((p, min(beaten, key=lambda o: o.ci_high)))
    return _weaker_than("white noise of smaller expected L2 norm", pairs)


def _huge_eps(df: pd.DataFrame, eps_huge: float, max_accuracy: float) -> list[str]:
    rows = df[(df.attack == "pgd") & (df.norm == "linf") & (df.strength >= eps_huge - 1e-12)
              & (df.accuracy > max_accuracy)]
    return [f"{_label(r)}: {_pct(r.accuracy)} accuracy at eps {r.strength:.4g}, where a working "
            f"attack leaves about chance (<= {_pct(max_accuracy)}): suspect gradient masking."
            for r in rows.itertuples()]


def _vanishing(df: pd.DataFrame, limit: float) -> list[str]:
    out = []
    attacked = df[df.attack.isin(["pgd", "fgsm"])]
    for loss, g in attacked.groupby("loss", sort=False):
        zero = float(g.get("grad_zero_frac", pd.Series([0.0])).max())
        vanish = float(g.grad_vanish_frac.max())
        if zero > limit:
            out.append(
                f"the {loss} loss gradient is exactly zero at the clean point for {_pct(zero)} of "
                "the examples: gradient attacks cannot move them, so accuracy under attack "
                "overstates robustness (gradient masking or saturated softmax).")
        elif loss == "ce32" and vanish > limit:
            out.append(
                f"the float32 cross-entropy gradient is below {GRAD_VANISH_THRESHOLD:g} for "
                f"{_pct(vanish)} of the examples (softmax rounds to 1): PGD-L2 barely moves "
                "them; rerun with loss 'ce64'.")
    return out


def _aa_below_pgd(df: pd.DataFrame, gap: float) -> list[str]:
    """AutoAttack more than ``gap`` below PGD at the same norm and eps: PGD overstates."""
    out = []
    aa, pgd = df[(df.attack == "autoattack") & (df.strength > 0)], df[df.attack == "pgd"]
    found: dict[tuple[str, str], list] = {}
    for a in aa.itertuples():
        same = pgd[(pgd.norm == a.norm) & np.isclose(pgd.strength, a.strength)]
        for p in same.itertuples():
            if p.accuracy - a.accuracy > gap:
                found.setdefault((_label(a), _label(p)), []).append((a, p))
    for (aa_label, pgd_label), pairs in found.items():
        a, p = max(pairs, key=lambda t: t[1].accuracy - t[0].accuracy)
        eps = ", ".join(f"{a.strength:.4g}" for a, _ in pairs)
        out.append(
            f"{aa_label} is more than {100 * gap:g} points below {pgd_label} at eps {eps}: e.g. "
            f"{_pct(a.accuracy)} against {_pct(p.accuracy)} at eps {a.strength:.4g} "
            f"({100 * (p.accuracy - a.accuracy):.1f} points): PGD under-reports what an attack "
            "finds, so its accuracy overstates robustness (gradient masking suspected); "
            "report AutoAttack.")
    return out


def _stronger_misses(examples: pd.DataFrame) -> list[str]:
    """From the per-example record: a weaker attack (FGSM < PGD < AutoAttack, same norm)
    breaks examples that a stronger one leaves robust at an equal or larger eps."""
    rank = {name: i for i, name in enumerate(ATTACK_STRENGTH_ORDER)}
    ex = examples[examples.attack.isin(rank)]
    groups = {key: g for key, g in ex.groupby(["attack", "loss", "norm"], sort=True)}
    out = []
    for (weak, weak_loss, norm), wg in groups.items():
        broken = wg.pivot_table(index="example", columns="strength", values="broken",
                                aggfunc="max")
        for (strong, strong_loss, strong_norm), sg in groups.items():
            if strong_norm != norm or rank[strong] <= rank[weak]:
                continue
            robust = sg.pivot_table(index="example", columns="strength", values="robust",
                                    aggfunc="min")
            common = broken.index.intersection(robust.index)
            found = []
            for eps in sorted(e for e in broken.columns if e > 0):
                larger = [e for e in robust.columns if e >= eps * (1 - 1e-9)]
                if not larger:
                    continue
                missed = ((broken.loc[common, eps] > 0)
                          & (robust.loc[common, larger] > 0).any(axis=1))
                if missed.any():
                    found.append((eps, int(missed.sum()), int(missed[missed].index[0])))
            if found:
                counts = ", ".join(f"{k} at eps {eps:.4g}" for eps, k, _ in found)
                eps, _, example = found[0]
                out.append(
                    f"{weak}-{norm} ({weak_loss}) breaks examples that the stronger "
                    f"{strong}-{norm} ({strong_loss}) leaves robust at an equal or larger eps: "
                    f"{counts} (e.g. example {example} at eps {eps:.4g}); a stronger attack "
                    "should find what a weaker one finds: suspect gradient masking or too few "
                    "iterations, and count the worst case per example.")
    return out


def sanity_warnings(df: pd.DataFrame, *, input_dim: int | None = None,
                    dataset: str | None = None, vanish_limit: float = 0.05,
                    huge_eps_max_accuracy: float = 0.10,
                    examples: pd.DataFrame | None = None,
                    aa_pgd_gap: float = 0.02) -> list[str]:
    """Warnings, in the spirit of AutoAttack's checks, that an attack failed (often a sign
    of gradient masking) from a table of :data:`ROW_COLUMNS` rows:

    - accuracy rises with the radius beyond the smaller radius's 95% interval;
    - PGD-linf is weaker than FGSM at the same eps and loss (beyond FGSM's interval);
    - PGD (either norm) is weaker than white noise whose expected L2 norm sigma * sqrt(D)
      is <= eps (needs ``input_dim`` D = C * H * W);
    - PGD-linf leaves more than ``huge_eps_max_accuracy`` at eps >= :func:`huge_eps_linf`;
    - more than ``vanish_limit`` of the examples have an exactly zero loss gradient, or
      (loss 'ce32') one below 1e-10. With 'ce64' the PGD steps are scale-free, so small but
      non-zero gradients do not stall them and are not reported (``grad_vanish_frac`` of
      a plain MNIST LeNet is about 0.2 without any masking);
    - AutoAttack's accuracy is more than ``aa_pgd_gap`` (2 points) below PGD's at the same
      norm and eps: PGD under-reports (gradient masking suspected);
    - with ``examples`` (the per-example record, :data:`EXAMPLE_COLUMNS`, of the same
      examples): a weaker attack (FGSM < PGD < AutoAttack, same norm) breaks an example that
      a stronger one leaves robust at an equal or larger eps; it names both attacks, the eps
      and the number of examples."""
    out = _rising(df) + _pgd_vs_fgsm(df)
    if input_dim is not None:
        out += _pgd_vs_noise(df, input_dim)
    out += _huge_eps(df, huge_eps_linf(dataset), huge_eps_max_accuracy)
    out += _vanishing(df, vanish_limit) + _aa_below_pgd(df, aa_pgd_gap)
    if examples is not None and len(examples):
        out += _stronger_misses(examples)
    return out
