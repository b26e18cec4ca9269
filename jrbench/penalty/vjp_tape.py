"""Explicit vector-Jacobian products for sequential piecewise-linear nets (the training path).

For the Jacobian penalty of Hoffman, Roberts, Yaida (2019) each step needs g = J_z^T v for
random v (B, C) and the gradient of ||g||^2 with respect to the weights. Autograd gets it by
a create_graph VJP and a double backward. For an ``nn.Sequential`` of Linear, Conv2d, ReLU,
MaxPool2d, Flatten, Dropout and Identity layers, J_z^T v is a product of known factors,

    g = A_1^T D_1 ... A_L^T v      (A_l: the linear maps; D_l: ReLU masks, max-pool routings,
                                    dropout masks, all fixed by the forward pass)

so :func:`forward` runs the net once over the whole batch, keeps the masks and routings of
its first K rows, and returns a function v -> g built from ordinary differentiable ops
(``mm``, ``threshold_backward``, ``max_pool2d_with_indices_backward``, ``convolution_backward``).
One first-order backward of CE + lambda R then gives the same weight gradients as the double
backward (the masks have zero derivative almost everywhere, as autograd treats them too) at
a lower cost: no second forward over K rows, no create_graph bookkeeping (what it saves,
measured: docs/commands/overhead.md).

Shapes: ``z`` (B, ...) the normalized input, v (K, C), g (K, ...) like ``z[:K]``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .jacobian import Vjp

class _ConvAdjoint(torch.autograd.Function):
    """u -> A^T u for a stride-1 conv A with weight W (O, I, kh, kw) and padding (ph, pw).

    Forward and backward are all forward convolutions:
      A^T u        = conv2d(u, flip(W) with channels swapped, padding k - 1 - p)
      d/du         = A g = conv2d(g, W, padding p)
      d/dW         = the weight gradient of A itself at input g and output gradient u
    because on the CPU oneDNN's backward-data kernel is slow when a conv has one input channel
    (the first layer of an MNIST model): measured for lenet's conv1 at batch 64, 3.2 ms for
    that kernel against 1.1 ms for the forward conv above; the weight gradient through A's own
    kernel takes 0.3 ms against 1.4 ms for the same product written as a forward conv.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(u, weight)
        ctx.padding = padding
        kh, kw = weight.shape[-2:]
        ctx.adjoint_padding = (kh - 1 - padding[0], kw - 1 - padding[1])
        return F.conv2d(u, weight.flip(2, 3).transpose(0, 1), padding=ctx.adjoint_padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        u, weight = ctx.saved_tensors
        grad_u = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_u = F.conv2d(grad, weight, padding=ctx.padding)
        if ctx.needs_input_grad[1]:
            # <grad, A^T u> = <A grad, u>: the weight gradient of the conv itself with input
            # ``grad`` and output gradient ``u`` (the kernel plain SGD uses for that layer).
            grad_w = torch.ops.aten.convolution_backward(
                u, grad, weight, None, (1, 1), ctx.padding, (1, 1), False, (0, 0), 1,
                (False, True, False))[1]
        return grad_u, grad_w, None


def conv_input_adjoint(conv: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """u -> A^T u for the linear part A of a stride-1 ``conv``: the gradient w.r.t. its input.

    Lets the Jacobian VJP stop at the first conv's output and finish with :class:`_ConvAdjoint`
    (faster on the CPU, same values). None when the conv is not of that kind (strided,
    dilated, grouped, string or non-zero padding, or not a Conv2d).
    """
    if not isinstance(conv, nn.Conv2d):
        return None
    pad = conv.padding
    if (conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1
            or conv.padding_mode != "zeros" or isinstance(pad, str)):
        return None
    kh, kw = conv.kernel_size
    if pad[0] > kh - 1 or pad[1] > kw - 1:
        return None
    return lambda u: _ConvAdjoint.apply(u, conv.weight, tuple(pad))


SUPPORTED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def _conv_padding(layer: nn.Conv2d) -> tuple[int, ...] | None:
    """The conv's symmetric zero padding, or None where it has no plain adjoint here
    (reflect/replicate/circular padding; 'same' with an odd total, padded asymmetrically)."""
    if layer.padding_mode != "zeros":
        return None
    if not isinstance(layer.padding, str):
        return tuple(layer.padding)
    total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
    if layer.padding == "valid":
        return (0,) * len(total)
    return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)


def supports(net: nn.Module) -> bool:
    """True for an ``nn.Sequential`` made only of layers this module has an explicit VJP for."""
    return (isinstance(net, nn.Sequential) and type(net).forward is nn.Sequential.forward and len(net) > 0
            and all(type(layer) in SUPPORTED for layer in net)
            and not any(isinstance(layer, nn.ReLU) and layer.inplace for layer in net)
            and all(_conv_padding(layer) is not None for layer in net if isinstance(layer, nn.Conv2d)))


def _conv_vjp(layer: nn.Conv2d, inp: torch.Tensor) -> Vjp:
    """u -> A^T u for a conv's linear part, ``inp`` its (detached) input rows for the shape."""
    padding = _conv_padding(layer)
    return lambda u: torch.ops.aten.convolution_backward(
        u, inp, layer.weight, None, layer.stride, padding, layer.dilation, False,
        (0,) * len(layer.stride), layer.groups, (True, False, False))[0]


def forward(net: nn.Sequential, z: torch.Tensor, k: int) -> tuple[torch.Tensor, Vjp]:
    """Logits (B, C) of ``net`` at ``z`` and v (K, C) -> J_z^T v (K, ...) for the first K rows.

    The forward is the net's own (same values, same dropout draws); the returned function may
    be called several times (one per projection) and is differentiable in v and the weights.
    """
    steps: list[Vjp] = []
    a = z
    for i, layer in enumerate(net):
        if isinstance(layer, nn.Linear):
            out = layer(a)
            steps.append(lambda g, w=layer.weight: g @ w)
        elif isinstance(layer, nn.Conv2d):
            out = layer(a)
            adjoint = conv_input_adjoint(layer) if i == 0 else None
            steps.append(adjoint or _conv_vjp(layer, a[:k].detach()))
        elif isinstance(layer, nn.ReLU):
            out = torch.relu(a)
            kept = out[:k].detach()
            steps.append(lambda g, kept=kept: torch.ops.aten.threshold_backward(g, kept, 0))
        elif isinstance(layer, nn.MaxPool2d):
            out, idx = F.max_pool2d(a, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                    layer.ceil_mode, return_indices=True)
            steps.append(lambda g, p=layer, rows=a[:k].detach(), idx=idx[:k]:
                         torch.ops.aten.max_pool2d_with_indices_backward(
                             g, rows, _pair(p.kernel_size), _pair(p.stride or p.kernel_size), _pair(p.padding),
                             _pair(p.dilation), p.ceil_mode, idx))
        elif isinstance(layer, nn.Flatten):
            out = layer(a)
            steps.append(lambda g, shape=(k, *a.shape[1:]): g.reshape(shape))
        elif isinstance(layer, nn.Dropout):
            if layer.training and layer.p > 0:
                mask = F.dropout(torch.ones_like(a), layer.p, True)  # scaled keep-mask, one draw
                out = a * mask
                steps.append(lambda g, m=mask[:k]: g * m)
            else:
                out = a
        elif isinstance(layer, nn.Identity):
            out = a
        else:  # pragma: no cover - supports() guards this
            raise TypeError(f"no explicit VJP for {type(layer).__name__}")
        a = out

    def vjp(v: torch.Tensor) -> torch.Tensor:
        g = v
        for step in reversed(steps):
            g = step(g)
        return g

    return a, vjp


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)
