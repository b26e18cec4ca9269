"""Overhead: timing (reference, summaries), memory per case, budgets; the CLI."""
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from jrbench.cli import app
from jrbench.config import RegConfig
from jrbench.errors import UserError
from jrbench.models.architectures import build_model
from jrbench.cost.overhead import default_cases, reference_exact_loss, summarize, time_steps
from jrbench.cost.budgets import Budget, check_budget, load_budget
from jrbench.penalty.regularizers import step_loss


def test_reference_equals_jrbench_exact_penalty():
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, [0.13], [0.31]).double()
    x, y = torch.rand(6, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (6,))
    ours = step_loss(model, x, y, RegConfig(["jacobian"], lambda_jr=0.3, n_proj=-1)).total
    assert torch.allclose(ours, reference_exact_loss(model, x, y, 0.3))


@pytest.mark.slow
def test_time_steps_interleaves_and_summarizes():
    model = build_model("mlp", (1, 28, 28), 10, [0.13], [0.31])
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    cases = default_cases(n_projs=(1,), subsamples=(4,))
    times = time_steps(model, x, y, cases, pairs=3, warmup=1)
    assert list(times["case"][:4]) == ["plain", "jacobian-n1", "jacobian-n1-sub4", "reference-exact"]
    assert (times.loc[times["case"] == "plain", "ratio"] == 1.0).all()
    summary = summarize(times)
    assert list(summary["case"]) == [c.name for c in cases] and (summary["pairs"] == 3).all()
    row = summary.set_index("case").loc["jacobian-n1"]
    assert row["ratio_median"] == pytest.approx(times[times["case"] == "jacobian-n1"]["ratio"].median())


def _summary(**ratios):
    cases = ["plain", *ratios]
    return pd.DataFrame({"case": cases, "median_seconds": [1.0, *ratios.values()],
                         "ratio_median": [1.0, *ratios.values()]})


def test_check_budget_names_the_case_over_budget():
    budgets = [Budget("jacobian-n1", 2.2, "plain", 3), Budget("jacobian-exact", 1.1, "reference-exact", 7)]
    assert check_budget(_summary(**{"jacobian-n1": 2.0, "jacobian-exact": 9.0, "reference-exact": 9.5}), budgets) == []
    failures = check_budget(_summary(**{"jacobian-n1": 2.5, "jacobian-exact": 12.0, "reference-exact": 9.0}), budgets)
    assert len(failures) == 2 and failures[0].startswith("jacobian-n1: 2.50x plain")
    assert "jacobian-exact: 1.33x reference-exact" in failures[1]
    with pytest.raises(UserError, match="did not time"):
        check_budget(_summary(**{"jacobian-n1": 2.0}), [Budget("jacobian-n3", 3.0, "plain", 1)])


@pytest.mark.parametrize("text, needle", [
    ('[[case]]\nname = "jacobian-n1"\nmax_ratio = "two"\n', "line 3: field 'max_ratio' of case 'jacobian-n1'"),
    ('[[case]]\nmax_ratio = 2.0\n', "field 'name'"),
    ('[[case]]\nname = "jacobian-n1"\nmax_ratio = 2.0\nmax = 3\n', "line 4: unknown field(s) ['max']"),
    ('[[case]]\nname = "jacobian-n1"\nmax_ratio = 2.0\n\n[[case]]\nname = "jacobian-exact"  # the 2nd\n'
     'max_ratio = 20\nagainst = 3\n', "line 8: field 'against' of case 'jacobian-exact'"),
    ('[[case]]\nname = "jacobian-n1"\nmax_ratio = 2.0\n[[case]\n', "line 4, column 7: not valid TOML"),
    ('title = "x"\n', "expected one or more [[case]] tables"),
])
def test_malformed_budget_names_line_and_field(tmp_path, text, needle):
    path = tmp_path / "budget.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_budget(path)
    assert needle in str(err.value), str(err.value)


def test_repository_gate_spec_parses():
    from pathlib import Path

    from jrbench.cost.gate import load_gate_spec

    spec = load_gate_spec(Path(__file__).resolve().parents[1] / "benchmarks" / "overhead_gate.toml")
    assert {b.case for b in spec.bounds} >= {"jacobian-n1", "jacobian-n1-sub16", "jacobian-exact"}
    assert spec.baseline == "auto" and "jrbench/penalty/vjp_tape.py" in spec.penalty_paths and 0 < spec.tolerance < 0.5


def test_jr_every_case_times_a_cycle_of_k_steps():
    model = build_model("mlp", (1, 28, 28), 10, [0.13], [0.31])
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    cases = default_cases(n_projs=(1,), subsamples=(), reference=False, everys=(4,), jvp=True)
    assert [c.name for c in cases] == ["plain", "jacobian-n1", "jacobian-n1-every4", "jacobian-jvp-n1"]
    assert cases[2].reg.jr_every == 4 and cases[3].reg.jr_estimator == "jvp"
    times = time_steps(model, x, y, cases, pairs=2, warmup=0)
    assert len(times) == 8 and (times["seconds"] > 0).all()


@pytest.mark.slow
def test_cli_exits_1_naming_the_case_over_budget(tmp_path):
    budget = tmp_path / "budget.toml"
    budget.write_text('[[case]]\nname = "jacobian-n1"\nmax_ratio = 0.01\n')
    out = tmp_path / "overhead.csv"
    result = CliRunner().invoke(app, ["overhead", "--model", "mlp", "--n-proj", "1", "--jr-subsample", "8",
                                      "--pairs", "2", "--warmup", "0", "--device", "cpu", "--out", str(out),
                                      "--check", str(budget)])
    assert result.exit_code == 1, result.output
    assert "over budget" in result.output and "jacobian-n1" in result.output
    table = pd.read_csv(out)
    assert set(table["case"]) == {"plain", "jacobian-n1", "jacobian-n1-sub8", "reference-exact"} and (table["saved_mb"] > 0).all()
    peak = table.set_index("case")["peak_mb"]
    assert (peak > 0).all() and peak["reference-exact"] > peak["plain"]


def test_cli_bad_budget_file_exits_2_before_timing(tmp_path):
    budget = tmp_path / "budget.toml"
    budget.write_text('[[case]]\nname = "jacobian-n1"\n')
    result = CliRunner().invoke(app, ["overhead", "--check", str(budget), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "max_ratio" in result.output
    assert not (tmp_path / "o.csv").exists()


def test_budget_naming_an_untimed_case_fails_before_timing(tmp_path):
    budget = tmp_path / "budget.toml"
    budget.write_text('[[case]]\nname = "jacobian-n1-sub99"\nmax_ratio = 2\n')
    out = tmp_path / "o.csv"
    out.write_text("kept\n")
    result = CliRunner().invoke(app, ["overhead", "--check", str(budget), "--out", str(out)])
    assert result.exit_code == 2 and "jacobian-n1-sub99" in result.output and "line 2" in result.output
    assert out.read_text() == "kept\n"


def test_live_tensor_bytes_counts_storages_once_and_frees_them():
    from jrbench.cost.memory import LiveTensorBytes

    known = torch.zeros(256)  # 1 KiB, counted from the start
    tracker = LiveTensorBytes("cpu", [known])
    with tracker.mode():
        a = torch.ones(1024, 256)          # 1 MiB
        view = a[:10]                      # same storage: not counted again
        a.mul_(2)                          # in place: no new storage
        del a, view
        b = torch.ones(512, 256)           # 0.5 MiB after the first is freed
    assert tracker.peak == 1024 + 2**20
    assert tracker.live == 1024 + 2**19
    del b


@pytest.mark.parametrize("same_span, expected", [(False, {"plain": 1, "jacobian-n1": 1, "jacobian-n1-every4": 4}),
                                                 (True, {"plain": 4, "jacobian-n1": 4, "jacobian-n1-every4": 4})])
def test_same_span_times_every_case_over_the_same_number_of_steps(monkeypatch, same_span, expected):
    """On CUDA (same_span) each timing covers lcm(k) steps of every case, so each pays the synchronize alike."""
    import jrbench.cost.overhead as ov

    model = build_model("mlp", (1, 28, 28), 10, [0.13], [0.31])
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    cases = default_cases(n_projs=(1,), subsamples=(), reference=False, everys=(4,))
    steps = {c.name: 0 for c in cases}
    real_step = ov._step

    def counting_step(model, opt, params, x, y, case):
        steps[case.name] += ov.steps_per_timing(case)
        real_step(model, opt, params, x, y, case)

    monkeypatch.setattr(ov, "_step", counting_step)
    times = time_steps(model, x, y, cases, pairs=2, warmup=0, same_span=same_span)
    assert {name: n // 2 for name, n in steps.items()} == expected
    assert (times["seconds"] > 0).all() and len(times) == 6
