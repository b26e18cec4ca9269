"""What to attack with: :class:`AttackConfig` and the data set's default grids (pixel units).

The first stage of an evaluation: a config names the attacks (white noise, PGD, FGSM,
AutoAttack), their norms ('linf', 'l2'), radii eps and noise sigmas in pixel units (images
lie in [0, 1]), and the loss the gradient attacks ascend ('ce64', 'ce32'; see
:mod:`jrbench.evaluate.attacks`). The data set's defaults (eps grids, noise grid, the radius at which
a working attack leaves about chance) come from its :class:`jrbench.data.datasets.Defaults`.
Nothing here imports torch: :mod:`jrbench.evaluate.attacks` runs a config.

Which attacks run is one rule, :func:`select_attacks`, shared by ``jrbench attack`` and a study's
``[attack]`` table: naming selects. Attacks named true (``--pgd``, ``pgd = true``; an AutoAttack
grid names AutoAttack) run, and only they; when none is named true, noise, PGD and FGSM run, less
those named false (``--no-noise``, ``noise = false``). :func:`build_attack_config` is the one
builder of both: it applies the rule and validates the config once.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import UserError
from ..registry import unknown_name

NORMS = ("linf", "l2")
LOSSES = ("ce64", "ce32")
ATTACKS = ("noise", "pgd", "fgsm", "autoattack")
DEFAULT_ATTACKS = ("noise", "pgd", "fgsm")  # what runs when no attack is named true (AutoAttack is slow)


def default_eps(dataset_name: str, norm: str) -> list[float]:
    """The default eps grid (pixel units, 0 first) for a data set and norm ('linf' or 'l2'):
    ``eps_linf`` / ``eps_l2`` of the data set's :class:`jrbench.data.datasets.Defaults`."""
    from ..data.datasets import DATASETS

    defaults = DATASETS.get(dataset_name).info.defaults
    if norm not in NORMS:
        raise unknown_name("norm", norm, list(NORMS))
    return list(getattr(defaults, f"eps_{norm}"))


def default_sigmas(dataset_name: str | None = None) -> list[float]:
    """The data set's noise grid (pixel units; 0, 0.1, ..., 1.0 for every registered one)."""
    from ..data.datasets import DATASETS, NOISE_SIGMAS

    if dataset_name is None:
        return list(NOISE_SIGMAS)
    return list(DATASETS.get(dataset_name).info.defaults.sigmas)


def huge_eps_linf(dataset_name: str | None) -> float:
    """An L-infinity radius at which a working attack drives accuracy to about chance: the data
    set's ``huge_eps_linf`` (0.3 for MNIST-like data sets, a heuristic for models without
    adversarial training: Madry et al.'s adversarially trained MNIST model keeps about 89%
    there); 0.5 without a data set, where every image can reach the same all-0.5 image, so no
    model can beat the largest class share."""
    if dataset_name is None:
        return 0.5
    from ..data.datasets import DATASETS

    return DATASETS.get(dataset_name).info.defaults.huge_eps_linf


@dataclass
class AttackConfig:
    """What to run. Radii and sigmas are pixel units. An eps grid or ``sigmas`` of None means
    "the data set's default" and must be filled (:meth:`for_dataset`, :meth:`filled`) before
    :func:`jrbench.evaluate.attacks.run_attacks`; ``sigmas`` left out is the noise grid every
    registered data set shares (:func:`default_sigmas`). The CLI and specs build configs with
    :func:`build_attack_config` (which attacks run: :func:`select_attacks`). FGSM is
    L-infinity and uses ``eps_linf`` whatever ``norms`` says. AutoAttack (off by default: it is
    slow) runs on the norms that have an AutoAttack grid (``autoattack_eps_linf``,
    ``autoattack_eps_l2``) or, when neither is given, on ``norms`` with PGD's grids;
    ``aa_targets`` None means the standard 9 target classes (data sets of at least 10 classes).
    ``noise_examples`` is read where examples are chosen from a data set
    (:func:`jrbench.evaluate.api.attack_run`, ``attack_model``): white noise on that many test
    examples, None the whole test set; the gradient attacks take ``n_examples`` there."""

    noise: bool = True
    pgd: bool = True
    fgsm: bool = True
    autoattack: bool = False
    aa_targets: int | None = None   # AutoAttack's APGD-T / FAB-T target classes; None: 9
    autoattack_eps_linf: list[float] | None = None  # AutoAttack's own grids (pixel units)
    autoattack_eps_l2: list[float] | None = None
    sigmas: list[float] | None = field(default_factory=default_sigmas)  # None: the data set's
    draws: int = 5                  # noise draws per image
    # White noise's test examples (attack_run / attack_model): None = the whole test set (noise
    # costs only forward passes, so its accuracy is precise where that is cheap); N = the first N
    # of the --example-seed permutation, a superset of the gradient attacks' n_examples when N >= it
    noise_examples: int | None = None
    norms: tuple[str, ...] = NORMS  # PGD norms
    eps_linf: list[float] | None = None
    eps_l2: list[float] | None = None
    steps: int = 40
    alpha: float | None = None      # PGD step (pixel units, every eps); None: 2.5 * eps / steps
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce64"
    batch_size: int = 500
    seed: int = 0

    @classmethod
    def for_dataset(cls, dataset_name: str, **overrides) -> "AttackConfig":
        """A config whose eps and noise grids are the data set's defaults (:func:`default_eps`,
        :func:`default_sigmas`) except where ``overrides`` gives one (a grid given as None is
        the default too)."""
        grids = {f"eps_{n}": default_eps(dataset_name, n) for n in NORMS}
        grids["sigmas"] = default_sigmas(dataset_name)
        given = {k: v for k, v in overrides.items() if not (k in grids and v is None)}
        return cls(**{**grids, **given})

    def unfilled(self) -> list[str]:
        """The grids the selected attacks use that are left None: ``sigmas`` (noise) and the
        ``eps_*`` of :meth:`eps_norms`."""
        names = ["sigmas"] if self.noise and self.sigmas is None else []
        return names + [f"eps_{n}" for n in self.eps_norms() if getattr(self, f"eps_{n}") is None]

    def filled(self, dataset_name: str) -> "AttackConfig":
        """A copy whose :meth:`unfilled` grids are the data set's defaults (:func:`default_sigmas`,
        :func:`default_eps`); itself when none is left None."""
        grids: dict[str, Any] = {name: default_sigmas(dataset_name) if name == "sigmas"
                                 else default_eps(dataset_name, name[len("eps_"):]) for name in self.unfilled()}
        return dataclasses.replace(self, **grids) if grids else self

    def eps_norms(self) -> list[str]:
        """The norms whose eps grid the selected attacks use."""
        own_aa = self.autoattack_eps_linf is not None or self.autoattack_eps_l2 is not None
        used = set(self.norms) if (self.pgd or (self.autoattack and not own_aa)) else set()
        return [n for n in NORMS if n in used or (n == "linf" and self.fgsm)]

    def autoattack_grids(self) -> dict[str, list[float] | None]:
        """AutoAttack's norm -> eps grid: its own grids where given, else PGD's of ``norms``
        (None until filled); empty when AutoAttack is off."""
        if not self.autoattack:
            return {}
        own = {n: getattr(self, f"autoattack_eps_{n}") for n in NORMS
               if getattr(self, f"autoattack_eps_{n}") is not None}
        return own or {n: getattr(self, f"eps_{n}") for n in NORMS if n in self.norms}

    def __post_init__(self) -> None:
        self.validate()  # checked where it is built (and every dataclasses.replace builds anew)

    def validate(self) -> None:
        """Raise :class:`UserError` for anything out of range or unknown (None grids pass).
        Every construction calls it (``__post_init__``): a config that exists is valid."""
        if not (self.noise or self.pgd or self.fgsm or self.autoattack):
            raise UserError("no attack selected: enable at least one of noise, pgd, fgsm, "
                            "autoattack.")
        own_aa = self.autoattack_eps_linf is not None or self.autoattack_eps_l2 is not None
        if (self.pgd or (self.autoattack and not own_aa)) and len(self.norms) == 0:
            raise UserError(f"norm (--norm) is empty: PGD and AutoAttack need at least one of "
                            f"{', '.join(NORMS)}.")
        for norm in self.norms:
            if norm not in NORMS:
                raise unknown_name("norm", norm, list(NORMS))
        if self.loss not in LOSSES:
            raise unknown_name("loss", self.loss, list(LOSSES))
        if self.sigmas is not None:
            _check_grid("sigma", self.sigmas, upper=None)
        for norm in self.eps_norms():
            if getattr(self, f"eps_{norm}") is not None:
                _check_grid(f"eps_{norm}", getattr(self, f"eps_{norm}"),
                            upper=1.0 if norm == "linf" else None)
        for norm in NORMS:
            if getattr(self, f"autoattack_eps_{norm}") is not None:
                _check_grid(f"autoattack_eps_{norm}", getattr(self, f"autoattack_eps_{norm}"),
                            upper=1.0 if norm == "linf" else None)
        for name in ("draws", "steps", "restarts", "batch_size"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("seed", self.seed, low=0)
        if self.aa_targets is not None:
            _check_int("aa_targets", self.aa_targets, low=1)
        if self.noise_examples is not None:
            _check_int("noise_examples", self.noise_examples, low=1)
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise UserError(f"alpha (--alpha, the PGD step, pixel units) must be > 0, got {self.alpha}.")


def select_attacks(noise: bool | None = None, pgd: bool | None = None, fgsm: bool | None = None,
                   autoattack: bool | None = None, aa_grids_given: bool = False) -> dict[str, bool]:
    """Which attacks run, the one rule of ``jrbench attack`` and of a study's ``[attack]`` table:
    naming selects. Each attack is True (named: ``--pgd``, ``pgd = true``), False (``--no-pgd``,
    ``pgd = false``) or None (not said); an AutoAttack grid (``aa_grids_given``) names AutoAttack.
    If any attack is named True, exactly those run; else noise, PGD and FGSM run
    (:data:`DEFAULT_ATTACKS`) less those named False. Returns {attack: on} over :data:`ATTACKS`.

    >>> select_attacks(autoattack=True)["noise"], select_attacks(noise=False)["pgd"]
    (False, True)
    """
    said = {"noise": noise, "pgd": pgd, "fgsm": fgsm, "autoattack": autoattack}
    for name, value in said.items():
        if value is not None and not isinstance(value, bool):
            raise UserError(f"{_named(name)} must be true or false, got {value!r}.")
    if aa_grids_given:
        if autoattack is False:
            raise UserError("autoattack (--autoattack) is off but an AutoAttack grid (autoattack_eps_linf or "
                            "autoattack_eps_l2) is given: drop one of them.")
        said["autoattack"] = True
    if any(value is True for value in said.values()):
        return {name: value is True for name, value in said.items()}
    return {name: name in DEFAULT_ATTACKS and value is not False for name, value in said.items()}


def build_attack_config(*, noise: bool | None = None, pgd: bool | None = None, fgsm: bool | None = None,
                        autoattack: bool | None = None, sigmas: Sequence[float] | None = None,
                        **settings: Any) -> AttackConfig:
    """The validated :class:`AttackConfig` of ``jrbench attack``'s options or a study's ``[attack]``
    table (their one builder): the attacks by :func:`select_attacks` (tri-state: None is "not
    said"), ``sigmas`` None the data set's default noise grid (:meth:`AttackConfig.filled`), the
    other ``settings`` AttackConfig's fields. Validated as it is built; raises :class:`UserError`
    (and TypeError for an unknown field)."""
    aa_grids = any(settings.get(f"autoattack_eps_{n}") is not None for n in NORMS)
    selected = select_attacks(noise, pgd, fgsm, autoattack, aa_grids_given=aa_grids)
    return AttackConfig(**selected, sigmas=sigmas, **settings)


def _named(name: str) -> str:
    """A setting as both its spec key and its flags: 'eps_linf (--eps-linf, or --eps with --norm linf)'."""
    also = f", or --eps with --norm {name[4:]}" if name in ("eps_linf", "eps_l2") else ""
    return f"{name} (--{name.replace('_', '-')}{also})"


def _check_grid(name: str, values: Sequence[float], upper: float | None) -> None:
    name = _named(name)
    if len(values) == 0:
        raise UserError(f"{name} is empty: give at least one value (pixel units).")
    for v in values:
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise UserError(f"{name} values must be finite numbers >= 0 (pixel units), got {v}.")
        if upper is not None and v > upper:
            raise UserError(f"{name} values must be <= {upper} (pixels lie in [0, 1]), got {v}.")


def _check_int(name: str, value: int, low: int) -> None:
    name = _named(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}.")

