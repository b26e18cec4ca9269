"""What to measure margins with: :class:`MarginsConfig` (light: the command line builds its options from it).

The examples are an :class:`~jrbench.runtables.examples.ExampleSet` (``jrbench margins``
defaults to 500 of them); the measurements are :mod:`jrbench.evaluate.margins`'.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schema import check, option

MARGIN_EXAMPLES = 500  # jrbench margins' default number of fixed test examples


@dataclass(frozen=True)
class MarginsConfig:
    """Random-direction margins along ``directions`` unit directions per example (seeded by
    ``seed``), in batches of ``batch_size`` examples."""

    directions: int = option(10, low=1, help="Random unit directions per example.")
    seed: int = option(0, low=0, help="Seed of the random directions.")
    batch_size: int = option(500, low=1, help="Examples per batch.")

    def __post_init__(self) -> None:
        check(self)
