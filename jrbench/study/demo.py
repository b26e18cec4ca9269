"""The demo: the quick profile (``jrbench/study/quick.toml``, linked from ``benchmarks/quick.toml``).

A plain and a Jacobian-regularized lenet on the embedded synth-digits data, trained,
attacked (noise and PGD) and measured (margins, spectra), ending in a report that compares
them side by side.

``jrbench demo`` writes where a user's runs go, ``results/runs/demo`` (ignored by git), so a
fresh clone stays clean after ``make demo``; the committed report of ``results/demo/report`` is
rewritten only on purpose, by ``make demo-report`` (``jrbench demo --out results/demo``).
"""
from __future__ import annotations

from pathlib import Path

DEMO_OUT = Path("results/runs/demo")  # the demo's runs and report; results/runs/ is ignored by git
COMMITTED_OUT = Path("results/demo")  # the committed report's study: make demo-report


def quick_spec(out: Path | None = None):
    """The quick profile as a sweep spec whose runs go straight into ``out`` (default :data:`DEMO_OUT`)."""
    from importlib import resources

    from .spec import parse_spec

    out = DEMO_OUT if out is None else Path(out)
    text = resources.files("jrbench.study").joinpath("quick.toml").read_text()
    spec = parse_spec(text, Path("jrbench/study/quick.toml"), out.parent)
    spec.name = out.name
    return spec


def where_note(folder: Path) -> str:
    """The line that tells the user where the demo writes (and how the committed report is made)."""
    if Path(folder) == DEMO_OUT:
        return (f"demo: runs and report in {folder}/ (ignored by git); the committed report "
                f"{COMMITTED_OUT}/report is rewritten by 'make demo-report'")
    return f"demo: runs and report in {folder}/"
