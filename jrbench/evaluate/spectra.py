"""Per-example input Jacobians, their singular values, and a local first-order radius.

Seed 002 (Jacobian spectrum analysis): for logits f in R^C of one example, the Jacobian
J = df/dinput is a C x D matrix; its singular values s_0 >= s_1 >= ... >= s_{C-1} (at
most C of them) say how strongly each input direction moves the logits, and the largest,
||J||_2, is the local Lipschitz constant of f in L2. Seed 003 (Lipschitz bounds): if f is
L-Lipschitz in L2 on a ball around x, no perturbation of L2 norm below
(logit gap) / (sqrt(2) L) can change the predicted class.

Two spaces (docs/jacobian-regularization.md): ``wrt="normalized"`` is d logits / dz with
z = (x - mean) / std, the Jacobian the paper regularizes; ``wrt="pixel"`` is d logits / dx
for pixels x in [0, 1]. By the chain rule J_x = J_z diag(1/std), per channel.

Models: a ``Classifier`` (``model.normalize`` with buffers ``mean``/``std``, ``model.net``),
or any ``nn.Module`` mapping pixels to logits together with an optional ``std``
(a float or a tensor broadcastable to (1, C, 1, 1)); without either, std = 1.
Examples must not interact (no batch norm in train mode): every function here runs the
model in eval mode and restores its mode afterwards. Tensors live on x's device and dtype.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import pandas as pd
import torch
from torch import nn

from ..errors import UserError
from ..models.architectures import eval_mode
from ..registry import unknown_name

SPACES = ("pixel", "normalized")
Std = Union[float, torch.Tensor, None]


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise UserError(f"batch size must be a positive whole number, got {batch_size}.")


def model_std(model: nn.Module, x: torch.Tensor, std: Std = None) -> torch.Tensor:
    """The normalization std as a (1, C, 1, 1)-broadcastable tensor on x's device and dtype.

    ``model.normalize.std`` when the model has one, else ``std``, else 1 (no normalization).
    """
    if std is None and hasattr(model, "normalize"):
        std = model.normalize.std
    if std is None:
        std = 1.0
    return torch.as_tensor(std, device=x.device, dtype=x.dtype)


def _function_and_input(model: nn.Module, x: torch.Tensor, wrt: str,
                        std: Std) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """(fn, inp) with fn(inp) = model(x) and inp the variable J is taken with respect to."""
    if wrt not in SPACES:
        raise unknown_name("Jacobian space", wrt, list(SPACES))
    if wrt == "pixel":
        return model, x
    if hasattr(model, "normalize") and hasattr(model, "net"):
        return model.net, model.normalize(x)
    s = model_std(model, x, std)
    return (lambda z: model(z * s)), x / s  # d/dz of model(std * z) at z = x / std: J_x std


def logits_and_jacobian(fn: Callable[[torch.Tensor], torch.Tensor],
                        inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, C) and the exact per-example Jacobian (B, C, D) of fn at inp (B, ...).

    C vector-Jacobian products over the whole batch (row c of every J_b at once), D the
    number of input entries per example. Needs examples that do not interact.
    """
    inp = inp.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = fn(inp)
        n_classes = logits.shape[1]
        rows = [torch.autograd.grad(logits[:, c].sum(), inp, retain_graph=c < n_classes - 1)[0]
                for c in range(n_classes)]
    return logits.detach(), torch.stack([r.flatten(1) for r in rows], dim=1)


def per_example_jacobian(model: nn.Module, x: torch.Tensor, wrt: str = "pixel",
                         std: Std = None, batch_size: int = 256) -> torch.Tensor:
    """Exact J_b = d logits_b / d input_b for pixels x (B, C_in, H, W) -> (B, C, C_in*H*W).

    ``wrt="pixel"``: d logits / dx; ``"normalized"``: d logits / dz, through ``model.net``
    for a ``Classifier`` (else through model(std * z)). Column order = x.flatten(1).
    """
    _check_batch_size(batch_size)
    out = []
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            fn, inp = _function_and_input(model, x[start:start + batch_size], wrt, std)
            out.append(logits_and_jacobian(fn, inp)[1])
    return torch.cat(out)


def _std_per_column(model: nn.Module, x: torch.Tensor, std: Std) -> torch.Tensor:
    """std expanded to one value per flattened input entry, (D,)."""
    return model_std(model, x, std).expand(1, *x.shape[1:]).reshape(-1)


def top2_gap(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top class, runner-up class, top logit - runner-up logit), each (B,)."""
    values, classes = logits.topk(2, dim=1)
    return classes[:, 0], classes[:, 1], values[:, 0] - values[:, 1]


def _spectrum_rows(sv: torch.Tensor, fro: torch.Tensor, wrt: str) -> pd.DataFrame:
    spec = sv[:, 0]
    df = pd.DataFrame({"wrt": wrt, "frobenius": fro.cpu().numpy(),
                       "spectral": spec.cpu().numpy(),
                       "stable_rank": (fro ** 2 / spec ** 2).cpu().numpy()})
    for k in range(sv.shape[1]):
        df[f"sv_{k}"] = sv[:, k].cpu().numpy()
    return df


def jacobian_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, std: Std = None,
                   batch_size: int = 256) -> pd.DataFrame:
    """Spectrum of the per-example Jacobian, two rows per example (``wrt`` pixel, normalized).

    Columns: index (position in x), label, pred, correct, wrt, frobenius (||J||_F),
    spectral (||J||_2, the largest singular value), stable_rank (||J||_F^2 / ||J||_2^2,
    between 1 and C), sv_0 .. sv_{C-1} (all singular values, descending), logit_gap
    (top logit - runner-up logit), and radius_first_order_local:
    logit_gap / (sqrt(2) ||J_x||_2), an L2 radius in PIXEL units computed from the pixel
    Jacobian, so the same value on both rows of an example. It is a LOCAL first-order figure,
    not a certificate: seed 003's bound needs a Lipschitz constant valid on the whole ball,
    and ||J_x||_2 at x alone is not one. The normalized rows come from the pixel Jacobian
    by J_z = J_x diag(std) (exact, chain rule).
    """
    _check_batch_size(batch_size)
    frames = []
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            logits, jac_x = logits_and_jacobian(model, xb)
            jac_z = jac_x * _std_per_column(model, xb, std)
            top, _, gap = top2_gap(logits)
            sv_x, sv_z = torch.linalg.svdvals(jac_x), torch.linalg.svdvals(jac_z)
            radius = gap / (math.sqrt(2.0) * sv_x[:, 0])
            head = pd.DataFrame({"index": range(start, start + xb.shape[0]),
                                 "label": y[start:start + batch_size].cpu().numpy(),
                                 "pred": top.cpu().numpy()})
            head["correct"] = head["label"] == head["pred"]
            for wrt, jac, sv in (("pixel", jac_x, sv_x), ("normalized", jac_z, sv_z)):
                rows = _spectrum_rows(sv, torch.linalg.norm(jac, dim=(1, 2)), wrt)
                rows["logit_gap"] = gap.cpu().numpy()
                rows["radius_first_order_local"] = radius.cpu().numpy()
                frames.append(pd.concat([head, rows], axis=1))
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(["index", "wrt"], ascending=[True, False], kind="stable",
                             ignore_index=True)


def spectral_norm_power_iteration(model: nn.Module, x: torch.Tensor, wrt: str = "pixel",
                                  iters: int = 200, tol: float = 1e-5, seed: int = 0,
                                  std: Std = None, batch_size: int = 256) -> torch.Tensor:
    """||J_b||_2 per example by power iteration on J^T J, for when C is large -> (B,).

    Each step is one JVP (J v) and one VJP (J^T J v), batched over the examples; the JVP
    uses the double-VJP trick (J^T u is linear in u, so d<J^T u, v>/du = J v) on a graph
    built once per batch. Start vectors v in R^D are Gaussian from a torch.Generator seeded
    by ``seed`` on x's device. The estimate ||J v|| with ||v|| = 1 is always a LOWER bound
    on ||J||_2. Stopping: after ``iters`` steps, or once the estimate of every example in
    the batch changes by at most ``tol`` relative to itself between two steps. That is a
    convergence test, not an error bound: the error shrinks like (s_1/s_0)^(2k) and is
    slow when the top two singular values are close.
    """
    _check_batch_size(batch_size)
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    start_vectors = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    out = []
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            fn, inp = _function_and_input(model, x[start:start + batch_size], wrt, std)
            v0 = start_vectors[start:start + batch_size]
            out.append(_power_iteration(fn, inp, v0, iters, tol))
    return torch.cat(out)


def _unit(v: torch.Tensor) -> torch.Tensor:
    norms = v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / norms.view(-1, *([1] * (v.dim() - 1)))


def _power_iteration(fn: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor,
                     v: torch.Tensor, iters: int, tol: float) -> torch.Tensor:
    inp = inp.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = fn(inp)
        u = torch.zeros_like(logits, requires_grad=True)
        (jt_u,) = torch.autograd.grad(logits, inp, u, create_graph=True)  # J^T u, linear in u
    v = _unit(v)
    sigma = logits.new_zeros(logits.shape[0])
    for _ in range(int(iters)):
        (jv,) = torch.autograd.grad(jt_u, u, v, retain_graph=True)  # J v, (B, C)
        (jtjv,) = torch.autograd.grad(logits, inp, jv, retain_graph=True)  # J^T J v
        new_sigma = jv.norm(dim=1)
        v = _unit(jtjv)
        converged = bool(((new_sigma - sigma).abs() <= tol * new_sigma).all())
        sigma = new_sigma
        if converged:
            break
    return sigma.detach()
