"""What a report shows: :class:`ReportConfig`, the options of ``jrbench report`` and of a spec's ``[report]``.

Light (no pandas): the command line builds its options from it;
:meth:`jrbench.report.writer.ReportOptions.from_config` gives the writer's options.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schema import check, option

CORRECTIONS = ("bh", "holm", "none")  # jrbench.stats.CORRECTIONS (a test keeps them equal; no scipy here)


@dataclass
class ReportConfig:
    """The report's options as the user gives them (pixel units)."""

    sigma: list[float] | None = option(
        None, repeat=True, low=0, unit="pixel units",
        help="Noise sigma of the table's noise column (pixel units; default per data set, 0.5 MNIST-like); repeat "
             "for several: a column each.")
    eps_linf: list[float] | None = option(
        None, repeat=True, low=0, unit="pixel units",
        help="L-inf radius of the table's L-inf columns (pixel units; default 0.1 MNIST-like, 8/255 CIFAR); repeat "
             "for several: a column each.")
    eps_l2: list[float] | None = option(
        None, repeat=True, low=0, unit="pixel units",
        help="L2 radius of the table's L2 columns (pixel units; default 1.5 MNIST-like, 0.5 CIFAR); repeat for "
             "several: a column each.")
    per_run: bool = option(False, flag="--per-run", help="One row per run instead of per group of seeds.")
    cells: bool = option(True, flag="--cells/--no-cells",
                         help="Draw decision-cell cross-sections (loads models and data).")
    cell_radius: float | None = option(None, low=0, open_low=True, unit="pixel L2 units",
                                       help="Half-width of the cross-sections (pixel L2; default per data set).")
    cell_grid: int = option(101, low=2, high=1001, help="Cross-section grid points a side.")
    cell_seed: int = option(0, help="Seed of the random directions of the cross-sections.")
    cell_index: int | None = option(None, low=0, help="Test example of the cross-sections (default: the first "
                                                      "every model gets right).")
    cell_panels: int = option(6, low=1, help="At most this many runs side by side per cross-section.")
    correction: str = option("bh", choices=CORRECTIONS,
                             help="Multiplicity correction over the report's verdicts (one family): bh "
                                  "(Benjamini-Hochberg, the false discovery rate), holm (the family-wise error) or "
                                  "none.")

    versus: list[str] | None = option(
        None, repeat=True,
        help="Compare every group with this one on the same data, whatever its model and recipe: REG or "
             "MODEL:REG, regularizers joined by '+' (none, jacobian, lenet:none); repeat for several, each "
             "compared with the groups after it (default: each group against the plain group of its recipe).")

    def __post_init__(self) -> None:
        check(self)
