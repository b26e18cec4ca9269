"""Config dataclasses: data -> model -> regularizers -> training; field checks; run ids.

A :class:`RunConfig` is everything that defines a training run. It is written in full to
``config.json`` of the run directory and inside ``model.pt``, so a run can be rebuilt
from its own files. Unset options are ``None`` and fall back to documented defaults.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .registry import unknown_name
from .schema import FieldError, check, field_error, option, run_id_irrelevant

SCHEDULES = ("none", "step", "cosine")
JR_BACKENDS = ("auto", "tape", "autograd")  # auto: the explicit-VJP tape where the net allows it
JR_ESTIMATORS = ("vjp", "jvp")  # vjp: output-side projections (the paper's); jvp: input-side, forward mode
DEVICES = ("auto", "cpu", "cuda")
MARGIN_LOSSES = ("lipschitz-margin", "gloro")  # losses of 1-Lipschitz models from the construction's L; they share margin_*
BOUND_TRAINING = ("ibp", "crown-ibp")  # regularizers that train against a certified bound; they share the ibp_* options
CUSTOM_DATASETS = ("folder", "npz")  # described by their data (--data-dir), not by the registry
MARGIN_EPS, MARGIN_TEMPERATURE = 1.0, 1.0  # --reg lipschitz-margin's defaults (docs/conventions.md)


@dataclass
class DataConfig:
    dataset: str = option("synth-digits", help="mnist, fashion-mnist, cifar10, synth-digits, folder (an image "
                                               "folder tree: --data-dir PATH) or npz (arrays: --data-dir FILE.npz).")
    data_dir: str | None = option(None, help="Data folder (default: $JRBENCH_DATA, else ~/.cache/jrbench); for "
                                             "folder and npz the tree or the .npz file.",
                                  metavar="PATH")
    train_subset: int | None = option(None, low=0, open_low=True,
                                      help="Keep this many training examples (chosen by a fixed seed).")
    test_subset: int | None = option(None, low=0, open_low=True,
                                     help="Keep this many test examples (chosen by a fixed seed).")
    subset_seed: int = 0             # which examples a subset keeps; fixed so runs compare (not an option)
    # folder / npz: what training found in the data (shape, classes, per-channel mean and std of the
    # training split, content digest), recorded so every later command uses the same (not an option)
    info: dict | None = None


@dataclass
class ModelConfig:
    name: str = option("lenet", key="model", flag="--model",
                       help="mlp, lenet, ddnet, resnet18, or the 1-Lipschitz aol-mlp and aol-lenet.")


@dataclass
class RegConfig:
    """Regularizers, combinable: none, l2, dropout, jacobian, input-grad, lipschitz, noise,
    lipschitz-margin, gloro, ibp, crown-ibp."""

    names: list[str] = option(default_factory=lambda: ["none"], key="reg", flag="--reg", repeat=True,
                              help="Regularizer, repeat to combine: none, l2, dropout, jacobian, input-grad, "
                                   "lipschitz, noise, lipschitz-margin, gloro, ibp, crown-ibp.")
    lambda_jr: float = option(0.01, low=0, owner="jacobian", help="Weight of R = 1/2 ||J_z||_F^2.")
    n_proj: int = option(1, owner="jacobian",
                         help="Random projections per sample of the Jacobian penalty; -1 for the exact value.")
    jr_subsample: int | None = option(None, low=0, open_low=True, owner="jacobian",
                                      help="Compute the Jacobian penalty on this many samples K of each batch "
                                           "(default: all).")
    weight_decay: float = option(5e-4, low=0, owner="l2", help="Weight decay of the l2 regularizer.")
    dropout: float = option(0.5, low=0, high=1, open_high=True, owner="dropout",
                            help="Dropout probability of the dropout regularizer.")
    lambda_ig: float = option(0.01, low=0, owner="input-grad",
                              help="Weight of the input-grad penalty 1/2 ||dCE/dz||^2.")
    jr_backend: str = option("auto", choices=JR_BACKENDS, owner="jacobian", id_default="auto",
                             help="Penalty path: auto (tape where the net allows), tape or autograd.")
    jr_estimator: str = option("vjp", choices=JR_ESTIMATORS, owner="jacobian", id_default="vjp",
                               help="vjp: C ||v^T J||^2, v on the unit sphere (the paper's); jvp: ||J u||^2, "
                                    "u ~ N(0, I), forward mode.")
    jr_every: int = option(1, low=0, open_low=True, owner="jacobian", id_default=1,
                           help="The penalty on every k-th step only, with lambda_jr x k.")
    lipschitz_bound: float = option(100.0, low=0, open_low=True, owner="lipschitz",
                                    help="lipschitz: K, the certified L2 Lipschitz bound of the saved model in "
                                         "pixel space.")
    noise_sigma: float = option(0.25, low=0, open_low=True, owner="noise",
                                help="noise: std of the Gaussian added to training pixels in [0, 1].")
    margin_eps: float = option(MARGIN_EPS, low=0, owner=MARGIN_LOSSES, unit="pixel units",
                               help="lipschitz-margin, gloro: the L2 radius eps whose margin sqrt(2) L eps is added "
                                    "to every logit but the label's before the cross-entropy (gloro: to the others "
                                    "of GloRo's bottom class; L: the model's constant).")
    margin_ramp_epochs: float = option(0.0, low=0, owner=MARGIN_LOSSES, id_default=0.0,
                                       help="lipschitz-margin, gloro: epochs over which the margin's eps grows "
                                            "linearly from 0 to --margin-eps, per step (GloRo's 'linear' epsilon "
                                            "schedule); 0: the full eps from the first step.")
    margin_temperature: float = option(MARGIN_TEMPERATURE, low=0, open_low=True, owner="lipschitz-margin",
                                       help="lipschitz-margin: the loss is T CE(logits' / T), T in logit units; a "
                                            "small T approaches the multi-class hinge loss.")
    # ibp, crown-ibp (jrbench.penalty.certified_training): defaults in docs/conventions.md
    ibp_eps: float = option(0.2, low=0, open_low=True, owner=BOUND_TRAINING, unit="pixel units",
                            help="ibp, crown-ibp: the L-inf training radius eps_train in pixels (0.2: Gowal et al.'s "
                                 "for MNIST tested at 0.1; for CIFAR-10 about 8.8/255).")
    ibp_warmup_epochs: float = option(1.0, low=0, owner=BOUND_TRAINING,
                                      help="ibp, crown-ibp: epochs of plain training (eps 0) before the ramp; "
                                           "fractions count steps.")
    ibp_ramp_epochs: float = option(5.0, low=0, owner=BOUND_TRAINING,
                                    help="ibp, crown-ibp: epochs over which eps rises linearly to --ibp-eps and "
                                         "kappa falls to --ibp-kappa (crown-ibp: beta from 1 to 0).")
    ibp_kappa: float = option(0.5, low=0, high=1, owner=BOUND_TRAINING,
                              help="ibp, crown-ibp: the final weight kappa of the natural cross-entropy; the "
                                   "bound's worst-case cross-entropy gets 1 - kappa.")


@dataclass
class TrainConfig:
    epochs: int = option(10, low=0, open_low=True, help="Training epochs.")
    batch_size: int = option(64, low=0, open_low=True, help="Training batch size.")
    lr: float = option(0.05, low=0, open_low=True, help="SGD learning rate.")
    momentum: float = option(0.9, low=0, high=1, open_high=True, help="SGD momentum.")
    schedule: str = option("none", choices=SCHEDULES, help="Learning-rate schedule.")
    step_epochs: int = option(5, low=0, open_low=True, help="step schedule: epochs between decays.")
    gamma: float = option(0.1, low=0, open_low=True, help="step schedule: factor per decay.")
    seed: int = option(0, help="Seed of initialization, order, dropout and projections.")
    device: str = option("auto", spec=False, help="auto (a GPU if there is one), cpu, cuda or cuda:N.",
                         metavar="<auto|cpu|cuda|cuda:N>",
                         note="a study's device is the sweep command's --device, the same for every cell")
    jacobian_eval_examples: int = 256  # fixed test examples for mean ||J_z||_F per epoch (not an option)
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
        info = d["data"].pop("info")
        if self.data.dataset in CUSTOM_DATASETS:  # the data's identity, not its path
            d["data"]["digest"] = (info or {}).get("digest") or data_digest(self.data.data_dir)
        d["train"].pop("device")
        for key in run_id_irrelevant(self.reg, set(self.reg.names)):  # schema: owner and id_default
            d["reg"].pop(key)
        digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
        regs = "+".join(self.reg.names)
        return f"{self.data.dataset}-{self.model.name}-{regs}-s{self.train.seed}-{digest}"


_DIGESTS: dict[tuple, str] = {}


def data_digest(path: str | Path | None) -> str:
    """The content digest (sha1, 16 hex) of a custom data set: an .npz file's bytes, or every
    file of an image folder (relative path and bytes, in sorted order). Cached per path, size
    and modification time, so a run id costs one read of the data per process."""
    if not path:
        raise UserError("the folder and npz data sets need --data-dir PATH (the image folder or the .npz file).")
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        raise UserError(f"the data {root} does not exist.")
    key = (str(root.resolve()),) + tuple((str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files)
    if key not in _DIGESTS:
        h = hashlib.sha1()
        for p in files:
            h.update(str(p.relative_to(root) if p != root else "").encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def check_fields(cfg: RunConfig) -> None:
    """Raise :class:`~jrbench.schema.FieldError` naming the first bad field value: the schema's
    types, bounds and choices (:func:`jrbench.schema.check`), then the combinations.

    Names of data sets, models and regularizers are checked against their registries by
    :func:`jrbench.training.validation.validate`, which sits above those modules (no import cycle).
    """
    for section in (cfg.data, cfg.model, cfg.reg, cfg.train):
        check(section)
    r = cfg.reg

    def bad(name: str, reason: str) -> FieldError:
        return field_error(RegConfig, name, reason)

    if not r.names:
        raise bad("names", "is empty: give at least one regularizer (--reg none for plain SGD).")
    if len(set(r.names)) != len(r.names):
        raise bad("names", f"names a regularizer twice: {', '.join(r.names)}.")
    if "none" in r.names and len(r.names) > 1:
        raise bad("names", "none cannot be combined with other regularizers.")
    if all(n in r.names for n in BOUND_TRAINING):
        raise bad("names", "ibp and crown-ibp both train against a bound: choose one.")
    replacing = [n for n in (*MARGIN_LOSSES, *BOUND_TRAINING) if n in r.names]
    if len(replacing) > 1:
        raise bad("names", f"{' and '.join(replacing)} each replace the cross-entropy: choose one.")
    if r.n_proj == 0 or r.n_proj < -1:
        raise bad("n_proj", f"must be a positive number of projections or -1 (exact), got {r.n_proj}.")
    if r.jr_estimator == "jvp" and r.n_proj == -1:
        raise bad("jr_estimator", "jvp estimates ||J||_F^2 with random input directions and has no exact mode; "
                                  "use --jr-estimator vjp with --n-proj -1 for the exact value.")
    if r.jr_estimator == "jvp" and r.jr_backend == "tape":
        raise bad("jr_backend", "tape computes vector-Jacobian products (--jr-estimator vjp); "
                                "--jr-estimator jvp runs forward-mode AD (use --jr-backend auto).")
    t = cfg.train
    if t.device not in DEVICES and not t.device.startswith("cuda:"):
        raise unknown_name("device", t.device, list(DEVICES))
    for name in ("jacobian_eval_examples", "eval_batch_size"):
        if not (isinstance(getattr(t, name), int) and getattr(t, name) > 0):
            raise UserError(f"{name} must be positive, got {getattr(t, name)}.")
