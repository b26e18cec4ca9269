"""jrbench list: the registered data sets, models and regularizers."""
from __future__ import annotations

from .common import app, console, friendly


@app.command("list")
@friendly
def list_command() -> None:
    """List the registered data sets, models and regularizers."""
    from ..data.datasets import DATASETS
    from ..models.architectures import MODELS
    from ..penalty.regularizers import REGULARIZERS

    console.print("[bold]datasets:[/] " + ", ".join(DATASETS.names()))
    for name in MODELS.names():
        console.print(f"[bold]model[/] {name}: {MODELS.get(name).description}", highlight=False)
    for name in REGULARIZERS.names():
        console.print(f"[bold]regularizer[/] {name}: {REGULARIZERS.get(name).description}", highlight=False)
