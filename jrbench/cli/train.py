"""jrbench train: one training run -> a run directory (options: the fields of jrbench.config's configs)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DataConfig, ModelConfig, RegConfig, RunConfig, TrainConfig
from .common import QuietOpt, app, console, err_console, friendly
from .options import with_options


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
    from ..training.loop import train

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
@with_options(data=DataConfig, model=ModelConfig, reg=RegConfig, train=TrainConfig)
def train_command(
    data: dict, model: dict, reg: dict, train: dict,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default results/runs/<run-id>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last finished epoch.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a model with or without Jacobian regularization; write a run directory."""
    config = RunConfig(DataConfig(**data), ModelConfig(**model), RegConfig(**reg), TrainConfig(**train))
    # checked once, by train() (jrbench.training.loop), before anything is written
    out = out or Path("results/runs") / config.run_id()
    if resume and not (out / "model.pt").is_file():
        console.print(f"--resume: {out} holds no finished epoch yet; training from the first epoch.", highlight=False)
    result = run_training(config, out, resume, quiet)
    last = result.metrics.iloc[-1]
    console.print(f"run directory: {out}")
    console.print(f"test accuracy {last['test_acc']:.4f}, mean ||J_z||_F {last['test_jac_frob_z']:.3f} "
                  f"(R = {last['test_R_z']:.3f}), mean ||J_x||_F (pixels) {last['test_jac_frob_pixel']:.3f}",
                  highlight=False)
