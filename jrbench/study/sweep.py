"""Sweeps run locally: every cell of a study (a :class:`~jrbench.study.spec.SweepSpec`, read by
:func:`jrbench.study.spec.load_spec`) trained, attacked and measured in turn, resumable.

A finished step of a cell (trained, attacked, measured) is skipped, so re-running a sweep
resumes it.

:func:`run_cell` is the work of one cell; :func:`run_sweep` (the local engine) calls it cell
after cell in this process, and ``jrbench.study.ray_engine`` (the Ray engine) calls it in one Ray task
per cell. Both set torch's thread count by :func:`cell_threads`, so a cell computes the same
numbers under either engine.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..config import RunConfig
from ..errors import UserError
from ..evaluate.attack_config import AttackConfig
from ..runtables.examples import ExampleSet
from .spec import SweepSpec


def attack_done(run_dir: str | Path, config: AttackConfig | None = None, examples: ExampleSet | None = None) -> bool:
    """Whether a cell's attack step is finished: attacks.csv and the per-example record
    attack_examples.csv exist (attacks.csv is written last) and, given the study's ``[attack]``
    config (and its ``examples``), attacks.csv has, on the study's ``example_seed``, a row of every attack it asks for
    (noise, pgd, fgsm, autoattack, corruptions; chosen by :func:`jrbench.evaluate.attack_config.select_attacks`)
    and of every strength of its noise and PGD/FGSM grids and every corruption and severity (the run's
    data set's defaults where the table gives none). So a study that adds AutoAttack or a
    strength attacks its finished cells again (``jrbench attack`` adds the missing rows), and so
    does one whose ``n_examples`` (the gradient attacks') or ``noise_examples`` (white noise's)
    differs from the rows' where the table gives it."""
    from ..training import rundir

    run_dir = Path(run_dir)
    if not ((run_dir / "attacks.csv").is_file() and (run_dir / "attack_examples.csv").is_file()):
        return False
    if config is None:
        return True
    examples = examples or ExampleSet()
    if config.unfilled():
        try:  # the run's data set's default grids
            config = config.filled(rundir.load_config(run_dir).data)
        except UserError:
            return False
    try:
        rows = rundir.read_csv(run_dir / "attacks.csv")
        if "example_seed" in rows:
            rows = rows[rows["example_seed"] == examples.example_seed]
        if "n_examples" in rows:
            noise = rows["attack"] == "noise"
            for count, part in ((examples.n_examples, ~noise), (config.noise_examples, noise)):
                if count is not None:
                    rows = rows[~part | (rows["n_examples"] == count)]
        done = {(a, n, round(float(v), 9)) for a, n, v in zip(rows["attack"], rows["norm"], rows["strength"])}
    except (UserError, KeyError, ValueError, TypeError):
        return False
    wanted = {("autoattack",)} if config.autoattack else set()
    if config.noise:
        wanted |= {("noise", "gaussian", round(float(s), 9)) for s in config.sigmas}
    for attack in ("pgd", "fgsm"):
        if getattr(config, attack):
            for norm in config.norms if attack == "pgd" else ("linf",):  # FGSM: L-inf whatever norm says
                wanted |= {(attack, norm, round(float(e), 9)) for e in getattr(config, f"eps_{norm}")}
    if config.corruptions:  # every corruption at every severity (and its clean row, severity 0)
        wanted |= {("corruption", name, round(float(s), 9)) for name in config.corruption_names
                   for s in (0, *config.severities)}
    return all(w[0] in {d[0] for d in done} if len(w) == 1 else w in done for w in wanted)


def margins_done(run_dir: str | Path, spec: SweepSpec) -> bool:
    """Whether a cell's margins step is finished: margins.csv and jacobian.csv exist and
    margins.csv was measured with the study's ``directions``, ``seed`` and example seed (a
    changed ``[margins]`` table measures the cell again; ``n_examples`` alone is not compared)."""
    from ..training import rundir

    run_dir = Path(run_dir)
    if not ((run_dir / "margins.csv").is_file() and (run_dir / "jacobian.csv").is_file()):
        return False
    m = spec.margins
    if m is None:
        return True
    want = {"n_directions": m.directions, "direction_seed": m.seed, "example_seed": spec.margins_examples.example_seed}
    try:
        table = rundir.read_csv(run_dir / "margins.csv")
    except UserError:
        return False
    return all(key not in table or table.empty or (table[key] == value).all() for key, value in want.items())


def certify_done(run_dir: str | Path, spec: SweepSpec) -> bool:
    """Whether a cell's certify step is finished: certify.csv and certify_examples.csv exist and
    certify.csv has a row of every method, norm, strength and sigma the study's ``[certify]``
    asks for, on its examples (``example_seed``, and ``n_examples`` where the study gives it)."""
    from ..training import rundir
    from ..certify.api import CERTIFY_CSV, CERTIFY_EXAMPLES_CSV, NO_SIGMA

    run_dir = Path(run_dir)
    if not ((run_dir / CERTIFY_CSV).is_file() and (run_dir / CERTIFY_EXAMPLES_CSV).is_file()):
        return False
    if spec.certify is None:
        return True
    try:
        table = rundir.read_csv(run_dir / CERTIFY_CSV)
        config = spec.certify.filled(rundir.load_config(run_dir).data)
    except (UserError, KeyError):
        return False
    example_seed = spec.certify_examples.example_seed
    n_examples = spec.certify_examples.n_examples  # None: the data set's, not compared
    table = table[(table["example_seed"] == example_seed)
                  & ((table["n_examples"] == n_examples) if n_examples is not None else True)]
    done = {(m, n, round(float(e), 9), round(float(s), 9))
            for m, n, e, s in zip(table["method"], table["norm"], table["strength"], table["sigma"])}
    wanted = set()
    for method, on in (("lipschitz", config.lipschitz), ("one-lipschitz", config.one_lipschitz), ("ibp", config.ibp),
                       ("smoothing", config.smoothing), ("crown", config.crown), ("alpha-crown", config.alpha_crown),
                       ("complete", config.complete)):
        if not on:
            continue
        norms = ("linf", "l2") if method in ("lipschitz", "one-lipschitz", "crown", "alpha-crown") \
            else ("linf",) if method in ("ibp", "complete") else ("l2",)
        sigmas = config.sigmas if method == "smoothing" else [NO_SIGMA]
        wanted |= {(method, norm, round(float(e), 9), round(float(sigma), 9))
                   for norm in norms for e in getattr(config, f"eps_{norm}") for sigma in sigmas}
    return wanted <= done


@dataclass
class CellStatus:
    run_dir: Path
    trained: bool
    attacked: bool
    measured: bool
    error: str | None = None      # why the cell failed (its message), None when it did not
    traceback: str | None = None  # for a failure that is not a user error: where it happened


def status_at(run_dir: str | Path, config: RunConfig) -> CellStatus:
    """What is done of the cell ``config`` in ``run_dir``: trained (model.pt, the last file an
    epoch writes, holds the last epoch), attacked, measured (their tables exist; after changing
    a study's [attack] grid, run `jrbench attack` on its runs)."""
    from ..training import rundir

    run_dir = Path(run_dir)
    trained = False
    if (run_dir / rundir.MODEL).is_file():
        try:
            trained = int(rundir.torch_load(run_dir / rundir.MODEL).get("epoch", 0)) >= config.train.epochs
        except (UserError, TypeError, ValueError):
            trained = False
    return CellStatus(run_dir, trained, attack_done(run_dir),
                      (run_dir / "margins.csv").is_file() and (run_dir / "jacobian.csv").is_file())


def cell_status(spec: SweepSpec, config: RunConfig) -> CellStatus:
    """What is done of a cell in its run directory of the study (see :func:`status_at`)."""
    return status_at(spec.folder / config.run_id(), config)


def is_done(spec: SweepSpec, status: CellStatus) -> bool:
    """Whether a cell has every step its study asks for."""
    return (status.trained and (spec.attack is None or attack_done(status.run_dir, spec.attack, spec.attack_examples))
            and (spec.margins is None or margins_done(status.run_dir, spec))
            and (spec.certify is None or certify_done(status.run_dir, spec)))


def cell_threads(num_cpus: float) -> int:
    """torch's intra-op threads for a cell granted ``num_cpus`` CPUs: its whole CPUs, at least 1.

    The one rule of every engine: the thread count changes float rounding (lenet, one epoch:
    train CE 2.3495273 on 1 thread, 2.3495271 on 2), so a cell gives the same numbers locally
    and on Ray only with the same count; and concurrent cells do not fight over cores."""
    return max(1, int(num_cpus))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run on ``n`` torch intra-op threads, then restore the caller's count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def failure_message(error: BaseException) -> str:
    """What a failed cell reports: a user error's own message, else the exception's type and text."""
    from ..errors import NonFiniteLoss

    if isinstance(error, (UserError, NonFiniteLoss)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def run_cell(spec: SweepSpec, config: RunConfig, run_dir: str | Path, device: str = "auto", *,
             train_cell: Callable[[RunConfig, Path], Any] | None = None,
             on_step: Callable[[str], None] | None = None,
             on_progress: Callable[[int, int, str], None] | None = None) -> CellStatus:
    """Train, attack and measure one cell in ``run_dir``, skipping the steps done there; return its status.

    Runs on :func:`cell_threads` of the spec's ``num_cpus`` torch threads (the caller's count is
    restored). ``train_cell(config, run_dir)`` trains (default: ``train(..., resume=True)``, so a
    cell stopped mid-training resumes from its last finished epoch); ``on_step(step)`` is called
    with ``"train"``, ``"attack"``, ``"margins"`` or ``"certify"`` before each step that runs, and
    ``on_progress(done, total, label)`` within the attack, margins and certify steps. Raises what the
    steps raise (:class:`UserError` for bad input); files already finished stay whole.
    """
    from ..evaluate.api import attack_run, margins_run
    from ..training.loop import train

    run_dir = Path(run_dir)
    config = RunConfig.from_dict(config.to_dict())  # the spec's cell stays as it was
    config.train.device = device
    # the [attack] table's config, its grids left None the cell's data set's defaults
    attack = spec.attack.filled(config.data) if spec.attack is not None else None
    train_cell = train_cell or (lambda config, run_dir: train(config, run_dir, resume=True))
    report = on_step or (lambda step: None)
    status = status_at(run_dir, config)
    with torch_threads(cell_threads(spec.resources.num_cpus)):
        if not status.trained:
            report("train")
            train_cell(config, run_dir)
        if attack is not None and not attack_done(run_dir, spec.attack, spec.attack_examples):
            report("attack")
            attack_run(run_dir, attack, n_examples=spec.attack_examples.n_examples,
                       example_seed=spec.attack_examples.example_seed, device=device, on_progress=on_progress)
        if spec.margins is not None and not margins_done(run_dir, spec):
            report("margins")
            m, examples = spec.margins, spec.margins_examples
            margins_run(run_dir, n_examples=examples.n_examples, n_directions=m.directions, seed=m.seed,
                        example_seed=examples.example_seed, device=device, batch_size=m.batch_size,
                        on_progress=on_progress)
        if spec.certify is not None and not certify_done(run_dir, spec):
            from ..certify.api import certify_run

            report("certify")
            certify_run(run_dir, spec.certify, n_examples=spec.certify_examples.n_examples,
                        example_seed=spec.certify_examples.example_seed, device=device, on_progress=on_progress)
    return status_at(run_dir, config)


def run_sweep(spec: SweepSpec, *, device: str = "auto",
              train_cell: Callable[[RunConfig, Path], Any] | None = None,
              on_cell: Callable[[int, int, str, str], None] | None = None,
              keep_going: bool = False,
              on_progress: Callable[[int, int, str], None] | None = None) -> list[CellStatus]:
    """The local engine: :func:`run_cell` on every cell in turn, in this process; return the statuses.

    ``train_cell(config, run_dir)`` trains one cell (the CLI passes one with a progress bar);
    ``on_cell(i, n, run_id, step)`` reports overall progress (``step``: train, attack, margins,
    done, failed); ``on_progress`` is :func:`run_cell`'s. With ``keep_going`` a failing cell is recorded in its status's ``error`` and
    the other cells run; without it, the first failure is raised.
    """
    import traceback

    from ..errors import NonFiniteLoss

    statuses = []
    for i, config in enumerate(spec.cells, 1):
        run_dir = spec.folder / config.run_id()
        report = (lambda step: on_cell(i, len(spec.cells), config.run_id(), step)) if on_cell else (lambda step: None)
        try:
            status = run_cell(spec, config, run_dir, device, train_cell=train_cell, on_step=report,
                              on_progress=on_progress)
        except Exception as e:
            if not keep_going:
                raise
            report("failed")
            status = status_at(run_dir, config)
            status.error = failure_message(e)
            if not isinstance(e, (UserError, NonFiniteLoss)):
                status.traceback = traceback.format_exc()
        else:
            report("done")
        statuses.append(status)
    return statuses
