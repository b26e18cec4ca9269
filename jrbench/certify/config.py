"""What to certify with: :class:`CertifyConfig`, the certificates and their grids (pixel units).

Light (no torch): the command line builds its options from it. The certificates are described
in :mod:`jrbench.certify.api`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserError
from ..schema import check, field_error, option

METHOD_FLAGS = ("lipschitz", "one_lipschitz", "ibp", "crown", "alpha_crown", "complete",
                "smoothing")  # the certificates' fields


@dataclass
class CertifyConfig:
    """Which certificates, on which grids (pixel units). A grid of None: the data set's default,
    the same as ``jrbench attack``'s, so certificates and attacks line up strength by strength.
    Smoothing: ``n0`` selection draws, ``n`` estimation draws, ``alpha`` the Clopper-Pearson level
    (Cohen et al.'s meanings); ``seed`` seeds its noise per example. On the command line a
    certificate is a flag (none given: Lipschitz and IBP); in a spec's ``[certify]`` table a
    certificate not set to true is off (a study says what it certifies)."""

    lipschitz: bool = option(True, flag="--lipschitz", help="Certified L2 Lipschitz bound of the logits (layer "
                                                           "operator norms) -> L2 and L-inf radii.")
    one_lipschitz: bool = option(False, flag="--one-lipschitz",
                                 help="A 1-Lipschitz network's constant from its construction (aol-mlp, aol-lenet: "
                                      "max 1/std): L2 radius = logit gap / (sqrt(2) L), and L-inf.")
    ibp: bool = option(True, flag="--ibp", help="Interval bound propagation at each L-inf eps.")
    smoothing: bool = option(False, flag="--smoothing", help="Randomized smoothing (Cohen et al. 2019): the "
                                                            "smoothed classifier's certified L2 radius.")
    sigmas: list[float] = option(default_factory=lambda: [0.25], key="sigma", flag="--sigma", repeat=True, low=0,
                                 open_low=True, help="Smoothing noise sigma (pixel units); repeat for several "
                                                     "(default 0.25).")
    n0: int = option(100, low=1, help="Smoothing: noise draws that select the top class.")
    n: int = option(10_000, low=1, help="Smoothing: noise draws that estimate its probability.")
    alpha: float = option(0.001, low=0, high=1, open_low=True, open_high=True,
                          help="Smoothing: failure probability of the certificate.")
    eps_linf: list[float] | None = option(None, repeat=True, low=0, unit="pixel units",
                                          help="L-inf radius grid (default per data set, as attack).")
    eps_l2: list[float] | None = option(None, repeat=True, low=0, unit="pixel units",
                                        help="L2 radius grid (default per data set, as attack).")
    seed: int = option(0, low=0, help="Seed of the smoothing noise (per example).")
    batch_size: int = option(500, low=1, help="Examples per batch (Lipschitz, IBP).")
    smoothing_batch_size: int = option(1000, low=1, help="Noisy images per forward pass (smoothing).")
    crown: bool = option(False, flag="--crown", help="CROWN linear-relaxation bounds (Zhang et al. 2018) at each "
                                                    "L-inf and L2 eps.")
    alpha_crown: bool = option(False, flag="--alpha-crown", help="alpha-CROWN: CROWN with optimized ReLU slopes "
                                                                "(Xu et al. 2021); tighter, slower.")
    complete: bool = option(False, flag="--complete", help="Complete verification (MILP, HiGHS) at each L-inf eps: "
                                                          "verified, falsified or unknown.")
    alpha_steps: int = option(20, low=1, help="alpha-CROWN: optimization steps of the slopes.")
    timeout: float = option(60.0, low=0, open_low=True, help="Complete verification: time budget in seconds per "
                                                            "example and eps (then: unknown).")
    skip: bool = option(True, flag="--skip/--no-skip", help="CROWN, alpha-CROWN, complete: skip examples an attack "
                                                           "of the run broke or a cheaper certificate covers.")

    def __post_init__(self) -> None:
        self.validate()  # checked where it is built (and every dataclasses.replace builds anew)

    def validate(self) -> None:
        """Raise :class:`UserError` (a :class:`~jrbench.schema.FieldError` where one field is
        wrong) naming the bad setting; every construction calls it."""
        if not any(getattr(self, name) for name in METHOD_FLAGS):
            raise UserError("choose at least one certificate: --lipschitz, --one-lipschitz, --ibp, --crown, "
                            "--alpha-crown, --complete or --smoothing.")
        check(self)
        if self.smoothing and self.n0 > self.n:
            raise field_error(CertifyConfig, "n0", f"({self.n0}) must not exceed --n ({self.n}).")

    def settings(self, method: str) -> str:
        if method == "smoothing":
            return f"n0={self.n0} n={self.n} alpha={self.alpha:g} seed={self.seed}"
        skip = " skip" if self.skip else ""
        if method == "crown":
            return "float64" + skip
        if method == "alpha-crown":
            return f"float64 steps={self.alpha_steps}" + skip
        if method == "complete":
            from .tight import PGD_RESTARTS, PGD_STEPS

            return f"milp timeout={self.timeout:g}s pgd={PGD_STEPS}x{PGD_RESTARTS} seed={self.seed}" + skip
        if method == "one-lipschitz":
            return "float64 construction"  # the constant from the layers' construction, no norm computed
        return "float64"  # bounds and logit gaps computed in float64

    def filled(self, dataset) -> "CertifyConfig":
        """A copy whose grids left None are the data set's defaults (sorted, unique); ``dataset``:
        a registered name, a ``DatasetInfo`` or a run's ``DataConfig`` (as ``default_eps``)."""
        from ..evaluate.attack_config import default_eps

        grids = {f"eps_{norm}": sorted(set(getattr(self, f"eps_{norm}") or default_eps(dataset, norm)))
                 for norm in ("linf", "l2")}
        return dataclasses.replace(self, **grids)
