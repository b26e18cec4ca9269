"""jrbench overhead: Jacobian-regularized training steps timed against plain SGD, interleaved in one process."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..cost.overhead_config import OverheadConfig
from .common import Bars, QuietOpt, app, console, err_console, friendly
from .options import with_options


@app.command("overhead")
@friendly
@with_options(overhead=OverheadConfig)
def overhead_command(
    overhead: dict,
    out: Annotated[Optional[Path], typer.Option(help="Write the summary table here (default: results/runs/overhead.csv without --check/--gate, else nowhere).")] = None,
    check: Annotated[Optional[Path], typer.Option(help="Budget file; exit 1 naming each case over budget.")] = None,
    gate: Annotated[Optional[Path], typer.Option(help="The old spelling of 'jrbench gate SPEC' (kept): time this checkout against a baseline commit.")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="With --gate: the baseline commit (default: the spec's).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Time Jacobian-regularized training steps against plain SGD, interleaved in one process."""
    if gate is not None:  # the old spelling of jrbench gate, kept
        from .gate import run_gate_command

        return run_gate_command(gate, baseline, overhead.get("jr_backend", "auto"), overhead.get("device", "auto"), out,
                                quiet)
    from rich.table import Table

    from ..cost.overhead import cases_of, run_overhead
    from ..cost.budgets import check_budget, check_budget_cases, load_budget
    from ..training.rundir import atomic_write_csv

    budgets = load_budget(check) if check is not None else None  # a bad file fails before timing
    cfg = OverheadConfig(**overhead)
    if budgets is not None:
        check_budget_cases(budgets, cases_of(cfg))
    with Bars(quiet) as bars:
        summary = run_overhead(cfg, on_progress=bars.callback(f"{cfg.model}: timing pairs"))
    # the default lies with the default run folders (git-ignored), not on a committed results table
    out = out if out is not None or check is not None else Path("results/runs/overhead.csv")
    if out is not None:
        atomic_write_csv(out, summary)
    table = Table(title=f"{cfg.model}, batch {cfg.batch_size}, {summary['device_name'].iloc[0]}, "
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


