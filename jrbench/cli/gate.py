"""jrbench gate: the CI gate on the training overhead ratio, this checkout against a baseline commit."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..cost.gate_options import GateConfig
from .common import DeviceOpt, QuietOpt, app, console, err_console, friendly
from .options import with_options


def run_gate_command(spec_path: Path, baseline: str | None, jr_backend: str, device: str, out: Path | None,
                     quiet: bool = False) -> None:
    """The regression gate (jrbench/cost/gate.py): exit 1 naming each case that regressed; ``quiet``: no spinner."""
    from contextlib import nullcontext

    from rich.table import Table

    from ..cost.gate import load_gate_spec, run_gate
    from ..training.rundir import atomic_write_csv

    cfg = GateConfig(baseline=baseline, jr_backend=jr_backend)  # a bad value exits 2 naming its flag
    spec = load_gate_spec(spec_path)
    spinner = nullcontext() if quiet else err_console.status("timing this checkout against the baseline, interleaved")
    with spinner as status:
        on_round = None if quiet else (lambda r, s: status.update(f"round {r}, {s:.0f} s of at most "
                                                                 f"{spec.max_seconds:.0f} s"))
        result = run_gate(spec, baseline=cfg.baseline, reg_options=cfg.reg_options, device=device,
                          on_round=on_round)
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


@app.command("gate")
@friendly
@with_options(gate=GateConfig)
def gate_command(
    spec: Annotated[Path, typer.Argument(help="Gate spec (benchmarks/overhead_gate.toml).")],
    gate: dict,
    device: DeviceOpt = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Write the gate's table here.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """The overhead regression gate: time this checkout against a baseline commit, interleaved in one
    process; exit 1 naming each case whose overhead ratio regressed (CI: make overhead-check)."""
    run_gate_command(spec, **gate, device=device, out=out, quiet=quiet)  # gate: GateConfig's baseline, jr_backend
