"""The report's files: from the collected runs to summary.csv, the table, plots and report.md.

:func:`write_report` is what ``jrbench report`` calls. From a :class:`jrbench.analysis.results.Collection`
it writes, into one folder: ``summary.csv`` (the tidy table: one measurement a row, named by run id and
group label), ``runs.csv`` (one row per run: its provenance; both from :func:`summary_files`),
``examples.csv`` (per-example margins), ``verdicts.csv`` (:mod:`jrbench.analysis.verdicts`), ``summary.md``
(the wide table of :mod:`jrbench.report.table` and the verdicts), the PNGs of
:mod:`jrbench.report.plots` and the decision-cell cross-sections (computed and drawn by
:mod:`jrbench.report.cells`, which needs the models), and ``report.md`` putting them together with the
commands that made them. Everything is rendered in memory, then written atomically; it returns
what it wrote and never prints.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import pandas as pd

from .figures import png_bytes
from ..errors import UserError
from .plots import report_figures
from .table import (BRACKET_NOTES, EXACT_NOTES, STRENGTH_NAMES, TABLE_NOTES, Strengths, bracket_table, exact_table, format_wide, group_table, markdown_table, run_table, table_gaps)
from .options import ReportConfig
from .corruptions import CAPTION as CORRUPTION_CAPTION, PNG as CORRUPTION_PNG, cells_csv, corruption_pairs, corruption_section, corruptions_figure
from ..analysis.provenance import PROVENANCE
from ..analysis.verdicts import VERDICT_NOTES, correction_note, verdict_lines, verdicts
from ..analysis.worst_case import WORST_CASE  # attack name of the worst case per example over every attack


# ----------------------------------------------------------------------------- options and result
@dataclass
class ReportOptions:
    """What the report shows. Strengths in pixel units, several of a kind: one table column
    each (:class:`jrbench.report.table.Strengths`); cell radius in pixel L2 units (None: the
    data set's ``cell_radius``, :class:`jrbench.data.datasets.Defaults`)."""

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
    correction: str = "bh"  # multiplicity correction over the report's verdicts: bh, holm or none
    versus: tuple[str, ...] = ()  # baselines named (--versus); empty: the plain group of each recipe

    def validate(self) -> "ReportOptions":
        """Itself if every option is one its :class:`~jrbench.report.options.ReportConfig` field
        allows (the schema's bounds and choices); else raise the field's error."""
        from ..schema import check_value, field_of

        values = [(name, list(getattr(self.strengths, name)) if getattr(self.strengths, name) else None)
                  for name in STRENGTH_NAMES]
        values += [("versus", list(self.versus) or None), ("correction", self.correction), ("cell_radius", self.cell_radius), ("cell_grid", self.cell_grid),
                   ("cell_index", self.cell_index), ("cell_panels", self.max_cell_panels)]
        for name, value in values:
            check_value(field_of(ReportConfig, name), value)
        return self

    @classmethod
    def from_config(cls, config: ReportConfig, device: str = "auto", data_dir: str | None = None) -> "ReportOptions":
        """The writer's options of the user's :class:`~jrbench.report.options.ReportConfig`."""
        return cls(Strengths(config.sigma, config.eps_linf, config.eps_l2), not config.per_run, config.cells,
                   config.cell_radius, config.cell_grid, config.cell_seed, config.cell_index, config.cell_panels,
                   device, data_dir, correction=config.correction, versus=tuple(config.versus or ())).validate()


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
    correction_note: str = ""
    errors: list[str] = field(default_factory=list)  # soundness: certificates an attack contradicts


def report_command_line(paths: list, out: Path, options: ReportOptions) -> str:
    """The ``jrbench report`` command line that makes this report."""
    args = ["jrbench", "report", *map(str, paths), "--out", str(out)]
    for name in STRENGTH_NAMES:  # repeatable: the flag once per strength
        for value in options.strengths.given(name):
            args += [f"--{name.replace('_', '-')}", f"{value:g}"]
    defaults = ReportOptions()
    for selector in options.versus:
        args += ["--versus", selector]
    if not options.by_seed_group:
        args.append("--per-run")
    if not options.cells:
        args.append("--no-cells")
    for name, flag in (("cell_radius", "--cell-radius"), ("cell_grid", "--cell-grid"), ("cell_seed", "--cell-seed"),
                       ("cell_index", "--cell-index"), ("max_cell_panels", "--cell-panels"),
                       ("device", "--device"), ("data_dir", "--data-dir"), ("correction", "--correction")):
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
        if sel_rows.empty:
            continue
        groups = sel_rows.assign(_s=settings).groupby(["attack", "norm", "loss", "_s"], dropna=False)
        corrupted = sel_rows[sel_rows["attack"] == "corruption"]
        if len(corrupted):  # one entry for all the corruptions
            severities = ", ".join(f"{v:g}" for v in sorted(corrupted["strength"].unique()))
            n = int(corrupted["n"].max()) if corrupted["n"].notna().any() else "?"
            lines.append(f"corruption: {corrupted['norm'].nunique()} corruptions, severity ∈ {{{severities}}}, "
                         f"{n} test examples")
        for (attack, norm, loss, s), sel in groups:
            if attack == "corruption":
                continue
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
    from ..analysis.provenance import train_command_line

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
    lines += [train_command_line(r.config) for r in collection.runs]
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
    "bracket_linf.png": "The bracket at L∞, a panel per group: attacked accuracy (%; the worst case per example over "
                        "every attack, an upper bound on the robust accuracy) and certified accuracy (the tightest "
                        "deterministic certificate per example: Lipschitz, IBP, CROWN, alpha-CROWN or complete "
                        "verification, a lower bound) against the radius ε (pixel units), the gap between them "
                        "shaded; dotted, the share of examples neither certified nor known broken (misclassified, "
                        "broken by an attack at ε or below, falsified by complete verification); ★ where none is "
                        "unknown: there the robust accuracy is exact (the table 'Exact robust accuracy' above).",
    "bracket_l2.png": "The bracket at L2, as for L∞: attacked (worst case over attacks) and certified (best "
                      "deterministic certificate) accuracy against ε (pixel units), the gap shaded, the unknown "
                      "share dotted, ★ where every example is decided.",
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


def bracket_section(collection, by_seed_group: bool) -> list[str]:
    """'## Certified and attacked accuracy': the bracket table (certified, per method, attacked,
    unknown share, gap), where every example is decided the exact robust accuracy and each attack's
    over-report, and the soundness check; nothing when no run has certificates."""
    table = bracket_table(collection.summary, by_seed_group)
    if table.empty:
        return []
    lines = ["## Certified and attacked accuracy", "", markdown_table(table), "", BRACKET_NOTES, ""]
    exact = exact_table(collection.summary, by_seed_group)
    lines += ["### Exact robust accuracy and the attacks' over-report", ""]
    lines += ([markdown_table(exact), "", EXACT_NOTES] if not exact.empty else [
        "No radius above 0 has every example decided (an unknown share of 0): the robust accuracy is "
        "bracketed, not exact, everywhere (complete verification, `jrbench certify --complete`, decides "
        "examples the other certificates and the attacks leave open)."])
    lines += ["", "**Soundness check** (every example a deterministic certificate (Lipschitz, IBP, CROWN, "
              "alpha-CROWN, complete verification) covers, against every attack on the same example; complete "
              "verification's falsifications against the certificates; its counterexamples re-run through the "
              "model):"]
    errors = getattr(collection, "errors", [])
    lines += [f"- ERROR: {e}" for e in errors] if errors else [
        "no attack broke an example at a radius a certificate covers, no falsification contradicts a "
        "certificate and every counterexample is confirmed."]
    return lines + [""]


def verdicts_section(lines: list[str], note: str = "") -> list[str]:
    """'## Verdicts': one sentence per verdict, then how they were made and the multiplicity
    correction (``note``: :func:`jrbench.analysis.verdicts.correction_note`)."""
    body = [f"- {line}" for line in lines] if lines else [
        "None: no regularized group has a plain group of the same data set, model and recipe with the data "
        "a test needs (see the gaps)."]
    return ["## Verdicts", "", *body, "", VERDICT_NOTES, *([""] + [note] if note else []), ""]


def report_markdown(collection, result_table: pd.DataFrame, pngs: list[str], cell_figs: list,
                    gaps: list[str], command: str, by_seed_group: bool, where: Where = str,
                    verdict_lines: list[str] | None = None, verdict_note: str = "",
                    corruption_lines: list[str] | None = None) -> str:
    unit = "group of runs that differ only by seed (mean ± std across seeds)" if by_seed_group else "run"
    lines = ["# jrbench report", "", "Made with:", "", "```bash", command, "```", "",
             f"{len(collection.runs)} runs. Tables: `summary.csv` (tidy: one measurement a row, "
             "named by run id and group), `runs.csv` (one row per run: its provenance and folder; "
             "`summary.merge(runs)` joins them), `examples.csv` (per-example margins, a row per run and example), "
             "`verdicts.csv` "
             "(each regularized group against its plain group), `summary.md` (the table below and the verdicts).", "",
             "## Summary", "", f"One row per {unit}.", "", markdown_table(result_table), "", TABLE_NOTES, "",
             *bracket_section(collection, by_seed_group), *(corruption_lines or []),
             *verdicts_section(verdict_lines or [], verdict_note), "## Figures", ""]
    titles = {"accuracy_noise.png": "Accuracy under white noise",
              "accuracy_linf.png": "Robust accuracy, L∞ (worst case over attacks)",
              "accuracy_l2.png": "Robust accuracy, L2 (worst case over attacks)",
              "bracket_linf.png": "The bracket, L∞: attacked and certified accuracy, the gap shaded",
              "bracket_l2.png": "The bracket, L2: attacked and certified accuracy, the gap shaded",
              "margins_ecdf.png": "Margin distributions",
              "spectra.png": "Jacobian singular-value spectra",
              CORRUPTION_PNG: "Common corruptions: heat maps and accuracy against severity"}
    captions = {**CAPTIONS, CORRUPTION_PNG: CORRUPTION_CAPTION}
    for png in pngs:
        if png in titles:
            lines += figure_section(titles[png], png, captions[png])
    for png, fig in cell_figs:
        kind = "random plane" if fig.section.plane.kind == "random" else "adversarial plane"
        lines += figure_section(f"Decision cells, {fig.dataset}, {kind}", png, cells_caption(fig))
    lines += runs_section(collection, where)
    lines += ["## Gaps", ""]
    lines += [f"- {g}" for g in gaps] if gaps else ["None: every run has metrics, attacks, per-example attack "
                                                     "records, margins and Jacobian tables, and every group a verdict."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- write it all
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


SUMMARY_KEYS = ["run_id", "group_id", "group_label"]  # the run columns summary.csv keeps; runs.csv has the rest


def summary_files(summary: pd.DataFrame, where: Where = str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy table as written: ``(measurements, runs)``.

    ``measurements``: one row per measurement (:data:`jrbench.analysis.results.MEASURE`, with ``source``
    the table's file inside its run folder) and :data:`SUMMARY_KEYS`; ``runs``: one row per run with
    every provenance column (:data:`jrbench.analysis.provenance.PROVENANCE`, ``run_dir`` through
    ``where``). ``measurements.merge(runs)`` (on :data:`SUMMARY_KEYS`, the columns both have) gives back
    the collected table; the provenance is written once per run instead of on each of its thousands of rows.
    """
    def inside(row) -> str:  # the source's path inside its run folder (else as it was)
        source, run_dir = Path(row["source"]), Path(row["run_dir"])
        return source.relative_to(run_dir).as_posix() if source.is_relative_to(run_dir) else where(source)

    measures = [c for c in summary.columns if c not in PROVENANCE]
    measurements = summary[measures + SUMMARY_KEYS].assign(
        source=[inside(r) for r in summary[["source", "run_dir"]].to_dict("records")])
    runs = summary[PROVENANCE].drop_duplicates("run_id").reset_index(drop=True)
    return measurements, runs.assign(run_dir=runs["run_dir"].map(where))


def write_report(collection, out: str | Path, options: ReportOptions | None = None,
                 command: str | None = None, on_progress=None) -> ReportResult:
    """Write summary.csv, runs.csv, examples.csv, verdicts.csv, summary.md, the PNGs and report.md into
    ``out``.

    Every file is rendered in memory first and written atomically; report.md comes last.
    ``command``: the command line to quote (default: :func:`report_command_line`).
    ``on_progress(done, total, label)``: the cross-sections' progress (runs x kinds).
    """
    from ..training.rundir import atomic_write_bytes, atomic_write_csv, atomic_write_text

    options = (options or ReportOptions()).validate()
    out = Path(out)
    if collection.summary.empty:
        raise UserError("the runs have no readable tables: " + "; ".join(map(str, collection.gaps)))
    runs = run_table(collection.summary, options.strengths)
    wide = group_table(runs, options.by_seed_group)
    table = format_wide(wide)
    gaps = [str(g) for g in collection.gaps] + table_gaps(runs, collection)
    verdict_table, verdict_gaps = verdicts(collection, correction=options.correction, versus=list(options.versus))
    lines = verdict_lines(verdict_table)
    note = correction_note(verdict_table)
    gaps += verdict_gaps
    figures, figure_gaps = report_figures(collection, options.by_seed_group)
    pairs = corruption_pairs(collection, list(options.versus))
    corruption_fig = corruptions_figure(collection.summary, pairs)
    if corruption_fig is not None:  # only where some run has corruption rows: no gap otherwise
        figures[CORRUPTION_PNG] = corruption_fig
    corruption_lines = corruption_section(collection.summary, pairs, markdown_table)
    pngs = {name: png_bytes(fig) for name, fig in figures.items()}
    cells, cell_gaps = _cell_figures(collection, options, on_progress)
    gaps += figure_gaps + cell_gaps
    command = command or report_command_line(collection.paths, out, options)
    here = out.resolve()

    def where(path: Path) -> str:  # paths in the report's files: relative to its folder
        return Path(os.path.relpath(Path(path).resolve(), here)).as_posix()

    markdown = report_markdown(collection, table, list(pngs), [(p, f) for p, f, _ in cells], gaps, command,
                               options.by_seed_group, where, lines, verdict_note=note,
                               corruption_lines=corruption_lines)
    summary, run_rows = summary_files(collection.summary, where)
    files = []
    for name, data in [*pngs.items(), *((p, b) for p, _, b in cells)]:
        atomic_write_bytes(out / name, data)
        files.append(out / name)
    atomic_write_csv(out / "summary.csv", summary)
    atomic_write_csv(out / "runs.csv", run_rows)
    atomic_write_csv(out / "examples.csv", examples_wide(collection.examples))
    atomic_write_csv(out / "verdicts.csv", verdict_table)
    if corruption_lines:
        atomic_write_csv(out / "corruptions.csv", cells_csv(collection.summary))
        files.append(out / "corruptions.csv")
    atomic_write_text(out / "summary.md", markdown_table(table) + "\n\n" + TABLE_NOTES + "\n\n"
                      + "\n".join(bracket_section(collection, options.by_seed_group) + corruption_lines
                                  + verdicts_section(lines, note)))
    atomic_write_text(out / "report.md", markdown)
    files += [out / n for n in ("summary.csv", "runs.csv", "examples.csv", "verdicts.csv", "summary.md", "report.md")]
    return ReportResult(out, files, wide, table, gaps, verdict_table, lines, note, list(collection.errors))
