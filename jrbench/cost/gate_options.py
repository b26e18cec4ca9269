"""What ``jrbench gate`` compares: :class:`GateConfig` (light: the command line builds its options from it).

The gate's spec (``benchmarks/overhead_gate.toml``) holds the cases, the tolerance and the time
cap; these are the options a run of :func:`jrbench.cost.gate.run_gate` takes beside it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import JR_BACKENDS
from ..schema import check, option


@dataclass(frozen=True)
class GateConfig:
    """The options of ``jrbench gate`` (and of its old spelling, ``jrbench overhead --gate``)."""

    baseline: str | None = option(None, help="The baseline commit (default: the spec's).")
    jr_backend: str = option("auto", choices=JR_BACKENDS,
                             help="Penalty path: auto (tape where the net allows), tape or autograd.")

    def __post_init__(self) -> None:
        check(self)

    @property
    def reg_options(self) -> dict:
        """The training options both arms run with: the penalty path when one is named."""
        return {} if self.jr_backend == "auto" else {"jr_backend": self.jr_backend}
