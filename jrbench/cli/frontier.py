"""jrbench frontier: each cheap-penalty setting's overhead against its robustness, with verdicts."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..study.frontier_options import FrontierConfig
from .common import app, console, friendly
from .options import with_options


@app.command("frontier")
@friendly
@with_options(options=FrontierConfig)
def frontier_command(
    paths: Annotated[list[Path], typer.Argument(help="Folders of the study's runs (e.g. results/frontier).")],
    options: dict,
    overhead: Annotated[Path, typer.Option(help="A table of 'jrbench overhead --out' timing the study's settings.")],
    out: Annotated[Optional[Path], typer.Option(help="Folder of frontier.csv, frontier_verdicts.csv and frontier.png (default: the first PATH, the study's folder).")] = None,
) -> None:
    """Overhead against robustness of each cheap-penalty setting, with verdicts against full n=1."""
    from rich.table import Table

    from ..errors import UserError
    from ..study.frontier import frontier, write_frontier
    from ..analysis.results import collect
    from ..training.rundir import read_csv

    cfg = FrontierConfig(**options)  # a bad value exits 2 naming its flag, before any table is read
    eps_linf, sigma, goal_ratio, margin = cfg.eps_linf, cfg.sigma, cfg.goal_ratio, cfg.margin
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
