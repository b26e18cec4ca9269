"""jrbench report: runs -> summary.csv, the paper-style table, verdicts over seeds, plots and report.md."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..report.options import ReportConfig
from .common import Bars, DataDirOpt, DeviceOpt, QuietOpt, app, console, friendly
from .options import with_options


def print_verdicts(verdicts) -> None:
    """One compact table per comparison (jrbench.analysis.verdicts.compact_tables): worst cases equal to
    PGD left out; report.md has every line."""
    from rich.table import Table

    from ..analysis.verdicts import ADJUSTED, compact_tables

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
    adjusted = (f"p adjusted over the report's {len(verdicts)} distinct comparisons" if correction in ADJUSTED
                else "p not adjusted (--correction none)")
    console.print(f"Differences: group minus baseline, accuracies in points; {adjusted}; n.s.: no significant "
                  f"difference. Strength-0 rows that repeat the clean accuracy are no verdicts of their own "
                  f"('= clean': the clean accuracy of the attacked examples). "
                  f"Left out as repeats: worst cases equal to PGD; "
                  f"report.md has every verdict and the methods, verdicts.csv every number.",
                  highlight=False)




def run_report(paths: list[Path], out: Path, config: ReportConfig, *, device: str = "auto",
               data_dir: Path | None = None, quiet: bool = False) -> None:
    """Collect the runs under ``paths``, write the report into ``out`` and print its table and verdicts
    (``jrbench report``, and a sweep's report at its end)."""
    from rich.table import Table

    from ..report.writer import ReportOptions, write_report
    from ..analysis.results import collect

    options = ReportOptions.from_config(config, device, str(data_dir) if data_dir else None)
    with Bars(quiet) as bars:
        result = write_report(collect(paths), out, options, on_progress=bars.callback("cross-sections"))
    rows = result.table.set_index(result.table.columns[0]).T  # one column per run or group: fits a terminal
    table = Table(title="per run" if config.per_run else "per group of runs differing by seed: mean ± std across seeds")
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


@app.command("report")
@friendly
@with_options(report=ReportConfig)
def report_command(
    paths: Annotated[list[Path], typer.Argument(help="Run directories or folders of runs (searched recursively).")],
    report: dict,
    out: Annotated[Path, typer.Option(help="Folder of the report.")] = Path("results/report"),
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Collect runs into summary.csv; write a paper-style table, verdicts against plain runs, plots and report.md."""
    run_report(paths, out, ReportConfig(**report), device=device, data_dir=data_dir, quiet=quiet)
