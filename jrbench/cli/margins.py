"""jrbench margins: margins and Jacobian spectra per example -> margins.csv, jacobian.csv."""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from ..evaluate.margins_config import MARGIN_EXAMPLES, MarginsConfig
from ..runtables.examples import ExampleSet
from ..evaluate.outside_options import OutsideModelConfig
from .common import Bars, DataDirOpt, DeviceOpt, QuietOpt, RunDirsArg, app, console, for_each_source, friendly
from .options import with_options


def print_margins_summary(result, title: str, run_dir: Path) -> None:
    from rich.table import Table

    from ..evaluate.api import margins_summary

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
@with_options(defaults={"n_examples": MARGIN_EXAMPLES}, examples=ExampleSet, margins=MarginsConfig,
              outside=OutsideModelConfig)
def margins_command(
    run_dirs: RunDirsArg,
    examples: dict, margins: dict, outside: dict,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Random-direction, adversarial and first-order margins, and Jacobian spectra, per example,
    of trained runs or outside models (the correctly classified ones of the fixed examples)."""
    from ..evaluate.api import margins_model, margins_run
    from ..training.rundir import check_run_dir

    example_set, config = ExampleSet(**examples), MarginsConfig(**margins)

    def check(run_dir, model):
        if model is None:
            check_run_dir(run_dir)

    for run_dir, model in for_each_source(run_dirs, outside, check=check):
        data = str(data_dir) if data_dir else None
        common = dict(n_examples=example_set.n_examples, n_directions=config.directions, seed=config.seed,
                      example_seed=example_set.example_seed, device=device, data_dir=data,
                      batch_size=config.batch_size)
        with Bars(quiet) as bars:
            on_progress = bars.callback(f"{run_dir.name}: margins")
            if model is None:
                result = margins_run(run_dir, **common, on_progress=on_progress)
            else:
                result = margins_model(model.model, model.dataset, **common, out=run_dir, name=model.name,
                                       source=model.provenance, on_progress=on_progress)
        print_margins_summary(result, f"{run_dir.name}: margins (pixel L2) and Jacobian", run_dir)
