"""The report's plots (PNG, matplotlib Agg, no pyplot), from the tidy table.

Accuracy against sigma (white noise); robust accuracy against eps L-inf and eps L2 (the worst
case per example over every attack, with PGD and AutoAttack as thinner lines); ECDFs of the
per-example margins; mean singular-value spectra of the pixel Jacobian; the bracket per norm (attacked
and certified accuracy, the gap shaded, a panel per group: :func:`bracket_figure`). Every run keeps one
colour per group and one line style per seed (:func:`run_styles`); the legend, below the axes,
names each group once (:func:`legend_below`). The decision-cell
cross-sections need the models and live in :mod:`jrbench.report.cells`; the canvas helpers in
:mod:`jrbench.report.figures`. :func:`report_figures` draws them all and names what it could not draw.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .figures import new_figure
from .table import CERTIFIED, preferred_loss
from ..analysis.worst_case import WORST_CASE


@dataclass
class Style:
    """A run's line: its group's colour, its seed's line style, its label, and ``legend``: what the
    legend shows for it (the group once, on its first run, when a group has several runs; else None)."""
    color: str
    linestyle: str
    label: str
    legend: str | None = None


def ordered_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per run (run_id, group_id, group_label, seed, regularizers), in display order:
    by data set and model, plain runs first, then by label and seed."""
    runs = summary.drop_duplicates("run_id")[["run_id", "group_id", "group_label", "dataset", "model", "seed",
                                              "regularizers"]]
    return (runs.assign(_r=runs["regularizers"] != "none")
            .sort_values(["dataset", "model", "_r", "group_label", "seed"], kind="stable").drop(columns="_r"))


def run_styles(summary: pd.DataFrame) -> dict[str, Style]:
    """run_id -> colour of its group (tab10), line style of its seed rank, label."""
    from matplotlib import colormaps

    runs = ordered_runs(summary)
    groups = list(dict.fromkeys(runs["group_id"]))
    cmap, dashes = colormaps["tab10"], ["-", "--", ":", "-."]
    styles = {}
    for g, sel in runs.groupby("group_id", sort=False):
        color = cmap(groups.index(g) % 10)
        several = f"{sel['group_label'].iloc[0]} ({len(sel)} seeds, a line each)" if len(sel) > 1 else None
        for rank, r in enumerate(sel.sort_values("seed").itertuples()):
            label = r.group_label if len(sel) == 1 else f"{r.group_label}, seed {r.seed}"
            legend = label if len(sel) == 1 else (several if rank == 0 else None)
            styles[r.run_id] = Style(color, dashes[rank % len(dashes)], label, legend)
    return styles


LEGEND_ROW_INCHES = 0.19  # one legend line at font size 8


def legend_shape(labels: list[str], title_lines: int = 0, width_chars: int = 120) -> tuple[int, float]:
    """Columns of a legend below the axes and the height it adds to the figure (inches):
    two columns when every label fits half of ``width_chars``."""
    ncols = 2 if len(labels) > 3 and max(map(len, labels), default=0) <= width_chars // 2 - 4 else 1
    rows = -(-len(labels) // ncols) + title_lines
    return ncols, LEGEND_ROW_INCHES * rows + 0.25


def legend_below(fig, ncols: int, title: str | None = None, fontsize: int = 8):
    """The figure's legend (one entry per labelled line of every axes) below the axes, outside them:
    with many runs an inside legend covers the curves and collapses the layout."""
    handles, labels = [], []
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=fontsize,
                        title=title, title_fontsize=7, frameon=False)
    if title:
        legend.get_title().set_color("0.35")
    return legend


def accuracy_rows(summary: pd.DataFrame, attack: str, norm: str) -> pd.DataFrame:
    """The tidy rows of ``attack`` and ``norm``; for the worst case, PGD's rows of the runs
    that have no worst case at that norm (no per-example record)."""
    accuracy = (summary["table"] == "attacks") | ((summary["table"] == "certify")
                                                   & (summary.get("quantity") == "accuracy"))
    sel = summary[accuracy & (summary["norm"] == norm)]
    rows = sel[sel["attack"] == attack]
    if attack == WORST_CASE:
        pgd = sel[sel["attack"] == "pgd"]
        rows = pd.concat([rows, pgd[~pgd["run_id"].isin(set(rows["run_id"]))]])
    return rows


def curve_table(summary: pd.DataFrame, attack: str, norm: str, by_seed_group: bool = True) -> pd.DataFrame:
    """Accuracy against strength per group (or run): value (mean over seeds), err_low/err_high
    (std across seeds where several, else the run's 95% CI), n_runs. The worst case falls back
    to PGD for runs without a per-example record (:func:`accuracy_rows`)."""
    rows = accuracy_rows(summary, attack, norm)
    if rows.empty:
        return pd.DataFrame(columns=["key", "label", "strength", "value", "err_low", "err_high", "n_runs"])
    rows = pd.concat([preferred_loss(r) for _, r in rows.groupby("run_id", sort=False)])
    key = "group_id" if by_seed_group else "run_id"
    out = []
    for (k, strength), sel in rows.groupby([key, "strength"], sort=False):
        value = float(sel["value"].mean())
        if len(sel) > 1:
            err_low = err_high = float(sel["value"].std(ddof=1))
        else:
            err_low, err_high = value - float(sel["ci_low"].iloc[0]), float(sel["ci_high"].iloc[0]) - value
        label = sel["group_label"].iloc[0] if by_seed_group else k
        out.append({"key": k, "label": label, "strength": float(strength), "value": value,
                    "err_low": err_low, "err_high": err_high, "n_runs": sel["run_id"].nunique()})
    order = {k: i for i, k in enumerate(dict.fromkeys(ordered_runs(summary)[key]))}
    table = pd.DataFrame(out)
    return (table.assign(_o=table["key"].map(order)).sort_values(["_o", "strength"], kind="stable")
            .drop(columns="_o").reset_index(drop=True))


ACCURACY_PLOTS = {
    "accuracy_noise.png": ("noise", "gaussian", "Accuracy under white Gaussian noise",
                           "σ, noise std per pixel (pixel units, images in [0, 1])"),
    "accuracy_linf.png": (WORST_CASE, "linf", "Robust accuracy, L∞ ball: worst case over attacks",
                          "ε, L∞ radius (pixel units)"),
    "accuracy_l2.png": (WORST_CASE, "l2", "Robust accuracy, L2 ball: worst case over attacks",
                        "ε, L2 radius (pixel units)"),
}


def attack_subtitle(summary: pd.DataFrame, attack: str, norm: str) -> str:
    """'\n<n> test examples, <settings>' when every run used the same, else a pointer."""
    rows = accuracy_rows(summary, attack, norm)
    settings = rows["settings"].fillna("").str.replace(r"\s*(alpha|seed|example_seed)=\S+", "", regex=True)
    described = (rows["n"].astype(str) + " test examples, " + settings.str.strip()).unique()
    if len(described) != 1:
        return "\n(settings differ between runs: see report.md)"
    return "\n" + described[0].replace(".0 test", " test").replace("=", " ").rstrip(", ")


def accuracy_figure(summary: pd.DataFrame, attack: str, norm: str, title: str, xlabel: str,
                    by_seed_group: bool = True):
    """Accuracy (%) against strength, one line per group (or run); None without data."""
    curves = curve_table(summary, attack, norm, by_seed_group)
    if curves.empty:
        return None
    styles = run_styles(summary)
    style = {(r.group_id if by_seed_group else r.run_id): styles[r.run_id]
             for r in ordered_runs(summary).iloc[::-1].itertuples()}  # a group: its first run's
    labels = {}
    for k, c in curves.groupby("key", sort=False):
        n = int(c["n_runs"].max())
        labels[k] = (c["label"].iloc[0] + (f" (mean ± std, {n} seeds)" if n > 1 else "")) if by_seed_group \
            else style[k].label
    certified = curve_table(summary, CERTIFIED, norm, by_seed_group) if attack == WORST_CASE else curves.iloc[:0]
    note = ""
    if attack == WORST_CASE:
        note = ("solid: worst case per example over every attack (PGD only for runs without attack_examples.csv); "
                "dashed: PGD; dotted: AutoAttack. ")
        if not certified.empty:
            note += ("dash-dot ▼: certified (best deterministic certificate), a lower bound: the truth lies "
                     "between it and solid. ")
    note = textwrap.fill(note + "Error bars: ± std across seeds where a line has several, else the run's 95% CI.",
                         width=110)
    ncols, extra = legend_shape(list(labels.values()), title_lines=note.count("\n") + 1)
    fig, (ax,) = new_figure(7.5, 4.2 + extra)
    for k, c in curves.groupby("key", sort=False):
        ax.errorbar(c["strength"], 100 * c["value"], yerr=100 * np.vstack([c["err_low"], c["err_high"]]),
                    marker="o", ms=4, capsize=3, color=style[k].color,
                    linestyle="-" if by_seed_group else style[k].linestyle, label=labels[k])
    if attack == WORST_CASE:  # the attacks' own curves, thinner: PGD dashed, AutoAttack dotted
        for other, linestyle in (("pgd", "--"), ("autoattack", ":")):
            for k, c in curve_table(summary, other, norm, by_seed_group).groupby("key", sort=False):
                ax.plot(c["strength"], 100 * c["value"], linestyle=linestyle, lw=1, alpha=0.7, color=style[k].color)
        for k, c in certified.groupby("key", sort=False):  # the bracket's lower end
            ax.plot(c["strength"], 100 * c["value"], linestyle="-.", lw=2, marker="v", ms=4, color=style[k].color)
    ax.set(title=title + attack_subtitle(summary, attack, norm), xlabel=xlabel, ylabel="accuracy (%)",
           ylim=(-2, 102))
    ax.grid(alpha=0.3)
    legend_below(fig, ncols, title=note)
    return fig


BRACKET_PLOTS = {"bracket_linf.png": ("linf", "L∞"), "bracket_l2.png": ("l2", "L2")}
ATTACKED_COLOR, CERTIFIED_COLOR, GAP_COLOR = "tab:red", "tab:green", "tab:orange"


def share_curve(summary: pd.DataFrame, quantity: str, norm: str, by_seed_group: bool = True) -> pd.DataFrame:
    """A bracket quantity (``unknown_share``, ``broken_share``, table ``bracket``) against strength per
    group (or run): key, strength, value (mean over the runs), n_runs."""
    from ..analysis.results import BRACKET

    rows = summary[(summary["table"] == BRACKET) & (summary["quantity"] == quantity) & (summary["norm"] == norm)]
    key = "group_id" if by_seed_group else "run_id"
    if rows.empty:
        return pd.DataFrame(columns=["key", "strength", "value", "n_runs"])
    return (rows.groupby([key, "strength"], sort=False)
            .agg(value=("value", "mean"), n_runs=("run_id", "nunique")).reset_index()
            .rename(columns={key: "key"}).sort_values(["key", "strength"], kind="stable"))


def _on(strengths: np.ndarray, curve: pd.DataFrame) -> np.ndarray:
    """``curve``'s values at ``strengths`` (NaN where it has none within rounding)."""
    x, v = curve["strength"].to_numpy(float), curve["value"].to_numpy(float)
    return np.array([v[np.isclose(x, s, rtol=1e-9, atol=0)][0] if np.isclose(x, s, rtol=1e-9, atol=0).any()
                     else np.nan for s in strengths])


def bracket_figure(summary: pd.DataFrame, norm: str, by_seed_group: bool = True):
    """The bracket at one norm, a panel per group (or run) with a certificate there: attacked
    accuracy (the worst case over attacks; PGD for runs without a per-example record) and certified
    accuracy (the best deterministic certificate per example) against the radius, the gap between them
    shaded, the unknown share (neither certified nor known broken) dotted, and a star where every
    example is decided (the robust accuracy exact). Means over a group's seeds. None without data."""
    certified = curve_table(summary, CERTIFIED, norm, by_seed_group)
    if certified.empty:
        return None
    attacked = curve_table(summary, WORST_CASE, norm, by_seed_group)
    unknown = share_curve(summary, "unknown_share", norm, by_seed_group)
    keys = list(dict.fromkeys(certified["key"]))
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    sym = dict(BRACKET_PLOTS.values()).get(norm, norm)
    note = textwrap.fill("Solid ●: attacked, the worst case per example over every attack (an upper bound on "
                         "the robust accuracy); dash-dot ▼: certified, the tightest deterministic certificate "
                         "per example (a lower bound); shaded: the gap between them; dotted: the share of "
                         "examples neither certified nor known broken; ★: every example decided, the robust "
                         "accuracy is exact. Lines: means over a group's seeds.", width=40 * ncols + 30)
    labels = ["attacked (worst case over attacks)", "certified (best certificate)", "gap: attacked − certified",
              "unknown: neither certified nor broken", "exact: every example decided"]
    legend_cols, extra = legend_shape(labels, title_lines=note.count("\n") + 1, width_chars=60 * ncols)
    fig, axes = new_figure(max(7.5, 4.2 * ncols), 3.6 * nrows + extra, ncols, nrows)
    for ax, k in zip(axes, keys):
        c, a = certified[certified["key"] == k], attacked[attacked["key"] == k]
        u = unknown[unknown["key"] == k]
        ax.plot(a["strength"], 100 * a["value"], marker="o", ms=4, color=ATTACKED_COLOR, label=labels[0])
        ax.plot(c["strength"], 100 * c["value"], linestyle="-.", lw=2, marker="v", ms=4, color=CERTIFIED_COLOR,
                label=labels[1])
        xs = c["strength"].to_numpy(float)
        upper = _on(xs, a)
        both = ~np.isnan(upper)
        if both.sum() > 1:
            ax.fill_between(xs[both], 100 * c["value"].to_numpy(float)[both], 100 * upper[both], color=GAP_COLOR,
                            alpha=0.25, lw=0, label=labels[2])
        elif both.any():  # one radius measured by both: the gap as a bar
            ax.vlines(xs[both], 100 * c["value"].to_numpy(float)[both], 100 * upper[both], color=GAP_COLOR,
                      alpha=0.35, lw=8, label=labels[2])
        if len(u):
            ax.plot(u["strength"], 100 * u["value"], linestyle=":", lw=1.2, color="0.35", label=labels[3])
            exact = u[(u["value"] == 0) & (u["strength"] > 0)]["strength"].to_numpy(float)
            if len(exact):
                ax.plot(exact, 100 * _on(exact, c), linestyle="none", marker="*", ms=11, color="gold",
                        markeredgecolor="black", label=labels[4])
        n = int(c["n_runs"].max())
        title = c["label"].iloc[0] + (f" ({n} seeds)" if by_seed_group and n > 1 else "")
        ax.set(title=textwrap.fill(title, 45), xlabel=f"ε, {sym} radius (pixel units)",
               ylabel="accuracy, share of examples (%)", ylim=(-2, 102))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    for ax in list(axes)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"The bracket, {sym} ball: attacked and certified robust accuracy", fontsize=11)
    legend_below(fig, legend_cols, title=note)
    return fig


def log_x(ax) -> None:
    """Log x scale with plain-number ticks: at 1, 2 and 5 times powers of ten over a range of
    at most 2.5 decades, at powers of ten beyond. Call after plotting."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) <= 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


MARGIN_PANELS = [("margin_random_median", "Random-direction margin\n(median over directions, per example)"),
                 ("margin_adv_l2", "Adversarial margin\n(DeepFool, refined, per example)")]


def margins_figure(examples: pd.DataFrame, summary: pd.DataFrame):
    """ECDFs of the per-example margins (pixel L2), one line per run; None without data."""
    if examples.empty:
        return None
    styles = run_styles(summary)
    shown = [st.legend for r, st in styles.items() if st.legend and r in set(examples["run_id"])]
    ncols, extra = legend_shape(shown, width_chars=170)
    fig, axes = new_figure(11, 4.4 + extra, ncols=2)
    for ax, (quantity, title) in zip(axes, MARGIN_PANELS):
        panel = examples[examples["quantity"] == quantity]
        for run_id in [r for r in ordered_runs(summary)["run_id"] if r in set(panel["run_id"])]:
            sel = panel[panel["run_id"] == run_id]
            v = np.sort(sel["value"].to_numpy(float))  # NaN (DeepFool failed) and inf sort last
            finite = v[np.isfinite(v) & (v > 0)]
            if not len(finite):
                continue
            y = np.arange(1, len(finite) + 1) / len(v)  # inf and NaN: never reached
            st = styles[run_id]
            ax.step(finite, y, where="post", color=st.color, linestyle=st.linestyle,
                    label=st.legend or "_nolegend_")
        log_x(ax)
        n = panel.groupby("run_id").size()
        n_text = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
        ax.set(title=f"{title}\n{n_text} test examples a run",
               xlabel="margin: L2 distance to a class change (pixel units, log scale)",
               ylabel="fraction of examples with margin ≤ x", ylim=(0, 1.02))
        ax.grid(alpha=0.3, which="both")
    legend_below(fig, ncols)
    return fig


def spectra_figure(summary: pd.DataFrame):
    """Mean singular value k of the pixel Jacobian J_x against k (log scale), one line per run."""
    rows = summary[(summary["table"] == "jacobian") & (summary["quantity"] == "singular_value_pixel")
                   & (summary["statistic"] == "mean")]
    if rows.empty:
        return None
    styles = run_styles(summary)
    shown = [st.legend for r, st in styles.items() if st.legend and r in set(rows["run_id"])]
    ncols, extra = legend_shape(shown)
    fig, (ax,) = new_figure(7.5, 4.4 + extra)
    for run_id in [r for r in ordered_runs(summary)["run_id"] if r in set(rows["run_id"])]:
        sel = rows[rows["run_id"] == run_id].sort_values("k")
        st = styles[run_id]
        ax.plot(sel["k"], sel["value"], marker="o", ms=3, color=st.color, linestyle=st.linestyle,
                label=st.legend or "_nolegend_")
    n = rows.groupby("run_id")["n"].first().astype(int)
    n_text = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
    ax.set_yscale("log")
    ax.set(title="Singular-value spectrum of the input Jacobian J_x = d logits / d pixels\n"
                 f"mean over {n_text} test examples a run",
           xlabel="k (singular values in decreasing order; k = 0 is the spectral norm)",
           ylabel="mean σ_k over examples (logit units per pixel-L2 unit)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which="both")
    legend_below(fig, ncols)
    return fig


def report_figures(collection, by_seed_group: bool = True) -> tuple[dict[str, object], list[str]]:
    """PNG name -> figure of every plot that has data, and a gap for each that has none."""
    figures, gaps = {}, []
    for png, (attack, norm, title, xlabel) in ACCURACY_PLOTS.items():
        figures[png] = accuracy_figure(collection.summary, attack, norm, title, xlabel, by_seed_group)
    for png, (norm, _) in BRACKET_PLOTS.items():  # only where a run has certificates at that norm: no gap
        fig = bracket_figure(collection.summary, norm, by_seed_group)
        if fig is not None:
            figures[png] = fig
    figures["margins_ecdf.png"] = margins_figure(collection.examples, collection.summary)
    figures["spectra.png"] = spectra_figure(collection.summary)
    for png, fig in list(figures.items()):
        if fig is None:
            gaps.append(f"all runs: {png} not drawn: no run has the rows it needs")
            del figures[png]
    return figures, gaps
