"""How a study's cells run: :class:`EngineOptions`, ``jrbench sweep``'s engine options (light: no torch).

Not part of the study (a spec says what is run, not where): the local engine
(:mod:`jrbench.study.sweep`) or Ray (:mod:`jrbench.study.ray_engine`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schema import check, field_error, option

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineOptions:
    """How a study's cells run (``jrbench sweep``'s options; not part of the study): the local
    engine, cell after cell in this process, or Ray, every cell a task."""

    engine: str = option("local", choices=ENGINES,
                         help="local: cell after cell in this process; ray: every cell a Ray task (pip install "
                              "'jrbench\\[ray]').")
    address: str | None = option(None, help="--engine ray: the cluster to join: auto, HOST:6379 or ray://HOST:10001 "
                                            "(default $RAY_ADDRESS, else start Ray on this machine's cores).")
    retries: int = option(2, low=0, help="--engine ray: run a cell again up to this many times when its worker or "
                                         "node is lost.")
    shared_dir: bool = option(False, flag="--shared-dir",
                              help="--engine ray: workers write in place (every node sees the output folder at the "
                                   "same path); a retried cell resumes from its last epoch.")
    connect_timeout: float = option(30.0, low=0, open_low=True, unit="seconds",
                                    help="--engine ray: seconds to join the cluster at --address before giving up "
                                         "with a message (exit 2).")
    verbose: bool = option(False, flag="--verbose",
                           help="--engine ray: show Ray's own log lines and the workers' output.")

    def __post_init__(self) -> None:
        check(self)
        if self.engine == "local" and (self.address or self.shared_dir):
            raise field_error(EngineOptions, "address" if self.address else "shared_dir",
                              "applies to --engine ray only.")
