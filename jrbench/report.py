"""The report: a wide paper-style table, plots and report.md, from the tidy table.

The wide table has one row per run or per group of runs differing only by seed.

Everything here is derived from the tidy table of :func:`jrbench.results.collect`. Columns:
clean accuracy (metrics.csv, last epoch); mean ||J_z||_F and R = 1/2 mean ||J_z||_F^2 (J with
respect to the normalized input z, on the run's 256 fixed test examples, metrics.csv);
accuracy under white noise at one chosen sigma; the robust accuracy in L-inf and L2 at one chosen
eps each: the worst case per example over every adversarial attack run there
(attack_examples.csv, :func:`jrbench.results.worst_case_examples`), or, for runs without a
per-example record, attacks.csv's PGD accuracy, marked and named as a gap; beside it PGD's own
accuracy and AutoAttack's where present (pixel units; the nearest strength present); median
random-direction, adversarial (DeepFool) and first-order margins (pixel L2, margins.csv); the
training overhead (seconds_per_step over the plain runs', fastest epoch). Groups show mean ±
std (ddof=1) across seeds and the number of seeds. The verdicts (:mod:`jrbench.verdicts`) go
to verdicts.csv and to a section of summary.md and report.md.

Then the plots (PNG, matplotlib Agg): accuracy against sigma; robust accuracy against eps
L-inf and eps L2 (worst case, with PGD and AutoAttack as thinner lines); ECDFs
of the margins; mean singular-value spectra; decision-cell cross-sections (computed and drawn
by :mod:`jrbench.cells`, which needs the models); and ``report.md`` putting them together
with the commands that made them. :func:`write_report` writes everything atomically and
returns what it wrote; it never prints.
"""
from __future__ import annotations

import os
import math
import shlex
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import new_figure, png_bytes
from .errors import UserError
from .results import WORST_CASE  # attack name of the worst case per example over every attack
from .verdicts import VERDICT_NOTES, verdict_lines, verdicts

ATTACK_COLUMNS = [("noise_acc", "noise", "gaussian", "sigma"),
                  ("robust_linf_acc", WORST_CASE, "linf", "eps_linf"), ("pgd_linf_acc", "pgd", "linf", "eps_linf"),
                  ("aa_linf_acc", "autoattack", "linf", "eps_linf"),
                  ("robust_l2_acc", WORST_CASE, "l2", "eps_l2"), ("pgd_l2_acc", "pgd", "l2", "eps_l2"),
                  ("aa_l2_acc", "autoattack", "l2", "eps_l2")]
OPTIONAL_KEYS = {"aa_linf_acc", "aa_l2_acc"}  # shown only where some run has them
MARGIN_COLUMNS = [("margin_random", "margin_random_median"), ("margin_adv", "margin_adv_l2"),
                  ("margin_first_order", "margin_first_order")]
METRIC_COLUMNS = [("clean_acc", "test_acc"), ("jac_frob_z", "test_jac_frob_z"), ("R_z", "test_R_z")]
VALUE_KEYS = ([k for k, _ in METRIC_COLUMNS] + [k for k, *_ in ATTACK_COLUMNS]
              + [k for k, _ in MARGIN_COLUMNS] + ["overhead"])
PERCENT_KEYS = {"clean_acc"} | {k for k, *_ in ATTACK_COLUMNS}


@dataclass
class Strengths:
    """Attack strengths of the wide table (pixel units); None: the data set's default."""

    sigma: float | None = None
    eps_linf: float | None = None
    eps_l2: float | None = None

    def target(self, dataset: str, name: str) -> float:
        given = getattr(self, name)
        if given is not None:
            return given
        from .data import DATASETS  # the data set's report_sigma / report_eps_linf / report_eps_l2

        return getattr(DATASETS.get(dataset).info.defaults, f"report_{name}")


def preferred_loss(rows: pd.DataFrame) -> pd.DataFrame:
    """Attack rows of one run: those computed with the ce64 loss where there are some."""
    if "loss" in rows and (rows["loss"] == "ce64").any():
        return rows[(rows["loss"] == "ce64") | rows["loss"].isna() | (rows["loss"] == "none")]
    return rows


def nearest_strength(rows: pd.DataFrame, attack: str, norm: str, target: float) -> tuple[float, float]:
    """(accuracy, strength) of the row of ``attack``/``norm`` nearest to ``target`` (ties: the
    smaller strength); (NaN, NaN) when there is none."""
    sel = preferred_loss(rows[(rows["table"] == "attacks") & (rows["attack"] == attack) & (rows["norm"] == norm)])
    if sel.empty:
        return math.nan, math.nan
    best = sel.assign(_d=(sel["strength"] - target).abs()).sort_values(["_d", "strength"]).iloc[0]
    return float(best["value"]), float(best["strength"])


def _lookup(rows: pd.DataFrame, table: str, quantity: str, statistic: str) -> float:
    sel = rows[(rows["table"] == table) & (rows["quantity"] == quantity) & (rows["statistic"] == statistic)]
    return float(sel["value"].iloc[0]) if len(sel) else math.nan


def run_table(summary: pd.DataFrame, strengths: Strengths | None = None) -> pd.DataFrame:
    """One row per run: the wide table's numbers (fractions, not percent) and the strengths used;
    sorted by data set and model, plain runs first."""
    strengths = strengths or Strengths()
    out = []
    for run_id, rows in summary.groupby("run_id", sort=False):
        first = rows.iloc[0]
        row = {k: first[k] for k in ("run_id", "group_id", "group_label", "dataset", "model", "regularizers", "seed")}
        for key, quantity in METRIC_COLUMNS:
            row[key] = _lookup(rows, "metrics", quantity, "last_epoch")
        for key, attack, norm, name in ATTACK_COLUMNS:
            row[f"{key}_target"] = strengths.target(first["dataset"], name)
            row[key], row[f"{key}_strength"] = nearest_strength(rows, attack, norm, row[f"{key}_target"])
            row[f"{key}_fallback"] = attack == WORST_CASE and math.isnan(row[key])
            if row[f"{key}_fallback"]:  # no per-example record: PGD's accuracy, an upper bound
                row[key], row[f"{key}_strength"] = nearest_strength(rows, "pgd", norm, row[f"{key}_target"])
        for key, quantity in MARGIN_COLUMNS:
            row[key] = _lookup(rows, "margins", quantity, "median")
        row["overhead"] = _lookup(rows, "overhead", "seconds_per_step_ratio", "min_over_epochs")
        out.append(row)
    table = pd.DataFrame(out)
    regularized = table["regularizers"] != "none"  # plain runs first within a data set and model
    return (table.assign(_r=regularized).sort_values(["dataset", "model", "_r", "group_label", "seed"], kind="stable")
            .drop(columns="_r").reset_index(drop=True))


def group_table(runs: pd.DataFrame, by_seed_group: bool = True) -> pd.DataFrame:
    """Runs -> one row per group (``by_seed_group``) or per run: for each value, its mean,
    ``_std`` (sample std, ddof=1; NaN for one value) and ``_n`` (runs that have it)."""
    key = "group_id" if by_seed_group else "run_id"
    g = runs.groupby(key, sort=False)
    out = g[["group_label", "dataset", "model", "regularizers"]].first()
    out["label"] = out["group_label"] if by_seed_group else g["run_id"].first()
    out["n_seeds"] = g.size()
    out["seeds"] = g["seed"].apply(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna())))  # outside models: none
    out["run_ids"] = g["run_id"].apply(lambda s: " ".join(s))
    for k in VALUE_KEYS:
        out[k] = g[k].mean()
        out[f"{k}_std"] = g[k].std(ddof=1)
        out[f"{k}_n"] = g[k].count()
    for k, *_ in ATTACK_COLUMNS:
        out[f"{k}_target"] = g[f"{k}_target"].first()
        out[f"{k}_fallback"] = g[f"{k}_fallback"].sum()  # runs whose worst case is PGD only
        out[f"{k}_strengths"] = g[f"{k}_strength"].apply(lambda s: sorted(set(s.dropna().tolist())))
    return out.reset_index(drop=not by_seed_group).reset_index(drop=True)


# ----------------------------------------------------------------------------- formatting
def _fmt(value: float, std: float, n: int, n_seeds: int, percent: bool) -> str:
    if n == 0 or np.isnan(value):
        return "–"
    scale, digits = (100.0, ".1f") if percent else (1.0, ".3g")
    text = f"{scale * value:{digits}}"
    if n > 1 and np.isfinite(std):
        text += f" ± {scale * std:{'.1f' if percent else '.2g'}}"
    if n < n_seeds:
        text += f" ({n}/{n_seeds} seeds)"
    return text


def headers(wide: pd.DataFrame) -> dict[str, str]:
    """Column key -> header; attack headers name the strength (pixel units) asked for."""
    def target(key: str) -> str:
        values = wide[f"{key}_target"].dropna().unique() if len(wide) else []
        return ", ".join(f"{v:.3g}" for v in values) or "?"

    return {
        "label": "run", "dataset": "data set", "n_seeds": "seeds", "clean_acc": "clean acc %",
        "jac_frob_z": "mean ‖J_z‖_F", "R_z": "R = ½ mean ‖J_z‖_F²",
        "noise_acc": f"acc % noise σ={target('noise_acc')}",
        "robust_linf_acc": f"robust acc % L∞ ε={target('robust_linf_acc')} (worst case)",
        "pgd_linf_acc": f"acc % PGD-L∞ ε={target('pgd_linf_acc')}",
        "aa_linf_acc": f"acc % AutoAttack-L∞ ε={target('aa_linf_acc')}",
        "robust_l2_acc": f"robust acc % L2 ε={target('robust_l2_acc')} (worst case)",
        "pgd_l2_acc": f"acc % PGD-L2 ε={target('pgd_l2_acc')}",
        "aa_l2_acc": f"acc % AutoAttack-L2 ε={target('aa_l2_acc')}",
        "margin_random": "median random margin", "margin_adv": "median adv. margin (DeepFool)",
        "margin_first_order": "median 1st-order margin", "overhead": "overhead × (s/step vs plain)",
    }


def format_wide(wide: pd.DataFrame) -> pd.DataFrame:
    """Strings for the console and markdown: mean ± std, '–' where missing, '@s' after an
    accuracy measured at a strength other than the one asked for, '(PGD only)' after a robust
    accuracy of runs without a per-example record; AutoAttack columns only where some run has them."""
    names = headers(wide)
    names = {k: v for k, v in names.items() if k not in OPTIONAL_KEYS or (len(wide) and wide[k].notna().any())}
    rows = []
    for r in wide.to_dict("records"):
        row = {names["label"]: r["label"], names["dataset"]: r["dataset"], names["n_seeds"]: str(r["n_seeds"])}
        for k in [k for k in VALUE_KEYS if k in names]:
            text = _fmt(r[k], r[f"{k}_std"], r[f"{k}_n"], r["n_seeds"], k in PERCENT_KEYS)
            if k.endswith("_acc") and k != "clean_acc":
                used = [s for s in r[f"{k}_strengths"] if not math.isclose(s, r[f"{k}_target"])]
                if used and text != "–":
                    text += " @" + ",".join(f"{s:.3g}" for s in r[f"{k}_strengths"])
                if r[f"{k}_fallback"] and text != "–":
                    part = "" if r[f"{k}_fallback"] == r["n_seeds"] else f": {r[f'{k}_fallback']}/{r['n_seeds']} seeds"
                    text += f" (PGD only{part})"
            row[names[k]] = text
        rows.append(row)
    return pd.DataFrame(rows, columns=list(names.values()))


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub markdown table of strings ('|' escaped)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.columns))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


TABLE_NOTES = (
    "Accuracies are percent: clean accuracy on the run's test set (last epoch); accuracy under "
    "attack on the fixed test examples of attacks.csv (pixel units in [0, 1]; PGD with the ce64 "
    "loss where present; '@s' marks a strength other than the one asked for: the nearest present). "
    "Robust accuracy is the worst case per example: an example counts only if it is robust under every "
    "adversarial attack run at that norm and strength (PGD, FGSM, AutoAttack and its components; "
    "attack_examples.csv); '(PGD only)' marks runs without that per-example record, where it is "
    "PGD's accuracy, an upper bound. PGD's and AutoAttack's own accuracies stand beside it. "
    "‖J_z‖_F is the Frobenius norm of d logits / d z, z the normalized input, averaged over the "
    "run's first jacobian_eval_examples test examples (256 by default; metrics.csv); "
    "R = ½ mean ‖J_z‖_F² is the quantity the regularizer penalizes (the paper's '32.9 vs 1.1' "
    "match R better than ‖J_z‖_F). Margins are medians over the "
    "correctly classified examples of margins.csv, L2 distances in pixel units: random-direction "
    "(median over directions), adversarial (DeepFool, refined) and first-order (gap / ‖∇ gap‖). "
    "Overhead: the run's median seconds per training step (its fastest epoch, metrics.csv) over "
    "the median of the plain (--reg none) runs' with the same data set, model, batch size and "
    "device; timings of separate runs on a shared machine are noisy (benchmarks/ time them "
    "interleaved). Several seeds: mean ± std (ddof=1) across seeds."
)


# ----------------------------------------------------------------------------- plots


@dataclass
class Style:
    color: str
    linestyle: str
    label: str


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
        for rank, r in enumerate(sel.sort_values("seed").itertuples()):
            label = r.group_label if len(sel) == 1 else f"{r.group_label}, seed {r.seed}"
            styles[r.run_id] = Style(color, dashes[rank % len(dashes)], label)
    return styles


def attack_rows(summary: pd.DataFrame, attack: str, norm: str) -> pd.DataFrame:
    """The tidy rows of ``attack`` and ``norm``; for the worst case, PGD's rows of the runs
    that have no worst case at that norm (no per-example record)."""
    sel = summary[(summary["table"] == "attacks") & (summary["norm"] == norm)]
    rows = sel[sel["attack"] == attack]
    if attack == WORST_CASE:
        pgd = sel[sel["attack"] == "pgd"]
        rows = pd.concat([rows, pgd[~pgd["run_id"].isin(set(rows["run_id"]))]])
    return rows


def curve_table(summary: pd.DataFrame, attack: str, norm: str, by_seed_group: bool = True) -> pd.DataFrame:
    """Accuracy against strength per group (or run): value (mean over seeds), err_low/err_high
    (std across seeds where several, else the run's 95% CI), n_runs. The worst case falls back
    to PGD for runs without a per-example record (:func:`attack_rows`)."""
    rows = attack_rows(summary, attack, norm)
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
    rows = attack_rows(summary, attack, norm)
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
    fig, (ax,) = new_figure(7.5, 4.8)
    for k, c in curves.groupby("key", sort=False):
        n = int(c["n_runs"].max())
        label = (c["label"].iloc[0] + (f" (mean ± std, {n} seeds)" if n > 1 else "")) if by_seed_group \
            else style[k].label
        ax.errorbar(c["strength"], 100 * c["value"], yerr=100 * np.vstack([c["err_low"], c["err_high"]]),
                    marker="o", ms=4, capsize=3, color=style[k].color,
                    linestyle="-" if by_seed_group else style[k].linestyle, label=label)
    note = ""
    if attack == WORST_CASE:  # the attacks' own curves, thinner: PGD dashed, AutoAttack dotted
        for other, linestyle in (("pgd", "--"), ("autoattack", ":")):
            for k, c in curve_table(summary, other, norm, by_seed_group).groupby("key", sort=False):
                ax.plot(c["strength"], 100 * c["value"], linestyle=linestyle, lw=1, alpha=0.7, color=style[k].color)
        note = ("solid: worst case per example over every attack (PGD\nonly for runs without attack_examples.csv); "
                "dashed: PGD;\ndotted: AutoAttack. ")
    ax.set(title=title + attack_subtitle(summary, attack, norm), xlabel=xlabel, ylabel="accuracy (%)",
           ylim=(-2, 102))
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=8, loc="best", title=note + "error bars: ± std across seeds where a line has\n"
                       "several, else the run's 95% CI", title_fontsize=7)
    legend.get_title().set_color("0.35")
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
    fig, axes = new_figure(11, 4.6, ncols=2)
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
            ax.step(finite, y, where="post", color=st.color, linestyle=st.linestyle, label=f"{st.label} (n={len(v)})")
        log_x(ax)
        ax.set(title=title, xlabel="margin: L2 distance to a class change (pixel units, log scale)",
               ylabel="fraction of examples with margin ≤ x", ylim=(0, 1.02))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
    return fig


def spectra_figure(summary: pd.DataFrame):
    """Mean singular value k of the pixel Jacobian J_x against k (log scale), one line per run."""
    rows = summary[(summary["table"] == "jacobian") & (summary["quantity"] == "singular_value_pixel")
                   & (summary["statistic"] == "mean")]
    if rows.empty:
        return None
    styles = run_styles(summary)
    fig, (ax,) = new_figure(7.5, 4.8)
    for run_id in [r for r in ordered_runs(summary)["run_id"] if r in set(rows["run_id"])]:
        sel = rows[rows["run_id"] == run_id].sort_values("k")
        st = styles[run_id]
        ax.plot(sel["k"], sel["value"], marker="o", ms=3, color=st.color, linestyle=st.linestyle,
                label=f"{st.label} (n={int(sel['n'].iloc[0])})")
    ax.set_yscale("log")
    ax.set(title="Singular-value spectrum of the input Jacobian J_x = d logits / d pixels",
           xlabel="k (singular values in decreasing order; k = 0 is the spectral norm)",
           ylabel="mean σ_k over examples (logit units per pixel-L2 unit)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- options and gaps
@dataclass
class ReportOptions:
    """What the report shows. Strengths in pixel units; cell radius in pixel L2 units (None:
    the data set's ``cell_radius``, :class:`jrbench.data.Defaults`)."""

    strengths: Strengths = field(default_factory=Strengths)
    by_seed_group: bool = True
    cells: bool = True
    cell_radius: float | None = None
    cell_grid: int = 101
    cell_seed: int = 0
    cell_index: int | None = None
    max_cell_panels: int = 6
    device: str = "auto"
    data_dir: str | None = None

    def validate(self) -> "ReportOptions":
        for name in ("sigma", "eps_linf", "eps_l2"):
            value = getattr(self.strengths, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserError(f"--{name.replace('_', '-')} must be zero or positive (pixel units), got {value}.")
        if self.cell_radius is not None and not (math.isfinite(self.cell_radius) and self.cell_radius > 0):
            raise UserError(f"--cell-radius must be positive (pixel L2 units), got {self.cell_radius}.")
        if not 2 <= self.cell_grid <= 1001:
            raise UserError(f"--cell-grid must be between 2 and 1001 points a side, got {self.cell_grid}.")
        if self.max_cell_panels < 1:
            raise UserError(f"--cell-panels must be at least 1, got {self.max_cell_panels}.")
        if self.cell_index is not None and self.cell_index < 0:
            raise UserError(f"--cell-index must be zero or positive, got {self.cell_index}.")
        return self


@dataclass
class ReportResult:
    """What :func:`write_report` wrote: the wide table (numbers and strings) and the gaps."""

    out: Path
    files: list[Path]
    wide: pd.DataFrame
    table: pd.DataFrame
    gaps: list[str]
    verdicts: pd.DataFrame = field(default_factory=pd.DataFrame)
    verdict_lines: list[str] = field(default_factory=list)


_COLUMN_GAPS = {
    "noise_acc": ("attacks.csv", "no white-noise rows", "jrbench attack {run} --noise"),
    "pgd_linf_acc": ("attacks.csv", "no PGD L-inf rows", "jrbench attack {run} --pgd --norm linf"),
    "pgd_l2_acc": ("attacks.csv", "no PGD L2 rows", "jrbench attack {run} --pgd --norm l2"),
    "margin_random": ("margins.csv", "no random-direction margins", "jrbench margins {run}"),
    "margin_adv": ("margins.csv", "no adversarial margins", "jrbench margins {run}"),
    "margin_first_order": ("margins.csv", "no first-order margins", "jrbench margins {run}"),
    "clean_acc": ("metrics.csv", "no test accuracy", None),
}


def table_gaps(runs: pd.DataFrame, collection) -> list[str]:
    """Values missing from the wide table whose file is there (missing files are gaps already)."""
    known = {(g.run_id, g.item) for g in collection.gaps}
    paths = {r.run_id: r.path for r in [*collection.runs, *getattr(collection, "models", [])]}
    outside = {r.run_id for r in getattr(collection, "models", [])}
    gaps = []
    for r in runs.to_dict("records"):
        for key, (file, what, fix) in _COLUMN_GAPS.items():
            if pd.isna(r[key]) and (r["run_id"], file) not in known:
                if r["run_id"] in outside:  # its source must be named again: the folder's gaps say how
                    gaps.append(f"{r['run_id']}: {file}: {what}")
                    continue
                hint = f"; run '{fix.format(run=paths[r['run_id']])}'" if fix else ""
                gaps.append(f"{r['run_id']}: {file}: {what}{hint}")
        for key, _, norm, _ in ATTACK_COLUMNS:  # a fallback the missing file does not explain already
            if (r[f"{key}_fallback"] and pd.notna(r[key]) and (r["run_id"], "attack_examples.csv") not in known):
                gaps.append(f"{r['run_id']}: attack_examples.csv: no per-example record at {norm} "
                            f"ε={r[f'{key}_strength']:g}; its robust accuracy is attacks.csv's PGD accuracy "
                            f"(not the worst case over attacks); re-run 'jrbench attack {paths[r['run_id']]}'")
    return gaps


def report_command(paths: list, out: Path, options: ReportOptions) -> str:
    """The ``jrbench report`` command line that makes this report."""
    args = ["jrbench", "report", *map(str, paths), "--out", str(out)]
    for name in ("sigma", "eps_linf", "eps_l2"):
        if getattr(options.strengths, name) is not None:
            args += [f"--{name.replace('_', '-')}", f"{getattr(options.strengths, name):g}"]
    defaults = ReportOptions()
    if not options.by_seed_group:
        args.append("--per-run")
    if not options.cells:
        args.append("--no-cells")
    for name, flag in (("cell_radius", "--cell-radius"), ("cell_grid", "--cell-grid"), ("cell_seed", "--cell-seed"),
                       ("cell_index", "--cell-index"), ("max_cell_panels", "--cell-panels"),
                       ("device", "--device"), ("data_dir", "--data-dir")):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(args)


# ----------------------------------------------------------------------------- report.md
Where = Callable[[Path], str]  # a path as the report shows it (relative to the report's folder)


def _attack_sources(record, summary: pd.DataFrame, where: Where) -> list[str]:
    """One line per attack setting of a run: what attacks.csv holds; and the worst cases of
    attack_examples.csv."""
    rows = summary[(summary["run_id"] == record.run_id) & (summary["table"] == "attacks")]
    if rows.empty:
        return []
    settings = rows["settings"].fillna("").str.replace(r"\s*alpha=\S+", "", regex=True)
    out = []
    for file, sel_rows in (("attacks.csv", rows[rows["attack"] != WORST_CASE]),
                           ("attack_examples.csv", rows[rows["attack"] == WORST_CASE])):
        lines = []
        groups = sel_rows.assign(_s=settings).groupby(["attack", "norm", "loss", "_s"], dropna=False)
        for (attack, norm, loss, s), sel in groups:
            sym = "σ" if attack == "noise" else "ε"
            grid = ", ".join(f"{v:g}" for v in sorted(sel["strength"].unique()))
            n = int(sel["n"].max()) if sel["n"].notna().any() else "?"
            loss_text = f", loss {loss}" if isinstance(loss, str) and loss != "none" else ""
            lines.append(f"{attack} {norm}: {sym} ∈ {{{grid}}}, {n} test examples{loss_text}, {s}")
        if lines:
            out.append(f"[{file}]({where(record.path / file)}): " + "; ".join(lines))
    return out


def _margin_sources(record, summary: pd.DataFrame, where: Where) -> list[str]:
    rows = summary[(summary["run_id"] == record.run_id) & (summary["table"] == "margins")
                   & (summary["quantity"] == "margin_random_median") & (summary["statistic"] == "median")]
    if rows.empty:
        return []
    r = rows.iloc[0]
    return [f"[margins.csv]({where(record.path / 'margins.csv')}) and "
            f"[jacobian.csv]({where(record.path / 'jacobian.csv')}): {int(r['n'])} correctly classified test "
            f"examples, {r['settings']}"]


def runs_section(collection, where: Where) -> list[str]:
    """Provenance table, train commands and the files the attack and margin numbers came from."""
    from .results import train_command

    lines = ["## Runs", "", "| run | group | seed | epochs | torch | jrbench | device | git commit |",
             "|---|---|---:|---:|---|---|---|---|"]
    for r in collection.runs:
        p = collection.summary[collection.summary["run_id"] == r.run_id]
        first = p.iloc[0] if len(p) else {}
        get = (lambda k: first.get(k) if len(p) else None)
        lines.append(f"| [{r.run_id}]({where(r.path)}) | {get('group_label')} | {r.config.train.seed} | {r.config.train.epochs} | "
                     f"{get('torch_version')} | {get('jrbench_version')} | {get('device')} | {get('git_commit')} |")
    lines += ["", "Links are relative to this report's folder. Train commands, reconstructed from each "
              "run's config.json (add `--out FOLDER` to choose the run directory):", "", "```bash"]
    lines += [train_command(r.config) for r in collection.runs]
    lines += ["```", "", "Attack and margin tables (read from these files; re-run `jrbench attack` / "
              "`jrbench margins` on a run directory to refresh them):", ""]
    for r in collection.runs:
        sources = _attack_sources(r, collection.summary, where) + _margin_sources(r, collection.summary, where)
        lines += [f"- {r.run_id}: " + ("; ".join(sources) if sources else "no attack or margin tables")]
    models = getattr(collection, "models", [])
    if models:
        lines += ["", "Outside models (not trained by jrbench; provenance in each folder's model.json):", "",
                  "| model | data set | source | SHA-256 | input normalization |", "|---|---|---|---|---|"]
        for m in models:
            info = m.outside
            source = info.get("file") or info.get("factory") or info.get("class")
            sha = info.get("sha256") or info.get("weights_sha256") or ""
            norm = info.get("input_normalized")
            norm = f"mean {norm['mean']}, std {norm['std']}" if norm else "none (pixels in [0, 1])"
            lines.append(f"| [{m.run_id}]({where(m.path)}) | {info['dataset']} | `{source}` | {sha[:16]} | {norm} |")
        for m in models:
            sources = _attack_sources(m, collection.summary, where) + _margin_sources(m, collection.summary, where)
            lines += [f"- {m.run_id}: " + ("; ".join(sources) if sources else "no attack or margin tables")]
    return lines + [""]


def figure_section(title: str, png: str, caption: str) -> list[str]:
    return [f"### {title}", "", f"![{title}]({png})", "", caption, ""]


CAPTIONS = {
    "accuracy_noise.png": "Accuracy (%) under white Gaussian pixel noise of std σ (pixel units, noisy images "
                          "clipped to [0, 1]), on the fixed test examples of each run's attacks.csv.",
    "accuracy_linf.png": "Robust accuracy (%) in the L∞ ball of radius ε (pixel units), the worst case per "
                         "example: an example counts only if clean-correct and unbroken by every adversarial "
                         "attack run at that ε (PGD with every restart, FGSM, AutoAttack and its components; "
                         "attack_examples.csv). Runs without that per-example record show PGD's accuracy "
                         "(named in the gaps). Thin lines: PGD alone (dashed) and AutoAttack (dotted).",
    "accuracy_l2.png": "Robust accuracy (%) in the L2 ball of radius ε (pixel units), the worst case per example "
                       "over every adversarial attack run there, as for L∞. Thin lines: PGD alone (dashed) and "
                       "AutoAttack (dotted).",
    "margins_ecdf.png": "Empirical CDFs of the per-example margins (L2, pixel units, log scale) of the "
                        "correctly classified examples of margins.csv; a curve that stays below 1 has examples "
                        "whose class did not change within the search range (random: margin ∞) or where "
                        "DeepFool failed. Further right: larger margins.",
    "spectra.png": "Mean singular values σ_k of the per-example Jacobian with respect to pixels, J_x = J_z "
                   "diag(1/std) (jacobian.csv), k = 0 the largest (the local L2 Lipschitz constant).",
}


def cells_caption(fig) -> str:
    p = fig.section.plane
    n = len(fig.section.coords)
    first = ("two random orthonormal directions d1, d2" if p.kind == "random" else
             f"d1 = −∇ₓ(f_y − f_runner-up)/‖·‖ of run {p.reference} (towards its nearest boundary, to "
             f"first order) and a random d2 orthogonalized against it")
    return (f"Predicted class on the plane x0 + t1 d1 + t2 d2 through test example {p.index} (position in "
            f"the test split of run {next(iter(fig.titles))}) of {fig.dataset} "
            f"(label {fig.class_names[p.label]}, the ★), spanned by {first}; t1, t2 ∈ [−{p.radius:g}, "
            f"{p.radius:g}] in pixel L2 units on a {n}×{n} grid (direction seed {p.seed}). The same point and "
            "directions for every panel. Pixels are NOT clipped to [0, 1]: the slice shows the function "
            "the network computes, also outside the image domain. A plain model's cells tend to be small "
            "and fragmented, a Jacobian-regularized one's large.")


def verdicts_section(lines: list[str]) -> list[str]:
    """'## Verdicts': one sentence per verdict, then how they were made."""
    body = [f"- {line}" for line in lines] if lines else [
        "None: no regularized group has a plain group of the same data set, model and recipe with the data "
        "a test needs (see the gaps)."]
    return ["## Verdicts", "", *body, "", VERDICT_NOTES, ""]


def report_markdown(collection, result_table: pd.DataFrame, pngs: list[str], cell_figs: list,
                    gaps: list[str], command: str, by_seed_group: bool, where: Where = str,
                    verdict_lines: list[str] | None = None) -> str:
    unit = "group of runs that differ only by seed (mean ± std across seeds)" if by_seed_group else "run"
    lines = ["# jrbench report", "", "Made with:", "", "```bash", command, "```", "",
             f"{len(collection.runs)} runs. Tables: `summary.csv` (tidy: one measurement a row, with "
             "provenance), `examples.csv` (per-example margins, a row per run and example), `verdicts.csv` "
             "(each regularized group against its plain group), `summary.md` (the table below and the verdicts).", "",
             "## Summary", "", f"One row per {unit}.", "", markdown_table(result_table), "", TABLE_NOTES, "",
             *verdicts_section(verdict_lines or []), "## Figures", ""]
    titles = {"accuracy_noise.png": "Accuracy under white noise",
              "accuracy_linf.png": "Robust accuracy, L∞ (worst case over attacks)",
              "accuracy_l2.png": "Robust accuracy, L2 (worst case over attacks)", "margins_ecdf.png": "Margin distributions",
              "spectra.png": "Jacobian singular-value spectra"}
    for png in pngs:
        if png in titles:
            lines += figure_section(titles[png], png, CAPTIONS[png])
    for png, fig in cell_figs:
        kind = "random plane" if fig.section.plane.kind == "random" else "adversarial plane"
        lines += figure_section(f"Decision cells, {fig.dataset}, {kind}", png, cells_caption(fig))
    lines += runs_section(collection, where)
    lines += ["## Gaps", ""]
    lines += [f"- {g}" for g in gaps] if gaps else ["None: every run has metrics, attacks, per-example attack "
                                                     "records, margins and Jacobian tables, and every group a verdict."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- write it all
def _figures(collection, by_seed_group: bool) -> tuple[dict[str, object], list[str]]:
    figures, gaps = {}, []
    for png, (attack, norm, title, xlabel) in ACCURACY_PLOTS.items():
        figures[png] = accuracy_figure(collection.summary, attack, norm, title, xlabel, by_seed_group)
    figures["margins_ecdf.png"] = margins_figure(collection.examples, collection.summary)
    figures["spectra.png"] = spectra_figure(collection.summary)
    for png, fig in list(figures.items()):
        if fig is None:
            gaps.append(f"all runs: {png} not drawn: no run has the rows it needs")
            del figures[png]
    return figures, gaps


def _cell_figures(collection, options: ReportOptions, on_progress=None) -> tuple[list, list[str]]:
    from .cells import cells_figure, run_cross_sections

    if not options.cells:
        return [], []
    labels = {r.run_id: f"{r.run_id}\n" + collection.summary.loc[collection.summary["run_id"] == r.run_id,
                                                                 "group_label"].iloc[0]
              for r in collection.runs}
    try:
        figs = run_cross_sections(collection.runs, labels, radius=options.cell_radius, n_grid=options.cell_grid,
                                  seed=options.cell_seed, index=options.cell_index, device=options.device,
                                  data_dir=options.data_dir, max_panels=options.max_cell_panels,
                                  on_progress=on_progress)
    except UserError as e:
        return [], [f"all runs: decision-cell cross-sections not drawn: {e}"]
    several = len({f.dataset for f in figs}) > 1
    out = []
    for f in figs:
        png = f"cells_{f.section.plane.kind}" + (f"_{f.dataset}" if several else "") + ".png"
        out.append((png, f, png_bytes(cells_figure(f))))
    return out, []


def examples_wide(examples: pd.DataFrame) -> pd.DataFrame:
    """Per-example margins as one row per (run, example), one column per quantity (the group
    labels live in summary.csv)."""
    if examples.empty:
        return examples
    wide = examples.pivot(index=["run_id", "index"], columns="quantity", values="value")
    return wide.reset_index().rename_axis(columns=None)


def write_report(collection, out: str | Path, options: ReportOptions | None = None,
                 command: str | None = None, on_progress=None) -> ReportResult:
    """Write summary.csv, examples.csv, verdicts.csv, summary.md, the PNGs and report.md into ``out``.

    Every file is rendered in memory first and written atomically; report.md comes last.
    ``command``: the command line to quote (default: :func:`report_command`).
    ``on_progress(done, total, label)``: the cross-sections' progress (runs x kinds).
    """
    from .rundir import atomic_write_bytes, atomic_write_csv, atomic_write_text

    options = (options or ReportOptions()).validate()
    out = Path(out)
    if collection.summary.empty:
        raise UserError("the runs have no readable tables: " + "; ".join(map(str, collection.gaps)))
    runs = run_table(collection.summary, options.strengths)
    wide = group_table(runs, options.by_seed_group)
    table = format_wide(wide)
    gaps = [str(g) for g in collection.gaps] + table_gaps(runs, collection)
    verdict_table, verdict_gaps = verdicts(collection)
    lines = verdict_lines(verdict_table)
    gaps += verdict_gaps
    figures, figure_gaps = _figures(collection, options.by_seed_group)
    pngs = {name: png_bytes(fig) for name, fig in figures.items()}
    cells, cell_gaps = _cell_figures(collection, options, on_progress)
    gaps += figure_gaps + cell_gaps
    command = command or report_command(collection.paths, out, options)
    here = out.resolve()

    def where(path: Path) -> str:  # paths in the report's files: relative to its folder
        return Path(os.path.relpath(Path(path).resolve(), here)).as_posix()

    markdown = report_markdown(collection, table, list(pngs), [(p, f) for p, f, _ in cells], gaps, command,
                               options.by_seed_group, where, lines)
    summary = collection.summary.assign(run_dir=collection.summary["run_dir"].map(where),
                                        source=collection.summary["source"].map(where))
    files = []
    for name, data in [*pngs.items(), *((p, b) for p, _, b in cells)]:
        atomic_write_bytes(out / name, data)
        files.append(out / name)
    atomic_write_csv(out / "summary.csv", summary)
    atomic_write_csv(out / "examples.csv", examples_wide(collection.examples))
    atomic_write_csv(out / "verdicts.csv", verdict_table)
    atomic_write_text(out / "summary.md", markdown_table(table) + "\n\n" + TABLE_NOTES + "\n\n"
                      + "\n".join(verdicts_section(lines)))
    atomic_write_text(out / "report.md", markdown)
    files += [out / n for n in ("summary.csv", "examples.csv", "verdicts.csv", "summary.md", "report.md")]
    return ReportResult(out, files, wide, table, gaps, verdict_table, lines)
