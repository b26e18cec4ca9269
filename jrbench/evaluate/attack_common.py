"""What every attack shares: the float64 loss wrapper, seeding, batching and the guards.

Used by :mod:`jrbench.evaluate.attacks` (noise, PGD, FGSM) and :mod:`jrbench.evaluate.autoattack` (APGD-CE,
APGD-T, FAB-T, Square); neither imports the other's internals from here on. Shapes: images x
(N, C, H, W) float pixels in [0, 1], labels y (N,) integers; per-example results (N,) on x's
device, batches moved to the model's device and dtype.

- :class:`Float64Logits` / :func:`loss_model`: the module a gradient attack ascends, float64
  logits for loss 'ce64' (see "Numerics" in :mod:`jrbench.evaluate.attacks`), the model for 'ce32';
  :func:`mean_loss_model` for attacks on the batch-mean loss (PGD, FGSM): each example's own
  gradient, whatever the batch size;
- :func:`derive_seed`: a seed from the run's seed and names (an attack, a norm, an example);
- :class:`PerExampleDraws`: torchattacks' random start drawn per example from its own
  generator, so no example's start depends on the batch it shares (PGD);
- :func:`seeded_global_rng`: the global RNG seeded for a block (AutoAttack's batches, and any
  randomness of the model itself), the caller's RNG state left untouched;
- :func:`check_inputs` (user input: pixels in [0, 1]) and :func:`check_in_ball` (every
  adversarial batch: in its eps ball and in [0, 1], else :class:`AttackBoundsError`);
- :func:`correct_mask`: clean correctness, the start of every robust-accuracy count.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .attack_config import LOSSES
from ..errors import UserError
from ..registry import unknown_name


class AttackBoundsError(RuntimeError):
    """An adversarial example left its eps ball or [0, 1]: a bug in jrbench or torchattacks."""


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


def loss_model(model: nn.Module, loss: str) -> nn.Module:
    """The module torchattacks attacks: float64 logits for 'ce64', the model for 'ce32'."""
    if loss not in LOSSES:
        raise unknown_name("loss", loss, list(LOSSES))
    return Float64Logits(model) if loss == "ce64" else model


class _TimesBatchSize(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by the batch size (dim 0)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * grad.shape[0]


class PerExampleFloat64Logits(Float64Logits):
    """:class:`Float64Logits` for an attack that ascends the batch *mean* of the cross-entropy
    (torchattacks' PGD, PGDL2 and FGSM): the backward multiplies the float64 logit gradient by
    the batch size B before it is cast back to the model's dtype, so each example sees the
    gradient of its own loss, (softmax - onehot), whatever the batch. Without it the 1/B
    factor decides, for a confident example, whether its float32 gradient underflows, and
    the batch size changes results. Forward values are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _TimesBatchSize.apply(self.model(x).double())


def mean_loss_model(model: nn.Module, loss: str) -> nn.Module:
    """The module an attack on the batch-mean cross-entropy attacks:
    :class:`PerExampleFloat64Logits` for 'ce64', the model as it is for 'ce32' (torchattacks as
    is, gradients scaled by 1/batch size)."""
    if loss not in LOSSES:
        raise unknown_name("loss", loss, list(LOSSES))
    return PerExampleFloat64Logits(model) if loss == "ce64" else model


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global CPU RNG (and ``device``'s, if CUDA) for the block, then restore it and
    every CUDA device's (``torch.manual_seed``, which torchattacks' AutoAttack components call,
    seeds them all)."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
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


# Random functions that draw from the global RNG; PerExampleDraws refuses them while it serves
# a start (the start must come from the examples' own generators).
_GLOBAL_DRAWS = {torch.Tensor.uniform_, torch.Tensor.normal_}
_OTHER_RANDOM = {
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.rand_like, torch.randn_like,
    torch.randint_like, torch.bernoulli, torch.multinomial, torch.normal, torch.poisson,
    torch.Tensor.random_, torch.Tensor.bernoulli_, torch.Tensor.bernoulli,
    torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.cauchy_,
    torch.Tensor.log_normal_, torch.Tensor.multinomial,
}


class PerExampleDraws(TorchFunctionMode):
    """Serve an attack's random start per example, leaving the attack's code as it is.

    Inside the block, the first ``n_draws`` in-place draws from the global RNG
    (``Tensor.uniform_(a, b)`` or ``Tensor.normal_(mean, std)`` without a generator, as
    torchattacks' PGD and PGDL2 make their random start) on a tensor of shape (B, ...) fill
    row i from example i's own CPU ``torch.Generator``, seeded with ``seeds[i]`` once when the
    block opens: float32 on the CPU, then copied to the tensor's device and dtype (as
    :func:`jrbench.evaluate.attacks.noise_draws`), so example i's start depends on its seed
    alone: not on the batch, the batch size, the other examples or the device. Later calls
    pass through (randomness of the model itself still uses the global RNG). A draw of
    another shape, or any other random function before the start is served, raises
    RuntimeError: the attack no longer makes its start the way this class expects (a
    torchattacks change), and would otherwise draw it from the global RNG per batch."""

    def __init__(self, seeds: Sequence[int], n_draws: int):
        super().__init__()
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.n_draws, self.served = n_draws, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.served == self.n_draws or kwargs.get("generator") is not None:
            return func(*args, **kwargs)
        if func in _GLOBAL_DRAWS:
            target = args[0]
            if target.dim() == 0 or target.shape[0] != len(self.generators):
                raise RuntimeError(
                    f"the attack drew a random tensor of shape {tuple(target.shape)} for a batch "
                    f"of {len(self.generators)} examples; expected one row per example")
            kwargs = {k: v for k, v in kwargs.items() if k != "generator"}  # None if present
            rows = [getattr(torch.empty(target.shape[1:]), func.__name__)(
                *args[1:], **kwargs, generator=gen) for gen in self.generators]
            target.copy_(torch.stack(rows) if rows else torch.empty(target.shape))
            self.served += 1
            return target
        if func in _OTHER_RANDOM:
            raise RuntimeError(f"the attack drew its start with {func.__name__}, not with "
                               "in-place uniform_/normal_: per-example starts need updating")
        return func(*args, **kwargs)


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer; ``fallback`` if it has none."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return fallback


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if none): batches are
    cast to it."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def index_batches(idx: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``idx`` (a 1-d index tensor) in consecutive chunks of up to ``batch_size``."""
    return list(idx.split(batch_size)) if len(idx) else []




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
    device, dtype = model_device(model, x.device), model_dtype(model)
    out = torch.empty(len(x), dtype=torch.bool, device=x.device)
    for idx in index_batches(torch.arange(len(x), device=x.device), batch_size):
        pred = model(x[idx].to(device, dtype)).argmax(1)
        out[idx] = (pred == y[idx].to(device)).to(x.device)
    return out


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
