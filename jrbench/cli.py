"""The command line: thin Typer commands over the library's plain functions.

Each command parses options into a config, calls one library function and prints. User
mistakes (:class:`jrbench.errors.UserError`) become one clear message and exit code 2.
Heavy imports (torch, pandas) happen inside the commands so ``--help`` is instant.
"""
from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Robustness benchmarks for PyTorch image classifiers and Jacobian regularization.")
console = Console()
err_console = Console(stderr=True)

EXIT_USER_ERROR = 2


# ----------------------------------------------------------------------------- shared choices and options
class Schedule(str, Enum):
    """Learning-rate schedules (jrbench.config.SCHEDULES)."""
    none = "none"
    step = "step"
    cosine = "cosine"


class JrBackend(str, Enum):
    """Paths of the Jacobian penalty (jrbench.config.JR_BACKENDS)."""
    auto = "auto"          # the explicit-VJP tape where the net allows it, else autograd
    tape = "tape"
    autograd = "autograd"


class JrEstimator(str, Enum):
    """Estimators of ||J||_F^2 (jrbench.config.JR_ESTIMATORS)."""
    vjp = "vjp"  # output-side projections (the paper's)
    jvp = "jvp"  # input-side, forward mode


class Loss(str, Enum):
    """Losses of the gradient attacks (jrbench.evaluate.attack_config.LOSSES)."""
    ce64 = "ce64"  # cross-entropy from float64 logits
    ce32 = "ce32"  # torchattacks as is


class Norm(str, Enum):
    """Norms of the gradient attacks (jrbench.evaluate.attack_config.NORMS)."""
    linf = "linf"
    l2 = "l2"


class Correction(str, Enum):
    """Multiplicity corrections over a report's verdicts (jrbench.stats.CORRECTIONS)."""
    bh = "bh"      # Benjamini-Hochberg: the false discovery rate
    holm = "holm"  # Holm: the family-wise error rate
    none = "none"


DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _check_device(value: str) -> str:
    """--device: a fixed choice, or cuda:N for one GPU by number (an Enum cannot say cuda:N)."""
    import re

    if value in DEVICE_CHOICES or re.fullmatch(r"cuda:\d+", value):
        return value
    raise typer.BadParameter(f"{value!r} is not one of auto, cpu, cuda or cuda:N.")


DeviceOpt = Annotated[str, typer.Option(metavar="<auto|cpu|cuda|cuda:N>", callback=_check_device,
                                        help="auto (a GPU if there is one), cpu, cuda or cuda:N.")]
NExamplesOpt = Annotated[int, typer.Option(
    help="Fixed test examples, chosen by --example-seed (the same in attack and margins).")]
ExampleSeedOpt = Annotated[int, typer.Option(help="Seed choosing the examples (the same for every run).")]
SigmaOpt = Annotated[Optional[list[float]], typer.Option(help="Noise sigma (pixel units); repeat for a grid.")]
EpsOpt = Annotated[Optional[list[float]], typer.Option(
    help="PGD/FGSM radius (pixel units) for a single --norm; repeat for a grid.")]
NProjOpt = Annotated[int, typer.Option(help="Random projections per sample of the Jacobian penalty; -1 for the exact value.")]
NProjGridOpt = Annotated[Optional[list[int]], typer.Option(
    "--n-proj", help="Random projections per sample of the Jacobian penalty; -1 for the exact value. "
                     "Repeat to time several (default 1, 3, -1).")]
JrSubsampleOpt = Annotated[Optional[int], typer.Option(
    help="Compute the Jacobian penalty on this many samples K of each batch (default: all).")]
JrSubsampleGridOpt = Annotated[Optional[list[int]], typer.Option(
    "--jr-subsample", help="Compute the Jacobian penalty on this many samples K of each batch (timed with n=1). "
                           "Repeat to time several (default 16 and 32).")]
JrBackendOpt = Annotated[JrBackend, typer.Option(help="Penalty path: auto (tape where the net allows), tape or autograd.")]
DataDirOpt = Annotated[Optional[Path], typer.Option(
    help="Data folder (default: the one the run was trained with, else $JRBENCH_DATA, else ~/.cache/jrbench).")]
NewDataDirOpt = Annotated[Optional[Path], typer.Option(  # train and overhead: no run to take it from
    "--data-dir", help="Data folder (default: $JRBENCH_DATA, else ~/.cache/jrbench).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]

# Outside models (attack, margins): a .pt2 program or a module:function factory.
OutsideDatasetOpt = Annotated[Optional[str], typer.Option(
    "--dataset", help="Data set of an outside model (.pt2 or module:function); required for one.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    help="State dict for a 'module:function' factory (loaded strictly).")]
InputNormalizedOpt = Annotated[Optional[str], typer.Option(
    help="The outside model expects z = (x - MEAN) / STD: 'MEAN,STD' or per channel 'M1,M2,M3,S1,S2,S3'; "
         "jrbench normalizes in front, radii stay in pixels.")]
OutsideOutOpt = Annotated[Optional[Path], typer.Option(
    "--out", help="Result folder of an outside model (default results/models/NAME).")]


class Bars:
    """Rich progress bars with the time left, on stderr, fed by the library's callbacks
    ``on_progress(done, total, label)``; ``quiet``: none (the callbacks are None)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress = None

    def _start(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TextColumn("left"),
                                 TimeRemainingColumn(), console=err_console)
        self.progress.start()

    def callback(self, description: str) -> Callable[[int, int, str], None] | None:
        """A new bar named ``description``, started by its first call; None when quiet."""
        if self.quiet:
            return None
        task = None

        def on_progress(done: int, total: int, label: str) -> None:
            nonlocal task
            if self.progress is None:
                self._start()
            if task is None:
                task = self.progress.add_task(description, total=total, label="")
            self.progress.update(task, completed=done, total=total, label=label)

        return on_progress

    def stop(self) -> None:
        """Stop the bars (before another live display, e.g. training's, starts)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly(command: Callable) -> Callable:
    """Turn user errors into a message and exit code 2; Ctrl-C into a note and exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .errors import NonFiniteLoss, UserError

        try:
            return command(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except NonFiniteLoss as e:
            fail(str(e), code=1)
        except KeyboardInterrupt:
            err_console.print(f"interrupted. {resume_hint(command.__name__, sys.argv[1:])}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(130)

    return wrapper


def resume_hint(command_name: str, argv: list[str]) -> str:
    """What was kept and the exact command that continues, for the Ctrl-C message."""
    import shlex

    again = ["jrbench", *argv]
    if command_name == "train_command":
        if "--resume" not in argv:
            again.append("--resume")
        return f"Finished epochs are kept; to continue: {shlex.join(again)}"
    if command_name in ("sweep_command", "demo_command"):
        return f"Finished cells and steps are kept; to resume: {shlex.join(again)}"
    return (f"Tables already written are kept (each is written whole, never half); to run it again: "
            f"{shlex.join(again)}")


# ----------------------------------------------------------------------------- train
def _progress_callbacks(total_epochs: int):
    """A rich progress bar fed by the training callbacks; returns (progress, on_step, on_epoch)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("epoch {task.fields[epoch]}/" + str(total_epochs)), BarColumn(),
        MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
        console=err_console, transient=False,
    )
    task = progress.add_task("train", total=None, epoch=0, stats="")

    def on_step(info) -> None:
        progress.start()  # at the first step, once train() has accepted the config (a no-op later)
        jr = f"  R {info.jacobian:.3f}" if info.jacobian is not None else ""
        progress.update(task, completed=info.step, total=info.steps, epoch=info.epoch,
                        stats=f"CE {info.ce:.3f}{jr}  acc {info.accuracy:.3f}  "
                              f"{1000 * info.seconds_per_step:.1f} ms/step")

    def on_epoch(row: dict) -> None:
        progress.console.print(
            f"epoch {row['epoch']}: train CE {row['train_ce']:.4f}, test acc {row['test_acc']:.4f}, "
            f"mean ||J_z||_F {row['test_jac_frob_z']:.3f}, {1000 * row['seconds_per_step']:.1f} ms/step",
            highlight=False)

    return progress, on_step, on_epoch


def run_training(config, out: Path, resume: bool, quiet: bool = False):
    from .training.loop import train

    if quiet:
        return train(config, out, resume=resume)
    progress, on_step, on_epoch = _progress_callbacks(config.train.epochs)
    try:  # the bar starts at the first step: a config train() refuses shows no bar
        return train(config, out, resume=resume, on_step=on_step, on_epoch=on_epoch)
    finally:
        if progress.live.is_started:
            progress.stop()


@app.command("train")
@friendly
def train_command(
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist, cifar10 or synth-digits.")] = "synth-digits",
    model: Annotated[str, typer.Option(help="mlp, lenet, ddnet or resnet18.")] = "lenet",
    reg: Annotated[Optional[list[str]], typer.Option(help="Regularizer, repeat to combine: none, l2, dropout, jacobian, input-grad, lipschitz, noise.")] = None,
    lambda_jr: Annotated[float, typer.Option(help="Weight of R = 1/2 ||J_z||_F^2.")] = 0.01,
    n_proj: NProjOpt = 1,
    jr_subsample: JrSubsampleOpt = None,
    weight_decay: Annotated[float, typer.Option(help="Weight decay of the l2 regularizer.")] = 5e-4,
    dropout: Annotated[float, typer.Option(help="Dropout probability of the dropout regularizer.")] = 0.5,
    lambda_ig: Annotated[float, typer.Option(help="Weight of the input-grad penalty 1/2 ||dCE/dz||^2.")] = 0.01,
    jr_backend: JrBackendOpt = JrBackend.auto,
    jr_estimator: Annotated[JrEstimator, typer.Option(help="vjp: C ||v^T J||^2, v on the unit sphere (the paper's); jvp: ||J u||^2, u ~ N(0, I), forward mode.")] = JrEstimator.vjp,
    jr_every: Annotated[int, typer.Option(help="The penalty on every k-th step only, with lambda_jr x k.")] = 1,
    lipschitz_bound: Annotated[float, typer.Option(help="lipschitz: K, the certified L2 Lipschitz bound of the saved model in pixel space.")] = 100.0,
    noise_sigma: Annotated[float, typer.Option(help="noise: std of the Gaussian added to training pixels in [0, 1].")] = 0.25,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="SGD learning rate.")] = 0.05,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule.")] = Schedule.none,
    step_epochs: Annotated[int, typer.Option(help="step schedule: epochs between decays.")] = 5,
    gamma: Annotated[float, typer.Option(help="step schedule: factor per decay.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of initialization, order, dropout and projections.")] = 0,
    device: DeviceOpt = "auto",
    data_dir: NewDataDirOpt = None,
    train_subset: Annotated[Optional[int], typer.Option(help="Keep this many training examples (chosen by a fixed seed).")] = None,
    test_subset: Annotated[Optional[int], typer.Option(help="Keep this many test examples (chosen by a fixed seed).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default results/runs/<run-id>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last finished epoch.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a model with or without Jacobian regularization; write a run directory."""
    from .config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig

    config = RunConfig(  # checked once, by train() (jrbench.training.loop), before anything is written
        DataConfig(dataset, str(data_dir) if data_dir else None, train_subset, test_subset),
        ModelConfig(model),
        RegConfig(list(reg or ["none"]), lambda_jr, n_proj, jr_subsample, weight_decay, dropout, lambda_ig,
                  jr_backend.value, jr_estimator.value, jr_every, lipschitz_bound, noise_sigma),
        TrainConfig(epochs, batch_size, lr, momentum, schedule.value, step_epochs, gamma, seed, device),
    )
    out = out or Path("results/runs") / config.run_id()
    if resume and not (out / "model.pt").is_file():
        console.print(f"--resume: {out} holds no finished epoch yet; training from the first epoch.", highlight=False)
    result = run_training(config, out, resume, quiet)
    last = result.metrics.iloc[-1]
    console.print(f"run directory: {out}")
    console.print(f"test accuracy {last['test_acc']:.4f}, mean ||J_z||_F {last['test_jac_frob_z']:.3f} "
                  f"(R = {last['test_R_z']:.3f}), mean ||J_x||_F (pixels) {last['test_jac_frob_pixel']:.3f}",
                  highlight=False)


# ----------------------------------------------------------------------------- demo
class Engine(str, Enum):
    """Where the cells of a sweep run."""
    local = "local"  # one after another, in this process
    ray = "ray"      # every cell a Ray task, on this machine's cores or a cluster


class _CellTable:
    """The live table of a Ray sweep: one row per cell, fed by jrbench.study.ray_engine.CellEvent."""

    def __init__(self, spec) -> None:
        self.title = f"{spec.name}: {len(spec.cells)} cells in {spec.folder}"
        self.rows = {i: {"cell": c.run_id(), "state": "queued", "step": "", "where": "", "try": 0,
                         "start": None, "end": None} for i, c in enumerate(spec.cells, 1)}

    def update(self, event) -> None:
        import time

        row = self.rows[event.index]
        if event.state == "running":
            row.update(start=time.monotonic(), end=None)
        if event.state in ("done", "failed"):
            row["end"] = time.monotonic()
        if event.state in ("train", "attack", "margins", "certify"):
            row.update(state="running", step=f"{event.state} {event.detail}".strip())
        else:
            row.update(state=event.state, step=event.detail)
        if event.host:
            row["where"] = f"{event.host} (pid {event.pid})" if event.pid else event.host
        row["try"] = event.attempt or row["try"]

    def render(self):
        import time
        from collections import Counter

        from rich.table import Table

        counts = Counter(r["state"] for r in self.rows.values())
        table = Table(title=self.title, caption=", ".join(f"{counts[s]} {s}" for s in
                                                           ("queued", "running", "done", "failed")))
        for col in ("#", "cell", "state", "step", "node", "try", "s"):
            table.add_column(col, justify="right" if col in ("#", "try", "s") else "left",
                             overflow="ellipsis", no_wrap=col != "step", max_width=60 if col == "step" else None)
        style = {"done": "green", "failed": "bold red", "running": "cyan", "queued": "dim"}
        now = time.monotonic()
        for i, r in self.rows.items():
            seconds = "" if r["start"] is None else f"{(r['end'] or now) - r['start']:.0f}"
            table.add_row(str(i), escape(str(r["cell"])), f"[{style[r['state']]}]{r['state']}[/]",
                          escape(str(r["step"])), escape(str(r["where"])), str(r["try"] or ""), seconds)
        return table


def run_sweep_with_progress(spec, device: str, *, engine: str = "local", address: str | None = None,
                            retries: int = 2, shared_dir: bool = False, quiet: bool = False,
                            keep_going: bool = False, connect_timeout: float = 30.0, verbose: bool = False):
    """Run a sweep and show its progress; return the cells' statuses.

    Local engine: one progress bar per training, attack and margins step and a line per step of
    every cell (a failing cell is raised unless ``keep_going``). Ray engine: a live table of the cells (state, step,
    node, try, seconds), left on screen at the end but not after a user error such as no cluster at
    ``address``; failed cells are in the statuses. ``quiet`` shows neither."""
    if engine == "ray":
        import contextlib

        from rich.live import Live

        from .errors import UserError
        from .study.ray_engine import run_sweep_ray

        options = dict(device=device, address=address, retries=retries, shared_dir=shared_dir,
                       connect_timeout=connect_timeout, verbose=verbose)
        if quiet:
            return run_sweep_ray(spec, **options)
        table = _CellTable(spec)
        live = (Live(get_renderable=table.render, console=err_console, refresh_per_second=2, transient=True)
                if err_console.is_terminal else contextlib.nullcontext())  # a log: the table once, at the end
        show_table = True
        try:
            with live:
                return run_sweep_ray(spec, **options, on_event=table.update)
        except UserError:  # nothing ran (no cluster, no Ray): the message alone
            show_table = False
            raise
        finally:
            if show_table:
                err_console.print(table.render())
    from .study.sweep import run_sweep

    if quiet:
        return run_sweep(spec, device=device, keep_going=keep_going)

    bars = Bars()
    current: dict = {}

    def on_cell(i: int, n: int, run_id: str, step: str) -> None:
        bars.stop()  # the previous step's bar ends; training shows its own
        current["progress"] = bars.callback(f"[{i}/{n}] {step}")
        if step != "done":
            console.print(f"[bold][{i}/{n}][/] {escape(run_id)}: {escape(step)}", highlight=False)

    def on_progress(done: int, total: int, label: str) -> None:
        current["progress"](done, total, label)

    def train_cell(config, run_dir):
        return run_training(config, run_dir, resume=True)

    with bars:
        return run_sweep(spec, device=device, train_cell=train_cell, on_cell=on_cell, keep_going=keep_going,
                         on_progress=on_progress)


@app.command("demo")
@friendly
def demo_command(
    out: Annotated[Optional[Path], typer.Option(help="Folder of the demo's runs and report (default results/runs/demo, ignored by git; 'make demo-report' writes the committed results/demo).")] = None,
    device: DeviceOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars or step lines.")] = False,
) -> None:
    """The quick profile: a plain and a Jacobian-regularized lenet on synth-digits, end to end.

    Ends in the report, whose console table puts the two runs side by side."""
    from .study.demo import quick_spec, where_note

    spec = quick_spec(out)
    console.print(where_note(spec.folder), highlight=False)
    run_sweep_with_progress(spec, device, quiet=quiet)
    finish_sweep_report(spec.folder, spec.folder / "report", spec.report_options, device, quiet)


@app.command("sweep")
@friendly
def sweep_command(
    spec_path: Annotated[Path, typer.Argument(help="A study as a grid in TOML (see benchmarks/*.toml).")],
    out: Annotated[Optional[Path], typer.Option(help="Parent folder of the sweep's runs (default: the spec's 'out').")] = None,
    device: DeviceOpt = "auto",
    report: Annotated[bool, typer.Option(help="Write the report at the end.")] = True,
    engine: Annotated[Engine, typer.Option(help="local: cell after cell in this process; ray: every cell a Ray task (pip install 'jrbench\\[ray]').")] = Engine.local,
    address: Annotated[Optional[str], typer.Option(help="--engine ray: the cluster to join: auto, HOST:6379 or ray://HOST:10001 (default $RAY_ADDRESS, else start Ray on this machine's cores).")] = None,
    retries: Annotated[int, typer.Option(help="--engine ray: run a cell again up to this many times when its worker or node is lost.")] = 2,
    shared_dir: Annotated[bool, typer.Option("--shared-dir", help="--engine ray: workers write in place (every node sees the output folder at the same path); a retried cell resumes from its last epoch.")] = False,
    connect_timeout: Annotated[float, typer.Option(help="--engine ray: seconds to join the cluster at --address before giving up with a message (exit 2).")] = 30.0,
    verbose: Annotated[bool, typer.Option("--verbose", help="--engine ray: show Ray's own log lines and the workers' output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars, step lines or live table.")] = False,
) -> None:
    """Train, attack and measure every cell of a study; skip finished cells; then report.

    A cell that fails leaves the others running; the command then exits 1 naming it."""
    from .errors import UserError
    from .study.spec import load_spec

    if engine is Engine.local and (address or shared_dir):
        raise UserError(f"{'--address' if address else '--shared-dir'} applies to --engine ray only.")
    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}.")
    if not connect_timeout > 0:
        raise UserError(f"--connect-timeout must be > 0 seconds, got {connect_timeout:g}.")
    spec = load_spec(spec_path, out)
    if engine is Engine.ray:
        import os

        cluster = address or ("$RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "this machine's cores")
        console.print(f"{spec.name}: {len(spec.cells)} cells in {spec.folder}, on Ray ({cluster})", highlight=False)
    else:
        console.print(f"{spec.name}: {len(spec.cells)} cells in {spec.folder}", highlight=False)
    try:
        statuses = run_sweep_with_progress(spec, device, engine=engine.value, address=address, retries=retries,
                                           shared_dir=shared_dir, quiet=quiet, keep_going=True,
                                           connect_timeout=connect_timeout, verbose=verbose)
    except KeyboardInterrupt:
        err_console.print("interrupted: every finished cell is kept (and finished epochs of the cells in this "
                          "process or in a --shared-dir); run the same command to resume.")
        raise typer.Exit(130)
    failed = [s for s in statuses if s.error]
    if report and len(failed) < len(statuses):
        finish_sweep_report(spec.folder, spec.folder / "report", spec.report_options, device, quiet)
    for status in failed:
        err_console.print(f"[bold red]failed:[/] {escape(status.run_dir.name)}: {escape(str(status.error))}",
                          highlight=False, soft_wrap=True)
        if status.traceback:
            err_console.print(status.traceback, markup=False, highlight=False)
    if failed:
        err_console.print(f"{len(failed)} of {len(statuses)} cells failed: "
                          f"{', '.join(s.run_dir.name for s in failed)}. The others are done; fix the cause "
                          "and run the same command to finish them.", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def finish_sweep_report(runs: Path, out: Path, options: dict | None = None, device: str = "auto",
                        quiet: bool = False) -> None:
    """Write the report of a finished sweep (see the report command) with the spec's [report] options."""
    report_command([runs], out=out, **{"device": device, "quiet": quiet, **(options or {})})


# ----------------------------------------------------------------------------- attack
def print_attack_table(result, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("attack", "norm", "strength", "accuracy", "95% CI", "n", "loss", "seconds"):
        table.add_column(col, justify="right")
    for r in result.table.itertuples():
        table.add_row(r.attack, r.norm, f"{r.strength:g}", f"{r.accuracy:.4f}",
                      f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", str(r.n_examples), r.loss, f"{r.seconds:.1f}")
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(warning))}", highlight=False)
    console.print(f"written: {result.path}" + (f", {result.examples_path}" if result.examples_path else ""))


@app.command("attack")
@friendly
def attack_command(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run directories written by 'jrbench train', or outside models: a torch.export .pt2 file or a 'module:function' factory.")],
    noise: Annotated[Optional[bool], typer.Option("--noise/--no-noise", help="White Gaussian pixel noise.")] = None,
    pgd: Annotated[Optional[bool], typer.Option("--pgd/--no-pgd", help="PGD (torchattacks), L-inf and/or L2.")] = None,
    fgsm: Annotated[Optional[bool], typer.Option("--fgsm/--no-fgsm", help="FGSM (torchattacks), L-inf.")] = None,
    autoattack: Annotated[Optional[bool], typer.Option(
        "--autoattack/--no-autoattack", help="Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; slow) on --norm and the eps grids.")] = None,
    aa_targets: Annotated[Optional[int], typer.Option(
        help="AutoAttack's target classes for APGD-T and FAB-T (default 9; required below 10 classes).")] = None,
    autoattack_eps_linf: Annotated[Optional[list[float]], typer.Option(
        help="AutoAttack's own L-inf radius grid (with or without --autoattack-eps-l2: AutoAttack runs on these norms only).")] = None,
    autoattack_eps_l2: Annotated[Optional[list[float]], typer.Option(
        help="AutoAttack's own L2 radius grid.")] = None,
    n_examples: Annotated[Optional[int], typer.Option(
        help="Fixed test examples of PGD, FGSM and AutoAttack, chosen by --example-seed (the same in attack, "
             "margins and certify; default: the data set's, 1000).")] = None,
    example_seed: ExampleSeedOpt = 0,
    noise_examples: Annotated[Optional[int], typer.Option(
        help="White noise on this many test examples, chosen by --example-seed (default: the whole test set).")] = None,
    sigma: SigmaOpt = None,
    draws: Annotated[int, typer.Option(help="Noise draws per image.")] = 5,
    norm: Annotated[Optional[list[Norm]], typer.Option(help="PGD norm; repeat for both (default both).")] = None,
    eps: EpsOpt = None,
    eps_linf: Annotated[Optional[list[float]], typer.Option(help="L-inf radius grid (default per data set).")] = None,
    eps_l2: Annotated[Optional[list[float]], typer.Option(help="L2 radius grid (default per data set).")] = None,
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 40,
    alpha: Annotated[Optional[float], typer.Option(help="PGD step size (default 2.5 eps / steps).")] = None,
    restarts: Annotated[int, typer.Option(help="PGD restarts; broken if any restart breaks it.")] = 1,
    loss: Annotated[Loss, typer.Option(help="ce64: cross-entropy from float64 logits; ce32: torchattacks as is.")] = Loss.ce64,
    seed: Annotated[int, typer.Option(help="Seed of noise draws and random starts.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Examples per batch: memory only; no noise, PGD or FGSM result changes with it (AutoAttack's can: README).")] = 500,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    dataset: OutsideDatasetOpt = None,
    weights: WeightsOpt = None,
    input_normalized: InputNormalizedOpt = None,
    out: OutsideOutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Attack trained runs or outside models with white noise, PGD, FGSM and AutoAttack; write
    attacks.csv and the per-example record attack_examples.csv into the run (or model) folder.
    Naming selects: the attacks named (an --autoattack-eps-* grid names AutoAttack) run, and only
    they; none named: noise, PGD and FGSM, less those given as --no-noise, --no-pgd, --no-fgsm."""
    from .evaluate.attack_config import NORMS, build_attack_config
    from .errors import UserError
    from .evaluate.api import attack_model, attack_run, check_attack
    from .evaluate.outside import resolve_sources

    norms = tuple(n.value for n in norm) if norm else NORMS
    if eps is not None:
        if len(norms) != 1:
            raise UserError("--eps needs a single --norm; use --eps-linf and --eps-l2 for both.")
        if (eps_linf if norms[0] == "linf" else eps_l2) is not None:
            raise UserError(f"--eps and --eps-{norms[0]} both give the {norms[0]} grid; give one of them.")
        eps_linf, eps_l2 = (eps, eps_l2) if norms[0] == "linf" else (eps_linf, eps)
    config = build_attack_config(  # sigma None: each run's data set's noise grid
        noise=noise, pgd=pgd, fgsm=fgsm, autoattack=autoattack, aa_targets=aa_targets,
        autoattack_eps_linf=autoattack_eps_linf, autoattack_eps_l2=autoattack_eps_l2, sigmas=sigma, draws=draws,
        noise_examples=noise_examples, norms=norms, eps_linf=eps_linf, eps_l2=eps_l2, steps=steps, alpha=alpha,
        restarts=restarts, loss=loss.value, batch_size=batch_size, seed=seed)
    if n_examples is not None and n_examples < 1:
        raise UserError(f"--n-examples must be at least 1, got {n_examples}.")
    sources = resolve_sources(run_dirs, dataset=dataset, weights=weights, input_normalized=input_normalized, out=out)
    configs = []  # every directory and model is checked before any table is written
    for run_dir, model in sources:
        data_set = model.dataset if model is not None else check_attack(run_dir, config).data.dataset
        configs.append(config.filled(data_set))  # grids not given: the data set's defaults
    for (run_dir, model), config in zip(sources, configs):
        data = str(data_dir) if data_dir else None
        with Bars(quiet) as bars:
            on_progress = bars.callback(f"{run_dir.name}: attacks")
            if model is None:
                result = attack_run(run_dir, config, n_examples=n_examples, example_seed=example_seed,
                                    device=device, data_dir=data, on_progress=on_progress)
            else:
                result = attack_model(model.model, model.dataset, config, n_examples=n_examples,
                                      example_seed=example_seed, device=device, data_dir=data, out=run_dir,
                                      name=model.name, source=model.provenance, on_progress=on_progress)
        noise_note = (f"; noise: {result.noise_examples}" if result.noise_examples not in (None, result.n_examples)
                      else "")
        print_attack_table(result, f"{run_dir.name}: accuracy under attack ({result.n_examples} test examples"
                                   f"{noise_note})")


# ----------------------------------------------------------------------------- margins
def print_margins_summary(result, title: str, run_dir: Path) -> None:
    from rich.table import Table

    from .evaluate.api import margins_summary

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in margins_summary(result).items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if len(result.margins) < result.n_requested:
        console.print(f"[yellow]note:[/] {len(result.margins)} of the {result.n_requested} examples are classified "
                      "correctly; only those are measured.", highlight=False)
    for note in getattr(result, "notes", []):
        console.print(f"[yellow]note:[/] {escape(str(note))}", highlight=False)
    console.print(f"written: {run_dir / 'margins.csv'}, {run_dir / 'jacobian.csv'}")


@app.command("margins")
@friendly
def margins_command(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run directories written by 'jrbench train', or outside models: a torch.export .pt2 file or a 'module:function' factory.")],
    n_examples: Annotated[int, typer.Option(
        help="Fixed test examples, chosen by --example-seed (the same in attack and margins); the correctly classified ones among them are measured.")] = 500,
    example_seed: ExampleSeedOpt = 0,
    directions: Annotated[int, typer.Option(help="Random unit directions per example.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random directions.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Examples per batch.")] = 500,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    dataset: OutsideDatasetOpt = None,
    weights: WeightsOpt = None,
    input_normalized: InputNormalizedOpt = None,
    out: OutsideOutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Random-direction, adversarial and first-order margins, and Jacobian spectra, per example,
    of trained runs or outside models."""
    from .evaluate.api import margins_model, margins_run
    from .evaluate.outside import resolve_sources
    from .training.rundir import check_run_dir

    sources = resolve_sources(run_dirs, dataset=dataset, weights=weights, input_normalized=input_normalized, out=out)
    for run_dir, model in sources:  # every directory and model is checked before any table is written
        if model is None:
            check_run_dir(run_dir)
    for run_dir, model in sources:
        data = str(data_dir) if data_dir else None
        with Bars(quiet) as bars:
            on_progress = bars.callback(f"{run_dir.name}: margins")
            if model is None:
                result = margins_run(run_dir, n_examples=n_examples, n_directions=directions, seed=seed,
                                     example_seed=example_seed, device=device, data_dir=data,
                                     batch_size=batch_size, on_progress=on_progress)
            else:
                result = margins_model(model.model, model.dataset, n_examples=n_examples, n_directions=directions,
                                       seed=seed, example_seed=example_seed, device=device, data_dir=data,
                                       out=run_dir, name=model.name, batch_size=batch_size,
                                       source=model.provenance, on_progress=on_progress)
        print_margins_summary(result, f"{run_dir.name}: margins (pixel L2) and Jacobian", run_dir)


# ----------------------------------------------------------------------------- certify
def print_certify_table(result, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "norm", "strength", "sigma", "certified", "95% CI", "n", "seconds"):
        table.add_column(col, justify="right")
    for r in result.table.itertuples():
        table.add_row(r.method, r.norm, f"{r.strength:g}", f"{r.sigma:g}" if r.sigma > 0 else "",
                      f"{r.certified_acc:.4f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", str(r.n_examples),
                      f"{r.seconds:.2f}")
    console.print(table)
    bounds = result.table.get("lipschitz_bound")
    if bounds is not None and bounds.notna().any():
        console.print(f"certified L2 Lipschitz bound of x -> logits (pixels): {bounds.dropna().iloc[0]:.4g}",
                      highlight=False)
    if (result.table["method"] == "smoothing").any():
        console.print("smoothing certifies the smoothed classifier g (Cohen et al. 2019), not the model itself.",
                      highlight=False)
    if result.bounds is not None:
        counts = result.bounds.groupby(["method", "status"]).size()
        parts = [f"{method} {status} {n}" for (method, status), n in counts.items()
                 if status not in ("misclassified",)]
        console.print("per example and eps (certify_bounds.csv): " + ", ".join(parts), highlight=False)
        if "complete" in set(result.bounds["method"]):
            console.print("complete verification: 'unknown' means the time budget ran out, not a verdict.",
                          highlight=False)
    console.print(f"written: {result.path}, {result.examples_path}" if result.path else "nothing written")


@app.command("certify")
@friendly
def certify_command(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run directories written by 'jrbench train', or outside models: a torch.export .pt2 file or a 'module:function' factory.")],
    lipschitz: Annotated[bool, typer.Option(
        "--lipschitz", help="Certified L2 Lipschitz bound of the logits (layer operator norms) -> L2 and L-inf radii.")] = False,
    ibp: Annotated[bool, typer.Option("--ibp", help="Interval bound propagation at each L-inf eps.")] = False,
    crown: Annotated[bool, typer.Option(
        "--crown", help="CROWN linear-relaxation bounds (Zhang et al. 2018) at each L-inf and L2 eps.")] = False,
    alpha_crown: Annotated[bool, typer.Option(
        "--alpha-crown", help="alpha-CROWN: CROWN with optimized ReLU slopes (Xu et al. 2021); tighter, slower.")] = False,
    complete: Annotated[bool, typer.Option(
        "--complete", help="Complete verification (MILP, HiGHS) at each L-inf eps: verified, falsified or unknown.")] = False,
    timeout: Annotated[float, typer.Option(
        help="Complete verification: time budget in seconds per example and eps (then: unknown).")] = 60.0,
    alpha_steps: Annotated[int, typer.Option(help="alpha-CROWN: optimization steps of the slopes.")] = 20,
    skip: Annotated[bool, typer.Option(
        "--skip/--no-skip", help="CROWN, alpha-CROWN, complete: skip examples an attack of the run broke or a "
                                 "cheaper certificate covers.")] = True,
    smoothing: Annotated[bool, typer.Option(
        "--smoothing", help="Randomized smoothing (Cohen et al. 2019): the smoothed classifier's certified L2 radius.")] = False,
    sigma: Annotated[Optional[list[float]], typer.Option(
        help="Smoothing noise sigma (pixel units); repeat for several (default 0.25).")] = None,
    n0: Annotated[int, typer.Option(help="Smoothing: noise draws that select the top class.")] = 100,
    n: Annotated[int, typer.Option(help="Smoothing: noise draws that estimate its probability.")] = 10_000,
    alpha: Annotated[float, typer.Option(help="Smoothing: failure probability of the certificate.")] = 0.001,
    n_examples: Annotated[Optional[int], typer.Option(
        help="Fixed test examples, chosen by --example-seed (the same as attack's; default: the data set's, 1000).")] = None,
    example_seed: ExampleSeedOpt = 0,
    eps_linf: Annotated[Optional[list[float]], typer.Option(help="L-inf radius grid (default per data set, as attack).")] = None,
    eps_l2: Annotated[Optional[list[float]], typer.Option(help="L2 radius grid (default per data set, as attack).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the smoothing noise (per example).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Examples per batch (Lipschitz, IBP).")] = 500,
    smoothing_batch_size: Annotated[int, typer.Option(help="Noisy images per forward pass (smoothing).")] = 1000,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    dataset: OutsideDatasetOpt = None,
    weights: WeightsOpt = None,
    input_normalized: InputNormalizedOpt = None,
    out: OutsideOutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Certified accuracy, a lower bound beside every attack's upper bound: Lipschitz bound, interval
    bound propagation, CROWN, alpha-CROWN, complete verification, randomized smoothing; write
    certify.csv and certify_examples.csv (and for the tight methods certify_bounds.csv) into the run
    (or model) folder. No flag: --lipschitz and --ibp."""
    from .certify.api import CertifyConfig, certify_model, certify_run, check_certify, unsupported
    from .evaluate.outside import resolve_sources

    if not (lipschitz or ibp or smoothing or crown or alpha_crown or complete):
        lipschitz = ibp = True
    config = CertifyConfig(lipschitz=lipschitz, ibp=ibp, smoothing=smoothing, sigmas=sigma or [0.25], n0=n0, n=n,
                           alpha=alpha, eps_linf=eps_linf, eps_l2=eps_l2, seed=seed, batch_size=batch_size,
                           smoothing_batch_size=smoothing_batch_size, crown=crown, alpha_crown=alpha_crown,
                           complete=complete, timeout=timeout, alpha_steps=alpha_steps, skip=skip)
    sources = resolve_sources(run_dirs, dataset=dataset, weights=weights, input_normalized=input_normalized, out=out)
    for run_dir, model in sources:  # every directory and model is checked before any table is written
        if model is None:
            check_certify(run_dir, config)
        elif unsupported(model.model, config) is not None:
            fail(unsupported(model.model, config))
    for run_dir, model in sources:
        data = str(data_dir) if data_dir else None
        with Bars(quiet) as bars:
            on_progress = bars.callback(f"{run_dir.name}: certify")
            if model is None:
                result = certify_run(run_dir, config, n_examples=n_examples, example_seed=example_seed,
                                     device=device, data_dir=data, on_progress=on_progress)
            else:
                result = certify_model(model.model, model.dataset, config, n_examples=n_examples,
                                       example_seed=example_seed, device=device, data_dir=data, out=run_dir,
                                       name=model.name, source=model.provenance, on_progress=on_progress)
        print_certify_table(result, f"{run_dir.name}: certified accuracy (a lower bound; pixel units)")
        for note in result.notes:
            console.print(f"[yellow]note:[/] {escape(str(note))}", highlight=False)


# ----------------------------------------------------------------------------- report
def print_verdicts(verdicts) -> None:
    """One compact table per comparison (jrbench.analysis.verdicts.compact_tables): repeats of the clean
    accuracy and worst cases equal to PGD left out; report.md has every line."""
    from rich.table import Table

    from .analysis.verdicts import ADJUSTED, compact_tables

    if verdicts.empty:
        return
    correction = str(verdicts["correction"].iloc[0])
    p_header = f"p ({correction.upper() if correction == 'bh' else correction.title()})" if correction in ADJUSTED \
        else "p (raw)"
    for group, baseline, rows in compact_tables(verdicts):
        seeds = sorted(set(verdicts[(verdicts["group"] == group) & (verdicts["baseline"] == baseline)]["n_seeds"]))
        count = f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''}"
        table = Table(title=escape(f"{group} vs {baseline} ({count})"), title_justify="left")
        for col in rows.columns:
            numeric = col in ("difference [95% CI]", "adjusted p")
            table.add_column(p_header if col == "adjusted p" else col, justify="right" if numeric else "left",
                             no_wrap=numeric or col == "verdict")
        for r in rows.itertuples(index=False):
            style = {"better": "green", "worse": "red"}.get(r.verdict)
            table.add_row(*(escape(str(v)) for v in r), style=style)
        console.print(table)
    adjusted = (f"p adjusted over the report's {len(verdicts)} verdicts" if correction in ADJUSTED
                else "p not adjusted (--correction none)")
    console.print(f"Differences: group minus baseline, accuracies in points; {adjusted}; n.s.: no significant "
                  f"difference. "
                  f"Left out as repeats: strength 0 (the clean accuracy again) and worst cases equal to PGD; "
                  f"report.md has every verdict and the methods, verdicts.csv every number.",
                  highlight=False)


@app.command("report")
@friendly
def report_command(
    paths: Annotated[list[Path], typer.Argument(help="Run directories or folders of runs (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Folder of the report.")] = Path("results/report"),
    sigma: Annotated[Optional[list[float]], typer.Option(help="Noise sigma of the table's noise column (pixel units; default per data set, 0.5 MNIST-like); repeat for several: a column each.")] = None,
    eps_linf: Annotated[Optional[list[float]], typer.Option(help="L-inf radius of the table's L-inf columns (pixel units; default 0.1 MNIST-like, 8/255 CIFAR); repeat for several: a column each.")] = None,
    eps_l2: Annotated[Optional[list[float]], typer.Option(help="L2 radius of the table's L2 columns (pixel units; default 1.5 MNIST-like, 0.5 CIFAR); repeat for several: a column each.")] = None,
    per_run: Annotated[bool, typer.Option("--per-run", help="One row per run instead of per group of seeds.")] = False,
    cells: Annotated[bool, typer.Option("--cells/--no-cells", help="Draw decision-cell cross-sections (loads models and data).")] = True,
    cell_radius: Annotated[Optional[float], typer.Option(help="Half-width of the cross-sections (pixel L2; default per data set).")] = None,
    cell_grid: Annotated[int, typer.Option(help="Cross-section grid points a side.")] = 101,
    cell_seed: Annotated[int, typer.Option(help="Seed of the random directions of the cross-sections.")] = 0,
    cell_index: Annotated[Optional[int], typer.Option(help="Test example of the cross-sections (default: the first every model gets right).")] = None,
    cell_panels: Annotated[int, typer.Option(help="At most this many runs side by side per cross-section.")] = 6,
    correction: Annotated[Correction, typer.Option(help="Multiplicity correction over the report's verdicts (one family): bh (Benjamini-Hochberg, the false discovery rate), holm (the family-wise error) or none.")] = Correction.bh,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Collect runs into summary.csv; write a paper-style table, verdicts against plain runs, plots and report.md."""
    from rich.table import Table

    from .report.writer import ReportOptions, write_report
    from .report.table import Strengths
    from .analysis.results import collect

    options = ReportOptions(Strengths(sigma, eps_linf, eps_l2), not per_run, cells, cell_radius, cell_grid,
                            cell_seed, cell_index, cell_panels, device, str(data_dir) if data_dir else None,
                            correction=Correction(correction).value).validate()
    with Bars(quiet) as bars:
        result = write_report(collect(paths), out, options, on_progress=bars.callback("cross-sections"))
    rows = result.table.set_index(result.table.columns[0]).T  # one column per run or group: fits a terminal
    table = Table(title="per run" if per_run else "per group of runs differing by seed: mean ± std across seeds")
    table.add_column("")
    for label in rows.columns:
        table.add_column(escape(str(label)), justify="right")  # labels such as "lenet l2 [ebcf4b]"
    for measure, values in rows.iterrows():
        table.add_row(escape(str(measure)), *(escape(str(v)) for v in values))
    console.print(table)
    print_verdicts(result.verdicts)
    for gap in result.gaps:
        console.print(f"[yellow]gap:[/] {escape(str(gap))}", highlight=False, soft_wrap=True)
    for error in result.errors:
        console.print(f"[bold red]ERROR (soundness):[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    console.print(f"written: {out / 'report.md'} ({len(result.files)} files in {out})", highlight=False)


# ----------------------------------------------------------------------------- overhead
@app.command("overhead")
@friendly
def overhead_command(
    dataset: Annotated[str, typer.Option(help="Data set the batch comes from.")] = "synth-digits",
    model: Annotated[str, typer.Option(help="Model to time.")] = "lenet",
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    n_proj: NProjGridOpt = None,
    jr_subsample: JrSubsampleGridOpt = None,
    jr_every: Annotated[Optional[list[int]], typer.Option(help="Also time n=1 on every k-th step; repeat.")] = None,
    jvp: Annotated[bool, typer.Option("--jvp", help="Also time the forward-mode estimator (--jr-estimator jvp, n=1).")] = False,
    lipschitz: Annotated[bool, typer.Option("--lipschitz", help="Also time --reg lipschitz (the weights projected after each step).")] = False,
    noise: Annotated[bool, typer.Option("--noise", help="Also time --reg noise (Gaussian data augmentation).")] = False,
    jr_backend: JrBackendOpt = JrBackend.auto,
    random_batch: Annotated[bool, typer.Option("--random-batch", help="Time on uniform pixels of the data set's shape (no data files needed).")] = False,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Also time the per-row autograd reference of the exact penalty.")] = True,
    pairs: Annotated[int, typer.Option(help="Interleaved timing pairs (after warm-up).")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up rounds.")] = 3,
    device: DeviceOpt = "auto",
    data_dir: NewDataDirOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the summary table here (default: results/runs/overhead.csv without --check/--gate, else nowhere).")] = None,
    check: Annotated[Optional[Path], typer.Option(help="Budget file; exit 1 naming each case over budget.")] = None,
    gate: Annotated[Optional[Path], typer.Option(help="Gate spec (benchmarks/overhead_gate.toml): time this checkout against a baseline commit, interleaved; exit 1 on a regression.")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="With --gate: the baseline commit (default: the spec's).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Time Jacobian-regularized training steps against plain SGD, interleaved in one process."""
    if gate is not None:
        return run_gate_command(gate, baseline, jr_backend.value, device, out, quiet)
    from rich.table import Table

    from .cost.overhead import OverheadConfig, cases_of, run_overhead
    from .cost.budgets import check_budget, check_budget_cases, load_budget
    from .training.rundir import atomic_write_csv

    budgets = load_budget(check) if check is not None else None  # a bad file fails before timing
    cfg = OverheadConfig(dataset, model, batch_size, tuple(n_proj or (1, 3, -1)), tuple(jr_subsample or (16, 32)),
                         tuple(jr_every or ()), jvp, jr_backend.value, random_batch, reference, pairs, warmup, 0, device,
                         str(data_dir) if data_dir else None, lipschitz, noise)
    if budgets is not None:
        check_budget_cases(budgets, cases_of(cfg))
    with Bars(quiet) as bars:
        summary = run_overhead(cfg, on_progress=bars.callback(f"{model}: timing pairs"))
    # the default lies with the default run folders (git-ignored), not on a committed results table
    out = out if out is not None or check is not None else Path("results/runs/overhead.csv")
    if out is not None:
        atomic_write_csv(out, summary)
    table = Table(title=f"{model}, batch {batch_size}, {summary['device_name'].iloc[0]}, "
                        f"{summary['threads'].iloc[0]} threads: seconds per training step; x plain: median of per-pair ratios")
    table.add_column("case", no_wrap=True)
    for col in ("ms/step", "x plain", "IQR", "peak MB", "x ref."):
        table.add_column(col, justify="right", no_wrap=True)
    for r in summary.itertuples():
        ref = "" if r.ratio_to_reference != r.ratio_to_reference else f"{r.ratio_to_reference:.2f}"
        table.add_row(r.case, f"{1000 * r.median_seconds:.2f}", f"{r.ratio_median:.2f}",
                      f"{r.ratio_q25:.2f}-{r.ratio_q75:.2f}", f"{r.peak_mb:.1f}", ref)
    console.print(table)
    if out is not None:
        console.print(f"written: {out}")
    if budgets is not None:
        failures = check_budget(summary, budgets)
        for failure in failures:
            err_console.print(f"[bold red]over budget:[/] {escape(str(failure))}", highlight=False)
        if failures:
            raise typer.Exit(1)
        console.print(f"all {len(budgets)} overhead budgets hold ({check})")


def run_gate_command(spec_path: Path, baseline: str | None, jr_backend: str, device: str, out: Path | None,
                     quiet: bool = False) -> None:
    """The regression gate (jrbench/cost/gate.py): exit 1 naming each case that regressed; ``quiet``: no spinner."""
    from contextlib import nullcontext

    from rich.table import Table

    from .config import JR_BACKENDS
    from .cost.gate import load_gate_spec, run_gate
    from .registry import unknown_name
    from .training.rundir import atomic_write_csv

    if jr_backend not in JR_BACKENDS:
        raise unknown_name("--jr-backend", jr_backend, list(JR_BACKENDS))
    spec = load_gate_spec(spec_path)
    options = {} if jr_backend == "auto" else {"jr_backend": jr_backend}
    spinner = nullcontext() if quiet else err_console.status("timing this checkout against the baseline, interleaved")
    with spinner as status:
        on_round = None if quiet else (lambda r, s: status.update(f"round {r}, {s:.0f} s of at most "
                                                                 f"{spec.max_seconds:.0f} s"))
        result = run_gate(spec, baseline=baseline, reg_options=options, device=device, on_round=on_round)
    t = result.table
    row0 = t.iloc[0]
    table = Table(title=f"overhead ratios (x plain), {spec.model}, batch {spec.batch_size}, {row0['device_name']}, "
                        f"{row0['threads']} threads; baseline {row0['baseline_commit'][:10]}: {row0['baseline_rule']}")
    table.add_column("case", no_wrap=True)
    for col in ("this", "base", "this/base [95% CI]", "n", "verdict"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in t.itertuples():
        table.add_row(r.case, f"{r.ratio_candidate:.2f}", f"{r.ratio_baseline:.2f}",
                      f"{r.relative:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]", str(r.rounds), r.verdict)
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(str(note))}", highlight=False)
    if out is not None:
        atomic_write_csv(out, t)
        console.print(f"written: {out}")
    for failure in result.failures:
        err_console.print(f"[bold red]regression:[/] {escape(str(failure))}", highlight=False)
    if result.failures:
        raise typer.Exit(1)
    console.print(f"the gate holds: no case worse than the baseline by more than {spec.tolerance:.0%} beyond the "
                  f"noise, and every loose bound holds ({result.seconds:.0f} s)")


# ----------------------------------------------------------------------------- frontier
@app.command("frontier")
@friendly
def frontier_command(
    paths: Annotated[list[Path], typer.Argument(help="Folders of the study's runs (e.g. results/frontier).")],
    overhead: Annotated[Path, typer.Option(help="A table of 'jrbench overhead --out' timing the study's settings.")],
    out: Annotated[Optional[Path], typer.Option(help="Folder of frontier.csv, frontier_verdicts.csv and frontier.png (default: the first PATH, the study's folder).")] = None,
    eps_linf: Annotated[float, typer.Option(help="L-inf radius of the robustness column (pixel units).")] = 0.1,
    sigma: Annotated[float, typer.Option(help="Noise sigma of the noise column (pixel units).")] = 0.5,
    goal_ratio: Annotated[float, typer.Option(help="The overhead goal (x plain).")] = 1.3,
    margin: Annotated[float, typer.Option(help="Non-inferiority margin delta (accuracy points): 'not worse' when the one-sided 95% lower bound of (setting - full n=1) lies above -delta.")] = 3.0,
) -> None:
    """Overhead against robustness of each cheap-penalty setting, with verdicts against full n=1."""
    from rich.table import Table

    from .errors import UserError
    from .study.frontier import frontier, write_frontier
    from .analysis.results import collect
    from .training.rundir import read_csv

    if not overhead.is_file():
        raise UserError(f"no overhead table at {overhead}: make one with jrbench overhead ... --out {overhead}.")
    out = out if out is not None else paths[0]
    timing = read_csv(overhead)
    cpu = str(timing["device_name"].iloc[0]) if "device_name" in timing else "CPU not named"
    result = frontier(collect(paths), timing, eps_linf=eps_linf, sigma=sigma, goal_ratio=goal_ratio, margin=margin)
    files = write_frontier(result, out, cpu, eps_linf, sigma)
    table = Table(title=f"training overhead ({cpu}) against robustness; accuracies: mean [95% interval over "
                        f"seeds]; non-inferiority to full-batch n=1, margin {margin:g} points")
    for col in ("setting", "x plain", "R", f"PGD-L∞ ε={eps_linf:g} %", f"noise σ={sigma:g} %", "seeds",
                "vs full n=1"):
        table.add_column(col, overflow="fold")

    def with_interval(mean: float, low: float, high: float) -> str:
        return f"{100 * mean:.1f}" + ("" if low != low else f" [{100 * low:.1f}, {100 * high:.1f}]")

    for r in result.table.itertuples():
        table.add_row(escape(r.setting), f"{r.overhead_ratio:.2f}", f"{r.R:.3g}",
                      escape(with_interval(r.pgd_linf_acc, r.pgd_linf_low, r.pgd_linf_high)),
                      escape(with_interval(r.noise_acc, r.noise_low, r.noise_high)), str(r.n_seeds),
                      escape(r.verdict_vs_full))
    console.print(table)
    for line in result.goal:
        console.print(f"[bold]goal ({goal_ratio}x plain, not worse than full n=1 at a {margin:g}-point margin):[/] "
                      f"{escape(line)}", highlight=False)
    for gap in result.gaps:
        console.print(f"[yellow]gap:[/] {escape(str(gap))}", highlight=False, soft_wrap=True)
    console.print("written: " + ", ".join(map(str, files)))


# ----------------------------------------------------------------------------- list
@app.command("list")
@friendly
def list_command() -> None:
    """List the registered data sets, models and regularizers."""
    from .data.datasets import DATASETS
    from .models.architectures import MODELS
    from .penalty.regularizers import REGULARIZERS

    console.print("[bold]datasets:[/] " + ", ".join(DATASETS.names()))
    for name in MODELS.names():
        console.print(f"[bold]model[/] {name}: {MODELS.get(name).description}", highlight=False)
    for name in REGULARIZERS.names():
        console.print(f"[bold]regularizer[/] {name}: {REGULARIZERS.get(name).description}", highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
