"""Certified training: ``--reg ibp`` (Gowal et al. 2018) and ``--reg crown-ibp`` (Zhang et al. 2020).

The loss of a batch is kappa CE(f(x), y) + (1 - kappa) CE(z, y), where z are the worst-case logits
of the L-inf ball of radius eps (pixels) around x, intersected with [0, 1]: z_j is an upper bound
of f_j - f_y over the ball (z_y = 0), the negated margin lower bound, with the final nn.Linear
folded into the margins (the elision of Gowal et al., section 3). The model's normalization is
inside the bounded map: the ball is in pixels.

- ``ibp``: the margins' lower bounds from interval bound propagation,
  :func:`jrbench.models.interval.margin_lower_bounds`, the same code that ``jrbench certify
  --ibp`` runs (there in float64 with outward rounding, here ``sound=False``: float32,
  differentiable). So the training-time certificate is certify's up to float32 rounding
  (tests/test_ibp_train.py).
- ``crown-ibp``: beta CROWN-IBP + (1 - beta) IBP (:mod:`jrbench.penalty.crown_ibp`), beta from 1
  to 0 over the ramp, as Zhang et al.; after the ramp the bound is IBP's alone, so the backward
  CROWN pass costs only during the ramp.

The schedule, per SGD step t (counted over the whole run from 0, so a resumed run continues it):
``ibp_warmup_epochs`` x steps per epoch = W steps of plain training (eps 0, kappa 1: the bound is
not computed), then R = ``ibp_ramp_epochs`` x steps per epoch steps where, with
p = (t - W + 1) / R, eps = p ``ibp_eps`` and kappa = 1 - p (1 - ``ibp_kappa``) (beta = 1 - p),
then eps = ``ibp_eps`` and kappa = ``ibp_kappa`` (beta 0) to the end. Gowal et al. train MNIST with
2k warm-up and 10k ramp steps of 60k, kappa 1 -> 0.5 and eps_train = 0.2 for a test at 0.1 (0.4 for
0.2-0.4); jrbench's defaults (docs/conventions.md) keep kappa and eps_train and give the ramp a
larger share of its short CPU recipes.

Layers: the chain of :func:`jrbench.models.lipschitz.layer_chain` that certify --ibp covers, except
BatchNorm (its training-mode batch statistics are not the running statistics the bound would use);
Dropout is the identity in the bound (its eval semantics). CROWN-IBP covers ReLU and LeakyReLU
activations only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import RegConfig
from ..errors import UserError
from ..models import interval
from ..models.architectures import Classifier
from ..models.lipschitz import Layer, layer_chain, strictly_correct
from ..models.onelip import REPARAMETRIZED
from . import crown_ibp

NAMES = ("ibp", "crown-ibp")


def bound_name(reg: RegConfig) -> str | None:
    """'ibp' or 'crown-ibp' when ``reg`` trains against a bound, else None."""
    return next((n for n in NAMES if n in reg.names), None)


@dataclass(frozen=True)
class BoundStep:
    """The schedule at one step: the radius (pixels), the natural loss's weight, CROWN-IBP's share."""

    eps: float
    kappa: float
    beta: float = 0.0


@dataclass(frozen=True)
class Schedule:
    """eps, kappa and beta of every step (module docstring): ``warmup`` and ``ramp`` in steps."""

    eps: float
    kappa: float
    warmup: int
    ramp: int
    crown: bool

    @classmethod
    def of(cls, reg: RegConfig, steps_per_epoch: int) -> "Schedule":
        return cls(reg.ibp_eps, reg.ibp_kappa, round(reg.ibp_warmup_epochs * steps_per_epoch),
                   round(reg.ibp_ramp_epochs * steps_per_epoch), bound_name(reg) == "crown-ibp")

    def at(self, step: int) -> BoundStep:
        """The schedule at SGD step ``step`` (0-based over the whole run)."""
        if step < self.warmup:
            return BoundStep(0.0, 1.0, 1.0 if self.crown else 0.0)
        p = min(1.0, (step - self.warmup + 1) / self.ramp) if self.ramp > 0 else 1.0
        return BoundStep(self.eps * p, 1.0 - p * (1.0 - self.kappa), 1.0 - p if self.crown else 0.0)


def training_chain(model: Classifier, name: str) -> list[Layer]:
    """The layer chain ``--reg name`` bounds, or :class:`UserError` naming the first layer it cannot
    (the model may be on the meta device)."""
    for path, m in model.named_modules():
        if isinstance(m, REPARAMETRIZED):
            raise UserError(f"--reg {name} has no rule for layer {path} ({type(m).__name__}): certify --ibp bounds "
                            "the plain layer it computes, a copy of its weights that training would not update; "
                            "use a model of plain layers (mlp, lenet, ddnet).")
    try:
        layers = layer_chain(model, "--ibp", ibp=True)
    except UserError as e:
        raise UserError(f"--reg {name} trains against the interval bound of certify --ibp, which needs a chain "
                        f"of layers with rules (mlp, lenet, ddnet); model '{getattr(model, 'name', '?')}' is not "
                        f"one: {e}") from e
    for layer in layers:
        if layer.kind == "batchnorm":
            raise UserError(f"--reg {name} has no rule for layer {layer.path} ({type(layer.module).__name__}): in "
                            "training it normalizes with batch statistics, not the running statistics a bound "
                            "would use; use a model without BatchNorm (mlp, lenet, ddnet).")
    if name == "crown-ibp":
        why = crown_ibp.unsupported(layers)
        if why is not None:
            raise UserError(f"--reg crown-ibp: {why}; --reg ibp covers more layers.")
    return layers


@dataclass
class BoundLoss:
    """The bound's part of a step: CE of the worst-case logits, and how many examples of the batch
    the training bound certifies (correct, every margin bound > 0), both detached but ``ce``."""

    ce: torch.Tensor
    certified: torch.Tensor


def worst_case_logits(low: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z = -low with z_y = 0: z_j is the upper bound of f_j - f_y (``low``: margin lower bounds,
    +inf on the label's column)."""
    return torch.where(F.one_hot(y, low.shape[1]).bool(), torch.zeros_like(low), -low)


class CertifiedTraining:
    """What ``--reg ibp`` / ``--reg crown-ibp`` keeps for a model: its chain (checked once) and schedule."""

    def __init__(self, model: Classifier, reg: RegConfig, steps_per_epoch: int = 1):
        self.name = bound_name(reg)
        if self.name is None:
            raise ValueError("CertifiedTraining needs --reg ibp or --reg crown-ibp")
        self.layers = training_chain(model, self.name)
        self.schedule = Schedule.of(reg, steps_per_epoch)

    def steady(self) -> BoundStep:
        """A step after warm-up at the full radius and final kappa; CROWN-IBP with beta 1 (the ramp's
        backward pass, what its steps cost): the step ``jrbench overhead`` times."""
        s = self.schedule
        return BoundStep(s.eps, s.kappa, 1.0 if s.crown else 0.0)

    def margins(self, x: torch.Tensor, y: torch.Tensor, at: BoundStep) -> torch.Tensor:
        """(N, C) differentiable lower bounds of f_y - f_j at radius ``at.eps``: IBP's, or
        beta CROWN-IBP + (1 - beta) IBP."""
        if at.beta == 0:
            return interval.margin_lower_bounds(self.layers, x, y, at.eps, sound=False)
        last = interval.elision_layer(self.layers)
        trace: list = []
        mu, r = interval.propagate(self.layers[:last], *interval.input_box(x, at.eps, False), False, trace)
        crown = crown_ibp.margin_lower_bounds(self.layers, x, y, at.eps, trace)
        if at.beta == 1:
            return crown
        ibp = interval.elided_margins(self.layers[last].module, mu, r, y, False)
        return at.beta * crown + (1 - at.beta) * ibp

    def loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, at: BoundStep) -> BoundLoss:
        """CE of the worst-case logits at ``at`` for pixels x (B, C, H, W), labels y (B,); ``logits``
        the clean forward's (for the certified count)."""
        low = self.margins(x, y, at)
        ce = F.cross_entropy(worst_case_logits(low, y), y)
        with torch.no_grad():
            certified = (strictly_correct(logits, y) & (low > 0).all(1)).sum()
        return BoundLoss(ce, certified)


def certified_count(layers: list[Layer], model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float) -> int:
    """How many of x (N, C, H, W) pixels the sound float64 interval bound certifies at ``eps``:
    certify --ibp's answer (the model in its current mode; call it in eval mode)."""
    with torch.no_grad():
        correct = strictly_correct(model(x), y)
        low = interval.margin_lower_bounds(layers, x, y, eps, sound=True)
    return int((correct & (low > 0).all(1)).sum())
