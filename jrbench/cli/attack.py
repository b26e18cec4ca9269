"""jrbench attack: white noise, PGD, FGSM, AutoAttack and the common corruptions on runs or outside models -> attacks.csv."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..evaluate.attack_config import AttackConfig
from ..runtables.examples import ExampleSet
from ..evaluate.outside_options import OutsideModelConfig
from .common import Bars, DataDirOpt, DeviceOpt, QuietOpt, RunDirsArg, app, console, for_each_source, friendly
from .options import with_options


def print_corruption_table(rows, title: str) -> None:
    """The corruption rows as one grid: a row per corruption, a column per severity (accuracy)."""
    from rich.table import Table

    severities = sorted(rows["strength"].unique())
    table = Table(title=title)
    table.add_column("corruption")
    for s in severities:
        table.add_column(f"severity {s:g}" if s else "clean", justify="right")
    table.add_column("seconds", justify="right")
    for name, sel in rows.groupby("norm", sort=False):
        acc = dict(zip(sel["strength"], sel["accuracy"]))
        table.add_row(name, *(f"{acc[s]:.3f}" if s in acc else "" for s in severities), f"{sel['seconds'].sum():.1f}")
    console.print(table)


def print_attack_table(result, title: str) -> None:
    from rich.table import Table

    corrupted = result.table["attack"] == "corruption"
    if (~corrupted).any():
        table = Table(title=title)
        for col in ("attack", "norm", "strength", "accuracy", "95% CI", "n", "loss", "seconds"):
            table.add_column(col, justify="right")
        for r in result.table[~corrupted].itertuples():
            table.add_row(r.attack, r.norm, f"{r.strength:g}", f"{r.accuracy:.4f}",
                          f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", str(r.n_examples), r.loss, f"{r.seconds:.1f}")
        console.print(table)
    if corrupted.any():
        print_corruption_table(result.table[corrupted], title.replace("accuracy under attack",
                                                                      "accuracy under the common corruptions"))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(warning))}", highlight=False)
    console.print(f"written: {result.path}" + (f", {result.examples_path}" if result.examples_path else ""))




@app.command("attack")
@friendly
@with_options(attack=AttackConfig, examples=ExampleSet, outside=OutsideModelConfig)
def attack_command(
    run_dirs: RunDirsArg,
    attack: dict, examples: dict, outside: dict,
    eps: Annotated[Optional[list[float]], typer.Option(
        help="PGD/FGSM radius (pixel units) for a single --norm; repeat for a grid (command line only: a spec "
             "names eps_linf and eps_l2).")] = None,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Attack trained runs or outside models with white noise, PGD, FGSM and AutoAttack, or corrupt
    their fixed test examples with the common corruptions (--corruptions); write attacks.csv and the
    per-example record attack_examples.csv into the run (or model) folder. Naming selects: the
    attacks named (an --autoattack-eps-* grid names AutoAttack, --corruption or --severity the
    corruptions) run, and only they; none named: noise, PGD and FGSM, less those given as --no-noise,
    --no-pgd, --no-fgsm."""
    from ..errors import UserError
    from ..evaluate.api import attack_model, attack_run, check_attack
    from ..evaluate.attack_config import NORMS, build_attack_config

    norms = attack.get("norms", NORMS)
    if eps is not None:
        if len(norms) != 1:
            raise UserError("--eps needs a single --norm; use --eps-linf and --eps-l2 for both.")
        if attack.get(f"eps_{norms[0]}") is not None:
            raise UserError(f"--eps and --eps-{norms[0]} both give the {norms[0]} grid; give one of them.")
        attack[f"eps_{norms[0]}"] = eps
    config = build_attack_config(**attack)  # sigma not given: each run's data set's noise grid
    example_set = ExampleSet(**examples)
    configs = {}  # every directory and model is checked before any table is written

    def check(run_dir, model):
        data_set = model.dataset if model is not None else check_attack(run_dir, config).data
        configs[run_dir] = config.filled(data_set)  # grids not given: the data set's defaults

    for run_dir, model in for_each_source(run_dirs, outside, check=check):
        filled, data = configs[run_dir], str(data_dir) if data_dir else None
        with Bars(quiet) as bars:
            on_progress = bars.callback(f"{run_dir.name}: attacks")
            if model is None:
                result = attack_run(run_dir, filled, n_examples=example_set.n_examples,
                                    example_seed=example_set.example_seed, device=device, data_dir=data,
                                    on_progress=on_progress)
            else:
                result = attack_model(model.model, model.dataset, filled, n_examples=example_set.n_examples,
                                      example_seed=example_set.example_seed, device=device, data_dir=data,
                                      out=run_dir, name=model.name, source=model.provenance,
                                      on_progress=on_progress)
        noise_note = (f"; noise: {result.noise_examples}" if result.noise_examples not in (None, result.n_examples)
                      else "")
        print_attack_table(result, f"{run_dir.name}: accuracy under attack ({result.n_examples} test examples"
                                   f"{noise_note})")
