"""Decision-cell cross-sections: the predicted class on a 2-D slice of input space.

A plane through a test image x0 (pixels, (C, H, W)) is spanned by two orthonormal
directions d1, d2 of pixel space (L2 norm 1, pixel units): the grid point (t1, t2) is
x0 + t1 d1 + t2 d2, with t1, t2 in [-radius, radius], so distances on the plane are pixel L2
distances. Pixels are NOT clipped to [0, 1]: the slice shows the function the network
computes, as margins do (jrbench.evaluate.margins).

Two planes:
- ``random``: d1, d2 from Gaussian draws (a torch.Generator seeded by ``seed``),
  orthonormalized (QR);
- ``adversarial``: d1 = -grad_x (f_y - f_r) / ||grad_x (f_y - f_r)|| of a reference model at
  x0, with y the label and r the runner-up class (moving along +d1 shrinks the logit gap, to
  first order the fastest way to the r-cell), and d2 a random direction orthogonalized
  against d1.
Every model is sliced through the same point and the same directions, so the pictures of a
plain and a Jacobian-regularized run compare (Hoffman, Roberts, Yaida 2019,
arXiv:1908.02729: regularized cells are larger). Models map pixels (B, C, H, W) to logits
(B, K); tensors are made on the point's device and dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..models.architectures import eval_mode

KINDS = ("random", "adversarial")


@dataclass
class Plane:
    """A square slice: ``point`` (C, H, W) pixels with its ``label`` and test-set ``index``;
    ``directions`` (2, C, H, W), orthonormal in pixel L2; half-width ``radius`` (pixel L2);
    ``reference``: the model whose gradient gave the adversarial direction (None: random)."""

    point: torch.Tensor
    label: int
    index: int
    directions: torch.Tensor
    kind: str
    radius: float
    seed: int
    reference: str | None = None


@dataclass
class CrossSection:
    """``predictions[name][i, j]``: the class at point + coords[j] d1 + coords[i] d2 (rows run
    along d2, as images with origin 'lower'); ``coords`` (n,) pixel L2 units."""

    plane: Plane
    coords: np.ndarray
    predictions: dict[str, np.ndarray]


def orthonormal_directions(shape: tuple[int, ...], n: int, seed: int, device: torch.device | str,
                           dtype: torch.dtype, against: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` random orthonormal directions (n, *shape), orthogonal to ``against`` (unit, *shape)
    when given. Gaussian draws from a generator seeded by ``seed`` on the CPU in float64
    (the same on every device), orthonormalized by QR, then moved to ``device``/``dtype``."""
    dim = int(np.prod(shape))
    g = torch.Generator().manual_seed(int(seed))
    draws = torch.randn(dim, n, generator=g, dtype=torch.float64, device="cpu")
    if against is not None:
        a = against.detach().reshape(dim, 1).to("cpu", torch.float64)
        a = a / a.norm()
        draws = torch.cat([a, draws], dim=1)
    q, r = torch.linalg.qr(draws)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # fix the signs: q_i . draw_i > 0
    if against is not None:
        q = q[:, 1:]
    return q.T.reshape(n, *shape).to(device=device, dtype=dtype).contiguous()


def adversarial_direction(model: nn.Module, point: torch.Tensor, label: int) -> torch.Tensor:
    """-grad_x (f_label - f_runner_up) / its L2 norm at ``point`` (C, H, W) -> (C, H, W)."""
    x = point.detach().unsqueeze(0).requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        logits = model(x)[0]
        others = logits.detach().clone()
        others[label] = float("-inf")
        gap = logits[label] - logits[int(others.argmax())]
        (grad,) = torch.autograd.grad(gap, x)
    norm = grad.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise UserError("the logit gap's gradient is zero at this point; choose another example "
                        "or the random plane.")
    return (-grad / norm)[0]


def make_plane(kind: str, point: torch.Tensor, label: int, index: int, *, radius: float, seed: int = 0,
               reference: tuple[str, nn.Module] | None = None) -> Plane:
    """The plane of ``kind`` ('random' or 'adversarial', which needs ``reference`` = (name, model))."""
    if kind not in KINDS:
        raise UserError(f"unknown cross-section kind '{kind}': use one of {', '.join(KINDS)}.")
    if not radius > 0:
        raise UserError(f"the cross-section radius must be positive (pixel L2), got {radius}.")
    shape, dev, dt = tuple(point.shape), point.device, point.dtype
    if kind == "random":
        dirs = orthonormal_directions(shape, 2, seed, dev, dt)
        return Plane(point, int(label), int(index), dirs, kind, float(radius), seed)
    if reference is None:
        raise UserError("the adversarial plane needs a reference model.")
    d1 = adversarial_direction(reference[1], point, label)
    d2 = orthonormal_directions(shape, 1, seed, dev, dt, against=d1)[0]
    return Plane(point, int(label), int(index), torch.stack([d1, d2]), kind, float(radius), seed, reference[0])


def grid_coords(radius: float, n_grid: int) -> np.ndarray:
    if n_grid < 2:
        raise UserError(f"the cross-section grid needs at least 2 points a side, got {n_grid}.")
    return np.linspace(-radius, radius, n_grid)


@torch.no_grad()
def predict_plane(model: nn.Module, plane: Plane, n_grid: int = 101, batch_size: int = 2048) -> np.ndarray:
    """Predicted class (n_grid, n_grid) on the plane's grid, evaluated in batches, no clipping."""
    coords = torch.as_tensor(grid_coords(plane.radius, n_grid), device=plane.point.device, dtype=plane.point.dtype)
    t2, t1 = torch.meshgrid(coords, coords, indexing="ij")  # row i: t2 = coords[i]; column j: t1 = coords[j]
    t1, t2 = t1.reshape(-1), t2.reshape(-1)
    d1, d2 = plane.directions[0].unsqueeze(0), plane.directions[1].unsqueeze(0)
    expand = (-1,) + (1,) * plane.point.dim()
    preds = []
    with eval_mode(model):
        for s in range(0, t1.numel(), batch_size):
            x = plane.point.unsqueeze(0) + t1[s:s + batch_size].view(expand) * d1 + t2[s:s + batch_size].view(expand) * d2
            preds.append(model(x).argmax(1))
    return torch.cat(preds).view(n_grid, n_grid).cpu().numpy()


@torch.no_grad()
def choose_point(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, index: int | None = None,
                 batch_size: int = 500) -> int:
    """``index`` if given (checked), else the first example of x (N, C, H, W) that every model
    classifies correctly (the first example when there is none)."""
    if index is not None:
        if not 0 <= index < x.shape[0]:
            raise UserError(f"--cell-index {index} is outside the test set (0..{x.shape[0] - 1}).")
        return int(index)
    for s in range(0, x.shape[0], batch_size):
        ok = torch.ones(min(batch_size, x.shape[0] - s), dtype=torch.bool, device=x.device)
        for model in models.values():
            with eval_mode(model):
                ok &= model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]
        hits = ok.nonzero().flatten()
        if hits.numel():
            return s + int(hits[0])
    return 0


def cross_section(models: dict[str, nn.Module], plane: Plane, n_grid: int = 101,
                  batch_size: int = 2048) -> CrossSection:
    """Every model on the same plane: the same point, directions and grid."""
    coords = grid_coords(plane.radius, n_grid)
    return CrossSection(plane, coords, {name: predict_plane(m, plane, n_grid, batch_size)
                                        for name, m in models.items()})


# ----------------------------------------------------------------------------- from run directories


@dataclass
class CellFigure:
    """A cross-section of the runs of one data set, ready to draw: ``titles`` name -> panel title."""

    dataset: str
    section: CrossSection
    titles: dict[str, str]
    class_names: tuple[str, ...]


def panel_runs(records: list, max_panels: int = 6) -> dict[str, list]:
    """Per data set, one run per group (its smallest seed), plain ('none') groups first."""
    from ..analysis.provenance import group_id

    chosen: dict[str, dict[str, object]] = {}
    for r in sorted(records, key=lambda r: (r.config.reg.names != ["none"], r.config.train.seed)):
        chosen.setdefault(r.config.data.dataset, {}).setdefault(group_id(r.config), r)
    return {ds: list(groups.values())[:max_panels] for ds, groups in chosen.items()}


def run_cross_sections(records: list, labels: dict[str, str], *, kinds: tuple[str, ...] = KINDS,
                       radius: float | None = None, n_grid: int = 101, seed: int = 0,
                       index: int | None = None, device: str = "auto", data_dir: str | None = None,
                       max_panels: int = 6, on_progress=None) -> list[CellFigure]:
    """Cross-sections of the runs (:class:`jrbench.analysis.run_records.RunRecord`) of each data set through one
    test point: ``index`` or the first test example every panel's model gets right. The
    adversarial direction comes from the first panel's model (a plain run where there is one).
    ``labels``: run_id -> panel title. Raises UserError when data or models cannot be loaded.
    ``on_progress(done, total, label)`` counts runs x kinds of cross-section, after each section."""
    import dataclasses

    from ..data.datasets import load_data, to_pixels
    from ..training.rundir import load_run
    from ..device import resolve_device

    dev = resolve_device(device)
    figures = []
    panels = panel_runs(records, max_panels)
    total, done = sum(len(runs) for runs in panels.values()) * len(kinds), 0
    if on_progress is not None:
        on_progress(0, total, "loading models")
    for dataset, runs in panels.items():
        models = {r.run_id: load_run(r.path, dev)[0] for r in runs}
        config = runs[0].config
        data = load_data(dataclasses.replace(config.data, data_dir=data_dir or config.data.data_dir))
        x, y = to_pixels(data.test.images, dev), data.test.labels.to(dev)
        i = choose_point(models, x, y, index)
        r = radius if radius is not None else data.info.defaults.cell_radius
        for kind in kinds:
            ref = (runs[0].run_id, models[runs[0].run_id]) if kind == "adversarial" else None
            plane = make_plane(kind, x[i], int(y[i]), i, radius=r, seed=seed, reference=ref)
            section = cross_section(models, plane, n_grid)
            figures.append(CellFigure(dataset, section, {k: labels[k] for k in models}, data.info.classes))
            done += len(models)
            if on_progress is not None:
                on_progress(done, total, f"{dataset} {kind}")
    return figures


def cells_figure(fig_data: CellFigure):
    """Panels side by side, coloured by predicted class; the point is the star at the centre."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    from .figures import new_figure

    section, plane = fig_data.section, fig_data.section.plane
    names = list(section.predictions)
    k = len(fig_data.class_names)
    palette = list(colormaps["tab10" if k <= 10 else "tab20"].colors)[:k]
    cmap, norm = ListedColormap(palette), BoundaryNorm(np.arange(-0.5, k + 0.5), k)
    fig, axes = new_figure(3.6 * len(names) + 1.2, 4.3, ncols=len(names))
    r = plane.radius
    axis1 = "d1 (random)" if plane.kind == "random" else "d1 (adversarial: −∇ logit gap)"
    for ax, name in zip(axes, names):
        ax.imshow(section.predictions[name], origin="lower", extent=(-r, r, -r, r), cmap=cmap, norm=norm,
                  interpolation="nearest")
        ax.plot([0], [0], marker="*", ms=12, color="white", markeredgecolor="black")
        ax.set_title(fig_data.titles[name], fontsize=9)
        ax.set_xlabel(f"t1 along {axis1}\n(pixel L2 units)", fontsize=8)
        ax.set_ylabel("t2 along d2 (random, pixel L2 units)", fontsize=8)
    present = sorted(set(np.unique(np.concatenate([p.ravel() for p in section.predictions.values()])).tolist()))
    handles = [Patch(color=palette[c], label=str(fig_data.class_names[c])) for c in present]
    fig.legend(handles=handles, title="predicted class", loc="outside right center", fontsize=8)
    what = ("two random orthonormal directions" if plane.kind == "random" else
            f"the adversarial direction of {plane.reference} and a random direction ⊥ to it")
    fig.suptitle(f"Decision cells around test example {plane.index} (label {fig_data.class_names[plane.label]}, ★)\n"
                 f"plane of {what}; pixels not clipped to [0, 1]", fontsize=10)
    return fig
