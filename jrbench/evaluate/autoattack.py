"""AutoAttack, the standard version, composed from torchattacks' components.

Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, arXiv:2003.01690; reference code
https://github.com/fra31/auto-attack. Norms: 'linf' and 'l2'. Units: pixels in [0, 1];
eps is the radius of the ball in pixel units. Shapes: x (N, C, H, W) float pixels, y (N,)
integer labels; results are per example, (N,).

The standard version runs four attacks in turn, each only on the examples still unbroken
(classified correctly clean and by every earlier component), with the paper's settings:

===========  =====================================  ==========================================
component    torchattacks class                     settings
===========  =====================================  ==========================================
apgd-ce      ``APGD(loss='ce')``                    100 iterations, 1 restart, rho 0.75
apgd-t       ``APGDT`` (targeted DLR loss)          100 iterations, 1 restart, ``n_targets``
fab-t        ``FAB(multi_targeted=True)``           100 iterations, 1 restart, ``n_targets``,
                                                    alpha_max 0.1, eta 1.05, beta 0.9
square       ``Square(loss='margin')``              5,000 queries, 1 restart, p_init 0.8,
                                                    the reference code's p schedule
                                                    (``resc_schedule=False``)
===========  =====================================  ==========================================

``n_targets`` (the number of target classes of APGD-T and FAB-T, the classes with the
largest logits after the true one) is 9 in the standard version; :func:`resolve_targets`
defaults it to 9 for data sets with at least 10 classes and asks for it otherwise. This is
*not* torchattacks' ``AutoAttack`` class, which runs 10 iterations by default (torchattacks
issue #196).

Numerics. With ``loss='ce64'`` APGD-CE and APGD-T attack the model's logits cast to
float64 (:class:`jrbench.evaluate.attack_common.Float64Logits`), so the cross-entropy of a confident
example keeps a non-zero gradient (the DLR loss is a ratio of logit differences and is
unchanged, only computed in float64). FAB and Square use the logits as they are. On the
CPU, every input gradient is taken with oneDNN's convolution kernels off for the backward
pass only (:class:`InputGradModel`): its backward-data kernel is slow for convolutions
with few input channels (measured: docs/commands/attack.md); and the
gradient-free forward passes (all of Square's queries) take non-overlapping max-pooling as
the maximum of strided views (:func:`fast_forward_copy`), several times faster than
``max_pool2d`` on the CPU. Both give the same values; whether an example is broken is decided
by the model itself.

Randomness: seeded per batch, so the batch size can change results. Every component seeds
the global RNG itself (``torch.manual_seed(seed)``); each batch of each component runs with
seed derive_seed(seed, 'autoattack', component, norm, batch) inside ``torch.random.fork_rng``,
so results are deterministic by seed and batch size, and the caller's RNG state is left
untouched. The draws are made on the CPU (``torch.rand(shape)``, then moved), so CPU
and CUDA draw alike. The seed does not depend on eps (common random numbers across the grid,
as for PGD). Unlike PGD's starts (:class:`jrbench.evaluate.attack_common.PerExampleDraws`),
the draws are not per example, and cannot cheaply be: APGD-CE and APGD-T draw start points
for the whole batch at once (APGD-T again for each target class, over whichever examples are
still unbroken), and Square draws each query's square position (in L-infinity also its
signs) once for all the examples of its batch. So an example's result depends on the batch
it is attacked in, and ``batch_size`` can change AutoAttack's accuracy. FAB-T with its one
restart draws nothing.

Every adversarial batch is checked with :func:`jrbench.evaluate.attack_common.check_in_ball` (in its ball
and in [0, 1]) and re-classified by the model itself before an example counts as broken.
"""
from __future__ import annotations

import contextlib
import copy
import io
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .attack_common import (check_in_ball, correct_mask, derive_seed, index_batches, loss_model, model_device, model_dtype, seeded_global_rng)
from ..device import sync_device
from .attack_config import NORMS
from ..errors import UserError
from ..penalty.jacobian import cpu_input_gradient_kernels
from ..models.architectures import eval_mode
from ..registry import unknown_name

COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
ATTACK_NAMES = {name: f"aa-{name}" for name in COMPONENTS}  # attacks.csv names
STANDARD_TARGETS = 9       # target classes of APGD-T and FAB-T in the standard version
APGD_STEPS = 100           # iterations of APGD-CE and APGD-T
APGD_RHO = 0.75            # APGD's step-size halving threshold
FAB_STEPS = 100            # iterations of FAB-T
FAB_ALPHA_MAX, FAB_ETA, FAB_BETA = 0.1, 1.05, 0.9
SQUARE_QUERIES = 5000      # Square's query budget per example
SQUARE_P_INIT = 0.8        # Square's initial share of pixels changed per query
RESTARTS = 1               # every component, standard version
MIN_CLASSES = 4            # APGD-T's targeted DLR loss reads the 4th largest logit
_TA_NORM = {"linf": "Linf", "l2": "L2"}


def resolve_targets(num_classes: int, aa_targets: int | None) -> int:
    """The number of target classes of APGD-T and FAB-T for a data set of ``num_classes``.

    None means the standard 9, which needs at least 10 classes; with fewer, the user must
    say how many (1 to num_classes - 1). Raises :class:`UserError` otherwise."""
    if num_classes < MIN_CLASSES:
        raise UserError(
            f"AutoAttack needs at least {MIN_CLASSES} classes (APGD-T's targeted DLR loss uses "
            f"the 4th largest logit); this data set has {num_classes}.")
    if aa_targets is None:
        if num_classes < STANDARD_TARGETS + 1:
            raise UserError(
                f"AutoAttack's standard version attacks {STANDARD_TARGETS} target classes, but "
                f"this data set has only {num_classes} classes: say how many targets APGD-T and "
                f"FAB-T should attack with --aa-targets N (1 to {num_classes - 1}; "
                f"{num_classes - 1} attacks every other class).")
        return STANDARD_TARGETS
    if isinstance(aa_targets, bool) or not isinstance(aa_targets, int) \
            or not 1 <= aa_targets <= num_classes - 1:
        raise UserError(f"aa_targets (--aa-targets) must be an integer from 1 to "
                        f"{num_classes - 1} (the classes other than the true one), "
                        f"got {aa_targets!r}.")
    return aa_targets


# ----------------------------------------------------------------------------- the model


class _InputGradFunction(torch.autograd.Function):
    """logits = model(x); the backward takes d/dx with oneDNN off (CPU), parameters frozen."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, model: nn.Module) -> torch.Tensor:
        with torch.enable_grad():
            ctx.x = x.detach().requires_grad_(True)
            ctx.out = model(ctx.x)
        return ctx.out.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        with cpu_input_gradient_kernels(grad):
            (grad_x,) = torch.autograd.grad(ctx.out, ctx.x, grad)
        del ctx.x, ctx.out
        return grad_x, None


class InputGradModel(nn.Module):
    """``model(x)``, whose gradient with respect to x skips oneDNN's slow backward-data
    convolution on the CPU (see :func:`jrbench.penalty.jacobian.cpu_input_gradient_kernels`); the
    model's parameters get no gradient (freeze them: :func:`frozen`). Elsewhere (CUDA, no
    gradient wanted) it calls the model as it is. Starts in the model's mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad:
            return _InputGradFunction.apply(x, self.model)
        return self.model(x)


class FastMaxPool2d(nn.Module):
    """A non-overlapping ``nn.MaxPool2d`` (stride = kernel, no padding or dilation) whose
    forward on the CPU without a gradient is the maximum of the kernel's strided views of the
    input: the same values (NaN included), several times faster than ``max_pool2d`` there
    (measured for lenet's first pool, 400 x 6 x 28 x 28, one thread: 9.4 ms against 0.9 ms).
    With a gradient, or on another device, it calls the pool as it is."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool
        size = pool.kernel_size
        self.kh, self.kw = (size, size) if isinstance(size, int) else tuple(size)

    @staticmethod
    def eligible(module: nn.Module) -> bool:
        if type(module) is not nn.MaxPool2d or module.ceil_mode or module.return_indices:
            return False
        def pair(v):
            return (v, v) if isinstance(v, int) else tuple(v)
        return (pair(module.stride or module.kernel_size) == pair(module.kernel_size)
                and pair(module.padding) == (0, 0) and pair(module.dilation) == (1, 1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.device.type != "cpu" or a.dim() != 4 or (torch.is_grad_enabled() and a.requires_grad):
            return self.pool(a)
        kh, kw = self.kh, self.kw
        h, w = a.shape[-2] // kh * kh, a.shape[-1] // kw * kw
        out = a[..., 0:h:kh, 0:w:kw]
        for k in range(1, kh * kw):
            i, j = divmod(k, kw)
            out = torch.maximum(out, a[..., i:h:kh, j:w:kw])
        return out.contiguous()


def fast_forward_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every eligible max-pooling layer a :class:`FastMaxPool2d`
    (the model itself when it has none). Parameters keep their ``requires_grad`` flags."""
    if not any(FastMaxPool2d.eligible(m) for m in model.modules()):
        return model
    fast = copy.deepcopy(model)
    pools = [(parent, name, child) for parent in fast.modules()
             for name, child in parent.named_children() if FastMaxPool2d.eligible(child)]
    for parent, name, child in pools:
        setattr(parent, name, FastMaxPool2d(child))
    return fast


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters do not require grad inside the block (FAB's ``backward`` would otherwise
    compute and accumulate their gradients); flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def make_component(model: nn.Module, name: str, norm: str, eps: float, *, n_targets: int,
                   num_classes: int, loss: str = "ce64", device: torch.device | None = None):
    """The torchattacks object of AutoAttack component ``name`` (see :data:`COMPONENTS`)
    at radius ``eps`` (pixel units) with the standard version's settings."""
    import torchattacks

    if name not in COMPONENTS:
        raise unknown_name("AutoAttack component", name, list(COMPONENTS))
    if norm not in NORMS:
        raise unknown_name("AutoAttack norm", norm, list(NORMS))
    ta_norm, fast = _TA_NORM[norm], InputGradModel(model)
    with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints if it finds no device
        if name == "apgd-ce":
            atk = torchattacks.APGD(loss_model(fast, loss), norm=ta_norm, eps=eps,
                                    steps=APGD_STEPS, n_restarts=RESTARTS, loss="ce", rho=APGD_RHO)
        elif name == "apgd-t":
            atk = torchattacks.APGDT(loss_model(fast, loss), norm=ta_norm, eps=eps,
                                     steps=APGD_STEPS, n_restarts=RESTARTS, rho=APGD_RHO,
                                     n_classes=num_classes)
            atk.n_target_classes = n_targets
        elif name == "fab-t":
            atk = torchattacks.FAB(fast, norm=ta_norm, eps=eps, steps=FAB_STEPS,
                                   n_restarts=RESTARTS, alpha_max=FAB_ALPHA_MAX, eta=FAB_ETA,
                                   beta=FAB_BETA, multi_targeted=True, n_classes=num_classes)
            atk.n_target_classes = n_targets
        else:
            atk = torchattacks.Square(model, norm=ta_norm, eps=eps, n_queries=SQUARE_QUERIES,
                                      n_restarts=RESTARTS, p_init=SQUARE_P_INIT, loss="margin",
                                      resc_schedule=False)
    if device is not None:
        atk.set_device(device)
    return atk


# ----------------------------------------------------------------------------- the run


@dataclass
class AutoAttackOutcome:
    """Per example, on x's device: ``clean`` (bool (N,), correct clean) and, for each
    component in order, ``robust_after[name]`` (bool (N,): correct clean and after every
    component up to and including ``name``); ``seconds[name]`` its wall time."""

    clean: torch.Tensor
    robust_after: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def robust(self) -> torch.Tensor:
        """Robust under the whole AutoAttack (after the last component)."""
        return self.robust_after[COMPONENTS[-1]]


def autoattack_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str,
                       eps: float, num_classes: int, n_targets: int | None = None,
                       loss: str = "ce64", seed: int = 0, batch_size: int = 500,
                       clean_correct: torch.Tensor | None = None) -> AutoAttackOutcome:
    """Run standard AutoAttack at radius ``eps`` (pixel units, norm 'linf' or 'l2') on
    (x, y); ``n_targets`` None means :func:`resolve_targets`' default. Each component runs in
    batches of up to ``batch_size`` over the examples still unbroken, its randomness seeded per
    batch (so ``batch_size`` can change the result; see "Randomness" above); eps == 0 returns
    the clean result without attacking."""
    targets = resolve_targets(num_classes, n_targets)
    with eval_mode(model), frozen(model):
        clean = (correct_mask(model, x, y, batch_size) if clean_correct is None
                 else clean_correct.clone())
        outcome, robust = AutoAttackOutcome(clean), clean.clone()
        device, dtype = model_device(model, x.device), model_dtype(model)
        fast = fast_forward_copy(model) if eps > 0 and device.type == "cpu" else model
        for name in COMPONENTS:
            start = time.perf_counter()
            if eps > 0:
                atk = make_component(fast, name, norm, eps, n_targets=targets,
                                     num_classes=num_classes, loss=loss, device=device)
                for b, idx in enumerate(index_batches(robust.nonzero().flatten(), batch_size)):
                    xb, yb = x[idx].to(device, dtype), y[idx].to(device)
                    atk.seed = derive_seed(seed, "autoattack", name, norm, b)
                    with seeded_global_rng(atk.seed, device), torch.enable_grad(), \
                            contextlib.redirect_stdout(io.StringIO()):
                        adv = atk(xb, yb).detach()
                    check_in_ball(xb, adv, eps, norm)
                    with torch.no_grad():
                        robust[idx] = (model(adv).argmax(1) == yb).to(x.device)
                sync_device(device)
            outcome.robust_after[name] = robust.clone()
            outcome.seconds[name] = time.perf_counter() - start
        return outcome
