"""The Ray engine of ``jrbench sweep --engine ray``: every cell of a study is one Ray task.

Ray (``pip install 'jrbench[ray]'``) is imported here only, and only when the engine runs.
Without an address Ray starts on this machine's cores; with ``address`` ("auto",
"HOST:6379", "ray://HOST:10001") or ``$RAY_ADDRESS`` the sweep joins that cluster. Every node
needs jrbench (the same version) and its data (``$JRBENCH_DATA`` or the spec's ``data_dir``).

Each task runs :func:`jrbench.sweep.run_cell`, the local engine's code, on
:func:`jrbench.sweep.cell_threads` threads, and asks Ray for the spec's ``[resources]``
(``num_cpus``, default 1; ``num_gpus``, default 0, or 1 with ``device="cuda"``); a cell granted
a GPU trains on it. Where results land:

- **returned files** (default): the task works in a temporary folder of its node (seeded with
  whatever the driver already had of the cell) and returns the cell's files as bytes; the
  driver writes them atomically into the run directory, in the order the task finished them.
  A retried cell starts again from what the driver had when it was submitted.
- **shared_dir**: the task writes in place in the run directory, which every node must see at
  the same absolute path; a retried cell resumes training from its last checkpoint.

Faults: a worker process killed or a node lost is a system failure, and Ray runs the cell
again, up to ``retries`` times. A cell that raises (bad input, a diverged loss, a bug) fails
alone with its message; the others go on. Ctrl-C cancels every task not yet finished; finished
cells are already written, and running the sweep again resumes.
"""
from __future__ import annotations

import dataclasses
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig
from .errors import NonFiniteLoss, UserError
from .sweep import CellStatus, cell_threads, failure_message, is_done, run_cell, status_at
from .sweep_spec import SweepSpec

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass
class CellEvent:
    """One change of a cell's state, for progress displays."""
    index: int              # 1-based position of the cell in the study
    run_id: str
    state: str              # queued, running, train, attack, margins, certify, done, failed
    host: str = ""          # the node (host name) the cell runs on
    pid: int | None = None  # its worker process there
    attempt: int = 0        # 1 on the first try, 2 on the first retry, ...
    detail: str = ""        # "epoch 2/4", "already done", or why it failed


@dataclass
class CellReturn:
    """What a task sends back: the cell's files (empty with a shared folder) and its error."""
    host: str
    threads: int
    files: list[tuple[str, bytes]] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise UserError("--engine ray needs Ray, which is not installed: pip install 'jrbench[ray]'") from e
    return ray


# ----------------------------------------------------------------------------- files
def pack_files(run_dir: Path) -> list[tuple[str, bytes]]:
    """The finished files of a run directory (temporary '.*' files left out) as (relative path,
    bytes), oldest first: writing them in this order keeps the order in which they were finished
    (model.pt after metrics.csv and checkpoint.pt, attacks.csv after the per-example table)."""
    if not run_dir.is_dir():
        return []
    paths = [p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    paths.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [(str(p.relative_to(run_dir)), p.read_bytes()) for p in paths]


def write_files(run_dir: Path, files: list[tuple[str, bytes]]) -> None:
    """Write returned files into ``run_dir``, each atomically, in the given order."""
    from .rundir import atomic_write_bytes

    for name, data in files:
        target = (run_dir / name).resolve()
        if run_dir.resolve() not in target.parents:
            raise UserError(f"a returned file {name!r} lies outside its run directory {run_dir}.")
        atomic_write_bytes(target, data)


# ----------------------------------------------------------------------------- the task
class _Board:
    """A Ray actor collecting the tasks' progress; the driver drains it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def post(self, *event) -> None:
        self.events.append(event)

    def drain(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def _cell_task(spec: SweepSpec, config: RunConfig, index: int, device: str, shared_dir: bool,
               files: list[tuple[str, bytes]], board) -> CellReturn:
    """One cell on a Ray worker: run_cell in the shared run directory or in a temporary folder."""
    import shutil
    import socket
    import tempfile

    import ray

    from .training import train

    host, pid = socket.gethostname(), os.getpid()

    def post(state: str, detail: str = "") -> None:
        if board is not None:
            board.post.remote(index, state, host, pid, detail)

    if device == "auto":  # the cell trains on a GPU only if Ray granted it one
        device = "cuda" if ray.get_gpu_ids() else "cpu"
    post(RUNNING)
    run_id = config.run_id()
    tmp = None
    if shared_dir:
        run_dir = spec.folder / run_id
    else:
        tmp = Path(tempfile.mkdtemp(prefix="jrbench-cell-"))
        run_dir = tmp / run_id  # attacks.csv names the run by its folder
        run_dir.mkdir()
        for name, data in files:
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_bytes(data)

    def train_cell(config: RunConfig, run_dir: Path):
        epochs = config.train.epochs
        return train(config, run_dir, resume=True,
                     on_epoch=lambda row: post("train", f"epoch {row['epoch']}/{epochs}"))

    try:
        result = CellReturn(host, cell_threads(spec.resources.num_cpus))
        try:
            run_cell(spec, config, run_dir, device, train_cell=train_cell, on_step=post)
        except Exception as e:  # the cell fails alone; what it finished is still returned
            # messages name the run directory the driver writes, not this temporary one
            result.error = failure_message(e).replace(str(run_dir), str(spec.folder / run_id))
            if not isinstance(e, (UserError, NonFiniteLoss)):
                result.traceback = traceback.format_exc()
        if not shared_dir:
            result.files = pack_files(run_dir)
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- the driver
def connect(ray, address: str | None) -> bool:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``), or start Ray on this machine's
    cores; reuse a connection this process already has. True when this call connected."""
    import logging

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # ConnectionError, a timeout, a bad address: say what was tried
        where = f"join the Ray cluster at {address!r}" if address else "start Ray on this machine"
        raise UserError(f"cannot {where}: {type(e).__name__}: {e}. Start a cluster with "
                        "'ray start --head --port=6379' and pass --address HOST:6379 (or auto).") from e
    return True


def _near_driver(ray):
    """Schedule the progress board on the driver's node where Ray can (so a lost worker node
    does not take it along), else anywhere."""
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    except Exception:  # noqa: BLE001 - e.g. a client connection without a node of its own
        return "DEFAULT"


def _check_feasible(ray, num_cpus: float, num_gpus: float) -> None:
    """A clear error when no node can ever run a cell (its task would wait forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= num_cpus and r.get("GPU", 0) >= num_gpus for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPUs and {r.get('GPU', 0):g} GPUs" for r in nodes) or "no node"
        raise UserError(f"a cell needs {num_cpus:g} CPUs and {num_gpus:g} GPUs ([resources] of the spec, or "
                        f"--device cuda), but Ray here has {have}.")


def _ray_failure(ray, error: Exception, retries: int) -> str:
    """The message of a task Ray gave up on."""
    if isinstance(error, ray.exceptions.RayTaskError):  # e.g. jrbench missing on a node
        return f"the task could not run: {failure_message(error.cause if error.cause else error)}"
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return (f"lost its worker or node on every one of {retries + 1} tries "
            f"({type(error).__name__}: {first[:300]})")


def run_sweep_ray(spec: SweepSpec, *, device: str = "auto", address: str | None = None,
                  retries: int = 2, shared_dir: bool = False,
                  on_event: Callable[[CellEvent], None] | None = None,
                  poll_seconds: float = 0.2) -> list[CellStatus]:
    """Run every unfinished cell of ``spec`` as a Ray task; return the final statuses in cell order.

    Independent cells run at the same time, as the cluster's resources allow. A failed cell's
    status carries its ``error``. ``on_event`` gets every change of state (from this thread).
    Raises :class:`UserError` without Ray or a cluster to join; Ctrl-C (KeyboardInterrupt)
    cancels the tasks still running and is raised again once the finished cells are written.
    """
    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}.")
    ray = import_ray()
    spec = dataclasses.replace(spec, out=spec.out.resolve())  # workers see absolute paths
    folder = spec.folder
    emit = on_event or (lambda event: None)
    statuses: dict[int, CellStatus] = {}
    todo = []
    for index, config in enumerate(spec.cells, 1):
        status = status_at(folder / config.run_id(), config)
        if is_done(spec, status):
            statuses[index] = status
            emit(CellEvent(index, config.run_id(), DONE, detail="already done"))
        else:
            todo.append((index, config))
    if not todo:
        return [statuses[i] for i in sorted(statuses)]

    num_gpus = spec.resources.num_gpus or (1 if device.startswith("cuda") else 0)
    started_here = connect(ray, address)
    board = None
    try:
        if started_here:  # joined clusters may grow (an autoscaler); this machine will not
            _check_feasible(ray, spec.resources.num_cpus, num_gpus)
        board = ray.remote(_Board).options(num_cpus=0, scheduling_strategy=_near_driver(ray)).remote()
        task = ray.remote(_cell_task)
        pending: dict[Any, int] = {}
        attempts: dict[int, int] = {}
        configs = dict(todo)
        for index, config in todo:
            config.train.device = device
            files = [] if shared_dir else pack_files(folder / config.run_id())
            ref = task.options(num_cpus=spec.resources.num_cpus, num_gpus=num_gpus, max_retries=retries,
                               retry_exceptions=False, name=f"jrbench-cell {config.run_id()}").remote(
                spec, config, index, device, shared_dir, files, board)
            pending[ref] = index
            emit(CellEvent(index, config.run_id(), QUEUED))

        def relay() -> None:
            try:
                events = ray.get(board.drain.remote(), timeout=30)
            except ray.exceptions.RayError:  # the board is gone: results still arrive
                return
            for index, state, host, pid, detail in events:
                if index in statuses:
                    continue  # a late message of a finished cell
                if state == RUNNING:
                    attempts[index] = attempts.get(index, 0) + 1
                emit(CellEvent(index, configs[index].run_id(), state, host, pid, attempts.get(index, 1), detail))

        def collect(ref) -> None:
            index = pending.pop(ref)
            config = configs[index]
            run_dir = folder / config.run_id()
            try:
                result: CellReturn = ray.get(ref)
            except ray.exceptions.RayError as e:
                error, trace, host = _ray_failure(ray, e, retries), None, ""
            else:
                write_files(run_dir, result.files)
                error, trace, host = result.error, result.traceback, result.host
            status = status_at(run_dir, config)
            status.error, status.traceback = error, trace
            relay()  # the cell's last steps before its end
            statuses[index] = status
            emit(CellEvent(index, config.run_id(), FAILED if error else DONE, host,
                           attempt=attempts.get(index, 1), detail=error or ""))

        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_seconds)
                relay()
                for ref in ready:
                    collect(ref)
        except KeyboardInterrupt:
            if pending:  # cancel what is not finished, keep what finished meanwhile
                ready, running = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in running:
                    ray.cancel(ref, force=True)
                for ref in ready:
                    collect(ref)
            raise
    finally:
        if board is not None and not started_here:
            try:
                ray.kill(board)
            except Exception:  # noqa: BLE001 - the cluster may be gone already
                pass
        if started_here:
            ray.shutdown()
    return [statuses[i] for i in sorted(statuses)]
