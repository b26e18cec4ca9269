"""What every command shares: the app, consoles, the error wrapper, progress bars, the shared options,
and the one loop "for each run or outside model: resolve, check, then run".

User mistakes (:class:`jrbench.errors.UserError`) become one clear message and exit code 2.
Heavy imports (torch, pandas) happen inside the commands, so ``--help`` is instant.
"""
from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Robustness benchmarks for PyTorch image classifiers and Jacobian regularization.")
console = Console()
err_console = Console(stderr=True)

EXIT_USER_ERROR = 2


_ENUMS: dict[tuple[str, ...], type[Enum]] = {}


def choice_enum(name: str, choices: tuple[str, ...]) -> type[Enum]:
    """A str Enum of ``choices`` (Typer shows and checks them), one per set of choices."""
    if choices not in _ENUMS:
        _ENUMS[choices] = Enum(name.title().replace("_", ""), {c: c for c in choices}, type=str)
    return _ENUMS[choices]


DEVICE_CHOICES = ("auto", "cpu", "cuda")


def check_device(value: str) -> str:
    """--device: a fixed choice, or cuda:N for one GPU by number (an Enum cannot say cuda:N)."""
    import re

    if value in DEVICE_CHOICES or re.fullmatch(r"cuda:\d+", value):
        return value
    raise typer.BadParameter(f"{value!r} is not one of auto, cpu, cuda or cuda:N.")


DeviceOpt = Annotated[str, typer.Option(metavar="<auto|cpu|cuda|cuda:N>", callback=check_device,
                                        help="auto (a GPU if there is one), cpu, cuda or cuda:N.")]
DataDirOpt = Annotated[Optional[Path], typer.Option(
    help="Data folder (default: the one the run was trained with, else $JRBENCH_DATA, else ~/.cache/jrbench).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]

class Bars:
    """Rich progress bars with the time left, on stderr, fed by the library's callbacks
    ``on_progress(done, total, label)``; ``quiet``: none (the callbacks are None)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress = None

    def _start(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TextColumn("left"),
                                 TimeRemainingColumn(), console=err_console)
        self.progress.start()

    def callback(self, description: str) -> Callable[[int, int, str], None] | None:
        """A new bar named ``description``, started by its first call; None when quiet."""
        if self.quiet:
            return None
        task = None

        def on_progress(done: int, total: int, label: str) -> None:
            nonlocal task
            if self.progress is None:
                self._start()
            if task is None:
                task = self.progress.add_task(description, total=total, label="")
            self.progress.update(task, completed=done, total=total, label=label)

        return on_progress

    def stop(self) -> None:
        """Stop the bars (before another live display, e.g. training's, starts)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly(command: Callable) -> Callable:
    """Turn user errors into a message and exit code 2; Ctrl-C into a note and exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from ..errors import NonFiniteLoss, UserError

        try:
            return command(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except NonFiniteLoss as e:
            fail(str(e), code=1)
        except KeyboardInterrupt:
            err_console.print(f"interrupted. {resume_hint(command.__name__, sys.argv[1:])}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(130)

    return wrapper


def resume_hint(command_name: str, argv: list[str]) -> str:
    """What was kept and the exact command that continues, for the Ctrl-C message."""
    import shlex

    again = ["jrbench", *argv]
    if command_name == "train_command":
        if "--resume" not in argv:
            again.append("--resume")
        return f"Finished epochs are kept; to continue: {shlex.join(again)}"
    if command_name in ("sweep_command", "demo_command"):
        return f"Finished cells and steps are kept; to resume: {shlex.join(again)}"
    return (f"Tables already written are kept (each is written whole, never half); to run it again: "
            f"{shlex.join(again)}")


# ----------------------------------------------------------------------------- runs and outside models
RunDirsArg = Annotated[list[Path], typer.Argument(
    help="Run directories written by 'jrbench train', or outside models: a torch.export .pt2 file or a "
         "'module:function' factory.")]


def for_each_source(run_dirs: list[Path], outside: dict, *,
                    check: Callable[[Path, object], None]) -> Iterator[tuple[Path, object]]:
    """Resolve ``run_dirs`` (run directories and outside models, the latter with the options
    ``outside`` of :class:`~jrbench.evaluate.outside_options.OutsideModelConfig`),
    ``check(run_dir, model)`` every one of them before any work (a bad last one fails before the
    first is measured), then yield each (run_dir, model) in turn; ``model`` is None for a run directory."""
    from ..evaluate.outside import resolve_sources
    from ..evaluate.outside_options import OutsideModelConfig

    cfg = OutsideModelConfig(**outside)
    sources = resolve_sources(run_dirs, dataset=cfg.dataset, weights=cfg.weights,
                              input_normalized=cfg.input_normalized, out=cfg.out)
    for run_dir, model in sources:
        check(run_dir, model)
    yield from sources
