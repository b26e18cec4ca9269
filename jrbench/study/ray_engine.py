"""The Ray engine of ``jrbench sweep --engine ray``: every cell of a study is one Ray task.

Ray (``pip install 'jrbench[ray]'``) is imported here only, and only when the engine runs.
Without an address Ray starts on this machine's cores; with ``address`` ("auto",
"HOST:6379", "ray://HOST:10001") or ``$RAY_ADDRESS`` the sweep joins that cluster. Every node
needs jrbench (the same version) and its data (``$JRBENCH_DATA`` or the spec's ``data_dir``).
Joining is bounded (``connect_timeout``, 30 s): the address's port is probed first, so an address
where nothing listens fails at once with a :class:`UserError`, before anything is written; then a
child process joins and leaves (:func:`check_join`), and only a cluster that accepted it is joined
here, so a join given up never leaves Ray's client retrying in this process (whose C++ teardown
can then abort it at exit instead of the exit code 2 of the message).

Each task runs :func:`jrbench.study.sweep.run_cell`, the local engine's code, on
:func:`jrbench.study.sweep.cell_threads` threads, and asks Ray for the spec's ``[resources]``
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

from ..config import RunConfig
from ..errors import NonFiniteLoss, UserError
from .sweep import CellStatus, cell_threads, failure_message, is_done, run_cell, status_at
from .spec import SweepSpec

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
    from ..training.rundir import atomic_write_bytes

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

    from ..training.loop import train

    host, pid = socket.gethostname(), os.getpid()
    posted = []  # the last message's reference: calls to one actor run in order

    def post(state: str, detail: str = "") -> None:
        if board is not None:
            posted[:] = [board.post.remote(index, state, host, pid, detail)]

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
        if posted:  # every message is on the board before the result: none arrives after the cell ends
            ray.wait(posted, timeout=30)
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- the driver
CONNECT_TIMEOUT_S = 30.0  # default of --connect-timeout: how long joining a cluster may take
START_A_CLUSTER = ("Start one with 'ray start --head --port=6379' and pass --address HOST:6379 (or auto on "
                   "that machine), or leave --address out (and $RAY_ADDRESS unset) to run on this machine's cores.")


def _split_host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` as (host, port); a UserError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        host, port = address, str(default_port) if default_port is not None else ""
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379), auto or ray://HOST:10001.")
    return host, int(port)


def dial_address(address: str) -> tuple[str, int] | None:
    """The (host, port) that joining ``address`` dials: the head's GCS for ``HOST:PORT`` and ``auto``
    (resolved as ``ray.init`` does: a local host becomes this machine's node IP; ``auto`` reads
    ``$RAY_ADDRESS``, then the address file of the cluster ``ray start`` made here), the Ray Client
    server for ``ray://HOST[:PORT]`` (port 10001 by default); None for another ``scheme://``, which
    only the connection timeout bounds. Raises :class:`UserError` when ``auto`` finds no cluster."""
    if "://" in address:
        scheme, _, rest = address.partition("://")
        return _split_host_port(rest.split("/")[0], 10001) if scheme == "ray" else None
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray layout: dial what was given
        return None if address == "auto" else _split_host_port(address)
    try:
        resolved = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError, OSError) as e:
        if address == "auto":
            raise UserError(f"--address auto found no Ray cluster on this machine (no address file of "
                            f"'ray start', no running head). {START_A_CLUSTER}") from e
        raise UserError(f"--address {address!r} is not a Ray address ({e}); use HOST:6379, auto or "
                        "ray://HOST:10001.") from e
    if resolved is None:  # "local": Ray would start here
        return None
    return _split_host_port(resolved)


def probe(address: str, seconds: float, name: str | None = None) -> None:
    """A TCP connection to the port that joining ``address`` dials, within ``seconds``: a
    :class:`UserError` naming the address (as ``name``, default the address) and how to start a
    cluster when nothing answers, so that a wrong address fails at once instead of after Ray's
    retries (minutes)."""
    where = dial_address(address)
    if where is None:
        return
    host, port = where
    import socket

    try:
        with socket.create_connection((host, port), timeout=seconds):
            pass
    except OSError as e:
        dialled = "" if f"{host}:{port}" in address else f" (dialled as {host}:{port})"
        reason = (f"no answer within --connect-timeout {seconds:g} s" if isinstance(e, socket.timeout)
                  else (e.strerror or type(e).__name__).lower())
        raise UserError(f"no Ray cluster answers at {name or address}{dialled}: {reason}. "
                        f"{START_A_CLUSTER}") from e


# Run by check_join in a child process: joins ``address`` as a driver within ``seconds`` (counted
# after Ray is imported) and prints the outcome as one JSON line. It ends with os._exit, so an
# unfinished join (Ray's C++ client still retrying in its thread) never reaches the teardown that
# can abort a process (std::bad_alloc): that may happen to this helper, never to the caller.
_JOIN_CHECK = r"""
import json, os, sys, threading
address, seconds = sys.argv[1], float(sys.argv[2])
import ray
outcome, done = {}, threading.Event()
def join():
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        ray.shutdown()
        outcome["joined"] = True
    except BaseException as e:
        outcome["error"] = f"{type(e).__name__}: {e}"
    done.set()
threading.Thread(target=join, daemon=True).start()
if not done.wait(seconds):
    outcome["timeout"] = True
sys.stdout.write("jrbench-join " + json.dumps(outcome) + "\n")
sys.stdout.flush()
os._exit(0)
"""
JOIN_CHECK_START_S = 300.0  # what the helper may take to start Python and import Ray (loaded machines)


def check_join(address: str, seconds: float, late: str, name: str | None = None) -> None:
    """Join ``address`` as a Ray driver in a child process, within ``seconds`` once it has imported
    Ray, and leave again: a :class:`UserError` saying ``late`` when the join does not finish in
    time (a port that answers but is no Ray head: Ray retries for minutes), or naming the address
    (as ``name``) and Ray's error when it fails. Only a cluster that accepted the child is joined
    by this process, so a join given up never leaves Ray's client running here, whose teardown at
    exit can abort the process instead of letting it exit with its code."""
    import json
    import subprocess
    import sys

    try:
        child = subprocess.run([sys.executable, "-c", _JOIN_CHECK, address, repr(float(seconds))],
                               capture_output=True, text=True, timeout=seconds + JOIN_CHECK_START_S,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:  # the child is killed by now
        raise UserError(f"cannot join the Ray cluster at {name or address}: a Python process trying it did "
                        f"not finish within {seconds + JOIN_CHECK_START_S:g} s. {START_A_CLUSTER}") from e
    lines = [line for line in child.stdout.splitlines() if line.startswith("jrbench-join ")]
    if not lines:
        said = next((line for line in reversed(child.stderr.splitlines()) if line.strip()), "no output")
        raise UserError(f"cannot join the Ray cluster at {name or address}: a Python process trying it "
                        f"ended with exit code {child.returncode} ({said[:300]}). {START_A_CLUSTER}")
    outcome = json.loads(lines[-1].removeprefix("jrbench-join "))
    if outcome.get("timeout"):
        raise UserError(late)
    if "error" in outcome:
        raise UserError(f"cannot join the Ray cluster at {name or address}: {outcome['error'][:500]}. "
                        f"{START_A_CLUSTER}")


def _init_within(ray, seconds: float, error: str, **options) -> None:
    """``ray.init(**options)`` in a helper thread, given up after ``seconds`` (a UserError saying ``error``): Ray's
    own retries against a port that answers but is no Ray head last minutes. An init that
    finishes after it was given up shuts down again."""
    import threading

    lock, done, outcome = threading.Lock(), threading.Event(), {}

    def target() -> None:
        try:
            ray.init(**options)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e
        with lock:
            done.set()
            late = outcome.get("abandoned") and "error" not in outcome
        if late:
            ray.shutdown()

    threading.Thread(target=target, name="jrbench-ray-init", daemon=True).start()
    done.wait(seconds)
    with lock:
        if not done.is_set():
            outcome["abandoned"] = True
            raise UserError(error)
    if "error" in outcome:
        raise outcome["error"]


def connect(ray, address: str | None, *, connect_timeout: float = CONNECT_TIMEOUT_S,
            verbose: bool = False) -> bool:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``) within ``connect_timeout`` seconds (a
    child process's join first, see :func:`check_join`, then this process's, each so bounded), or
    start Ray on this machine's cores (not bounded: starting takes what it takes); reuse a
    connection this process already has. True when this call connected. Ray's log lines (its
    'ray' loggers, the workers' output) stay out of the console unless ``verbose``; a :class:`UserError`
    names the address and how to start a cluster when none answers."""
    import logging

    if ray.is_initialized():
        return False
    if not connect_timeout > 0:
        raise UserError(f"--connect-timeout must be > 0 seconds, got {connect_timeout:g}.")
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("ray").setLevel(level)  # before ray.init, which sets the same
    name = address
    if not address and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        name = f"{address} ($RAY_ADDRESS)"
    options = dict(log_to_driver=verbose, logging_level=level)
    try:
        if address and address != "local":
            probe(address, connect_timeout, name)
            late = (f"the Ray cluster at {name} did not accept this driver within --connect-timeout "
                    f"{connect_timeout:g} s (its port answers: is it a Ray head's port, with the same Ray "
                    f"version?). {START_A_CLUSTER}")
            check_join(address, connect_timeout, late, name)  # in a child: see check_join
            _init_within(ray, connect_timeout, late, address=address, **options)
        else:  # start Ray here ("local": a new instance even where one runs)
            ray.init(address=address, include_dashboard=False, **options)
    except UserError:
        raise
    except Exception as e:  # ConnectionError, a version mismatch, a bad address: say what was tried
        joining = address and address != "local"
        where = f"join the Ray cluster at {name}" if joining else "start Ray on this machine"
        raise UserError(f"cannot {where}: {type(e).__name__}: {e}. {START_A_CLUSTER}") from e
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
                  poll_seconds: float = 0.2, connect_timeout: float = CONNECT_TIMEOUT_S,
                  verbose: bool = False) -> list[CellStatus]:
    """Run every unfinished cell of ``spec`` as a Ray task; return the final statuses in cell order.

    Independent cells run at the same time, as the cluster's resources allow. A failed cell's
    status carries its ``error``. ``on_event`` gets every change of state (from this thread).
    Joining ``address`` takes at most ``connect_timeout`` seconds (see :func:`connect`; Ray's
    log lines only with ``verbose``). Raises :class:`UserError` without Ray or a cluster to join
    (before anything is written); Ctrl-C (KeyboardInterrupt)
    cancels the tasks still running and is raised again once the finished cells are written.
    """
    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}.")
    if not connect_timeout > 0:
        raise UserError(f"--connect-timeout must be > 0 seconds, got {connect_timeout:g}.")
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
    started_here = connect(ray, address, connect_timeout=connect_timeout, verbose=verbose)
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
