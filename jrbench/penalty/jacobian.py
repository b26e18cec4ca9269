"""Jacobian Frobenius norms: the exact value and the paper's random-projection estimate.

Hoffman, Roberts, Yaida, "Robust Learning with Jacobian Regularization" (2019).
For logits f(z) in R^C of an input z in R^D (per example), J = df/dz is C x D and

    ||J||_F^2 = sum_c ||e_c^T J||^2                       (exact: C vector-Jacobian products)
    ||J||_F^2 = C E_v ||v^T J||^2,  v uniform on S^{C-1}  (one VJP per projection; E[v v^T] = I/C)

Shapes: ``z`` (B, ...) with ``requires_grad``, ``logits`` (B, C) computed from it, examples
independent of each other (no batch norm in train mode). Results are per example, (B,).
Random vectors are drawn on ``logits``' device and dtype from the global RNG (training seeds
it per epoch) or from ``generator``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


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
