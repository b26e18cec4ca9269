"""Which outside model: :class:`OutsideModelConfig`, the options of attack, margins and certify for a
model jrbench did not train (light: the command line builds its options from it).

An outside model is a ``torch.export`` ``.pt2`` program or a ``module:function`` factory named
where a run directory would be; :func:`jrbench.evaluate.outside.resolve_sources` loads it with
these options. They are no spec keys: a study trains its own models (``COMMAND_ONLY`` in
:mod:`jrbench.schema` says so for each).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..schema import check, option


@dataclass(frozen=True)
class OutsideModelConfig:
    """The data set, weights, input normalization and result folder of an outside model."""

    dataset: str | None = option(None, spec=False, flag="--dataset",
                                 help="Data set of an outside model (.pt2 or module:function); required for one.")
    weights: Path | None = option(None, spec=False,
                                  help="State dict for a 'module:function' factory (loaded strictly).")
    input_normalized: str | None = option(
        None, spec=False,
        help="The outside model expects z = (x - MEAN) / STD: 'MEAN,STD' or per channel 'M1,M2,M3,S1,S2,S3'; "
             "jrbench normalizes in front, radii stay in pixels.")
    out: Path | None = option(None, spec=False, flag="--out",
                              help="Result folder of an outside model (default results/models/NAME).")

    def __post_init__(self) -> None:
        check(self)
