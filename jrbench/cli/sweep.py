"""jrbench sweep: a study's cells (train, attack, margins, certify) by the local or the Ray engine, then its report."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..study.engine_options import EngineOptions
from .common import Bars, DeviceOpt, app, console, err_console, friendly
from .options import with_options
from .train import run_training


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

        from ..errors import UserError
        from ..study.ray_engine import run_sweep_ray

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
    from ..study.sweep import run_sweep

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



@app.command("sweep")
@friendly
@with_options(engine=EngineOptions)
def sweep_command(
    spec_path: Annotated[Path, typer.Argument(help="A study as a grid in TOML (see benchmarks/*.toml).")],
    engine: dict,
    out: Annotated[Optional[Path], typer.Option(help="Parent folder of the sweep's runs (default: the spec's 'out').")] = None,
    device: DeviceOpt = "auto",
    report: Annotated[bool, typer.Option(help="Write the report at the end.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars, step lines or live table.")] = False,
) -> None:
    """Train, attack and measure every cell of a study; skip finished cells; then report.

    A cell that fails leaves the others running; the command then exits 1 naming it."""
    from ..study.spec import load_spec

    how = EngineOptions(**engine)
    spec = load_spec(spec_path, out)
    if how.engine == "ray":
        import os

        cluster = how.address or ("$RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "this machine's cores")
        console.print(f"{spec.name}: {len(spec.cells)} cells in {spec.folder}, on Ray ({cluster})", highlight=False)
    else:
        console.print(f"{spec.name}: {len(spec.cells)} cells in {spec.folder}", highlight=False)
    try:
        statuses = run_sweep_with_progress(spec, device, engine=how.engine, address=how.address, retries=how.retries,
                                           shared_dir=how.shared_dir, quiet=quiet, keep_going=True,
                                           connect_timeout=how.connect_timeout, verbose=how.verbose)
    except KeyboardInterrupt:
        err_console.print("interrupted: every finished cell is kept (and finished epochs of the cells in this "
                          "process or in a --shared-dir); run the same command to resume.")
        raise typer.Exit(130)
    failed = [s for s in statuses if s.error]
    if report and len(failed) < len(statuses):
        finish_sweep_report(spec.folder, spec.folder / "report", spec.report, device, quiet)
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



def finish_sweep_report(runs: Path, out: Path, report=None, device: str = "auto", quiet: bool = False) -> None:
    """Write the report of a finished sweep (as jrbench report does) with the spec's [report] options
    (a :class:`~jrbench.report.options.ReportConfig`; None: the defaults)."""
    from ..report.options import ReportConfig
    from .report import run_report

    run_report([runs], out, report if report is not None else ReportConfig(), device=device, quiet=quiet)
