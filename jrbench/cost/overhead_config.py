"""What ``jrbench overhead`` times: :class:`OverheadConfig` (light: the command line builds its options from it).

The cases (plain SGD, the Jacobian penalty at several projection counts, sub-sampling, every
k-th step, the forward-mode estimator, the Lipschitz constraint, noise augmentation, the margin loss
of 1-Lipschitz models, IBP and CROWN-IBP training, the per-row reference) are timed interleaved by
:func:`jrbench.cost.overhead.run_overhead`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import JR_BACKENDS
from ..schema import check, option


@dataclass
class OverheadConfig:
    dataset: str = option("synth-digits", help="Data set the batch comes from.")
    model: str = option("lenet", help="Model to time.")
    batch_size: int = option(64, low=1, help="Training batch size.")
    n_projs: tuple[int, ...] = option((1, 3, -1), key="n_proj", flag="--n-proj", repeat=True, empty_ok=True,
                                      help="Random projections per sample of the Jacobian penalty; -1 for the exact "
                                           "value. Repeat to time several (default 1, 3, -1).")
    subsamples: tuple[int, ...] = option((16, 32), key="jr_subsample", flag="--jr-subsample", repeat=True, low=1, empty_ok=True,
                                         help="Compute the Jacobian penalty on this many samples K of each batch "
                                              "(timed with n=1). Repeat to time several (default 16 and 32).")
    everys: tuple[int, ...] = option((), key="jr_every", flag="--jr-every", repeat=True, low=1, empty_ok=True,
                                     help="Also time n=1 on every k-th step; repeat.")
    jvp: bool = option(False, flag="--jvp", help="Also time the forward-mode estimator (--jr-estimator jvp, n=1).")
    jr_backend: str = option("auto", choices=JR_BACKENDS,
                             help="Penalty path: auto (tape where the net allows), tape or autograd.")
    random_batch: bool = option(False, flag="--random-batch",
                                help="Time on uniform pixels of the data set's shape (no data files needed).")
    reference: bool = option(True, flag="--reference/--no-reference",
                             help="Also time the per-row autograd reference of the exact penalty.")
    pairs: int = option(20, low=1, help="Interleaved timing pairs (after warm-up).")
    warmup: int = option(3, low=0, help="Untimed warm-up rounds.")
    seed: int = 0
    device: str = option("auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N.",
                         metavar="<auto|cpu|cuda|cuda:N>")
    data_dir: str | None = option(None, help="Data folder (default: $JRBENCH_DATA, else ~/.cache/jrbench).",
                                  metavar="PATH")
    lipschitz: bool = option(False, flag="--lipschitz",
                             help="Also time --reg lipschitz (the weights projected after each step).")
    noise: bool = option(False, flag="--noise", help="Also time --reg noise (Gaussian data augmentation).")
    lipschitz_margin: bool = option(False, flag="--lipschitz-margin",
                                    help="Also time --reg lipschitz-margin (the margin loss; a 1-Lipschitz --model).")
    gloro: bool = option(False, flag="--gloro", help="Also time --reg gloro (GloRo's bottom-class loss; a "
                                                     "1-Lipschitz --model).")
    ibp: bool = option(False, flag="--ibp", help="Also time --reg ibp (certified training against interval "
                                                 "bounds, after the warm-up).")
    crown_ibp: bool = option(False, flag="--crown-ibp", help="Also time --reg crown-ibp during its ramp (the "
                                                             "backward CROWN pass on every step).")

    def __post_init__(self) -> None:
        check(self)
