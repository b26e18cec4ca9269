"""Config dataclasses: data -> model -> regularizers -> training; field checks; run ids.

A :class:`RunConfig` is everything that defines a training run. It is written in full to
``config.json`` of the run directory and inside ``model.pt``, so a run can be rebuilt
from its own files. Unset options are ``None`` and fall back to documented defaults.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError
from .registry import unknown_name

SCHEDULES = ("none", "step", "cosine")
JR_BACKENDS = ("auto", "tape", "autograd")  # auto: the explicit-VJP tape where the net allows it
JR_ESTIMATORS = ("vjp", "jvp")  # vjp: output-side projections (the paper's); jvp: input-side, forward mode
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class DataConfig:
    dataset: str = "synth-digits"
    data_dir: str | None = None      # None: $JRBENCH_DATA, else the user cache folder
    train_subset: int | None = None  # number of training examples kept (None: all)
    test_subset: int | None = None   # number of test examples kept (None: all)
    subset_seed: int = 0             # which examples a subset keeps; fixed so runs compare


@dataclass
class ModelConfig:
    name: str = "lenet"


@dataclass
class RegConfig:
    """Regularizers, combinable: none, l2, dropout, jacobian, input-grad, lipschitz, noise."""

    names: list[str] = field(default_factory=lambda: ["none"])
    lambda_jr: float = 0.01          # weight of R = 1/2 ||J_z||_F^2 (batch mean)
    n_proj: int = 1                  # random projections per sample; -1: exact over all C rows
    jr_subsample: int | None = None  # compute R on this many samples of each batch (None: all)
    weight_decay: float = 5e-4       # l2: SGD weight decay
    dropout: float = 0.5             # dropout: probability before each hidden fc layer
    lambda_ig: float = 0.01          # input-grad: weight of 1/2 ||d CE / d z||^2 (batch mean)
    jr_backend: str = "auto"         # auto | tape (explicit VJP, sequential ReLU nets) | autograd
    jr_estimator: str = "vjp"        # vjp: C ||v^T J||^2, v on S^{C-1}; jvp: ||J u||^2, u ~ N(0, I_D)
    jr_every: int = 1                # the penalty on every k-th step only, with lambda_jr x k
    lipschitz_bound: float = 100.0   # lipschitz: K, certified L2 Lipschitz bound in pixels (plain lenet: ~2e5)
    noise_sigma: float = 0.25        # noise: std of the Gaussian added to training pixels in [0, 1]


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    schedule: str = "none"           # none | step (x gamma every step_epochs) | cosine
    step_epochs: int = 5
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    jacobian_eval_examples: int = 256  # fixed test examples for mean ||J_z||_F per epoch
    eval_batch_size: int = 1000


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        try:
            return cls(
                data=DataConfig(**d["data"]), model=ModelConfig(**d["model"]),
                reg=RegConfig(**d["reg"]), train=TrainConfig(**d["train"]),
            )
        except (KeyError, TypeError) as e:
            raise UserError(f"the run configuration is incomplete or malformed ({e}).") from e

    def run_id(self) -> str:
        """Readable and stable: same config, same id (device, data_dir and the options of
        regularizers not in use do not count)."""
        d = self.to_dict()
        d["data"].pop("data_dir")
        d["train"].pop("device")
        names = self.reg.names
        unused = {"lambda_jr": "jacobian", "n_proj": "jacobian", "jr_subsample": "jacobian",
                  "weight_decay": "l2", "dropout": "dropout", "lambda_ig": "input-grad",
                  "lipschitz_bound": "lipschitz", "noise_sigma": "noise"}
        for key, owner in unused.items():
            if owner not in names:  # an option of an unused regularizer changes nothing
                d["reg"].pop(key)
        for key, default in (("jr_backend", "auto"), ("jr_estimator", "vjp"), ("jr_every", 1)):
            if "jacobian" not in names or d["reg"][key] == default:  # ids of earlier runs stay
                d["reg"].pop(key)
        digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
        regs = "+".join(self.reg.names)
        return f"{self.data.dataset}-{self.model.name}-{regs}-s{self.train.seed}-{digest}"


def _positive(name: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise UserError(f"{name} must be positive, got {value}.")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise UserError(f"{name} must be zero or positive, got {value}.")


def check_fields(cfg: RunConfig) -> None:
    """Raise :class:`UserError` naming the first bad field value (ranges, combinations).

    Names of data sets, models and regularizers are checked against their registries by
    :func:`jrbench.training.validation.validate`, which sits above those modules (no import cycle).
    """
    _positive("--train-subset", cfg.data.train_subset, allow_none=True)
    _positive("--test-subset", cfg.data.test_subset, allow_none=True)

    r = cfg.reg
    if not r.names:
        raise UserError("give at least one regularizer (--reg none for plain SGD).")
    if len(set(r.names)) != len(r.names):
        raise UserError(f"a regularizer is named twice: {', '.join(r.names)}.")
    if "none" in r.names and len(r.names) > 1:
        raise UserError("--reg none cannot be combined with other regularizers.")
    _non_negative("--lambda-jr", r.lambda_jr)
    _non_negative("--lambda-ig", r.lambda_ig)
    _non_negative("--weight-decay", r.weight_decay)
    if r.n_proj == 0 or r.n_proj < -1:
        raise UserError(f"--n-proj must be a positive number of projections or -1 (exact), got {r.n_proj}.")
    _positive("--jr-subsample", r.jr_subsample, allow_none=True)
    if r.jr_backend not in JR_BACKENDS:
        raise unknown_name("--jr-backend", r.jr_backend, list(JR_BACKENDS))
    if r.jr_estimator not in JR_ESTIMATORS:
        raise unknown_name("--jr-estimator", r.jr_estimator, list(JR_ESTIMATORS))
    _positive("--jr-every", r.jr_every)
    if r.jr_estimator == "jvp" and r.n_proj == -1:
        raise UserError("--jr-estimator jvp estimates ||J||_F^2 with random input directions and has no "
                        "exact mode; use --jr-estimator vjp with --n-proj -1 for the exact value.")
    if r.jr_estimator == "jvp" and r.jr_backend == "tape":
        raise UserError("--jr-backend tape computes vector-Jacobian products (--jr-estimator vjp); "
                        "--jr-estimator jvp runs forward-mode AD (use --jr-backend auto).")
    if not 0 <= r.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {r.dropout}.")
    if not (isinstance(r.lipschitz_bound, (int, float)) and 0 < r.lipschitz_bound < math.inf):
        raise UserError(f"--lipschitz-bound must be a positive finite number (the certified L2 Lipschitz "
                        f"bound K of the model in pixel space), got {r.lipschitz_bound}.")
    if not (isinstance(r.noise_sigma, (int, float)) and 0 < r.noise_sigma < math.inf):
        raise UserError(f"--noise-sigma must be a positive finite number (the standard deviation of the "
                        f"Gaussian noise added to training pixels in [0, 1]; to train without it leave out "
                        f"--reg noise), got {r.noise_sigma}.")

    t = cfg.train
    _positive("--epochs", t.epochs)
    _positive("--batch-size", t.batch_size)
    _positive("--lr", t.lr)
    if not 0 <= t.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {t.momentum}.")
    if t.schedule not in SCHEDULES:
        raise unknown_name("schedule", t.schedule, list(SCHEDULES))
    if t.device not in DEVICES and not t.device.startswith("cuda:"):
        raise unknown_name("device", t.device, list(DEVICES))
    _positive("--step-epochs", t.step_epochs)
    _positive("--gamma", t.gamma)
    _positive("jacobian_eval_examples", t.jacobian_eval_examples)
    _positive("eval_batch_size", t.eval_batch_size)
