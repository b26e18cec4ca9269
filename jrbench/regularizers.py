"""Regularizers, in a registry and combinable: none, l2, dropout, jacobian, input-grad.

Each acts in one place: ``l2`` through SGD weight decay, ``dropout`` through the model
(p before each hidden fully connected layer), ``jacobian`` and ``input-grad`` through a
penalty added to the cross-entropy loss. Both penalties are taken with respect to the
normalized input z = (x - mean) / std, as in the paper and the authors' code.

- jacobian (Hoffman, Roberts, Yaida 2019): R = 1/2 * batch mean of ||J_z||_F^2,
  estimated with ``n_proj`` random projections (-1: exact); with ``jr_subsample`` = K,
  R is computed on K samples of each (shuffled) batch only: still unbiased, K/B of the cost.
- input-grad (double backpropagation, Drucker & LeCun 1992): 1/2 * batch mean of
  ||d CE_b / d z_b||^2 for the per-example cross-entropy CE_b.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import RegConfig
from . import vjp_tape
from .jacobian import autograd_vjp, frobenius_sq_from_vjp
from .models import Classifier
from .registry import Registry


@dataclass(frozen=True)
class RegularizerSpec:
    name: str
    description: str


REGULARIZERS: Registry[RegularizerSpec] = Registry("regularizer")
for _name, _desc in [
    ("none", "plain SGD with momentum"),
    ("l2", "weight decay (--weight-decay) in SGD"),
    ("dropout", "dropout (--dropout) before each hidden fully connected layer"),
    ("jacobian", "1/2 ||d logits/dz||_F^2 by random projections (--lambda-jr, --n-proj, --jr-subsample)"),
    ("input-grad", "double backpropagation: 1/2 ||d CE/dz||^2 (--lambda-ig)"),
]:
    REGULARIZERS.register(_name)(RegularizerSpec(_name, _desc))


def model_dropout(reg: RegConfig) -> float:
    return reg.dropout if "dropout" in reg.names else 0.0


def weight_decay(reg: RegConfig) -> float:
    return reg.weight_decay if "l2" in reg.names else 0.0


@dataclass
class StepLoss:
    """The loss of one training batch: ``total`` to backpropagate and its parts (detached)."""

    total: torch.Tensor
    ce: torch.Tensor
    logits: torch.Tensor
    jacobian: torch.Tensor | None = None    # R, before lambda
    input_grad: torch.Tensor | None = None  # before lambda


def step_loss(model: Classifier, x: torch.Tensor, y: torch.Tensor, reg: RegConfig) -> StepLoss:
    """Cross-entropy plus the penalties of ``reg`` for pixels ``x`` (B, C, H, W), labels ``y`` (B,).

    The Jacobian penalty takes the explicit-VJP route of :mod:`jrbench.vjp_tape` when the net
    allows it (all the registry's sequential models), else autograd's double backward; both
    give the same value and gradients (tests/test_vjp_tape.py).
    """
    use_jr = "jacobian" in reg.names and reg.lambda_jr > 0
    use_ig = "input-grad" in reg.names and reg.lambda_ig > 0
    z = model.normalize(x)
    batch = x.shape[0]
    k = batch if not use_jr or reg.jr_subsample is None else min(reg.jr_subsample, batch)
    vjp = None  # v (k, C) -> J_z^T v for the first k rows
    if use_jr and not use_ig and vjp_tape.supports(model.net):
        logits, vjp = vjp_tape.forward(model.net, z.detach(), k)
    elif use_jr and k < batch and not use_ig:
        # Two forwards so that the double backward runs over the K sub-sampled rows only.
        z_jr = z[:k].detach().requires_grad_(True)
        logits_jr = model.net(z_jr)
        logits = torch.cat([logits_jr, model.net(z[k:])])
        vjp = autograd_vjp(logits_jr, z_jr, create_graph=True)
    else:
        z = z.detach().requires_grad_(use_jr or use_ig)
        logits = model.net(z)
        if use_jr:
            full = autograd_vjp(logits[:k], z, create_graph=True)
            vjp = lambda v: full(v)[:k]  # noqa: E731  (rows k: of the gradient are zero)
    ce = F.cross_entropy(logits, y)
    total = ce
    out = StepLoss(total, ce.detach(), logits.detach())
    if use_jr:
        r = 0.5 * frobenius_sq_from_vjp(vjp, k, model.num_classes, logits, reg.n_proj).mean()
        total = total + reg.lambda_jr * r
        out.jacobian = r.detach()
    if use_ig:
        (g,) = torch.autograd.grad(ce * batch, z, create_graph=True)
        ig = 0.5 * g.reshape(batch, -1).pow(2).sum(1).mean()
        total = total + reg.lambda_ig * ig
        out.input_grad = ig.detach()
    out.total = total
    return out
