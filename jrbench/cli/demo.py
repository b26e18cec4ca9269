"""jrbench demo: the quick profile end to end (a plain and a Jacobian-regularized LeNet on synth-digits)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DeviceOpt, app, console, friendly
from .sweep import finish_sweep_report, run_sweep_with_progress


@app.command("demo")
@friendly
def demo_command(
    out: Annotated[Optional[Path], typer.Option(help="Folder of the demo's runs and report (default results/runs/demo, ignored by git; 'make demo-report' writes the committed results/demo).")] = None,
    device: DeviceOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars or step lines.")] = False,
) -> None:
    """The quick profile: a plain and a Jacobian-regularized lenet on synth-digits, end to end.

    Ends in the report, whose console table puts the two runs side by side."""
    from ..study.demo import quick_spec, where_note

    spec = quick_spec(out)
    console.print(where_note(spec.folder), highlight=False)
    run_sweep_with_progress(spec, device, quiet=quiet)
    finish_sweep_report(spec.folder, spec.folder / "report", spec.report, device, quiet)


