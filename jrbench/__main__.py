"""``python -m jrbench``: the command line without an installed entry point (e.g. on a GPU box)."""
from .cli import app

app(prog_name="jrbench")
