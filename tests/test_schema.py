"""The one schema (jrbench.schema): command options and spec keys derived from the config classes,
errors that carry their field, and run ids that did not move."""
from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from jrbench.cli import app
from jrbench.config import RegConfig, RunConfig, TrainConfig
from jrbench.errors import UserError
from jrbench.evaluate.attack_config import AttackConfig
from jrbench.schema import COMMAND_ONLY, FieldError, check, field_of, fields, from_table, run_id_irrelevant
from jrbench.study import spec as spec_module
from jrbench.study.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]

# command -> the spec keys of its table (the [base]/[grid] keys for train)
TABLES = {"train": set(spec_module.FIELDS), "attack": spec_module.ATTACK_FIELDS,
          "margins": spec_module.MARGIN_FIELDS, "certify": spec_module.CERTIFY_FIELDS,
          "report": spec_module.REPORT_FIELDS}


def command_options(name: str) -> set[str]:
    """The option names (not arguments) of ``jrbench NAME``, as Typer built them."""

    command = typer.main.get_command(app).commands[name]
    return {p.name for p in command.params if p.param_type_name == "option"}


@pytest.mark.parametrize("command", sorted(TABLES))
def test_every_command_option_is_a_spec_key_of_its_table_and_the_reverse(command):
    options, keys = command_options(command), TABLES[command]
    only_flag = options - keys
    undeclared = only_flag - set(COMMAND_ONLY)
    assert not undeclared, f"jrbench {command} options that are no spec key and not declared: {undeclared}"
    assert keys <= options, f"[{command}] keys that are no option of jrbench {command}: {keys - options}"


def test_the_declared_exceptions_are_used_and_say_why():
    used = set().union(*(command_options(c) - TABLES[c] for c in TABLES))
    assert used == set(COMMAND_ONLY), set(COMMAND_ONLY) - used
    assert all(len(why) > 20 for why in COMMAND_ONLY.values())
    device = field_of(TrainConfig, "device")  # a field that is a flag but no spec key says why
    assert device.opt.cli and not device.opt.spec and device.opt.note


# Options a command declares itself (a Typer parameter) instead of on a config class, with the
# reason; every other option of every command is a config field added by with_options. The
# where-and-how-loud options are shared; the rest are per command. An option added inline again
# fails test_every_command_option_comes_from_a_config_or_is_a_declared_inline_one.
SHARED_INLINE = {
    "device": "where a command runs (DeviceOpt of jrbench/cli/common.py), not what it measures",
    "quiet": "how much a command prints (QuietOpt), not what it computes",
    "data_dir": "where a run's data lie (DataDirOpt); a run records its own",
    "out": "where a command writes (its help says which file or folder); no option of the computation",
}
INLINE = {
    "train": {"resume": "continue the run in --out: how the command runs, not what it trains"},
    "sweep": {"report": "whether the command writes the report at the end; the spec's [report] holds its options"},
    "overhead": {"check": "a budget file read beside the timing (cost/budgets.py)",
                 "gate": "the old spelling of jrbench gate SPEC, kept as an alias",
                 "baseline": "the old spelling's --baseline (jrbench gate takes it from GateConfig)"},
    "attack": {"eps": "the single-norm shorthand for --eps-linf / --eps-l2 (COMMAND_ONLY)"},
    "frontier": {"overhead": "the input table beside the PATH arguments, like a run directory"},
}


def schema_options(name: str) -> set[str]:
    """The options of ``jrbench NAME`` that with_options added from its config classes."""
    callback = next(c.callback for c in app.registered_commands
                    if (c.name or c.callback.__name__.removesuffix("_command")) == name)
    groups = getattr(callback, "schema_groups", {})
    return {f.key for cls in groups.values() for f in fields(cls) if f.opt.cli}


def all_commands() -> list[str]:
    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", all_commands())
def test_every_command_option_comes_from_a_config_or_is_a_declared_inline_one(command):
    inline = command_options(command) - schema_options(command)
    allowed = set(SHARED_INLINE) | set(INLINE.get(command, {}))
    assert inline <= allowed, (f"jrbench {command} declares {inline - allowed} inline: make it a field of a config "
                               "class (jrbench.schema.option) and add the class with with_options")


def test_the_declared_inline_options_are_used():
    for command, names in INLINE.items():
        assert set(names) <= command_options(command) - schema_options(command), command
    used = set().union(*(command_options(c) - schema_options(c) for c in all_commands()))
    assert set(SHARED_INLINE) <= used


@pytest.mark.parametrize("command, options", [
    ("frontier", {"eps_linf", "sigma", "goal_ratio", "margin"}),
    ("gate", {"baseline", "jr_backend"}),
    ("attack", {"dataset", "weights", "input_normalized", "out"}),
    ("margins", {"dataset", "weights", "input_normalized", "out"}),
    ("certify", {"dataset", "weights", "input_normalized", "out"}),
])
def test_tunable_and_outside_model_options_come_from_configs(command, options):
    assert options <= schema_options(command)


@pytest.mark.parametrize("args, message", [
    (["frontier", ".", "--overhead", "o.csv", "--margin", "0"], "--margin must be in (0, 100) (accuracy points), got 0.0"),
    (["frontier", ".", "--overhead", "o.csv", "--margin", "100"], "--margin must be in (0, 100)"),
    (["frontier", ".", "--overhead", "o.csv", "--goal-ratio", "0"], "--goal-ratio must be a positive finite number"),
    (["frontier", ".", "--overhead", "o.csv", "--eps-linf", "1.5"], "--eps-linf must be in [0, 1] (pixel units)"),
    (["frontier", ".", "--overhead", "o.csv", "--sigma", "-0.1"], "--sigma must be zero or positive"),
])
def test_a_bad_frontier_value_exits_2_naming_its_flag(args, message):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_a_bad_gate_option_names_its_flag():
    from jrbench.cost.gate_options import GateConfig

    with pytest.raises(FieldError, match="--jr-backend must be one of auto, tape, autograd, got 'autogard'"):
        GateConfig(jr_backend="autogard")
    result = CliRunner().invoke(app, ["gate", str(ROOT / "benchmarks" / "overhead_gate.toml"), "--jr-backend", "tap"])
    assert result.exit_code == 2 and "tape" in result.output


def test_a_fields_help_and_flag_reach_the_command_line():
    runner = CliRunner()
    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    for f in fields(RegConfig):
        assert f.flag in out
    assert field_of(RegConfig, "lambda_jr").opt.help in out
    aa = runner.invoke(app, ["attack", "--help"], env={"COLUMNS": "200"}).output
    assert "--noise / --no-noise" in aa and "--norm [linf|l2]" in aa.replace("<", "[").replace(">", "]") or "linf|l2" in aa


def test_field_errors_carry_the_field_and_name_the_flag():
    cfg = RunConfig()
    cfg.reg.lambda_jr = -1.0
    with pytest.raises(FieldError) as err:
        check(cfg.reg)
    assert err.value.key == "lambda_jr" and str(err.value).startswith("--lambda-jr must be zero or positive")
    assert err.value.for_spec().startswith("lambda_jr must be zero or positive")
    with pytest.raises(FieldError) as err:
        AttackConfig(norms=("l3",))
    assert err.value.key == "norm" and "Did you mean 'l2'" in str(err.value)
    with pytest.raises(FieldError, match="must be in \\[0, 1\\] \\(pixel units\\), got 2.0"):
        AttackConfig(eps_linf=[2.0])


def test_the_command_line_names_the_flag_and_exits_2():
    result = CliRunner().invoke(app, ["train", "--lambda-jr", "-1", "--epochs", "1"])
    assert result.exit_code == 2
    assert "--lambda-jr must be zero or positive, got -1.0" in result.output


def test_a_spec_names_the_line_and_key_of_the_bad_field(tmp_path):
    text = ('name = "s"\n[base]\ndataset = "synth-digits"\nepochs = 1\n[grid]\nseed = [0]\n'
            '[attack]\nsteps = 5\nsigma = 0.2\nnorm = "l3"\n')
    with pytest.raises(UserError, match=r"s.toml, line 10: field 'norm' must be one of linf, l2, got 'l3'"):
        parse_spec(text, tmp_path / "s.toml", tmp_path)
    cell = 'name = "s"\n[base]\ndataset = "synth-digits"\nreg = ["jacobian"]\njr_estimator = "jvp"\n[grid]\nn_proj = [-1]\n'
    with pytest.raises(UserError, match=r"line 7: field 'n_proj' gives an invalid cell|line 5: field 'jr_estimator'"):
        parse_spec(cell, tmp_path / "s.toml", tmp_path)


def test_from_table_sorts_keys_onto_classes_and_wraps_single_values():
    from jrbench.runtables.examples import ExampleSet

    parts = from_table([AttackConfig, ExampleSet], {"sigma": 0.3, "n_examples": 10, "steps": 7})
    assert parts == {"AttackConfig": {"sigmas": [0.3], "steps": 7}, "ExampleSet": {"n_examples": 10}}
    with pytest.raises(FieldError, match="Did you mean 'steps'"):
        from_table([AttackConfig], {"stepz": 3})


def test_run_id_relevance_comes_from_the_owners():
    reg = RegConfig(names=["l2"])
    dropped = run_id_irrelevant(reg, set(reg.names))
    assert "weight_decay" not in dropped and {"lambda_jr", "n_proj", "dropout", "noise_sigma"} <= dropped
    jac = RegConfig(names=["jacobian"], jr_every=2)
    assert "jr_every" not in run_id_irrelevant(jac, {"jacobian"})
    assert "jr_backend" in run_id_irrelevant(jac, {"jacobian"})  # its default: ids of earlier runs stay


@pytest.mark.parametrize("study", ["bracket", "certified", "mnist-t10k", "lambda-sweep"])
def test_committed_studies_keep_their_run_ids(study):
    """Every cell of a committed study still has the run id its report lists (runs.csv)."""
    import pandas as pd

    runs = ROOT / "results" / study / "report" / "runs.csv"
    toml = {"bracket": "bracket.toml", "certified": "certified.toml", "mnist-t10k": "mnist-t10k.toml",
            "lambda-sweep": "lambda-sweep.toml"}[study]
    cells = spec_module.load_spec(ROOT / "benchmarks" / toml).cells
    listed = set(pd.read_csv(runs)["run_id"])
    assert {c.run_id() for c in cells} <= listed


def test_the_command_line_builds_its_options_without_torch():
    """--help stays instant: deriving the options runs no default factory that loads torch."""
    import subprocess
    import sys

    code = "import sys, jrbench.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_report_choices_are_the_statistics_corrections():
    from jrbench.report.options import CORRECTIONS
    from jrbench.stats import CORRECTIONS as STATS

    assert CORRECTIONS == STATS
