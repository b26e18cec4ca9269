"""jrbench overhead: Jacobian-regularized training steps timed against plain SGD, interleaved in one process."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .common import (Bars, DeviceOpt, JrBackend, JrBackendOpt, JrSubsampleGridOpt, NewDataDirOpt, NProjGridOpt,
                     QuietOpt, app, console, err_console, friendly)


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
    jr_backend: JrBackendOpt = JrBackend("auto"),
    random_batch: Annotated[bool, typer.Option("--random-batch", help="Time on uniform pixels of the data set's shape (no data files needed).")] = False,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Also time the per-row autograd reference of the exact penalty.")] = True,
    pairs: Annotated[int, typer.Option(help="Interleaved timing pairs (after warm-up).")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up rounds.")] = 3,
    device: DeviceOpt = "auto",
    data_dir: NewDataDirOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the summary table here (default: results/runs/overhead.csv without --check/--gate, else nowhere).")] = None,
    check: Annotated[Optional[Path], typer.Option(help="Budget file; exit 1 naming each case over budget.")] = None,
    gate: Annotated[Optional[Path], typer.Option(help="The old spelling of 'jrbench gate SPEC' (kept): time this checkout against a baseline commit.")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="With --gate: the baseline commit (default: the spec's).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Time Jacobian-regularized training steps against plain SGD, interleaved in one process."""
    if gate is not None:  # the old spelling of jrbench gate, kept
        from .gate import run_gate_command

        return run_gate_command(gate, baseline, jr_backend.value, device, out, quiet)
    from rich.table import Table

    from ..cost.overhead import OverheadConfig, cases_of, run_overhead
    from ..cost.budgets import check_budget, check_budget_cases, load_budget
    from ..training.rundir import atomic_write_csv

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


