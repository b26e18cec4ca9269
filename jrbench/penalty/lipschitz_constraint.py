"""Training under a Lipschitz constraint: ``--reg lipschitz --lipschitz-bound K``.

Projection after every optimizer step (H. Gouk, E. Frank, B. Pfahringer, M. J. Cridge,
"Regularisation of neural networks by enforcing Lipschitz continuity", Machine Learning 110,
2021), in the L2 norm, in pixel space: the whole classifier, normalization included, is held
to a certified Lipschitz bound of at most K.

The split of K: the layers without weights have fixed bounds (the normalization max 1/std,
ReLU 1, non-overlapping max-pool 1, ...; :func:`jrbench.models.lipschitz.layer_bounds`) whose
product is F; each of the m weight layers (Linear, Conv2d) gets the same budget
k = (K / F)^(1/m), which is (K min(std))^(1/m) for the registry's nets. A convolution's
norm is that of the operator at its input shape, not of its reshaped kernel.

- After every step (:meth:`LipschitzConstraint.project`): sigma of each weight layer by one
  power iteration from the vector kept from the previous step (T. Miyato et al., "Spectral
  normalization for generative adversarial networks", ICLR 2018), then
  W <- W * min(1, k / sigma). Biases are left alone (they do not change the constant). No
  host synchronization: the rescale factor stays on the device.
- Power iteration converges from below, so a layer may still exceed k a little. At every
  epoch's end, before evaluation and saving (:meth:`LipschitzConstraint.certify`), every layer
  whose certified bound exceeds k is rescaled by k / bound: the saved model's certified bound
  (:func:`jrbench.models.lipschitz.lipschitz_bound`) is at most K.

The power-iteration vectors are the constraint's state (:meth:`LipschitzConstraint.state_dict`,
saved in ``checkpoint.pt`` under ``lipschitz_state``), so a resumed run continues them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models import lipschitz
from ..config import RegConfig
from ..data.datasets import DATASETS
from ..errors import UserError
from ..models.architectures import Classifier, build_model
from ..models.onelip import REPARAMETRIZED

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
WARMUP_ITERS = 20   # power iterations from the random start vectors, before the first step
MARGIN = 1e-6       # certify rescales to k (1 - MARGIN), so float32 rounding cannot push the total above K


class LipschitzConstraint:
    """The projection of ``model``'s weight layers to the budget of ``bound`` (K, pixel space, L2).

    ``seed`` draws the power-iteration start vectors (a generator of its own: the global stream
    that training seeds per epoch is not touched), which then run ``WARMUP_ITERS`` iterations.
    Raises :class:`UserError` for a model the bound has no rule for
    (:func:`jrbench.models.lipschitz.supports`) or with learned layers other than Linear and Conv2d.
    """

    def __init__(self, model: Classifier, bound: float, seed: int = 0):
        refuse_unsupported(model)
        if not 0 < bound < math.inf:
            raise UserError(f"--lipschitz-bound must be a positive finite number, got {bound}.")
        self.model = model
        self.bound = float(bound)
        layers = lipschitz.layer_bounds(model)
        for b in layers:  # a learned layer the projection leaves alone would break the split of K
            if not isinstance(b.module, WEIGHT_LAYERS) and any(True for _ in b.module.parameters()):
                raise UserError(f"--reg lipschitz projects Linear and Conv2d weights only; layer {b.path} "
                                f"({type(b.module).__name__}) of model '{model.name}' has learned parameters.")
        self.layers = [b for b in layers if isinstance(b.module, WEIGHT_LAYERS)]
        if not self.layers:
            raise UserError(f"model '{model.name}' has no Linear or Conv2d layer for --reg lipschitz to constrain.")
        fixed = math.prod(b.bound for b in layers if not isinstance(b.module, WEIGHT_LAYERS))
        self.budget = (self.bound / fixed) ** (1.0 / len(self.layers))  # k per weight layer
        g = torch.Generator().manual_seed(seed)  # start vectors drawn on the CPU: the same on any device
        starts = [torch.randn((1, *b.input_shape), generator=g, dtype=torch.float64) for b in self.layers]
        with torch.no_grad():
            self.vectors = [lipschitz.power_iteration(b.module, b.input_shape, u, WARMUP_ITERS)[1]
                            for b, u in zip(self.layers, starts)]
        self.sigmas: list[torch.Tensor | None] = [None] * len(self.layers)  # after the last project()

    @torch.no_grad()
    def project(self) -> None:
        """After an optimizer step: one power iteration per weight layer (continuing its vector),
        then W <- W * min(1, k / sigma); all on the device, no ``.item()``."""
        for i, b in enumerate(self.layers):
            sigma, self.vectors[i] = lipschitz.power_iteration(b.module, b.input_shape, self.vectors[i], 1)
            scale = torch.clamp(self.budget / sigma, max=1.0)  # sigma = 0: inf -> 1
            b.module.weight.mul_(scale.to(b.module.weight.dtype))
            self.sigmas[i] = sigma * scale  # the estimate after the rescale: <= k

    @torch.no_grad()
    def certify(self) -> float:
        """Rescale every weight layer whose certified bound exceeds k (1 - MARGIN) to that value;
        return the model's certified bound (:func:`jrbench.models.lipschitz.lipschitz_bound`), <= K."""
        target = self.budget * (1 - MARGIN)
        for _ in range(3):  # once in exact arithmetic (the bounds are homogeneous); again for rounding
            for b in lipschitz.layer_bounds(self.model):
                if isinstance(b.module, WEIGHT_LAYERS) and b.bound > target:
                    b.module.weight.mul_(target / b.bound)
            total = float(lipschitz.lipschitz_bound(self.model).total)
            if total <= self.bound:
                return total
        raise AssertionError(f"certified Lipschitz bound {total} above --lipschitz-bound {self.bound}")

    def state_dict(self) -> dict:
        """The power-iteration vectors (on the CPU) and the budget they were kept for."""
        return {"budget": self.budget, "vectors": [u.detach().cpu() for u in self.vectors]}

    def load_state_dict(self, state: dict) -> None:
        vectors = state.get("vectors") if isinstance(state, dict) else None
        if vectors is None or len(vectors) != len(self.vectors) or any(
                tuple(v.shape) != tuple(u.shape) for v, u in zip(vectors, self.vectors)):
            raise UserError("the checkpoint's lipschitz_state does not match this model's weight layers; "
                            "delete the run directory and train it again.")
        self.vectors = [v.to(device=u.device, dtype=u.dtype) for v, u in zip(vectors, self.vectors)]


def refuse_unsupported(model: Classifier) -> None:
    """Raise :class:`UserError` when :mod:`jrbench.models.lipschitz` has no bound for ``model``, or
    when ``model`` has AOL layers (1-Lipschitz by construction: nothing to project, and the chain's
    Linear / Conv2d for them are copies)."""
    aol = next((name for name, m in model.named_modules() if isinstance(m, REPARAMETRIZED)), None)
    if aol is not None:
        raise UserError(f"--reg lipschitz projects the weights of Linear and Conv2d layers; model "
                        f"'{getattr(model, 'name', '?')}' is 1-Lipschitz by construction (AOL layer {aol}), so there "
                        "is nothing to project: train it without --reg lipschitz (--reg lipschitz-margin adds a "
                        "margin).")
    message = lipschitz.supports(model)
    if message is not None:
        raise UserError(f"--reg lipschitz needs a model whose certified Lipschitz bound is a product of layer "
                        f"bounds (mlp, lenet, ddnet); model '{getattr(model, 'name', '?')}' is not one: {message}")


def check_model(name: str, dataset: str) -> None:
    """:func:`refuse_unsupported` for registered model ``name`` on ``dataset``, before any training
    (built on the meta device: no memory, no data). A folder or npz data set's shape is known only
    from its data: its check waits for training (:func:`constraint_for`)."""
    info = DATASETS.get(dataset).info
    if info is None:
        return
    with torch.device("meta"):
        model = build_model(name, info.input_shape, info.num_classes, info.mean, info.std)
    refuse_unsupported(model)


def constraint_for(model: Classifier, reg: RegConfig, seed: int = 0) -> LipschitzConstraint | None:
    """The constraint of ``reg`` (``--reg lipschitz``) for ``model``, or None without it."""
    if "lipschitz" not in reg.names:
        return None
    return LipschitzConstraint(model, reg.lipschitz_bound, seed)
