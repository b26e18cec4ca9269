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
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import UserError
from ..registry import unknown_name
from ..schema import check, field_error, option

NORMS = ("linf", "l2")
LOSSES = ("ce64", "ce32")
ATTACKS = ("noise", "pgd", "fgsm", "autoattack")
DEFAULT_ATTACKS = ("noise", "pgd", "fgsm")  # what runs when no attack is named true (AutoAttack is slow)


def default_eps(dataset_name, norm: str) -> list[float]:
    """The default eps grid (pixel units, 0 first) for a data set and norm ('linf' or 'l2'):
    ``eps_linf`` / ``eps_l2`` of the data set's :class:`jrbench.data.datasets.Defaults`. The data
    set is a registered name, a :class:`~jrbench.data.datasets.DatasetInfo` or a run's
    :class:`~jrbench.config.DataConfig` (folder and npz data sets: :func:`~jrbench.data.datasets.defaults_of`)."""
    from ..data.datasets import defaults_of

    defaults = defaults_of(dataset_name)
    if norm not in NORMS:
        raise unknown_name("norm", norm, list(NORMS))
    return list(getattr(defaults, f"eps_{norm}"))


def default_sigmas(dataset_name=None) -> list[float]:
    """The data set's noise grid (pixel units; 0, 0.1, ..., 1.0 for every registered one)."""
    from ..data.datasets import NOISE_SIGMAS, defaults_of

    if dataset_name is None:
        return list(NOISE_SIGMAS)
    return list(defaults_of(dataset_name).sigmas)


def huge_eps_linf(dataset_name) -> float:
    """An L-infinity radius at which a working attack drives accuracy to about chance: the data
    set's ``huge_eps_linf`` (0.3 for MNIST-like data sets, a heuristic for models without
    adversarial training: Madry et al.'s adversarially trained MNIST model keeps about 89%
    there); 0.5 without a data set, where every image can reach the same all-0.5 image, so no
    model can beat the largest class share."""
    if dataset_name is None:
        return 0.5
    from ..data.datasets import defaults_of

    return defaults_of(dataset_name).huge_eps_linf


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

    noise: bool = option(True, tristate=True, flag="--noise/--no-noise", help="White Gaussian pixel noise.")
    pgd: bool = option(True, tristate=True, flag="--pgd/--no-pgd", help="PGD (torchattacks), L-inf and/or L2.")
    fgsm: bool = option(True, tristate=True, flag="--fgsm/--no-fgsm", help="FGSM (torchattacks), L-inf.")
    autoattack: bool = option(False, tristate=True, flag="--autoattack/--no-autoattack",
                              help="Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; slow) on --norm and the "
                                   "eps grids.")
    aa_targets: int | None = option(None, low=1, help="AutoAttack's target classes for APGD-T and FAB-T (default 9; "
                                                     "required below 10 classes).")
    autoattack_eps_linf: list[float] | None = option(
        None, repeat=True, low=0, high=1, unit="pixel units",
        help="AutoAttack's own L-inf radius grid (with or without --autoattack-eps-l2: AutoAttack runs on these "
             "norms only).")
    autoattack_eps_l2: list[float] | None = option(None, repeat=True, low=0, unit="pixel units",
                                                   help="AutoAttack's own L2 radius grid.")
    sigmas: list[float] | None = option(default_factory=default_sigmas, key="sigma", flag="--sigma", repeat=True,
                                        low=0, unit="pixel units",
                                        help="Noise sigma (pixel units); repeat for a grid (default per data set).")
    draws: int = option(5, low=1, help="Noise draws per image.")
    # White noise's test examples (attack_run / attack_model): None = the whole test set (noise
    # costs only forward passes, so its accuracy is precise where that is cheap); N = the first N
    # of the --example-seed permutation, a superset of the gradient attacks' n_examples when N >= it
    noise_examples: int | None = option(None, low=1, help="White noise on this many test examples, chosen by "
                                                         "--example-seed (default: the whole test set).")
    norms: tuple[str, ...] = option(NORMS, key="norm", flag="--norm", repeat=True, choices=NORMS,
                                    help="PGD norm; repeat for both (default both).")
    eps_linf: list[float] | None = option(None, repeat=True, low=0, high=1, unit="pixel units",
                                          help="L-inf radius grid (default per data set).")
    eps_l2: list[float] | None = option(None, repeat=True, low=0, unit="pixel units",
                                        help="L2 radius grid (default per data set).")
    steps: int = option(40, low=1, help="PGD steps.")
    alpha: float | None = option(None, low=0, open_low=True, unit="pixel units",
                                 help="PGD step size (default 2.5 eps / steps).")
    restarts: int = option(1, low=1, help="PGD restarts; broken if any restart breaks it.")
    random_start: bool = True
    loss: str = option("ce64", choices=LOSSES,
                       help="ce64: cross-entropy from float64 logits; ce32: torchattacks as is.")
    batch_size: int = option(500, low=1, help="Examples per batch: memory only; no noise, PGD or FGSM result "
                                             "changes with it (AutoAttack's can: docs).")
    seed: int = option(0, low=0, help="Seed of noise draws and random starts.")

    @classmethod
    def for_dataset(cls, dataset_name, **overrides) -> "AttackConfig":
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

    def filled(self, dataset_name) -> "AttackConfig":
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
        """Raise :class:`~jrbench.schema.FieldError` for anything out of range or unknown (None grids
        pass): the schema's types, bounds and choices, then the combinations. Every construction
        calls it (``__post_init__``): a config that exists is valid."""
        if not (self.noise or self.pgd or self.fgsm or self.autoattack):
            raise UserError("no attack selected: enable at least one of noise, pgd, fgsm, "
                            "autoattack.")
        check(self)
        own_aa = self.autoattack_eps_linf is not None or self.autoattack_eps_l2 is not None
        if (self.pgd or (self.autoattack and not own_aa)) and len(self.norms) == 0:
            raise field_error(AttackConfig, "norms", f"is empty: PGD and AutoAttack need at least one of "
                                                     f"{', '.join(NORMS)}.")


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
            raise field_error(AttackConfig, name, f"must be true or false, got {value!r}.")
    if aa_grids_given:
        if autoattack is False:
            raise field_error(AttackConfig, "autoattack", "is off but an AutoAttack grid (autoattack_eps_linf or "
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
