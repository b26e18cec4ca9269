"""What to attack with: :class:`AttackConfig` and the data set's default grids (pixel units).

The first stage of an evaluation: a config names the attacks (white noise, PGD, FGSM,
AutoAttack), their norms ('linf', 'l2'), radii eps and noise sigmas in pixel units (images
lie in [0, 1]), and the loss the gradient attacks ascend ('ce64', 'ce32'; see
:mod:`jrbench.evaluate.attacks`). The data set's defaults (eps grids, noise grid, the radius at which
a working attack leaves about chance) come from its :class:`jrbench.data.datasets.Defaults`.
Nothing here imports torch: :mod:`jrbench.evaluate.attacks` runs a config.

Which attacks run is one rule, :func:`select_attacks`, shared by ``jrbench attack`` and a study's
``[attack]`` table: naming selects. Attacks named true (``--pgd``, ``pgd = true``; an AutoAttack
grid names AutoAttack; ``--corruption`` or ``--severity`` names the corruptions) run, and only
they; when none is named true, noise, PGD and FGSM run, less those named false (``--no-noise``,
``noise = false``). :func:`build_attack_config` is the one builder of both: it applies the rule and
validates the config once.

The common corruptions (Hendrycks and Dietterich 2019; ``--corruptions``, run by
:mod:`jrbench.evaluate.corruptions`) are named here, light: :data:`CORRUPTIONS` (name -> family),
the default list of a data set (:func:`default_corruptions`) and the severities.
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
# Random perturbations, not adversarial ones: no worst case, bracket or soundness check counts them
# (white noise; the common corruptions, whose attacks.csv rows say attack 'corruption', the
# corruption's name in 'norm' and the severity in 'strength').
RANDOM_ATTACKS = ("noise", "corruption")
CORRUPTION = "corruption"  # the attack name of the corruption rows of attacks.csv

# The corruptions of imagecorruptions (the ImageNet-C set of Hendrycks and Dietterich 2019) and
# their families; the first 15 are the benchmark's common corruptions, the last four its held-out
# extras (speckle noise, Gaussian blur, spatter, saturate), named only on request.
FAMILIES = ("noise", "blur", "weather", "digital")
CORRUPTIONS = {
    "gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise",
    "defocus_blur": "blur", "glass_blur": "blur", "motion_blur": "blur", "zoom_blur": "blur",
    "snow": "weather", "frost": "weather", "fog": "weather", "brightness": "weather",
    "contrast": "digital", "elastic_transform": "digital", "pixelate": "digital", "jpeg_compression": "digital",
    "speckle_noise": "noise", "gaussian_blur": "blur", "spatter": "weather", "saturate": "digital",
}
COMMON_CORRUPTIONS = tuple(CORRUPTIONS)[:15]
# MNIST-C's corruptions (Mu and Gilmer 2019) that the library has: the rest of MNIST-C (shear,
# scale, rotate, translate, stripe, dotted line, zigzag, Canny edges) is not in it
MNIST_C_CORRUPTIONS = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "brightness", "fog", "spatter")
# names of several corruptions at once (--corruption mnist-c, --corruption blur)
CORRUPTION_SETS = {"common": COMMON_CORRUPTIONS, "mnist-c": MNIST_C_CORRUPTIONS, "all": tuple(CORRUPTIONS),
                   **{family: tuple(n for n in COMMON_CORRUPTIONS if CORRUPTIONS[n] == family) for family in FAMILIES}}
# Refused on a data set of this many channels, with the reason (not silently left out)
GREY_REFUSED = {"saturate": "it scales colour saturation, and a greyscale image has none (severities 1-3 leave "
                            "it unchanged, 4-5 tint it: neither is a corruption of a grey image)"}
SEVERITIES = (1, 2, 3, 4, 5)


def default_corruptions(dataset_name=None) -> list[str]:
    """The corruptions ``--corruptions`` runs on a data set when none is named: the 15 common ones
    (:data:`COMMON_CORRUPTIONS`; every one works on 28x28 grey and 32x32 colour images, see
    docs/corruptions.md) less those refused on its channels (:data:`GREY_REFUSED`: none of the 15)."""
    channels = 3
    if dataset_name is not None:
        from ..data.datasets import info_of

        channels = info_of(dataset_name).input_shape[0]
    return [n for n in COMMON_CORRUPTIONS if channels != 1 or n not in GREY_REFUSED]


def expand_corruptions(names) -> list[str]:
    """Corruption names with the sets of :data:`CORRUPTION_SETS` expanded, in the order given, each once."""
    out: list[str] = []
    for name in names:
        for n in CORRUPTION_SETS.get(name, (name,)):
            if n not in out:
                out.append(n)
    return out


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
    examples, None the whole test set; the gradient attacks take ``n_examples`` there. The common
    corruptions (``corruptions``, off by default; :mod:`jrbench.evaluate.corruptions`) run on the
    gradient attacks' examples: ``corruption_names`` None is the data set's list
    (:func:`default_corruptions`; a set such as 'mnist-c' is expanded by :meth:`filled`),
    ``severities`` None all five."""

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
    corruptions: bool = option(False, tristate=True, flag="--corruptions/--no-corruptions",
                               help="The common corruptions (imagecorruptions, the ImageNet-C set) at severities 1-5 on "
                                    "the fixed test examples, one seeded copy per example (docs/corruptions.md).")
    corruption_names: list[str] | None = option(
        None, key="corruption", flag="--corruption", repeat=True, choices=tuple(CORRUPTIONS) + tuple(CORRUPTION_SETS),
        metavar="NAME",
        help="A corruption (gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, "
             "snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression; extras: "
             "speckle_noise, gaussian_blur, spatter, saturate) or a set (common, mnist-c, all, noise, blur, weather, "
             "digital); repeat for several (default: the data set's list, the 15 common ones).")
    severities: list[int] | None = option(None, key="severity", flag="--severity", repeat=True, low=1, high=5,
                                          metavar="K",
                                          help="Corruption severity, 1-5; repeat for several (default all five).")
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
        """The grids the selected attacks use that are left None: ``sigmas`` (noise), the
        ``eps_*`` of :meth:`eps_norms`, and the corruptions' ``corruption_names`` (also when it
        names a set, to be expanded) and ``severities``."""
        names = ["sigmas"] if self.noise and self.sigmas is None else []
        names += [f"eps_{n}" for n in self.eps_norms() if getattr(self, f"eps_{n}") is None]
        if self.corruptions:
            if self.corruption_names is None or any(n in CORRUPTION_SETS for n in self.corruption_names):
                names.append("corruption_names")
            if self.severities is None:
                names.append("severities")
        return names

    def filled(self, dataset_name) -> "AttackConfig":
        """A copy whose :meth:`unfilled` grids are the data set's defaults (:func:`default_sigmas`,
        :func:`default_eps`, :func:`default_corruptions`, all five severities; sets of corruptions
        expanded); itself when none is left None. Raises :class:`UserError` for a corruption the data
        set's images cannot take (:data:`GREY_REFUSED`)."""
        grids: dict[str, Any] = {}
        for name in self.unfilled():
            if name == "sigmas":
                grids[name] = default_sigmas(dataset_name)
            elif name == "corruption_names":
                grids[name] = (default_corruptions(dataset_name) if self.corruption_names is None
                               else expand_corruptions(self.corruption_names))
            elif name == "severities":
                grids[name] = list(SEVERITIES)
            else:
                grids[name] = default_eps(dataset_name, name[len("eps_"):])
        if self.corruptions and dataset_name is not None:
            from ..data.datasets import info_of

            if info_of(dataset_name).input_shape[0] == 1:
                for name in grids.get("corruption_names", self.corruption_names):
                    if name in GREY_REFUSED:
                        raise field_error(AttackConfig, "corruption_names", f"names {name}, which a greyscale data "
                                          f"set cannot take: {GREY_REFUSED[name]}.")
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
        if not (self.noise or self.pgd or self.fgsm or self.autoattack or self.corruptions):
            raise UserError("no attack selected: enable at least one of noise, pgd, fgsm, "
                            "autoattack, corruptions.")
        check(self)
        own_aa = self.autoattack_eps_linf is not None or self.autoattack_eps_l2 is not None
        if (self.pgd or (self.autoattack and not own_aa)) and len(self.norms) == 0:
            raise field_error(AttackConfig, "norms", f"is empty: PGD and AutoAttack need at least one of "
                                                     f"{', '.join(NORMS)}.")


def select_attacks(noise: bool | None = None, pgd: bool | None = None, fgsm: bool | None = None,
                   autoattack: bool | None = None, aa_grids_given: bool = False, corruptions: bool | None = None,
                   corruptions_named: bool = False) -> dict[str, bool]:
    """Which attacks run, the one rule of ``jrbench attack`` and of a study's ``[attack]`` table:
    naming selects. Each attack is True (named: ``--pgd``, ``pgd = true``), False (``--no-pgd``,
    ``pgd = false``) or None (not said); an AutoAttack grid (``aa_grids_given``) names AutoAttack,
    a corruption or severity list (``corruptions_named``) the corruptions.
    If any attack is named True, exactly those run; else noise, PGD and FGSM run
    (:data:`DEFAULT_ATTACKS`) less those named False. Returns {attack: on} over :data:`ATTACKS`
    and ``corruptions``.

    >>> select_attacks(autoattack=True)["noise"], select_attacks(noise=False)["pgd"]
    (False, True)
    """
    said = {"noise": noise, "pgd": pgd, "fgsm": fgsm, "autoattack": autoattack, "corruptions": corruptions}
    for name, value in said.items():
        if value is not None and not isinstance(value, bool):
            raise field_error(AttackConfig, name, f"must be true or false, got {value!r}.")
    if aa_grids_given:
        if autoattack is False:
            raise field_error(AttackConfig, "autoattack", "is off but an AutoAttack grid (autoattack_eps_linf or "
                            "autoattack_eps_l2) is given: drop one of them.")
        said["autoattack"] = True
    if corruptions_named:
        if corruptions is False:
            raise field_error(AttackConfig, "corruptions", "is off but corruptions or severities (corruption, "
                              "severity) are given: drop one of them.")
        said["corruptions"] = True
    if any(value is True for value in said.values()):
        return {name: value is True for name, value in said.items()}
    return {name: name in DEFAULT_ATTACKS and value is not False for name, value in said.items()}


def build_attack_config(*, noise: bool | None = None, pgd: bool | None = None, fgsm: bool | None = None,
                        autoattack: bool | None = None, corruptions: bool | None = None,
                        sigmas: Sequence[float] | None = None, **settings: Any) -> AttackConfig:
    """The validated :class:`AttackConfig` of ``jrbench attack``'s options or a study's ``[attack]``
    table (their one builder): the attacks by :func:`select_attacks` (tri-state: None is "not
    said"), ``sigmas`` None the data set's default noise grid (:meth:`AttackConfig.filled`), the
    other ``settings`` AttackConfig's fields. Validated as it is built; raises :class:`UserError`
    (and TypeError for an unknown field)."""
    aa_grids = any(settings.get(f"autoattack_eps_{n}") is not None for n in NORMS)
    named = any(settings.get(k) is not None for k in ("corruption_names", "severities"))
    selected = select_attacks(noise, pgd, fgsm, autoattack, aa_grids_given=aa_grids, corruptions=corruptions,
                              corruptions_named=named)
    return AttackConfig(**selected, sigmas=sigmas, **settings)
