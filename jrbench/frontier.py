"""The cost of robustness: each cheap-penalty setting's training overhead against its robustness.

Issue: "the cheapest penalty at equal robustness". The paper (Hoffman, Roberts, Yaida 2019)
calls the random-projection penalty cheap (about 1.3x plain SGD on a GPU); jrbench's ways to
cut its cost are ``--n-proj``, ``--jr-subsample K``, ``--jr-every k`` and
``--jr-estimator jvp``. For every setting of a study (runs of ``benchmarks/frontier.toml``:
several data sets x settings x seeds) this module joins

- ``overhead_ratio``: the setting's step time over plain SGD's, measured interleaved by
  ``jrbench overhead`` (median of per-pair ratios; the case named by
  :func:`jrbench.overhead.case_name`), on the CPU or GPU that table names;
- ``R`` = 1/2 mean ||J_z||_F^2 on fixed test examples after training (mean over seeds);
- ``pgd_linf_acc``: the worst-case robust accuracy at L-inf ``eps_linf`` (every adversarial
  attack run there, per example; PGD alone where no per-example record exists), and
  ``noise_acc`` at ``sigma`` (means over seeds, fractions);
- ``verdict_vs_full``: the verdicts (:mod:`jrbench.verdicts`: paired t over seeds) of the
  setting against full-batch n=1 of the same data set and recipe, on those two accuracies:
  'not worse' when neither is significantly worse, else 'worse', with the differences in
  points and their 95% intervals.

Columns of ``frontier.csv`` (exactly): :data:`FRONTIER_COLUMNS`. ``setting`` is
"<data set>: <case>", ``train_args`` the exact ``jrbench train`` flags of the setting.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import UserError

FRONTIER_COLUMNS = ["setting", "train_args", "overhead_ratio", "R", "pgd_linf_acc", "noise_acc", "verdict_vs_full"]
FULL_CASE = "jacobian-n1"


def is_full_n1(config) -> bool:
    """The reference setting: the paper's penalty, one projection on every row of every step."""
    from .overhead import case_name

    return case_name(config.reg) == FULL_CASE


def setting_args(config) -> str:
    """The ``jrbench train`` flags of a run, without seed, device, data folder and output."""
    from .provenance import train_command

    args = shlex.split(train_command(config).partition("  # ")[0])[2:]
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


def _verdict_text(rows: pd.DataFrame) -> str:
    """'not worse: ...' only when both the PGD-Linf and the noise verdicts exist and neither is
    worse; 'worse: ...' when one is; 'incomplete verdict: ...' when one of the two is missing."""
    if rows.empty:
        return "no verdict (no full n=1 runs with seeds in common)"
    parts, worse, have = [], False, set()
    for r in rows.itertuples():
        what = "PGD-Linf" if r.metric in ("worst_case_acc", "pgd_acc") else "noise"
        have.add(what)
        worse |= r.verdict == "worse"
        parts.append(f"{what} {r.diff:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}]")
    n = int(rows["n_seeds"].max())
    missing = sorted({"PGD-Linf", "noise"} - have)
    head = "worse" if worse else (f"incomplete verdict (no {' or '.join(missing)} verdict)" if missing else "not worse")
    return f"{head}: {', '.join(parts)} points, {n} seed{'s' if n != 1 else ''}, {rows['method'].iloc[0]}"


def frontier(collection, overhead: pd.DataFrame, *, eps_linf: float = 0.1, sigma: float = 0.5,
             goal_ratio: float = 1.3) -> FrontierResult:
    """One row per (data set, setting) of ``collection``'s runs; ``overhead`` is a table of
    ``jrbench overhead`` (case, ratio_median, ...)."""
    from .overhead import case_name
    from .verdicts import run_values, strength_label, verdicts

    if "case" not in overhead or "ratio_median" not in overhead:
        raise UserError("the overhead table needs the columns case and ratio_median (from jrbench overhead --out).")
    ratios = dict(zip(overhead["case"], overhead["ratio_median"]))
    values = run_values(collection.summary)
    linf, noise = strength_label("linf", eps_linf), strength_label("gaussian", sigma)
    found, gaps = verdicts(collection, is_baseline=is_full_n1)
    by_group: dict[tuple[str, str], list] = {}
    for r in collection.runs:
        by_group.setdefault((r.config.data.dataset, case_name(r.config.reg)), []).append(r)
    group_of = dict(zip(collection.summary["run_id"], collection.summary["group_id"]))
    label_of = dict(zip(collection.summary["group_id"], collection.summary["group_label"]))
    rows = []
    for (dataset, case), runs in sorted(by_group.items()):
        ids = [r.run_id for r in runs]
        v = values[values["run_id"].isin(ids)]

        def mean(metric: str, strength: str = "") -> float:
            sel = v[(v["metric"] == metric) & (v["strength"] == strength)]
            return float(sel["value"].mean()) if len(sel) else float("nan")

        pgd = mean("worst_case_acc", linf)
        if pgd != pgd:
            pgd = mean("pgd_acc", linf)
        label = label_of.get(group_of.get(ids[0], ""), "")
        ours = found[found["group"] == label]
        robust = ours[(ours["metric"] == "worst_case_acc") & (ours["strength"] == linf)]
        if robust.empty:
            robust = ours[(ours["metric"] == "pgd_acc") & (ours["strength"] == linf)]
        mine = pd.concat([robust, ours[(ours["metric"] == "noise_acc") & (ours["strength"] == noise)]])
        verdict = "reference" if case == FULL_CASE else _verdict_text(mine)
        ratio = ratios.get(case, float("nan"))
        if case not in ratios:
            gaps.append(f"{dataset}: {case}: no overhead case '{case}' in the overhead table")
        rows.append({"setting": f"{dataset}: {case}", "train_args": setting_args(runs[0].config),
                     "overhead_ratio": ratio, "R": mean("R_z"), "pgd_linf_acc": pgd, "noise_acc": mean("noise_acc", noise),
                     "verdict_vs_full": verdict})
    table = pd.DataFrame(rows, columns=FRONTIER_COLUMNS)
    penalty = ~table["setting"].str.endswith(": plain")  # plain SGD is the overhead's unit, not a penalty setting
    meets = table[penalty & (table["overhead_ratio"] <= goal_ratio) & table["verdict_vs_full"].str.startswith("not worse")]
    if len(meets):
        goal = [f"{r.setting} ({r.overhead_ratio:.2f}x plain): {r.verdict_vs_full}" for r in meets.itertuples()]
    else:
        cheap = table[penalty & (table["overhead_ratio"] <= goal_ratio)]
        goal = [f"no setting at or below {goal_ratio}x plain is not significantly worse than full n=1 "
                f"({len(cheap)} settings at or below {goal_ratio}x; "
                + "; ".join(f"{r.setting} {r.overhead_ratio:.2f}x: {r.verdict_vs_full}" for r in cheap.itertuples())
                + ")"]
    return FrontierResult(table, goal, gaps)


def frontier_figure(table: pd.DataFrame, cpu: str, eps_linf: float = 0.1, sigma: float = 0.5):
    """Overhead (x) against robust accuracy (y), one panel per data set; PGD filled, noise hollow."""
    from .figures import new_figure

    datasets = sorted({s.split(": ")[0] for s in table["setting"]})
    fig, axes = new_figure(4.2 * len(datasets), 3.6, ncols=len(datasets))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, dataset in zip(axes, datasets):
        part = table[table["setting"].str.startswith(dataset + ": ")]
        ax.scatter(part["overhead_ratio"], 100 * part["pgd_linf_acc"], label=f"L∞ {eps_linf:g}, worst case over PGD and FGSM")
        ax.scatter(part["overhead_ratio"], 100 * part["noise_acc"], facecolors="none", edgecolors="C1",
                   label=f"noise σ {sigma:g}")
        for i, r in enumerate(part.sort_values("overhead_ratio").itertuples()):
            name = r.setting.split(": ")[1].removeprefix("jacobian-")
            ax.annotate(name, (r.overhead_ratio, 100 * r.pgd_linf_acc), fontsize=7, rotation=60,
                        xytext=(2, 4 + 9 * (i % 2)), textcoords="offset points")
        ax.axvline(1.3, color="gray", lw=0.8, ls=":")
        ax.set_title(dataset, fontsize=9)
        ax.set_xlabel(f"training step / plain step ({cpu})", fontsize=8)
        ax.set_ylabel("accuracy %", fontsize=8)
        ax.legend(fontsize=7)
    return fig


def write_frontier(result: FrontierResult, out: str | Path, cpu: str, eps_linf: float = 0.1,
                   sigma: float = 0.5) -> list[Path]:
    """frontier.csv and frontier.png into ``out``, atomically."""
    from .figures import png_bytes
    from .rundir import atomic_write_bytes, atomic_write_csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "frontier.csv", result.table)
    atomic_write_bytes(out / "frontier.png", png_bytes(frontier_figure(result.table, cpu, eps_linf, sigma)))
    return [out / "frontier.csv", out / "frontier.png"]
