"""Jacobian Frobenius norms: the exact value and the paper's random-projection estimate.

Hoffman, Roberts, Yaida, "Robust Learning with Jacobian Regularization" (2019).
For logits f(z) in R^C of an input z in R^D (per example), J = df/dz is C x D and

    ||J||_F^2 = sum_c ||e_c^T J||^2                       (exact: C vector-Jacobian products)
    ||J||_F^2 = C E_v ||v^T J||^2,  v uniform on S^{C-1}  (one VJP per projection; E[v v^T] = I/C)

Shapes: ``z`` (B, ...) with ``requires_grad``, ``logits`` (B, C) computed from it, examples
independent of each other. BatchNorm that normalizes with the batch's own statistics (train
mode) couples them; :func:`recorded_batch_stats` and :func:`frozen_batch_norm` make each such
layer the per-channel affine map it was for one batch, so that J_b depends on example b alone
(the definition the training penalty uses, :func:`jrbench.penalty.regularizers.step_loss`).
Results are per example, (B,).
Random vectors are drawn on ``logits``' device and dtype from the global RNG (training seeds
it per epoch) or from ``generator``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import UserError


@contextmanager
def cpu_input_gradient_kernels(like: torch.Tensor) -> Iterator[None]:
    """Run input-gradient passes on the CPU without oneDNN (mkldnn).

    oneDNN's backward-data kernel is slow when the layer's input has few channels (the first
    conv of an MNIST model): measured here for lenet's conv1 (1 -> 6 channels, 28x28, batch 64)
    about 8 ms against 2.6 ms for PyTorch's own kernel, while the forward pass, at 0.6 ms, is
    fastest with oneDNN. So only the VJPs run with it off. No effect on CUDA.
    """
    if like.device.type != "cpu":
        yield
        return
    # The ``enabled`` property alone (set_flags' signature changed across torch releases).
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


Vjp = Callable[[torch.Tensor], torch.Tensor]
BatchStats = dict[_BatchNorm, tuple[torch.Tensor, torch.Tensor]]  # layer -> (mean, biased var), (C,) each


def batch_statistic_norms(net: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``net`` that normalize with the statistics of the batch they see
    (train mode, or no running statistics in either mode): the ones that couple its examples.
    Eval-mode BatchNorm on running statistics is a fixed affine map and is not listed."""
    return [m for m in net.modules()
            if isinstance(m, _BatchNorm) and (m.training or (m.running_mean is None and m.running_var is None))]


@contextmanager
def recorded_batch_stats(norms: list[_BatchNorm]) -> Iterator[BatchStats]:
    """Record each layer's batch statistics in the forward pass run inside.

    Yields a dict, filled during that forward, of layer -> (mean, biased variance) over all
    dims but the channel dim 1 of the layer's input (detached; the statistics the layer
    normalizes with in that pass), in the dtype of the layer's running statistics, else of
    the input. Forward pre-hooks, removed on exit (also after an exception). A layer called
    twice in the pass is refused: its one affine map would be ambiguous.
    """
    stats: BatchStats = {}

    def record(module: _BatchNorm, args: tuple) -> None:
        if module in stats:
            raise UserError(f"the Jacobian penalty needs each train-mode BatchNorm layer called once per forward; "
                            f"{module} is called more than once (a shared layer): give each call its own layer.")
        x = args[0].detach()
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x if x.dtype in (torch.float32, torch.float64) else x.float(),
                                   dim=dims, correction=0)
        dtype = x.dtype if module.running_mean is None else module.running_mean.dtype
        stats[module] = (mean.to(dtype), var.to(dtype))

    handles = [m.register_forward_pre_hook(record) for m in norms]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def frozen_batch_norm(stats: BatchStats) -> Iterator[None]:
    """Inside, each layer of ``stats`` is the per-channel affine map it was for the recorded batch:
    y = (x - mean) / sqrt(var + eps) * weight + bias with ``stats``' mean and biased var,
    i.e. ``F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)``, so each
    example's output depends on that example alone and no running statistic changes.

    Done by the layer's own eval-mode forward on the recorded statistics: its ``training``
    flag and its ``running_mean`` / ``running_var`` buffers are swapped for the pass and the
    very same objects put back on exit (also after an exception). Gradients reach ``weight``
    and ``bias``, not the (detached) statistics.
    """
    saved = [(m, m.training, m.running_mean, m.running_var) for m in stats]
    try:
        for m, (mean, var) in stats.items():
            m.training = False
            m.running_mean, m.running_var = mean.detach(), var.detach()
        yield
    finally:
        for m, training, running_mean, running_var in saved:
            m.training = training
            m.running_mean, m.running_var = running_mean, running_var


def autograd_vjp(logits: torch.Tensor, z: torch.Tensor, create_graph: bool = False) -> Vjp:
    """v (B, C) -> v_b^T J_b (B, ...) by autograd through the graph from ``z`` to ``logits``."""
    def vjp(v: torch.Tensor) -> torch.Tensor:
        with cpu_input_gradient_kernels(z):
            (g,) = torch.autograd.grad(logits, z, grad_outputs=v, create_graph=create_graph,
                                       retain_graph=True)
        return g
    return vjp


def random_unit_vectors(shape: tuple[int, ...], like: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Vectors uniform on the unit sphere along the last dim, on ``like``'s device and dtype."""
    v = torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator)
    return v / v.norm(dim=-1, keepdim=True)


def frobenius_sq_from_vjp(vjp: Vjp, batch: int, n_classes: int, like: torch.Tensor, n_proj: int = 1,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """||J_b||_F^2 per example (B,) from a VJP v (B, C) -> v^T J (B, ...).

    ``n_proj`` = -1: exact, C products with the unit vectors e_c; otherwise the paper's
    estimate, the mean over ``n_proj`` of C ||v^T J_b||^2 with v uniform on the unit sphere,
    drawn on ``like``'s device and dtype.
    """
    def sq_norm(g: torch.Tensor) -> torch.Tensor:
        return g.reshape(g.shape[0], -1).pow(2).sum(1)

    if n_proj == 1:  # the training default, without an accumulator
        return n_classes * sq_norm(vjp(random_unit_vectors((batch, n_classes), like, generator)))
    total = like.new_zeros(batch)
    if n_proj == -1:
        for c in range(n_classes):
            e_c = like.new_zeros(batch, n_classes)
            e_c[:, c] = 1.0
            total = total + sq_norm(vjp(e_c))
        return total
    for _ in range(n_proj):
        v = random_unit_vectors((batch, n_classes), like, generator)
        total = total + n_classes * sq_norm(vjp(v))
    return total / n_proj


def frobenius_sq(logits: torch.Tensor, z: torch.Tensor, n_proj: int = 1, create_graph: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """||J_b||_F^2 per example of ``logits`` (B, C) with respect to ``z`` (B, ...): exact when
    ``n_proj`` = -1, else the random-projection estimate with ``n_proj`` vectors."""
    batch, n_classes = logits.shape
    return frobenius_sq_from_vjp(autograd_vjp(logits, z, create_graph), batch, n_classes, logits, n_proj,
                                 generator)


def frobenius_sq_exact(logits: torch.Tensor, z: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """||J_b||_F^2 per example, exactly, by C vector-Jacobian products (cost grows with C)."""
    return frobenius_sq(logits, z, -1, create_graph)


def frobenius_sq_projected(logits: torch.Tensor, z: torch.Tensor, n_proj: int = 1,
                           create_graph: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased estimate of ||J_b||_F^2 per example: mean over ``n_proj`` of C ||v^T J_b||^2."""
    return frobenius_sq(logits, z, n_proj, create_graph, generator)


def jacobian_frobenius(model: nn.Module, x: torch.Tensor, wrt: str = "normalized",
                       batch_size: int = 500) -> torch.Tensor:
    """Exact ||J_b||_F per example of a ``Classifier`` at pixels ``x`` (B, C, H, W) -> (B,).

    ``wrt="normalized"``: J = d logits / d z (the regularized one); ``"pixel"``: d logits / d x.
    """
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        with torch.enable_grad():
            if wrt == "normalized":
                z = model.normalize(xb).detach().requires_grad_(True)
                logits = model.net(z)
            elif wrt == "pixel":
                z = xb.detach().clone().requires_grad_(True)
                logits = model(z)
            else:
                raise ValueError(f"wrt must be 'normalized' or 'pixel', got {wrt!r}")
            out.append(frobenius_sq_exact(logits, z).detach().sqrt())
    return torch.cat(out)
