"""Figures without pyplot: a matplotlib Figure on the Agg canvas, and its PNG bytes.

Shared by the report, the decision-cell cross-sections and the frontier, so that none of
them imports another to draw.
"""
from __future__ import annotations

import io


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state) and its axes (1 x ncols;
    with ``nrows`` > 1 the nrows x ncols grid, row by row, flat)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, (axes[0] if nrows == 1 else axes.ravel())


def png_bytes(fig, dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
