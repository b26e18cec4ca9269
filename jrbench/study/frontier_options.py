"""What ``jrbench frontier`` weighs: :class:`FrontierConfig` (light: the command line builds its options from it).

The robustness columns (the PGD-L∞ radius and the noise sigma), the overhead goal and the
non-inferiority margin of :func:`jrbench.study.frontier.frontier`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schema import check, option

MARGIN_POINTS = 3.0  # default non-inferiority margin delta for accuracies, percentage points


@dataclass(frozen=True)
class FrontierConfig:
    """The options of ``jrbench frontier``: which robustness columns, the goal and the margin."""

    eps_linf: float = option(0.1, low=0, high=1, unit="pixel units",
                             help="L-inf radius of the robustness column (pixel units).")
    sigma: float = option(0.5, low=0, unit="pixel units", help="Noise sigma of the noise column (pixel units).")
    goal_ratio: float = option(1.3, low=0, open_low=True, help="The overhead goal (x plain).")
    margin: float = option(MARGIN_POINTS, low=0, high=100, open_low=True, open_high=True, unit="accuracy points",
                           help="Non-inferiority margin delta (accuracy points): 'not worse' when the one-sided 95% "
                                "lower bound of (setting - full n=1) lies above -delta.")

    def __post_init__(self) -> None:
        check(self)
