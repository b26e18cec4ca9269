"""The report's table: the tidy table -> one wide row per run or per group of runs.

A group is the runs that differ only by seed (:func:`jrbench.analysis.provenance.group_id`). Everything
here is derived from the tidy table of :func:`jrbench.analysis.results.collect`. Columns: clean accuracy
(metrics.csv, last epoch); mean ||J_z||_F and R = 1/2 mean ||J_z||_F^2 (J with respect to the
normalized input z, on the run's 256 fixed test examples, metrics.csv); accuracy under white
noise at each chosen sigma; the robust accuracy in L-inf and L2 at each chosen eps: the worst
case per example over every adversarial attack run there (attack_examples.csv,
:func:`jrbench.analysis.worst_case.worst_case_examples`), or, for runs without a per-example record,
attacks.csv's PGD accuracy, marked and named as a gap (:func:`table_gaps`); beside it PGD's own
accuracy and AutoAttack's where present (pixel units; the nearest strength present; one column
per chosen strength, :class:`Strengths`); median
random-direction, adversarial (DeepFool) and first-order margins (pixel L2, margins.csv); the
training overhead (seconds_per_step over the plain runs', fastest epoch). Groups show mean ±
std (ddof=1) across seeds and the number of seeds.

:func:`run_table` (one row per run, numbers) -> :func:`group_table` (mean, std, count per
group) -> :func:`format_wide` (strings) -> :func:`markdown_table`.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..analysis.results import CERTIFIED  # attack name of the best deterministic certificate per example
from ..analysis.worst_case import WORST_CASE  # attack name of the worst case per example over every attack

ATTACK_COLUMNS = [("noise_acc", "noise", "gaussian", "sigma"),
                  ("cert_linf_acc", CERTIFIED, "linf", "eps_linf"),
                  ("robust_linf_acc", WORST_CASE, "linf", "eps_linf"), ("pgd_linf_acc", "pgd", "linf", "eps_linf"),
                  ("aa_linf_acc", "autoattack", "linf", "eps_linf"),
                  ("cert_l2_acc", CERTIFIED, "l2", "eps_l2"),
                  ("robust_l2_acc", WORST_CASE, "l2", "eps_l2"), ("pgd_l2_acc", "pgd", "l2", "eps_l2"),
                  ("aa_l2_acc", "autoattack", "l2", "eps_l2")]
OPTIONAL_KEYS = {"aa_linf_acc", "aa_l2_acc", "cert_linf_acc", "cert_l2_acc"}  # shown only where some run has them
MARGIN_COLUMNS = [("margin_random", "margin_random_median"), ("margin_adv", "margin_adv_l2"),
                  ("margin_first_order", "margin_first_order")]
METRIC_COLUMNS = [("clean_acc", "test_acc"), ("jac_frob_z", "test_jac_frob_z"), ("R_z", "test_R_z")]
STRENGTH_NAMES = ("sigma", "eps_linf", "eps_l2")


@dataclass
class Strengths:
    """Attack strengths of the wide table (pixel units): for each kind a tuple of strengths, one
    column each in ascending order, or None: the data set's one report strength
    (:class:`jrbench.data.datasets.Defaults`). A single number is a tuple of one."""

    sigma: tuple[float, ...] | None = None
    eps_linf: tuple[float, ...] | None = None
    eps_l2: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in STRENGTH_NAMES:
            value = getattr(self, name)
            if value is not None:
                value = (value,) if isinstance(value, (int, float, str)) else tuple(value)
                setattr(self, name, value or None)  # an empty list: the default

    def given(self, name: str) -> tuple[float, ...]:
        """The strengths asked for of kind ``name``, ascending, without repeats (empty: the default)."""
        return tuple(sorted({float(v) for v in getattr(self, name) or ()}))

    def targets(self, dataset: str, name: str, run_dir: str | None = None) -> tuple[float, ...]:
        """The strengths of kind ``name`` (sigma, eps_linf, eps_l2) the table shows for ``dataset``
        (a folder or npz data set's defaults: from the config of its run in ``run_dir``)."""
        if self.given(name):
            return self.given(name)
        from ..config import CUSTOM_DATASETS
        from ..data.datasets import defaults_of  # the data set's report_sigma / report_eps_linf / report_eps_l2

        if dataset in CUSTOM_DATASETS and run_dir:
            from ..training.rundir import load_config

            return (getattr(defaults_of(load_config(Path(run_dir)).data), f"report_{name}"),)
        return (getattr(defaults_of(dataset), f"report_{name}"),)


def strength_labels(values) -> list[str]:
    """Short distinct texts of strengths: 3 significant digits, more where two would read the same."""
    for digits in range(3, 18):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            break
    return labels


def attack_keys(strengths: Strengths) -> list[tuple[str, str, str, str, str, int]]:
    """The wide table's attack columns: (key, ATTACK_COLUMNS key, attack, norm, strength kind,
    position among the kind's strengths). One column per strength of its kind; the key is the
    ATTACK_COLUMNS key alone where the kind has one strength (the data set's default or one
    given), else with '@strength' (``noise_acc@0.3``)."""
    out = []
    for key, attack, norm, name in ATTACK_COLUMNS:
        given = strengths.given(name)
        if len(given) <= 1:
            out.append((key, key, attack, norm, name, 0))
        else:
            out += [(f"{key}@{label}", key, attack, norm, name, i) for i, label in enumerate(strength_labels(given))]
    return out


def _attack_keys_of(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(key, ATTACK_COLUMNS key) of the attack columns of a table of :func:`run_table`, in order."""
    bases = {k for k, *_ in ATTACK_COLUMNS}
    columns = set(frame.columns)
    return [(c, c.split("@")[0]) for c in frame.columns
            if c.split("@")[0] in bases and f"{c}_target" in columns]


def value_keys(frame: pd.DataFrame) -> list[str]:
    """The value columns of a table of :func:`run_table` in display order."""
    return ([k for k, _ in METRIC_COLUMNS] + [k for k, _ in _attack_keys_of(frame)]
            + [k for k, _ in MARGIN_COLUMNS] + ["overhead"])


def preferred_loss(rows: pd.DataFrame) -> pd.DataFrame:
    """Attack rows of one run: those computed with the ce64 loss where there are some."""
    if "loss" in rows and (rows["loss"] == "ce64").any():
        return rows[(rows["loss"] == "ce64") | rows["loss"].isna() | (rows["loss"] == "none")]
    return rows


def nearest_strength(rows: pd.DataFrame, attack: str, norm: str, target: float) -> tuple[float, float]:
    """(accuracy, strength) of the row of ``attack``/``norm`` nearest to ``target`` (ties: the
    smaller strength); (NaN, NaN) when there is none."""
    accuracy = (rows["table"] == "attacks") | ((rows["table"] == "certify") & (rows.get("quantity") == "accuracy"))
    sel = preferred_loss(rows[accuracy & (rows["attack"] == attack) & (rows["norm"] == norm)])
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
    columns = attack_keys(strengths)
    out = []
    for run_id, rows in summary.groupby("run_id", sort=False):
        first = rows.iloc[0]
        row = {k: first[k] for k in ("run_id", "group_id", "group_label", "dataset", "model", "regularizers", "seed")}
        for key, quantity in METRIC_COLUMNS:
            row[key] = _lookup(rows, "metrics", quantity, "last_epoch")
        for key, _, attack, norm, name, i in columns:
            row[f"{key}_target"] = strengths.targets(first["dataset"], name, first.get("run_dir"))[i]
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
    first = g[["group_label", "dataset", "model", "regularizers"]].first()
    cols = {"label": first["group_label"] if by_seed_group else g["run_id"].first(), "n_seeds": g.size(),
            "seeds": g["seed"].apply(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna()))),  # outside: none
            "run_ids": g["run_id"].apply(lambda s: " ".join(s))}
    for k in value_keys(runs):
        cols[k], cols[f"{k}_std"], cols[f"{k}_n"] = g[k].mean(), g[k].std(ddof=1), g[k].count()
    for k, _ in _attack_keys_of(runs):
        cols[f"{k}_target"] = g[f"{k}_target"].first()
        cols[f"{k}_fallback"] = g[f"{k}_fallback"].sum()  # runs whose worst case is PGD only
        cols[f"{k}_strengths"] = g[f"{k}_strength"].apply(lambda s: sorted(set(s.dropna().tolist())))
    out = pd.concat([first, pd.DataFrame(cols)], axis=1)  # columns at once: no fragmented frame
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


ATTACK_HEADERS = {"noise_acc": "acc % noise σ={}", "cert_linf_acc": "certified acc % L∞ ε={}",
                  "cert_l2_acc": "certified acc % L2 ε={}", "robust_linf_acc": "robust acc % L∞ ε={} (worst case)",
                  "pgd_linf_acc": "acc % PGD-L∞ ε={}", "aa_linf_acc": "acc % AutoAttack-L∞ ε={}",
                  "robust_l2_acc": "robust acc % L2 ε={} (worst case)", "pgd_l2_acc": "acc % PGD-L2 ε={}",
                  "aa_l2_acc": "acc % AutoAttack-L2 ε={}"}


def headers(wide: pd.DataFrame) -> dict[str, str]:
    """Column key -> header; attack headers name the strength (pixel units) asked for: the key's
    own ('noise_acc@0.3'), else the targets of its rows (one a data set)."""
    def target(key: str) -> str:
        if "@" in key:
            return key.split("@", 1)[1]
        values = wide[f"{key}_target"].dropna().unique() if len(wide) else []
        return ", ".join(f"{v:.3g}" for v in values) or "?"

    keys = _attack_keys_of(wide) or [(k, k) for k, *_ in ATTACK_COLUMNS]
    return {
        "label": "run", "dataset": "data set", "n_seeds": "seeds", "clean_acc": "clean acc %",
        "jac_frob_z": "mean ‖J_z‖_F", "R_z": "R = ½ mean ‖J_z‖_F²",
        **{key: ATTACK_HEADERS[base].format(target(key)) for key, base in keys},
        "margin_random": "median random margin", "margin_adv": "median adv. margin (DeepFool)",
        "margin_first_order": "median 1st-order margin", "overhead": "overhead × (s/step vs plain)",
    }


def format_wide(wide: pd.DataFrame) -> pd.DataFrame:
    """Strings for the console and markdown: mean ± std, '–' where missing, '@s' after an
    accuracy measured at a strength other than the one asked for, '(PGD only)' after a robust
    accuracy of runs without a per-example record; AutoAttack columns only where some run has them."""
    names = headers(wide)
    names = {k: v for k, v in names.items()
             if k.split("@")[0] not in OPTIONAL_KEYS or (len(wide) and wide[k].notna().any())}
    percent = {"clean_acc"} | {k for k, _ in _attack_keys_of(wide)}
    rows = []
    for r in wide.to_dict("records"):
        row = {names["label"]: r["label"], names["dataset"]: r["dataset"], names["n_seeds"]: str(r["n_seeds"])}
        for k in [k for k in value_keys(wide) if k in names]:
            text = _fmt(r[k], r[f"{k}_std"], r[f"{k}_n"], r["n_seeds"], k in percent)
            if k in percent and k != "clean_acc":
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
    "Certified accuracy (where `jrbench certify` ran; certify.csv) is the lower end of the bracket: the "
    "share of the same kind of fixed test examples that the best deterministic certificate (the "
    "Lipschitz bound, interval bound propagation, CROWN, alpha-CROWN or complete verification, whichever "
    "ran) proves correct within the radius. "
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


# ----------------------------------------------------------------------------- gaps
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
    """Values missing from the wide table whose file is there (missing files are gaps already).
    A value no run has (a study that attacked at L-inf only) is one line for all runs, without a
    command to run: a choice of the study, not a hole in some of its runs."""
    known = {(g.run_id, g.item) for g in collection.gaps}
    paths = {r.run_id: r.path for r in [*collection.runs, *getattr(collection, "models", [])]}
    outside = {r.run_id for r in getattr(collection, "models", [])}
    first_key = {}  # an ATTACK_COLUMNS key -> its first column (all are NaN when the attack's rows are)
    for key, base in _attack_keys_of(runs):
        first_key.setdefault(base, key)
    gaps = []
    nobody = {key for key in _COLUMN_GAPS if runs[first_key.get(key, key)].isna().all()}
    for key in nobody:
        file, what, _ = _COLUMN_GAPS[key]
        if any((run_id, file) not in known for run_id in runs["run_id"]):  # else each run's missing file says it
            gaps.append(f"all runs: {file}: {what} in any run")
    for r in runs.to_dict("records"):
        for key, (file, what, fix) in _COLUMN_GAPS.items():
            if key in nobody:
                continue
            if pd.isna(r[first_key.get(key, key)]) and (r["run_id"], file) not in known:
                if r["run_id"] in outside:  # its source must be named again: the folder's gaps say how
                    gaps.append(f"{r['run_id']}: {file}: {what}")
                    continue
                hint = f"; run '{fix.format(run=paths[r['run_id']])}'" if fix else ""
                gaps.append(f"{r['run_id']}: {file}: {what}{hint}")
        for key, base in _attack_keys_of(runs):  # a fallback the missing file does not explain already
            norm = next(n for k, _, n, _ in ATTACK_COLUMNS if k == base)
            if (r[f"{key}_fallback"] and pd.notna(r[key]) and (r["run_id"], "attack_examples.csv") not in known):
                gaps.append(f"{r['run_id']}: attack_examples.csv: no per-example record at {norm} "
                            f"ε={r[f'{key}_strength']:g}; its robust accuracy is attacks.csv's PGD accuracy "
                            f"(not the worst case over attacks); re-run 'jrbench attack {paths[r['run_id']]}'")
    return list(dict.fromkeys(gaps))  # two columns may fall back to the same strength



# ----------------------------------------------------------------------------- the bracket
TIGHT = ["crown", "alpha-crown", "complete"]  # shown where some run has them
UNKNOWN, GAP = "unknown", "gap (points)"


def _points(values: pd.Series, n_runs: int, sign: bool = False) -> str:
    text = _fmt(values.mean(), values.std(ddof=1), len(values), n_runs, True) if len(values) else "–"
    return "+" + text if sign and text != "–" and values.mean() > 0 and not text.startswith("0.0") else text


def bracket_table(summary: pd.DataFrame, by_seed_group: bool = True) -> pd.DataFrame:
    """Certified accuracy (lower bound) beside attacked accuracy (upper bound) at every norm and
    strength where a run has a certificate: one row per group (or run), norm and eps; columns
    ``certified`` (the best deterministic certificate per example), ``lipschitz``, ``ibp`` (and
    ``one-lipschitz``, ``crown``, ``alpha-crown``, ``complete`` where some run has them), the
    ``worst case`` over attacks,
    ``unknown`` (the share of examples neither certified nor known broken, table ``bracket``), the
    ``gap`` (worst case minus certified, in points) and ``smoothing σ=...`` (the smoothed classifier g:
    another model). Percent strings, mean ± std across seeds; '–' where missing. Empty without
    certificates."""
    from ..analysis.results import BRACKET

    cert = summary[(summary["table"] == "certify") & (summary["quantity"] == "accuracy")]
    if cert.empty:
        return pd.DataFrame()
    attacked = preferred_loss(summary[(summary["table"] == "attacks") & (summary["attack"] == WORST_CASE)])
    bracket = summary[(summary["table"] == BRACKET) & summary["quantity"].isin(["unknown_share", "gap"])]
    bracket = bracket.assign(attack=bracket["quantity"].map({"unknown_share": UNKNOWN, "gap": GAP}))
    rows = pd.concat([cert, attacked, bracket])
    rows = rows[rows["run_id"].isin(set(cert["run_id"]))]
    key = "group_id" if by_seed_group else "run_id"
    present = set(cert["attack"].unique())
    columns = ([CERTIFIED, "lipschitz"] + [m for m in ("one-lipschitz",) if m in present] + ["ibp"]
               + [m for m in TIGHT if m in present] + [WORST_CASE]
               + [c for c in (UNKNOWN, GAP) if (bracket["attack"] == c).any()]
               + sorted(a for a in present if a.startswith("smoothing")))
    out = []
    grid = cert[cert["attack"] == CERTIFIED] if (cert["attack"] == CERTIFIED).any() else cert
    for (k, norm, eps), _ in grid.groupby([key, "norm", "strength"], sort=False):
        sel = rows[(rows[key] == k) & (rows["norm"] == norm) & np.isclose(rows["strength"], eps)]
        n_runs = sel["run_id"].nunique()
        row = {"run": sel["group_label"].iloc[0] if by_seed_group else k, "norm": norm, "ε": f"{eps:g}"}
        for col in columns:
            row[col] = _points(sel.loc[sel["attack"] == col, "value"], n_runs)
        out.append(row)
    table = pd.DataFrame(out)
    return table.rename(columns={CERTIFIED: "certified (best)", WORST_CASE: "attacked (worst case)"})


ATTACK_NAMES = {"pgd": "PGD", "fgsm": "FGSM", "autoattack": "AutoAttack", WORST_CASE: "worst case"}


def _attack_header(attack: str, settings: pd.Series) -> str:
    """'PGD-40' (its steps, where every row has the same), 'AutoAttack', 'FGSM', 'worst case'."""
    name = ATTACK_NAMES.get(attack, attack)
    steps = settings.fillna("").str.extract(r"(?:^|\s)steps=(\d+)")[0].dropna().unique()
    return f"{name}-{steps[0]}" if attack == "pgd" and len(steps) == 1 else name


def exact_table(summary: pd.DataFrame, by_seed_group: bool = True) -> pd.DataFrame:
    """Where every example at a radius is decided (unknown share 0; eps > 0, since at eps 0 it is the
    clean accuracy): the exact robust accuracy (%) and how much each attack over-reported it (its
    robust accuracy minus the exact one, in points; PGD, AutoAttack, FGSM, other attacks but
    AutoAttack's components, and the worst case over attacks). One row per group (or run), norm and
    eps; '(k/n seeds)' where it is exact in k of the n runs that have certificates there. Empty when
    no radius is decided everywhere."""
    from ..analysis.results import BRACKET

    b = summary[(summary["table"] == BRACKET) & (summary["strength"] > 0)]
    exact = b[b["quantity"] == "exact_accuracy"]
    if exact.empty:
        return pd.DataFrame()
    over = b[(b["quantity"] == "over_report") & ~b["attack"].fillna("").str.startswith("aa-")]
    order = {a: i for i, a in enumerate(["pgd", "autoattack", "fgsm"])}
    attacks = sorted(over["attack"].unique(), key=lambda a: (a == WORST_CASE, order.get(a, len(order)), a))
    key = "group_id" if by_seed_group else "run_id"
    known = b[b["quantity"] == "unknown_share"]
    out = []
    for (k, norm, eps), sel in exact.groupby([key, "norm", "strength"], sort=False):
        here = (known[key] == k) & (known["norm"] == norm) & np.isclose(known["strength"], eps)
        n_runs = known.loc[here, "run_id"].nunique()
        row = {"run": sel["group_label"].iloc[0] if by_seed_group else k, "norm": norm, "ε": f"{eps:g}",
               "exact robust acc %": _points(sel["value"], n_runs)}
        mine = over[(over[key] == k) & (over["norm"] == norm) & np.isclose(over["strength"], eps)]
        for attack in attacks:
            values = mine[mine["attack"] == attack]
            row[_attack_header(attack, over.loc[over["attack"] == attack, "settings"]) + " over-report"] = \
                _points(values["value"], n_runs, sign=True)
        out.append(row)
    return pd.DataFrame(out).sort_values(["norm", "run", "ε"], kind="stable",
                                         key=lambda c: c.astype(float) if c.name == "ε" else c).reset_index(drop=True)


BRACKET_NOTES = (
    "Robust accuracy bracketed from both sides, in percent, on fixed test examples (pixel units): "
    "**certified** accuracy is a lower bound, the share of examples a certificate proves correct within "
    "the radius (`jrbench certify`: the certified Lipschitz bound of the logits, with L-inf through "
    "‖δ‖₂ ≤ √d‖δ‖∞, interval bound propagation, CROWN and alpha-CROWN linear relaxations and complete "
    "verification (MILP, L-inf), whichever ran; 'best' takes, per example, the tightest certificate); "
    "**attacked** is the worst case over every attack run there, an upper bound. The true robust "
    "accuracy lies between them. **unknown**: the share of the certificates' examples neither certified "
    "nor known to be broken (misclassified, broken by an attack at that radius or a smaller one, or "
    "falsified by complete verification, certify_bounds.csv); **gap**: attacked minus certified, in "
    "points. The gap exceeds the unknown share where the attacks at that radius missed examples broken "
    "otherwise (at a smaller radius, or by complete verification). Randomized smoothing certifies the "
    "smoothed classifier g (Cohen et al. 2019), not the model: its column is a lower bound for g only.")

EXACT_NOTES = (
    "Where no example is unknown (every one certified or known broken) the robust accuracy on these "
    "examples is exact: the certified share. Each attack's column is its robust accuracy there minus the "
    "exact one, in points: how much it over-reported robustness (0 when it found every non-robust "
    "example). Radius 0 (the clean accuracy) is left out; '(k/n seeds)': exact in k of the group's n runs.")
