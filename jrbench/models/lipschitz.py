"""Certified upper bounds on the L2 Lipschitz constant of a classifier, pixels x -> logits.

The model is walked as a chain of layers (:func:`layer_chain`): its ``normalize`` when it has one,
then its ``net`` with nested ``nn.Sequential`` flattened (a layer listed twice runs twice; a subclass
with its own ``forward`` is not a chain), and the chain must give the model's logits on a probe
input. The chain's constant is at most the product of its layers' constants (Tsuzuku, Sato, Sugiyama 2018, "Lipschitz-margin training"; Gouk et al.
2021). Each layer's constant is bounded from above, in eval mode (dropout off, batch norm on its
running statistics; the model's modes are restored after):

- Normalize: max over channels of 1 / std. nn.Linear: its largest singular value (float64, exact).
- nn.Conv2d (zero padding, dilation 1, groups 1, any stride), at its input shape (C, H, W): the
  padded, strided convolution is crop o (stride-s circular convolution on an N_h x N_w grid, N a
  multiple of s with N >= H + padding) o embedding. After the polyphase rearrangement of its input
  (s_h s_w C channels on an (N/s) grid: a permutation) the strided circular convolution is a stride-1
  one, whose singular values are exactly those of the c_out x (s_h s_w c_in) matrices K^(w) at the
  (N_h/s_h)(N_w/s_w) DFT frequencies (Sedghi, Gupta, Long 2019). Bound: max_w sigma_max(K^(w)) in
  float64, times (1 + 1e-6) for rounding. Against the dense operator's norm on small inputs (7x7,
  8x9; kernels 1-5, strides 1-3, paddings 0-2) it was at most 1.46 times it, the worst for 5x5
  kernels on 7x7 inputs, where the border matters most (tests/test_lipschitz.py).
- nn.AvgPool2d: sqrt(k_h k_w ceil(k_h/s_h) ceil(k_w/s_w)) / divisor (Cauchy-Schwarz; each input lies
  in at most ceil(k/s) windows per axis); 1 for stride 1, 1/k for non-overlapping k x k windows.
- nn.MaxPool2d: sqrt(n_h n_w), n = min(k, ceil(((k - 1) d + 1) / s)) windows per axis can hold one
  input, each window's max moving by at most the largest change inside it; 1 without overlap.
- eval BatchNorm: max |gamma / sqrt(running_var + eps)|. ReLU, Hardtanh (ReLU6), Tanh: 1;
  LeakyReLU(a >= 0): max(1, a); Sigmoid: 1/4; Flatten, Unflatten, Identity, Dropout: 1.
- The 1-Lipschitz layers of :mod:`jrbench.models.onelip`: an AOL layer enters the chain as the
  ordinary nn.Linear / nn.Conv2d it computes (its ``plain()``), bounded by the rules above (at most
  1 up to rounding); MaxMin: 1 (it sorts pairs).
Anything else raises :class:`UserError` naming the layer's path and class.

By construction (:func:`construction_bound`): a network of layers that are 1-Lipschitz whatever
their weights (AOL, MaxMin, ReLU, non-overlapping max pooling, identity maps) has the constant of
its normalization, max 1/std, with no layer's norm computed; its certified L2 radius is the logit
gap over sqrt(2) times that constant (each f_y - f_j is sqrt(2) L-Lipschitz).

Certified L2 radius (pixel units): f_y - f_j = (W_y - W_j) g(x) + (b_y - b_j), with g the chain below
the final nn.Linear, so L_yj = ||W_y - W_j||_2 Lip(g) bounds its slope and no perturbation smaller
than min_{j != y} (f_y - f_j) / L_yj changes the class. Without a final Linear, L_yj = sqrt(2) Lip(f).
The bounds hold for the network in exact arithmetic with the model's weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .architectures import Classifier, Normalize, PixelClassifier, eval_mode
from .onelip import ONE_LIPSCHITZ, REPARAMETRIZED, MaxMin

CONV_ROUNDING = 1e-6  # relative slack on the float64 FFT bound of a convolution
SUPPORTED = ("Linear, Conv2d, AOLLinear, AOLConv2d, ReLU, LeakyReLU, Hardtanh, Tanh, Sigmoid, MaxMin, MaxPool2d, "
             "AvgPool2d, BatchNorm with running statistics, Flatten, Unflatten, Identity and Dropout")
_IDENTITY = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
             nn.Dropout3d, nn.AlphaDropout)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Hardtanh, nn.Tanh, nn.Sigmoid, MaxMin)  # monotone (MaxMin: in each input)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Layer(NamedTuple):
    """One link of a model's chain: its dotted path, rule kind, module and input shape (no batch)."""

    path: str
    kind: str
    module: nn.Module
    input_shape: tuple[int, ...]


@dataclass
class LayerBound:
    path: str
    kind: str
    bound: float  # certified upper bound of the layer's L2 Lipschitz constant at input_shape
    input_shape: tuple[int, ...]
    module: nn.Module | None


@dataclass
class LipschitzBound:
    layers: list[LayerBound]
    total: float  # certified upper bound of the L2 Lipschitz constant of pixels -> logits
    below_last: float  # product of the bounds of all layers but a final nn.Linear (else total)
    last_weight: torch.Tensor | None  # (C, F) float64 CPU weight of the final nn.Linear, else None
    num_classes: int = 0  # C, the logits' width


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def layer_kind(m: nn.Module, ibp: bool = False) -> tuple[str | None, str]:
    """(kind, "") when a rule covers ``m``, else (None, why). ``ibp`` also admits what interval
    bounds handle but the Lipschitz rules do not (conv dilation and groups, any average pooling)."""
    name = type(m).__name__
    if isinstance(m, Normalize):
        return "normalize", ""
    if isinstance(m, nn.Linear):
        return "linear", ""
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            return None, f"{name} with padding_mode '{m.padding_mode}'"
        if not ibp and (_pair(m.dilation) != (1, 1) or m.groups != 1):
            return None, f"{name} with dilation {m.dilation} and groups={m.groups}"
        return "conv2d", ""
    if isinstance(m, nn.MaxPool2d):
        return ("maxpool2d", "") if not m.return_indices else (None, f"{name} with return_indices=True")
    if isinstance(m, nn.AvgPool2d):
        if not ibp and (m.ceil_mode or (not m.count_include_pad and _pair(m.padding) != (0, 0))):
            return None, f"{name} with ceil_mode or count_include_pad=False (windows of varying size)"
        return "avgpool2d", ""
    if isinstance(m, _BATCHNORMS):
        if m.running_var is None:
            return None, f"{name} without running statistics (batch statistics even in eval mode)"
        return "batchnorm", ""
    if isinstance(m, _ACTIVATIONS):
        if isinstance(m, nn.LeakyReLU) and m.negative_slope < 0:
            return None, f"{name} with a negative slope (not monotone)"
        return "activation", ""
    if isinstance(m, _IDENTITY):
        return "identity", ""
    if name == "ExportedNet":
        return None, "ExportedNet: a torch.export program is opaque"
    if any(True for _ in m.children()):
        return None, f"{name}: sub-modules that are not an nn.Sequential chain"
    return None, name


def _is_chain(module: nn.Module) -> bool:
    """An ``nn.Sequential`` that runs its children in order: not a subclass with its own forward
    (a residual block written as one is not a chain)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _leaves(module: nn.Module, path: str, plain: bool = True):
    """(path, layer) in the order the chain runs them; a layer used twice comes twice (as
    ``nn.Sequential.forward`` runs it twice), which ``named_children`` would hide. With ``plain``
    an AOL layer comes as the ordinary layer it computes (a new module, not the model's)."""
    if _is_chain(module):
        for name, child in module._modules.items():
            if child is not None:
                yield from _leaves(child, f"{path}.{name}" if path else name, plain)
    elif plain and isinstance(module, REPARAMETRIZED):
        yield path, module.plain()
    else:
        yield path, module


def layer_chain(model: nn.Module, flag: str = "--lipschitz", ibp: bool = False) -> list[Layer]:
    """The model's layers in order with their input shapes (a forward pass of zeros in eval mode);
    :class:`UserError` naming the first layer without a rule (``flag`` names the certificate)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise UserError(f"certify {flag} needs a jrbench model with an input_shape (a Classifier or "
                        f"PixelClassifier), not a {type(model).__name__}.")
    net = getattr(model, "net", model)
    leaves = list(_leaves(net, "net" if net is not model else ""))
    if isinstance(getattr(model, "normalize", None), Normalize):
        leaves.insert(0, ("normalize", model.normalize))
    kinds = []
    for path, m in leaves:
        kind, why = layer_kind(m, ibp)
        if kind is None:
            raise UserError(f"certify {flag} has no rule for layer {path or 'the model'} ({why}); it "
                            f"bounds chains (nested nn.Sequential) of {SUPPORTED} layers.")
        kinds.append(kind)
    probe = _probe(model)
    chain, x = [], probe
    with eval_mode(model), torch.no_grad():
        for (path, m), kind in zip(leaves, kinds):
            chain.append(Layer(path, kind, m, tuple(x.shape[1:])))
            x = m(x)
        expected = model(probe)
    values = probe.device.type != "meta"  # a model on the meta device (checked before it is built): shapes only
    if x.shape != expected.shape or (values and not torch.allclose(x, expected, rtol=1e-4, atol=1e-5)):
        raise UserError(f"certify {flag}: the model's forward is not the chain of its layers (on a probe input "
                        f"they differ {'by ' + format((x - expected).abs().max().item(), '.3g') if x.shape == expected.shape else 'in shape'}"
                        f"); it bounds chains (nested nn.Sequential) of {SUPPORTED} layers, not models that "
                        "add, reuse or reorder them in forward.")
    return chain


def _probe(model: nn.Module) -> torch.Tensor:
    """A batch of two fixed pseudo-random inputs in [0, 1] on the model's device, in its floating dtype."""
    ref = next(iter(model.parameters()), next(iter(model.buffers()), torch.zeros(())))
    x = torch.rand((2, *model.input_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else torch.float32)


def supports(model: nn.Module) -> str | None:
    """None when :func:`lipschitz_bound` can bound ``model``, else the :class:`UserError` message."""
    try:
        layer_chain(model)
    except UserError as e:
        return str(e)
    return None


def _one_lipschitz_problem(path: str, m: nn.Module) -> str | None:
    """Why layer ``m`` is not 1-Lipschitz in L2 by construction (None when it is)."""
    if isinstance(m, ONE_LIPSCHITZ + _IDENTITY) or type(m) is nn.ReLU:
        return None
    if isinstance(m, nn.MaxPool2d):
        ks, ss, ds = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.dilation)
        if ds == (1, 1) and all(s >= k for k, s in zip(ks, ss)) and not m.return_indices:
            return None  # disjoint windows: each output moves by at most the largest change in its window
        return f"{path} (MaxPool2d with overlapping windows)"
    return f"{path or 'the model'} ({type(m).__name__})"


ONE_LIPSCHITZ_LAYERS = ("AOLLinear, AOLConv2d, MaxMin, ReLU, MaxPool2d with disjoint windows, Flatten, Unflatten, "
                        "Identity and Dropout")


def construction_problem(model: nn.Module, flag: str = "--one-lipschitz") -> str | None:
    """None when ``model`` is a jrbench classifier (a :class:`Classifier` or :class:`PixelClassifier`,
    whose forward is its ``net`` after its normalization) whose ``net`` is a chain (nested
    nn.Sequential) of layers 1-Lipschitz by construction; else the :class:`UserError` message. Checks
    the layers' types only (no forward pass: cheap enough for every training step, and models on the
    meta device pass)."""
    if not isinstance(model, (Classifier, PixelClassifier)):
        return (f"{flag} needs a jrbench model (a Classifier or PixelClassifier) built from 1-Lipschitz layers, "
                f"not a {type(model).__name__}.")
    for path, m in _leaves(model.net, "net", plain=False):
        why = _one_lipschitz_problem(path, m)
        if why is not None:
            return (f"{flag} needs a network built from layers that are 1-Lipschitz by construction (models "
                    f"aol-mlp, aol-lenet: chains of {ONE_LIPSCHITZ_LAYERS}); layer {why} of model "
                    f"'{getattr(model, 'name', '?')}' is not one"
                    + (" (--lipschitz bounds such a model by the product of its layers' norms)." if flag == "--one-lipschitz"
                       else "."))
    return None


def construction_constant(model: nn.Module, flag: str = "--one-lipschitz") -> torch.Tensor:
    """The L2 Lipschitz constant of pixels -> logits that ``model`` has by construction, as a 0-d
    tensor on the model's device (no host read): the norm of its normalization, max over channels
    of 1/std, or 1 without one (every other layer is 1-Lipschitz whatever its weights).
    :class:`UserError` (:func:`construction_problem`) for a model that is not built so."""
    problem = construction_problem(model, flag)
    if problem is not None:
        raise UserError(problem)
    if isinstance(model, PixelClassifier):
        ref = next(iter(model.parameters()), torch.zeros(()))
        return torch.ones((), dtype=ref.dtype, device=ref.device)
    return (1 / model.normalize.std.detach().abs()).max()


def construction_bound(model: nn.Module, flag: str = "--one-lipschitz") -> float:
    """:func:`construction_constant` for a certificate: computed in float64 from the stored std and
    rounded up (one float), so it is at least the exact constant."""
    construction_constant(model, flag)  # the checks
    if isinstance(model, PixelClassifier):
        return 1.0
    inverse = 1 / model.normalize.std.detach().double().abs().cpu()
    return float(torch.nextafter(inverse, torch.full_like(inverse, math.inf)).max())


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Total zero padding (both sides) per axis."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        return tuple(d * (k - 1) for d, k in zip(_pair(conv.dilation), conv.kernel_size))
    return tuple(2 * p for p in _pair(conv.padding))


def conv2d_bound(conv: nn.Conv2d, input_shape: tuple[int, ...]) -> float:
    """Certified upper bound of the L2 operator norm of ``conv`` (no bias) on inputs of shape
    (C, H, W): the polyphase FFT bound of the module docstring (float64, exact up to 1e-6)."""
    (h, w), (kh, kw), (sh, sw) = input_shape[-2:], conv.kernel_size, conv.stride
    ph, pw = _conv_padding(conv)
    mh, mw = -(-(h + ph) // sh), -(-(w + pw) // sw)  # grid N = s M >= H + padding: no wrap-around
    qh, qw = -(-kh // sh), -(-kw // sw)
    weight = F.pad(conv.weight.detach().double(), (0, qw * sw - kw, 0, qh * sh - kh))
    c_out, c_in = weight.shape[:2]
    poly = weight.reshape(c_out, c_in, qh, sh, qw, sw).permute(0, 1, 3, 5, 2, 4)
    poly = poly.reshape(c_out, c_in * sh * sw, qh, qw)
    symbol = torch.fft.rfft2(poly, s=(mh, mw)).permute(2, 3, 0, 1)  # real kernel: half the frequencies
    rows = max(1, (1 << 27) // max(1, symbol[0].numel() * 16))  # about 128 MB of matrices at a time
    sigma = max(float(torch.linalg.matrix_norm(part, ord=2).max()) for part in symbol.split(rows))
    return sigma * (1 + CONV_ROUNDING)


def _bn_scale(bn: nn.Module) -> torch.Tensor:
    scale = (bn.running_var.detach().double() + bn.eps).rsqrt()
    return scale * bn.weight.detach().double() if bn.weight is not None else scale


def _layer_bound(layer: Layer) -> float:
    m, kind = layer.module, layer.kind
    if kind == "normalize":
        return float((1 / m.std.detach().double()).abs().max())
    if kind == "linear":
        return float(torch.linalg.matrix_norm(m.weight.detach().double(), ord=2))
    if kind == "conv2d":
        return conv2d_bound(m, layer.input_shape)
    if kind == "batchnorm":
        return float(_bn_scale(m).abs().max())
    if kind == "avgpool2d":
        (kh, kw), (sh, sw) = _pair(m.kernel_size), _pair(m.stride)
        divisor = m.divisor_override or kh * kw
        return math.sqrt(kh * kw * -(-kh // sh) * -(-kw // sw)) / divisor
    if kind == "maxpool2d":
        ks, ss, ds = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
        return math.sqrt(math.prod(min(k, -(-((k - 1) * d + 1) // s)) for k, s, d in zip(ks, ss, ds)))
    if isinstance(m, nn.Sigmoid):
        return 0.25
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, float(m.negative_slope))
    return 1.0  # ReLU, Hardtanh, Tanh; identity maps


def layer_bounds(model: nn.Module) -> list[LayerBound]:
    """Every layer's certified L2 Lipschitz bound at its input shape (from ``model.input_shape``)."""
    chain = layer_chain(model)
    with eval_mode(model), torch.no_grad():
        return [LayerBound(l.path, l.kind, _layer_bound(l), l.input_shape, l.module) for l in chain]


def final_linear(layers) -> int | None:
    """Index of the final layer when it is an nn.Linear (trailing identity maps skipped), else None."""
    kinds = [l.kind for l in layers]
    last = max((i for i, k in enumerate(kinds) if k != "identity"), default=None)
    return last if last is not None and kinds[last] == "linear" else None


def lipschitz_bound(model: nn.Module) -> LipschitzBound:
    """The certified L2 Lipschitz bound of pixels -> logits, with the split at a final nn.Linear."""
    layers = layer_bounds(model)
    total = math.prod(l.bound for l in layers)
    last = final_linear(layers)
    if last is None:
        classes = getattr(model, "num_classes", None)
        if classes is None:
            with eval_mode(model), torch.no_grad():
                classes = model(_probe(model)).shape[-1]
        return LipschitzBound(layers, total, total, None, int(classes))
    below = math.prod(l.bound for i, l in enumerate(layers) if i != last)
    weight = layers[last].module.weight.detach().double().cpu()
    return LipschitzBound(layers, total, below, weight, weight.shape[0])


def pairwise_lipschitz(bound: LipschitzBound) -> torch.Tensor:
    """(C, C) float64 CPU: L_yj bounds the L2 Lipschitz constant of f_y - f_j; 0 on the diagonal."""
    if bound.last_weight is None:
        c = bound.num_classes
        return math.sqrt(2) * bound.total * (1 - torch.eye(c, dtype=torch.float64))
    w = bound.last_weight
    return torch.cdist(w[None], w[None])[0].fill_diagonal_(0) * bound.below_last


def strictly_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the label's logit is strictly the largest (ties count as misclassified)."""
    own = logits.gather(1, labels.long().view(-1, 1))
    others = logits.scatter(1, labels.long().view(-1, 1), -math.inf).amax(1, keepdim=True)
    return (own > others).view(-1)


def certified_radius_l2(bound: LipschitzBound, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) float64 CPU certified L2 radii in pixel units: min_{j != y} (f_y - f_j) / L_yj for
    correctly classified examples (+inf when no pair can change), 0 for misclassified ones.
    ``logits`` (N, C) are the model's at the examples, ``labels`` (N,) their classes."""
    pair = pairwise_lipschitz(bound)
    f, y = logits.detach().double().cpu(), labels.detach().long().cpu().view(-1)
    if f.dim() != 2 or f.shape[1] != pair.shape[0] or f.shape[0] != y.shape[0]:
        raise UserError(f"certified_radius_l2 needs logits (N, {pair.shape[0]}) and N labels; "
                        f"got logits {tuple(f.shape)} and {y.shape[0]} labels.")
    gap, slope = f.gather(1, y[:, None]) - f, pair[y]
    ratio = torch.where(slope > 0, gap / slope, math.inf).scatter(1, y[:, None], math.inf)
    return torch.where(strictly_correct(f, y), ratio.amin(1), 0.0)


def _conv_maps(conv: nn.Conv2d, input_shape: tuple[int, ...]):
    if conv.padding_mode != "zeros":
        raise UserError(f"power_iteration needs zero padding; this Conv2d has '{conv.padding_mode}'.")
    (h, w), ks, ss, ds = input_shape[-2:], conv.kernel_size, _pair(conv.stride), _pair(conv.dilation)
    pads = [t // 2 for t in _conv_padding(conv)] if isinstance(conv.padding, str) else _pair(conv.padding)
    if isinstance(conv.padding, str) and any(t % 2 for t in _conv_padding(conv)):
        raise UserError("power_iteration supports padding='same' only with odd kernels (even padding).")
    extra = [n - ((((n + 2 * p - d * (k - 1) - 1) // s) * s) - 2 * p + d * (k - 1) + 1)
             for n, p, d, k, s in zip((h, w), pads, ds, ks, ss)]  # output_padding of the adjoint

    def forward(u):
        return F.conv2d(u, conv.weight, None, ss, pads, ds, conv.groups)

    def adjoint(v):
        return F.conv_transpose2d(v, conv.weight, None, ss, pads, extra, conv.groups, ds)
    return forward, adjoint


def power_iteration(module: nn.Module, input_shape: tuple[int, ...], u: torch.Tensor | None = None,
                    iters: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate from below of the L2 operator norm of an nn.Linear's weight (``input_shape`` (F,))
    or an nn.Conv2d (its bias ignored) at ``input_shape`` (C, H, W) (Miyato et al. 2018; Gouk et al. 2021).

    ``iters`` steps u <- A^T A u / ||A^T A u|| (the adjoint of a convolution is conv_transpose2d
    with the output_padding that restores the input shape), then sigma = ||A u|| with ||u|| = 1, a
    lower bound of ||A||_2 up to rounding. sigma is differentiable in the weights (u held fixed);
    keep the returned u (shape (1, *input_shape), detached) and pass it back to continue."""
    if isinstance(module, nn.Linear):
        weight = module.weight
        forward, adjoint = (lambda t: t @ weight.T), (lambda t: t @ weight)
    elif isinstance(module, nn.Conv2d):
        weight = module.weight
        forward, adjoint = _conv_maps(module, tuple(input_shape))
    else:
        raise UserError(f"power_iteration has no rule for a {type(module).__name__} (Linear or Conv2d).")
    shape = (1, *input_shape)
    if u is None:
        u = torch.randn(shape, device=weight.device, dtype=weight.dtype)
    u = u.detach().to(weight).reshape(shape)
    with torch.no_grad():
        u = u / u.norm().clamp_min(torch.finfo(u.dtype).tiny)
        for _ in range(iters):
            v = adjoint(forward(u))
            n = v.norm()
            u = torch.where(n > 0, v / n.clamp_min(torch.finfo(u.dtype).tiny), u)
    return forward(u).norm(), u
