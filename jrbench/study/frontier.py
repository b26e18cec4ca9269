"""The cost of robustness: each cheap-penalty setting's training overhead against its robustness.

Issue: "the cheapest penalty at equal robustness". The paper (Hoffman, Roberts, Yaida 2019)
calls the random-projection penalty cheap (about 1.3x plain SGD on a GPU); jrbench's ways to
cut its cost are ``--n-proj``, ``--jr-subsample K``, ``--jr-every k`` and
``--jr-estimator jvp``. For every setting of a study (runs of ``benchmarks/frontier.toml``:
several data sets x settings x seeds) this module joins

- ``overhead_ratio``: the setting's step time over plain SGD's, measured interleaved by
  ``jrbench overhead`` (median of per-pair ratios; the case named by
  :func:`jrbench.cost.overhead.case_name`), on the CPU or GPU that table names;
- ``R`` = 1/2 mean ||J_z||_F^2 on fixed test examples after training (mean over seeds);
- ``pgd_linf_acc``: the worst-case robust accuracy at L-inf ``eps_linf`` (every adversarial
  attack run there, per example; PGD alone where no per-example record exists), and
  ``noise_acc`` at ``sigma`` (means over seeds, fractions), each with its 95% Student t
  interval over seeds (``*_low``, ``*_high``; :func:`jrbench.stats.mean_ci` cut to [0, 1]; NaN below 2 seeds)
  and ``n_seeds``, the setting's number of runs;
- ``verdict_vs_full``: a non-inferiority verdict of the setting against full-batch n=1 of the
  same data set and recipe (:func:`jrbench.stats.noninferiority`: runs paired by seed, one-sided
  paired t, margin delta = ``margin`` points, default 3) on those two accuracies. "not worse"
  only when the one-sided 95% lower bound of (setting - full n=1) lies above -delta for both;
  "worse" when the one-sided 95% upper bound of one lies below -delta (worse by more than the
  margin); else "inconclusive", with the seeds that would decide it: the fewest n at which the
  test shows "not worse" with 80% power if the setting were truly as good as full n=1 (true
  difference 0) at the observed spread of the per-seed differences (noncentral t,
  :func:`jrbench.stats.seeds_for_noninferiority`; the larger of the two metrics' counts).
  Requiring both metrics is an intersection-union test: the claim "not worse on both" keeps the
  5% error without a correction (Berger 1982). Settings are separate claims, not corrected for
  each other.

Columns of ``frontier.csv`` (exactly): :data:`FRONTIER_COLUMNS`. ``setting`` is
"<data set>: <case>", ``train_args`` the exact ``jrbench train`` flags of the setting.
``frontier_verdicts.csv`` (:data:`FRONTIER_VERDICT_COLUMNS`) has every number behind the
verdicts, one row per setting and metric.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import stats
from ..errors import UserError
from .frontier_options import MARGIN_POINTS, FrontierConfig

FRONTIER_COLUMNS = ["setting", "train_args", "overhead_ratio", "R", "pgd_linf_acc", "pgd_linf_low", "pgd_linf_high",
                    "noise_acc", "noise_low", "noise_high", "n_seeds", "verdict_vs_full"]
FRONTIER_VERDICT_COLUMNS = ["setting", "metric", "strength", "n_seeds", "diff", "lower", "upper", "margin", "p_value",
                            "sd", "verdict", "seeds_needed", "assumed_diff"]
FULL_CASE = "jacobian-n1"


def is_full_n1(config) -> bool:
    """The reference setting: the paper's penalty, one projection on every row of every step."""
    from ..cost.overhead import case_name

    return case_name(config.reg) == FULL_CASE


def setting_args(config) -> str:
    """The ``jrbench train`` flags of a run, without seed, device, data folder and output."""
    from ..analysis.provenance import train_command_line

    args = shlex.split(train_command_line(config).partition("  # ")[0])[2:]
    drop = {"--seed", "--device", "--data-dir", "--out"}
    keep, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        keep.append(a)
    return shlex.join(keep)


@dataclass
class FrontierResult:
    table: pd.DataFrame          # FRONTIER_COLUMNS
    goal: list[str]              # sentences: which settings meet the goal, or that none does
    gaps: list[str]
    verdicts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FRONTIER_VERDICT_COLUMNS))


def _points(value: float) -> str:
    """'+1.2' / '-0.4'; a value that rounds to zero reads '+0.0' (not '-0.0')."""
    text = f"{value:+.1f}"
    return "+0.0" if text == "-0.0" else text


def _verdict_text(rows: pd.DataFrame) -> str:
    """The setting's verdict from its rows of frontier_verdicts.csv: 'worse' when one metric is
    worse by more than the margin; 'not worse' only when both the PGD-Linf and the noise rows
    exist and are not worse; 'incomplete verdict' when one of the two is missing; else
    'inconclusive', with the seeds that would decide it (the larger of the two metrics')."""
    if rows.empty:
        return "no verdict (no full n=1 runs with 2 or more seeds in common)"
    parts, have = [], set()
    for r in rows.itertuples():
        what = "PGD-Linf" if r.metric in ("worst_case_acc", "pgd_acc") else "noise"
        have.add(what)
        parts.append(f"{what} {_points(r.diff)} [{_points(r.lower)}, {_points(r.upper)}]")
    verdicts = set(rows["verdict"])
    missing = sorted({"PGD-Linf", "noise"} - have)
    n, margin = int(rows["n_seeds"].max()), float(rows["margin"].iloc[0])
    if stats.WORSE_BY_MARGIN in verdicts:
        head = "worse"
    elif missing:
        head = f"incomplete verdict (no {' or '.join(missing)} verdict)"
    elif verdicts == {stats.NOT_WORSE}:
        head = "not worse"
    else:
        open_rows = rows[rows["verdict"] == stats.INCONCLUSIVE]
        needed = open_rows["seeds_needed"]
        decide = (f"{int(needed.max())} seeds would decide it" if needed.notna().all() else
                  "no number of seeds decides it")
        head = (f"inconclusive ({decide}: 80% power if as good as full n=1, at the observed spread)")
    return (f"{head}: {', '.join(parts)} points (one-sided 95% bounds), margin {margin:g} points, "
            f"{n} seed{'s' if n != 1 else ''}, paired t over seeds")


def _noninferiority_rows(comparison, values: pd.DataFrame, setting: str, linf: str, noise: str,
                         margin: float) -> tuple[list[dict], list[str]]:
    """Rows of frontier_verdicts.csv for one setting against full n=1: robust L-inf accuracy
    (the worst case, else PGD) and noise accuracy, paired by the seeds both have (points)."""
    seeds = sorted(set(comparison.runs) & set(comparison.baseline_runs))
    seed_of = {comparison.runs[s].run_id: s for s in seeds}
    base_of = {comparison.baseline_runs[s].run_id: s for s in seeds}

    def paired(metric: str, strength: str) -> pd.DataFrame:
        sel = values[(values["metric"] == metric) & (values["strength"] == strength)]
        g = sel[sel["run_id"].isin(list(seed_of))].assign(seed=lambda v: v["run_id"].map(seed_of))
        b = sel[sel["run_id"].isin(list(base_of))].assign(seed=lambda v: v["run_id"].map(base_of))
        return g.merge(b, on="seed", suffixes=("_g", "_b")).sort_values("seed")

    rows, gaps = [], []
    for metrics, strength in ((("worst_case_acc", "pgd_acc"), linf), (("noise_acc",), noise)):
        pairs, metric = pd.DataFrame(), metrics[0]
        for metric in metrics:
            pairs = paired(metric, strength)
            if len(pairs) >= 2:
                break
        if len(pairs) < 2:
            gaps.append(f"{setting}: no {' or '.join(metrics)} at {strength} for 2 seeds shared with full n=1 "
                        f"({len(seeds)} seeds shared): no non-inferiority verdict")
            continue
        ni = stats.noninferiority(100 * pairs["value_g"].to_numpy(float), 100 * pairs["value_b"].to_numpy(float),
                                  margin)
        rows.append({"setting": setting, "metric": metric, "strength": strength, "n_seeds": ni.n, "diff": ni.diff,
                     "lower": ni.lower, "upper": ni.upper, "margin": margin, "p_value": ni.p_value, "sd": ni.sd,
                     "verdict": ni.verdict, "seeds_needed": ni.seeds_needed, "assumed_diff": ni.assumed_diff})
    return rows, gaps


def frontier(collection, overhead: pd.DataFrame, *, eps_linf: float = 0.1, sigma: float = 0.5,
             goal_ratio: float = 1.3, margin: float = MARGIN_POINTS) -> FrontierResult:
    """One row per (data set, setting) of ``collection``'s runs; ``overhead`` is a table of
    ``jrbench overhead`` (case, ratio_median, ...); ``margin``: the non-inferiority margin delta
    in accuracy points (percentage points, > 0)."""
    from ..cost.overhead import case_name
    from ..analysis.provenance import group_id
    from ..analysis.verdicts import comparisons, run_values, strength_label

    if "case" not in overhead or "ratio_median" not in overhead:
        raise UserError("the overhead table needs the columns case and ratio_median (from jrbench overhead --out).")
    FrontierConfig(eps_linf=eps_linf, sigma=sigma, goal_ratio=goal_ratio, margin=margin)  # a FieldError names the bad one
    ratios = dict(zip(overhead["case"], overhead["ratio_median"]))
    values = run_values(collection.summary)
    linf, noise = strength_label("linf", eps_linf), strength_label("gaussian", sigma)
    by_group: dict[tuple[str, str], list] = {}
    for r in collection.runs:
        by_group.setdefault((r.config.data.dataset, case_name(r.config.reg)), []).append(r)
    label_of = dict(zip(collection.summary["group_id"], collection.summary["group_label"]))
    for r in collection.runs:
        label_of.setdefault(group_id(r.config), r.run_id)
    found, gaps = comparisons(collection.runs, label_of, is_baseline=is_full_n1)
    against = {c.group: c for c in found}
    rows, verdict_rows = [], []
    for (dataset, case), runs in sorted(by_group.items()):
        ids = [r.run_id for r in runs]
        v = values[values["run_id"].isin(ids)]

        def per_seed(metric: str, strength: str = "") -> pd.Series:
            return v[(v["metric"] == metric) & (v["strength"] == strength)]["value"]

        def mean(metric: str, strength: str = "") -> float:
            sel = per_seed(metric, strength)
            return float(sel.mean()) if len(sel) else float("nan")

        pgd_values = per_seed("worst_case_acc", linf)
        if not len(pgd_values):
            pgd_values = per_seed("pgd_acc", linf)
        share = (0.0, 1.0)  # accuracies: the t interval is cut to [0, 1]
        pgd, pgd_low, pgd_high = (stats.mean_ci(pgd_values.to_numpy(float), bounds=share) if len(pgd_values)
                                  else (float("nan"),) * 3)
        noise_values = per_seed("noise_acc", noise)
        noise_acc, noise_low, noise_high = (stats.mean_ci(noise_values.to_numpy(float), bounds=share)
                                            if len(noise_values) else (float("nan"),) * 3)
        setting = f"{dataset}: {case}"
        comparison = against.get(group_id(runs[0].config))
        mine: list[dict] = []
        if comparison is not None and case != FULL_CASE:
            mine, ni_gaps = _noninferiority_rows(comparison, values, setting, linf, noise, margin)
            gaps += ni_gaps
        verdict_rows += mine
        verdict = "reference" if case == FULL_CASE else _verdict_text(pd.DataFrame(mine, columns=FRONTIER_VERDICT_COLUMNS))
        ratio = ratios.get(case, float("nan"))
        if case not in ratios:
            gaps.append(f"{dataset}: {case}: no overhead case '{case}' in the overhead table")
        rows.append({"setting": setting, "train_args": setting_args(runs[0].config),
                     "overhead_ratio": ratio, "R": mean("R_z"), "pgd_linf_acc": pgd, "pgd_linf_low": pgd_low,
                     "pgd_linf_high": pgd_high, "noise_acc": noise_acc, "noise_low": noise_low, "noise_high": noise_high,
                     "n_seeds": len(runs), "verdict_vs_full": verdict})
    table = pd.DataFrame(rows, columns=FRONTIER_COLUMNS)
    penalty = ~table["setting"].str.endswith(": plain")  # plain SGD is the overhead's unit, not a penalty setting
    meets = table[penalty & (table["overhead_ratio"] <= goal_ratio) & table["verdict_vs_full"].str.startswith("not worse")]
    if len(meets):
        goal = [f"{r.setting} ({r.overhead_ratio:.2f}x plain): {r.verdict_vs_full}" for r in meets.itertuples()]
    else:
        cheap = table[penalty & (table["overhead_ratio"] <= goal_ratio)]
        goal = [f"no setting at or below {goal_ratio}x plain is shown not worse than full n=1 (margin {margin:g} "
                f"points; {len(cheap)} settings at or below {goal_ratio}x: "
                + "; ".join(f"{r.setting} {r.overhead_ratio:.2f}x: {r.verdict_vs_full}" for r in cheap.itertuples())
                + ")"]
    found_rows = pd.DataFrame(verdict_rows, columns=FRONTIER_VERDICT_COLUMNS)
    found_rows["seeds_needed"] = found_rows["seeds_needed"].astype("Int64")  # None: no number of seeds would do
    return FrontierResult(table, goal, gaps, found_rows)


def spread_labels(wanted: list[float], gap: float, low: float = 0.0, high: float = 1.0) -> list[float]:
    """Label positions (same order as ``wanted``) as close to ``wanted`` as a simple sweep puts
    them, at least ``gap`` apart and inside [low, high] (where n * gap fits; else evenly spread)."""
    n = len(wanted)
    if n == 0:
        return []
    if (n - 1) * gap > high - low:
        gap = (high - low) / max(n - 1, 1)
    order = sorted(range(n), key=lambda i: wanted[i])
    pos = [min(max(wanted[i], low), high) for i in order]
    for k in range(1, n):                      # push up from the bottom
        pos[k] = max(pos[k], pos[k - 1] + gap)
    if pos[-1] > high:                         # then down from the top
        pos[-1] = high
        for k in range(n - 2, -1, -1):
            pos[k] = min(pos[k], pos[k + 1] - gap)
    out = [0.0] * n
    for k, i in enumerate(order):
        out[i] = pos[k]
    return out


def frontier_figure(table: pd.DataFrame, cpu: str, eps_linf: float = 0.1, sigma: float = 0.5):
    """Overhead (x) against robust accuracy (y), one panel per data set; PGD filled, noise hollow,
    each point with its 95% interval over seeds. Each setting is named once above its panel, at its
    overhead (a faint vertical guide runs through its two points); names of settings with nearly
    the same overhead are spread apart and joined to their place by a short line: they never overlap."""
    from ..report.figures import new_figure

    datasets = sorted({s.split(": ")[0] for s in table["setting"]})
    width_in, font_pt = 5.2, 7
    fig, axes = new_figure(width_in * len(datasets), 4.4, ncols=len(datasets))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, dataset in zip(axes, datasets):
        part = table[table["setting"].str.startswith(dataset + ": ")].sort_values("overhead_ratio")
        part = part[part["overhead_ratio"].notna()]
        x = part["overhead_ratio"].to_numpy(float)
        for col, low, high, style in (("pgd_linf_acc", "pgd_linf_low", "pgd_linf_high",
                                       dict(fmt="o", color="C0", label=f"L∞ {eps_linf:g}, worst case over PGD and FGSM")),
                                      ("noise_acc", "noise_low", "noise_high",
                                       dict(fmt="o", color="C1", mfc="none", label=f"noise σ {sigma:g}"))):
            y = 100 * part[col].to_numpy(float)
            below = (y - 100 * part[low].to_numpy(float)) if low in part else 0 * y
            above = (100 * part[high].to_numpy(float) - y) if high in part else 0 * y
            ax.errorbar(x, y, yerr=[pd.Series(below).fillna(0), pd.Series(above).fillna(0)], capsize=2, lw=0.8,
                        ms=4, **style)
        ax.axvline(1.3, color="gray", lw=0.8, ls=":", label="1.3x plain")
        ax.set_xlabel(f"training step / plain step ({cpu})", fontsize=8)
        ax.set_ylabel("accuracy %, 95% interval over seeds", fontsize=8)
        ax.text(0.02, 0.98, dataset, transform=ax.transAxes, va="top", ha="left", fontsize=9, weight="bold")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_ylim(0, 100)
        if not len(x):
            continue
        span = max(float(x.max() - x.min()), 0.1)
        ax.set_xlim(float(x.min()) - 0.06 * span, float(x.max()) + 0.06 * span)
        lo, hi = ax.get_xlim()
        for xi in x:
            ax.axvline(xi, color="0.85", lw=0.5, zorder=0)
        names = [s.split(": ")[1].removeprefix("jacobian-") for s in part["setting"]]
        wanted = [(xi - lo) / (hi - lo) for xi in x]
        gap = 1.6 * font_pt / 72 / (0.8 * width_in)   # a rotated name's height, in axes fraction
        for name, xi, at in zip(names, x, spread_labels(wanted, gap)):
            ax.annotate(name, xy=(xi, 100), xycoords="data", xytext=(at, 1.06), textcoords="axes fraction",
                        fontsize=font_pt, rotation=90, va="bottom", ha="center", annotation_clip=False,
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="gray", shrinkA=1, shrinkB=0))
    return fig


def write_frontier(result: FrontierResult, out: str | Path, cpu: str, eps_linf: float = 0.1,
                   sigma: float = 0.5) -> list[Path]:
    """frontier.csv, frontier.png and frontier_verdicts.csv into ``out``, atomically."""
    from ..report.figures import png_bytes
    from ..training.rundir import atomic_write_bytes, atomic_write_csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "frontier.csv", result.table)
    atomic_write_bytes(out / "frontier.png", png_bytes(frontier_figure(result.table, cpu, eps_linf, sigma)))
    atomic_write_csv(out / "frontier_verdicts.csv", result.verdicts)
    return [out / "frontier.csv", out / "frontier.png", out / "frontier_verdicts.csv"]
