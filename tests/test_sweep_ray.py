"""The Ray engine of jrbench sweep, on a real local Ray instance (two CPUs), not a mock.

Same numbers as the local engine; a worker killed mid-cell is retried; a bad cell fails alone;
Ctrl-C keeps finished cells and a re-run resumes. Also the [resources] table and the thread rule.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from jrbench.cli import app
from jrbench.errors import UserError
from jrbench.study.sweep import cell_status, cell_threads, run_sweep
from jrbench.study.spec import parse_spec

TINY = '''name = "tiny"
[base]
dataset = "synth-digits"
train_subset = {train}
test_subset = 100
epochs = {epochs}
batch_size = 50
[grid]
reg = [["none"], ["jacobian"]]
{more_grid}
'''
MEASURE = '''[attack]
n_examples = 30
sigma = [0.0, 0.3]
draws = 1
eps_linf = [0.05]
eps_l2 = [0.5]
steps = 2
[margins]
n_examples = 10
directions = 2
'''


def tiny_spec(out: Path, *, train: int = 300, epochs: int = 1, measure: bool = True, more_grid: str = ""):
    text = TINY.format(train=train, epochs=epochs, more_grid=more_grid) + (MEASURE if measure else "")
    return parse_spec(text, Path("tiny.toml"), out)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance with two CPUs for the whole module, shut down at its end."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed; make test installs it (pip install -e '.[dev,ray]')")
        pytest.skip("ray is not installed: pip install 'jrbench[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def run_ray(spec, events=None, **kwargs):
    from jrbench.study.ray_engine import run_sweep_ray

    return run_sweep_ray(spec, device="cpu", on_event=events.append if events is not None else None, **kwargs)


def table(path: Path) -> pd.DataFrame:
    """A result table without its wall times (seconds_per_step, epoch_seconds, ...), which vary."""
    df = pd.read_csv(path)
    return df.drop(columns=[c for c in df.columns if "seconds" in c])


# ----------------------------------------------------------------------------- no Ray needed
def test_resources_table_is_parsed_and_checked_with_line_numbers():
    spec = tiny_spec(Path("o"), more_grid="[resources]\nnum_cpus = 2\nnum_gpus = 0.5\n")
    assert (spec.resources.num_cpus, spec.resources.num_gpus) == (2, 0.5)
    assert tiny_spec(Path("o")).resources.num_cpus == 1  # one CPU by default, as Ray's tasks
    text = TINY.format(train=300, epochs=1, more_grid="")
    for table_text, needle in [
        ("[resources]\nnum_cpu = 2\n", "line 12: field 'num_cpu' is not a resource (num_cpus or num_gpus). "
                                       "Did you mean 'num_cpus'"),
        ("[resources]\nnum_cpus = 0\n", "line 12: field 'num_cpus' must be a positive finite number, got 0"),
        ("[resources]\nnum_gpus = -1\n", "line 12: field 'num_gpus' must be zero or positive, got -1"),
        ("[resources]\nnum_cpus = \"two\"\n", "line 12: field 'num_cpus' must be a number"),
    ]:
        with pytest.raises(UserError) as err:
            parse_spec(text + table_text, Path("bad.toml"))
        assert needle in str(err.value), str(err.value)
    with pytest.raises(UserError, match="line 1: field 'resources' must be a table"):
        parse_spec("resources = 3\n" + text, Path("bad.toml"))


def test_thread_rule_is_the_cells_whole_cpus():
    assert [cell_threads(n) for n in (0.5, 1, 1.5, 2, 8)] == [1, 1, 1, 2, 8]


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    from jrbench.study.ray_engine import run_sweep_ray

    with pytest.raises(UserError, match=r"pip install 'jrbench\[ray\]'"):
        run_sweep_ray(tiny_spec(tmp_path))
    result = CliRunner().invoke(app, ["sweep", "x.toml", "--address", "auto"])
    assert result.exit_code == 2 and "--engine ray only" in result.output


def _closed_port() -> int:
    """A port nothing listens on (bound, then released; not listened on)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, extra", [("127.0.0.1:{port}", []), ("ray://127.0.0.1:{port}", ["--verbose"]),
                                            ("$RAY_ADDRESS", ["--quiet"])])
def test_an_address_where_nothing_listens_fails_at_once_saying_how_to_start_a_cluster(
        address, extra, tmp_path, monkeypatch, capfd):
    """Exit 2 within --connect-timeout with the address and the way out; no run folder, no report,
    and none of Ray's log lines (ray.init is never reached). --verbose is accepted."""
    import time

    pytest.importorskip("ray")
    port = _closed_port()
    (tmp_path / "s.toml").write_text(TINY.format(train=300, epochs=1, more_grid=""))
    args = ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out"), "--engine", "ray",
            "--connect-timeout", "60", *extra]
    if address == "$RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    else:
        args += ["--address", address.format(port=port)]
    start = time.monotonic()
    result = CliRunner().invoke(app, args)
    assert time.monotonic() - start < 45  # refused at once; waiting out the timeout would take 60 s
    assert result.exit_code == 2, result.output
    named = f"127.0.0.1:{port} ($RAY_ADDRESS)" if address == "$RAY_ADDRESS" else address.format(port=port)
    assert f"no Ray cluster answers at {named}" in result.output
    assert "connection refused" in result.output
    assert "'ray start --head --port=6379'" in result.output and "leave --address out" in result.output
    assert not (tmp_path / "out").exists()
    import ray

    assert not ray.is_initialized()
    assert "GCS" not in capfd.readouterr().err  # Ray's C++ client never started


def test_auto_without_a_cluster_on_this_machine_is_a_clear_error(monkeypatch):
    pytest.importorskip("ray")
    from ray._private import services

    from jrbench.study.ray_engine import dial_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: set())  # no head running here
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)  # no address file
    with pytest.raises(UserError, match="--address auto found no Ray cluster on this machine .*'ray start --head"):
        dial_address("auto")
    assert dial_address("ray://head.example:10002") == ("head.example", 10002)
    assert dial_address("ray://head.example") == ("head.example", 10001)  # Ray Client's default port
    with pytest.raises(UserError, match="is not a Ray address"):
        dial_address("nonsense")


def test_a_join_that_hangs_is_given_up_after_the_timeout_and_undone_if_it_finishes_late():
    """Ray's own retries against a port that answers but is no Ray head last minutes: the join is
    abandoned at the timeout (a UserError), and an init that completes later is shut down again."""
    import threading
    import time

    from jrbench.study.ray_engine import _init_within

    release, calls = threading.Event(), []

    class SlowRay:
        def init(self, **options):
            calls.append(("init", options))
            release.wait(60)

        def shutdown(self):
            calls.append(("shutdown", {}))

    start = time.monotonic()
    with pytest.raises(UserError, match="did not accept"):
        _init_within(SlowRay(), 0.2, "did not accept", address="10.0.0.1:6379")
    assert time.monotonic() - start < 30  # given up at 0.2 s; not abandoning it would wait 60 s
    release.set()
    for _ in range(100):
        if len(calls) == 2:
            break
        time.sleep(0.05)
    assert calls == [("init", {"address": "10.0.0.1:6379"}), ("shutdown", {})]
    _init_within(type("FastRay", (), {"init": lambda self, **o: None})(), 5, "unused")  # in time: returns


@pytest.mark.ray
def test_a_port_that_answers_but_is_no_ray_head_fails_within_the_timeout(tmp_path):
    """With the real Ray, in a child process (Ray's client keeps retrying until its process ends)."""
    import socket
    import subprocess
    import sys

    pytest.importorskip("ray")
    (tmp_path / "s.toml").write_text(TINY.format(train=300, epochs=1, more_grid=""))
    with socket.socket() as server:
        server.bind(("", 0))
        server.listen(8)  # connections complete, nothing speaks Ray's protocol
        port = server.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "jrbench", "sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out"),
             "--engine", "ray", "--address", f"127.0.0.1:{port}", "--connect-timeout", "2", "--quiet"],
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert f"the Ray cluster at 127.0.0.1:{port} did not accept this driver within --connect-timeout 2 s" \
        in " ".join(result.stderr.split())
    # the message is the timeout's own (Ray alone retries for minutes); no wall-clock bound here: the
    # child's imports of torch and Ray take from seconds to a minute on a loaded machine
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- on Ray
@pytest.mark.ray
def test_a_cluster_that_accepts_a_driver_is_joined_by_its_address(ray_local, tmp_path):
    """--address HOST:PORT of a real cluster (this module's, by its GCS address): the join check's
    child joins and leaves, then the sweep joins and its cells run there (exit 0). A port that
    answers but speaks no Ray gets the timeout's message from the check alone."""
    import socket
    import subprocess
    import sys

    from jrbench.study.ray_engine import check_join

    gcs = ray_local.get_runtime_context().gcs_address
    check_join(gcs, 120, "not joined")  # returns: the child joined and left
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        with pytest.raises(UserError, match="^silent port$"):
            check_join(f"127.0.0.1:{server.getsockname()[1]}", 1, "silent port")
    (tmp_path / "s.toml").write_text(TINY.format(train=300, epochs=1, more_grid=""))
    result = subprocess.run(
        [sys.executable, "-m", "jrbench", "sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out"),
         "--engine", "ray", "--address", gcs, "--connect-timeout", "120", "--device", "cpu", "--no-report",
         "--quiet"], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    spec = tiny_spec(tmp_path / "out", measure=False)
    assert all(cell_status(spec, c).trained for c in spec.cells)


@pytest.mark.ray
def test_ray_gives_the_local_engines_numbers(ray_local, tmp_path):
    local = tiny_spec(tmp_path / "local")
    assert not any(s.error for s in run_sweep(local, device="cpu", keep_going=True))
    remote = tiny_spec(tmp_path / "ray")
    events = []
    statuses = run_ray(remote, events)
    assert all(s.trained and s.attacked and s.measured and s.error is None for s in statuses)
    assert {e.state for e in events} >= {"queued", "running", "train", "attack", "margins", "done"}
    assert all(e.host for e in events if e.state == "running")
    for a, b in zip(local.cells, remote.cells):
        left, right = local.folder / a.run_id(), remote.folder / b.run_id()
        for name in ("metrics.csv", "attacks.csv", "margins.csv"):
            pd.testing.assert_frame_equal(table(left / name), table(right / name), check_exact=True, obj=name)
        for run in (left, right):  # one thread each (one CPU per cell), recorded
            assert json.loads((run / "env.json").read_text())["torch_threads"] == cell_threads(1) == 1
        assert not list(right.glob(".*"))  # no temporary file left behind
    # everything done: a second run starts no task
    events.clear()
    run_ray(remote, events)
    assert [e.detail for e in events] == ["already done", "already done"]


@pytest.mark.ray
def test_a_killed_worker_is_retried_and_the_sweep_finishes(ray_local, tmp_path):
    """Deterministic however slowly the machine runs or relays events: the cell to kill reads its
    data from a folder of its own (its data_dir, which its run id leaves out) where the data cache
    is a named pipe, so its training blocks at the data until the test lets it; the SIGKILL sent
    when the cell's "train" event arrives always lands in the middle of that cell (blocked at the
    pipe, or on its way there), never on a worker that has finished it or moved on. Then the pipe
    goes: the retry makes the data and trains the cell from the start (without --shared-dir the
    killed attempt keeps nothing)."""
    import threading

    from jrbench.data.datasets import synth_digits_cache

    spec = tiny_spec(tmp_path, epochs=2, measure=False)
    target = spec.cells[0]  # event index 1
    run_id = target.run_id()
    held = tmp_path / "held-data"
    held.mkdir()
    target.data.data_dir = str(held)
    assert target.run_id() == run_id  # where the data lie is no part of the run
    pipe = synth_digits_cache(held)
    os.mkfifo(pipe)

    def let_go():  # only if no kill came (a failing test): the blocked reader reads nothing and goes on
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    watchdog = threading.Timer(300, let_go)
    watchdog.start()
    events, killed = [], []

    def kill_in_the_held_cell(event):
        events.append(event)
        if event.index == 1 and event.state == "train" and not killed:
            killed.append(event.pid)
            os.kill(event.pid, signal.SIGKILL)  # the worker dies in the middle of the cell
            pipe.unlink()  # the retry may read (and make) the data

    from jrbench.study.ray_engine import run_sweep_ray

    try:
        statuses = run_sweep_ray(spec, device="cpu", retries=2, on_event=kill_in_the_held_cell)
    finally:
        watchdog.cancel()
    assert killed and all(s.trained and s.error is None for s in statuses)
    assert {e.attempt for e in events if e.index == 1 and e.state == "running"} == {1, 2}
    assert {e.attempt for e in events if e.index == 2 and e.state == "running"} == {1}
    first = [(e.state, e.detail) for e in events if e.index == 1 and e.attempt == 1]
    retry = [(e.state, e.detail) for e in events if e.index == 1 and e.attempt == 2]
    assert first[:2] == [("running", ""), ("train", "")] and len(first) == 2, first  # killed before an epoch ended
    assert [s for s, _ in retry] == ["running", "train", "train", "train", "done"], retry
    assert [d for s, d in retry if s == "train" and d] == ["epoch 1/2", "epoch 2/2"]
    for config in spec.cells:
        assert list(pd.read_csv(spec.folder / config.run_id() / "metrics.csv")["epoch"]) == [1, 2]


@pytest.mark.ray
def test_with_a_shared_dir_a_killed_cell_resumes_where_it_stopped(ray_local, tmp_path):
    """Deterministic however slowly the machine runs or relays events: the cell to kill starts from
    epoch 1 of 3 on disk (a stop after its first epoch), and its attack step cannot write before the
    test lets it (the test holds the lock of its attack_examples.csv), so the SIGKILL sent when the
    step's event arrives always lands in the middle of the cell. The first attempt trains epochs 2
    and 3 only; the retry, in the same folder, trains nothing and finishes the measurements."""
    from filelock import FileLock

    from jrbench.config import RunConfig
    from jrbench.training.loop import train

    spec = tiny_spec(tmp_path, epochs=3)
    target = spec.cells[0]
    run_dir = spec.folder / target.run_id()

    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    config = RunConfig.from_dict(target.to_dict())
    config.train.device = "cpu"
    with pytest.raises(Stop):
        train(config, run_dir, on_epoch=stop)  # checkpoint.pt holds epoch 1, as a stopped cell leaves it
    assert list(pd.read_csv(run_dir / "metrics.csv")["epoch"]) == [1]
    gate = FileLock(str(run_dir / ".attack_examples.csv.lock"))
    gate.acquire(timeout=60)
    events, killed, trained = [], [], []

    def kill_in_the_attack_step(event):
        events.append(event)
        if event.index == 1 and event.state == "attack" and not killed:
            killed.append(event.pid)
            trained.append((run_dir / "model.pt").read_bytes())  # training is over: the model as it stays
            os.kill(event.pid, signal.SIGKILL)  # blocked at the lock (or still attacking): mid-cell
            gate.release()  # the retry may write

    from jrbench.study.ray_engine import run_sweep_ray

    try:
        statuses = run_sweep_ray(spec, device="cpu", shared_dir=True, on_event=kill_in_the_attack_step)
    finally:
        if gate.is_locked:
            gate.release()
    assert killed and all(s.trained and s.attacked and s.measured and s.error is None for s in statuses)
    first = [(e.state, e.detail) for e in events if e.index == 1 and e.attempt == 1]
    retry = [(e.state, e.detail) for e in events if e.index == 1 and e.attempt == 2]
    assert [d for s, d in first if s == "train" and d] == ["epoch 2/3", "epoch 3/3"], first  # resumed at epoch 2
    assert [s for s, _ in retry] == ["running", "attack", "margins", "done"], retry  # no training again
    assert list(pd.read_csv(run_dir / "metrics.csv")["epoch"]) == [1, 2, 3]
    assert (run_dir / "model.pt").read_bytes() == trained[0]
    assert (run_dir / "attacks.csv").is_file() and (run_dir / "margins.csv").is_file()


@pytest.mark.ray
def test_a_bad_cell_fails_alone_and_the_command_names_it(ray_local, tmp_path):
    spec = tiny_spec(tmp_path, measure=False)
    bad = spec.folder / spec.cells[1].run_id()
    bad.mkdir(parents=True)
    (bad / "config.json").write_text(json.dumps(spec.cells[1].to_dict()))
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")  # a corrupt file: bad input
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(TINY.format(train=300, epochs=1, more_grid=""))
    result = CliRunner().invoke(app, ["sweep", str(spec_file), "--out", str(tmp_path), "--engine", "ray",
                                      "--quiet", "--no-report", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert f"1 of 2 cells failed: {bad.name}" in result.output
    assert f"{bad / 'checkpoint.pt'} cannot be loaded" in result.output  # the driver's path, not the worker's
    assert cell_status(spec, spec.cells[0]).trained and not cell_status(spec, spec.cells[1]).trained


@pytest.mark.ray
def test_ctrl_c_cancels_running_cells_keeps_finished_ones_and_rerunning_resumes(ray_local, tmp_path):
    spec = tiny_spec(tmp_path, train=6000, measure=False, more_grid="seed = [0, 1]")  # 4 cells, 2 at a time
    finished = []

    def interrupt_after_the_first_cell(event):
        if event.state == "done" and not finished:
            finished.append(event.index)
            raise KeyboardInterrupt  # as Ctrl-C would, in the driver's loop

    from jrbench.study.ray_engine import run_sweep_ray

    with pytest.raises(KeyboardInterrupt):
        run_sweep_ray(spec, device="cpu", on_event=interrupt_after_the_first_cell)
    done = [c for c in spec.cells if cell_status(spec, c).trained]
    assert finished and spec.cells[finished[0] - 1] in done and len(done) < len(spec.cells)
    for config in spec.cells:  # a cancelled cell left nothing behind, nothing half-written
        if config not in done:
            assert not (spec.folder / config.run_id()).exists()
    events = []
    statuses = run_ray(spec, events)
    assert all(s.trained and s.error is None for s in statuses)
    assert sum(e.detail == "already done" for e in events) == len(done)


def test_local_engine_also_lets_a_bad_cell_fail_alone(tmp_path):
    spec = tiny_spec(tmp_path, measure=False)
    bad = spec.folder / spec.cells[0].run_id()
    bad.mkdir(parents=True)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (bad / "config.json").write_text(json.dumps(spec.cells[0].to_dict()))
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(TINY.format(train=300, epochs=1, more_grid=""))
    result = CliRunner().invoke(app, ["sweep", str(spec_file), "--out", str(tmp_path), "--quiet", "--no-report",
                                      "--device", "cpu"])
    assert result.exit_code == 1 and f"1 of 2 cells failed: {bad.name}" in result.output, result.output
    assert cell_status(spec, spec.cells[1]).trained
    with pytest.raises(UserError, match="cannot be loaded"):  # the library's run_sweep still raises by default
        run_sweep(spec, device="cpu")


@pytest.mark.ray
def test_a_cell_no_node_can_run_is_an_error_not_a_wait(ray_local):
    from jrbench.study.ray_engine import _check_feasible

    _check_feasible(ray_local, 2, 0)
    with pytest.raises(UserError, match="needs 1 CPUs and 1 GPUs .* Ray here has 2 CPUs and 0 GPUs"):
        _check_feasible(ray_local, 1, 1)
    with pytest.raises(UserError, match="needs 3 CPUs"):
        _check_feasible(ray_local, 3, 0)
