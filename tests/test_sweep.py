"""Sweep specs: parsing, errors that name line and field, the suites, resuming."""
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from jrbench.cli import app
from jrbench.study.demo import quick_spec
from jrbench.errors import UserError
from jrbench.study.sweep import cell_status, run_sweep
from jrbench.study.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]


SUITES = sorted(p.stem for p in (REPO / "benchmarks").glob("*.toml") if p.stem != "overhead_gate")


def test_every_suite_is_tested():
    assert {"quick", "paper-mnist", "paper-cifar10", "lambda-sweep", "mnist-t10k", "frontier"} <= set(SUITES)


@pytest.mark.parametrize("name", SUITES)
def test_suites_parse_into_valid_cells(name):
    spec = load_spec(REPO / "benchmarks" / f"{name}.toml")
    assert spec.cells and len({c.run_id() for c in spec.cells}) == len(spec.cells)


def test_demo_is_the_quick_suite():
    spec = quick_spec(Path("x/demo"))
    suite = load_spec(REPO / "benchmarks" / "quick.toml")
    assert [c.run_id() for c in spec.cells] == [c.run_id() for c in suite.cells]
    assert spec.folder == Path("x/demo")


def test_grid_product_and_collapsed_cells():
    spec = parse_spec('''name = "t"
[base]
epochs = 1
[grid]
reg = [["none"], ["jacobian"]]
lambda_jr = [0.01, 0.1]
seed = [0, 1]
''', Path("t.toml"))
    # none x 2 lambdas collapses to one cell per seed: 2 + 2 * 2 = 6
    assert len(spec.cells) == 6
    assert {c.reg.lambda_jr for c in spec.cells if c.reg.names == ["jacobian"]} == {0.01, 0.1}


@pytest.mark.parametrize("text, needle", [
    ('name = "t"\n[grid]\nlamda_jr = [0.1]\n', "line 3: field 'lamda_jr' is not a training option. Did you mean 'lambda_jr'"),
    ('name = "t"\n[base]\nepochs = 1\n[grid]\nlambda_jr = 0.1\n', "line 5: field 'lambda_jr' in [grid] must be a non-empty list"),
    ('name = "t"\n[grid]\nlambda_jr = [-1.0]\nreg = [["jacobian"]]\n', "line 3: field 'lambda_jr' must be zero or positive"),
    ('name = "t"\n[base]\nreg = ["jacobian"]\njr_estimator = "jvp"\n[grid]\nn_proj = [-1]\n',
     "line 4: field 'jr_estimator' gives an invalid cell: jr_estimator jvp estimates"),
    ('name = "t"\n[attack]\nstepz = 3\n', "line 3: field 'stepz' is not an attack option. Did you mean 'steps'"),
    ('name = "t"\n\n[atack]\npgd = true\n', "line 3: field 'atack' is not a sweep field. Did you mean 'attack'"),
    ('name = "t"\ngird = 1\n', "line 2: field 'gird' is not a sweep field. Did you mean 'grid'"),
    ('name = "t"\n[attack]\neps = [0.1]\n', "line 3: field 'eps' is not an attack option: a spec names each grid, 'eps_linf'"),
    ('name = "t"\n[base\n', "bad.toml, line 2, column 6: not valid TOML"),
    ('[base]\nepochs = 1\n', "field 'name'"),
    ('name = "t"\n[base]\nepochs = "ten"\n', "line 3: field 'epochs' must be an integer, got 'ten'"),
    ('name = "t"\n[grid]\nlr = [0.1, "fast"]\n', "line 3: field 'lr' must be a number, got 'fast'"),
    ('name = "t"\n[attack]\nsteps = 3\nsigma = [-1.0]\n', "line 4: field 'sigma' must be zero or positive (pixel units)"),
    ('name = "t"\n[attack]\nautoattack = false\nautoattack_eps_linf = 0.1\n',
     "line 3: field 'autoattack' gives invalid attack settings: autoattack is off but an AutoAttack grid"),
])
def test_malformed_specs_name_line_and_field(text, needle):
    with pytest.raises(UserError) as err:
        parse_spec(text, Path("bad.toml"))
    assert needle in str(err.value), str(err.value)


def test_cli_malformed_spec_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "t"\n[grid]\nepoch = [1]\n')
    result = CliRunner().invoke(app, ["sweep", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "line 3" in result.output and "epoch" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sweep_runs_cells_skips_finished_ones_and_resumes(tmp_path):
    text = '''name = "mini"
[base]
dataset = "synth-digits"
train_subset = 400
test_subset = 200
epochs = 1
batch_size = 50
[grid]
reg = [["none"], ["jacobian"]]
[attack]
n_examples = 50
sigma = [0.0, 0.3]
draws = 1
eps_linf = [0.05]
eps_l2 = [0.5]
steps = 3
[margins]
n_examples = 20
directions = 2
'''
    spec = parse_spec(text, Path("mini.toml"), tmp_path)
    steps = []
    statuses = run_sweep(spec, device="cpu", on_cell=lambda i, n, run_id, step: steps.append(step))
    assert all(s.trained and s.attacked and s.measured for s in statuses)
    assert steps.count("train") == 2 and steps.count("attack") == 2 and steps.count("margins") == 2
    # a second run skips everything finished; a missing table is redone alone
    (statuses[1].run_dir / "margins.csv").unlink()
    steps.clear()
    run_sweep(spec, device="cpu", on_cell=lambda i, n, run_id, step: steps.append(step))
    assert steps == ["done", "margins", "done"]
    assert cell_status(spec, spec.cells[1]).measured
    # a study that asks for a new strength or other margins settings redoes those steps only
    grown = parse_spec(text.replace("eps_linf = [0.05]", "eps_linf = [0.05, 0.1]")
                       .replace("directions = 2", "directions = 3"), Path("mini.toml"), tmp_path)
    steps.clear()
    run_sweep(grown, device="cpu", on_cell=lambda i, n, run_id, step: steps.append(step))
    assert steps == ["attack", "margins", "done"] * 2
    rows = pd.read_csv(statuses[0].run_dir / "attacks.csv")
    assert {0.05, 0.1} <= set(rows[(rows["attack"] == "pgd") & (rows["norm"] == "linf")]["strength"])
    assert (pd.read_csv(statuses[0].run_dir / "margins.csv")["n_directions"] == 3).all()
    steps.clear()
    run_sweep(grown, device="cpu", on_cell=lambda i, n, run_id, step: steps.append(step))
    assert steps == ["done", "done"]


def test_blocks_are_recipes_and_the_grid_runs_once_per_block(tmp_path):
    from jrbench.study.spec import parse_spec

    text = ('name = "b"\n[base]\ndataset = "synth-digits"\nepochs = 1\n'
            '[[block]]\nname = "fast"\nlr = 0.05\nbatch_size = 64\n'
            '[[block]]\nname = "slow"\nlr = 0.01\nbatch_size = 100\nepochs = 2\n'
            '[grid]\nreg = [["none"], ["jacobian"]]\nseed = [0, 1]\n')
    spec = parse_spec(text, tmp_path / "b.toml", tmp_path)
    assert len(spec.cells) == 8
    recipes = {(c.train.lr, c.train.batch_size, c.train.epochs) for c in spec.cells}
    assert recipes == {(0.05, 64, 1), (0.01, 100, 2)}
    with pytest.raises(UserError, match="lrr"):
        parse_spec(text.replace("lr = 0.01", "lrr = 0.01"), tmp_path / "b.toml", tmp_path)


def test_report_table_is_honoured_or_refused(tmp_path, monkeypatch):
    from jrbench.cli.sweep import finish_sweep_report
    from jrbench.report.options import ReportConfig
    from jrbench.study.spec import parse_spec

    base = 'name = "r"\n[base]\ndataset = "synth-digits"\n'
    spec = parse_spec(base + '[report]\nsigma = 0.25\ncells = false\n', tmp_path / "r.toml", tmp_path)
    assert spec.report == ReportConfig(sigma=[0.25], cells=False)  # a repeatable flag: a list of one
    with pytest.raises(UserError, match="line 5: field 'sigmaa' is not a report option"):
        parse_spec(base + '[report]\nsigmaa = 0.25\n', tmp_path / "r.toml", tmp_path)
    with pytest.raises(UserError, match="line 5: field 'cells' must be true or false, got 1"):
        parse_spec(base + '[report]\ncells = 1\n', tmp_path / "r.toml", tmp_path)
    seen = {}
    monkeypatch.setattr("jrbench.cli.report.run_report", lambda paths, out, config, **kw: seen.update(out=out, config=config, **kw))
    finish_sweep_report(tmp_path, tmp_path / "report", spec.report, "cpu")
    assert seen == {"out": tmp_path / "report", "config": spec.report, "device": "cpu", "quiet": False}


def test_report_strengths_are_a_number_or_a_list(tmp_path, monkeypatch):
    from jrbench.cli.sweep import finish_sweep_report
    from jrbench.study.spec import parse_spec

    base = 'name = "r"\n[base]\ndataset = "synth-digits"\n'
    spec = parse_spec(base + '[report]\nsigma = [0.3, 0.5]\neps_linf = 0.1\neps_l2 = [1, 1.5]\n',
                      tmp_path / "r.toml", tmp_path)
    assert (spec.report.sigma, spec.report.eps_linf, spec.report.eps_l2) == ([0.3, 0.5], [0.1], [1, 1.5])
    for bad, why in (('"0.3"', "must be a number, got '0.3'"), ('[0.3, "x"]', "must be a number, got 'x'"),
                     ("[]", "is empty"), ("-0.1", "must be zero or positive (pixel units), got -0.1"),
                     ("[0.3, true]", "must be a number, got True"), ("nan", "must be zero or positive")):
        with pytest.raises(UserError) as err:
            parse_spec(base + f'[report]\ncells = false\nsigma = {bad}\n', tmp_path / "r.toml", tmp_path)
        assert str(err.value).startswith(f"{tmp_path / 'r.toml'}, line 6: field 'sigma' {why}"), (bad, str(err.value))

    class Seen(Exception):  # the options the report would be written with
        pass

    def write_report(collection, out, options, **kw):
        raise Seen(options.strengths)

    monkeypatch.setattr("jrbench.report.writer.write_report", write_report)
    monkeypatch.setattr("jrbench.analysis.results.collect", lambda paths: None)
    with pytest.raises(Seen) as seen:
        finish_sweep_report(tmp_path, tmp_path / "report", spec.report, "cpu", quiet=True)
    strengths = seen.value.args[0]  # the lists reach the report: a table column per strength
    assert strengths.given("sigma") == (0.3, 0.5) and strengths.given("eps_linf") == (0.1,)
    assert strengths.given("eps_l2") == (1.0, 1.5)


@pytest.mark.parametrize("table, old, new, command", [
    ("grid", 'regularizers = [["none"], ["jacobian"]]', "reg", "train"),
    ("base", 'regularizers = ["jacobian"]', "reg", "train"),
    ("attack", "sigmas = [0.0, 0.3]", "sigma", "attack"),
    ("attack", 'norms = ["linf"]', "norm", "attack"),
])
def test_renamed_keys_are_refused_with_the_new_flag_name(table, old, new, command):
    text = f'name = "t"\n[base]\nepochs = 1\n\n[{table}]\nsteps = 3\n{old}\n' if table == "attack" else \
        f'name = "t"\n[{table}]\nepochs = {"[1]" if table == "grid" else 1}\n{old}\n'
    line = 7 if table == "attack" else 4
    key = old.split(" =")[0]
    with pytest.raises(UserError) as err:
        parse_spec(text, Path("benchmarks/x.toml"))
    assert str(err.value) == (f"benchmarks/x.toml, line {line}: key '{key}' was renamed: use '{new}' "
                              f"(the --{new} flag of jrbench {command}).")


def test_cli_refuses_an_old_key_with_exit_2(tmp_path):
    spec = tmp_path / "old.toml"
    spec.write_text('name = "t"\n[grid]\nregularizers = [["none"]]\n')
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "line 3: key 'regularizers' was renamed: use 'reg'" in result.output
    assert not (tmp_path / "out").exists()


def test_the_flag_named_keys_work():
    from jrbench.study.spec import attack_config

    spec = parse_spec('name = "t"\n[base]\nreg = "jacobian"\nlambda_jr = 0.1\n'
                      '[[variant]]\nname = "plain"\nreg = ["none"]\n[[variant]]\nname = "jr"\n'
                      '[attack]\nsigma = [0.0, 0.2]\nnorm = "l2"\neps_l2 = 0.5\n'
                      '[margins]\nexample_seed = 3\n', Path("t.toml"))
    assert [c.reg.names for c in spec.cells] == [["none"], ["jacobian"]]
    config = spec.attack
    assert config.sigmas == [0.0, 0.2] and config.norms == ("l2",) and config.eps_l2 == [0.5]
    assert attack_config({"sigma": [0.0, 0.2], "norm": "l2", "eps_l2": 0.5}) == config
    assert spec.margins_examples.example_seed == 3 and spec.margins_examples.n_examples == 500
    assert spec.certify is None and spec.attack_examples.example_seed == 0


def test_a_bad_key_is_blamed_on_its_own_table_line():
    """[attack] batch_size is blamed on its own line, not on [base]'s batch_size above it."""
    text = ('name = "t"\n[base]\nbatch_size = 64\nepochs = 1\n[attack]\nsteps = 3\nbatch_size = 0\n'
            '[margins]\nbatch_size = "all"\n')
    with pytest.raises(UserError, match=r"t.toml, line 7: field 'batch_size' must be at least 1, got 0"):
        parse_spec(text, Path("t.toml"))
    with pytest.raises(UserError, match=r"t.toml, line 9: field 'batch_size' must be an integer"):
        parse_spec(text.replace("batch_size = 0", "batch_size = 10"), Path("t.toml"))
    with pytest.raises(UserError, match=r"t.toml, line 9: field 'batch_size' must be at least 1, got 0"):
        parse_spec(text.replace("batch_size = 0", "batch_size = 10").replace('"all"', "0"), Path("t.toml"))
    blocks = ('name = "t"\n[base]\nlr = 0.1\n[[block]]\nname = "a"\nlr = 0.1\n[[block]]\nname = "b"\n'
              'lr = "fast"\n')
    with pytest.raises(UserError, match=r"t.toml, line 9: field 'lr' must be a number"):
        parse_spec(blocks, Path("t.toml"))
    with pytest.raises(UserError, match=r"t.toml, line 9: field 'lr' must be a positive finite number"):
        parse_spec(blocks.replace('"fast"', "-1.0"), Path("t.toml"))


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "benchmarks").glob("*.toml") if p.stem != "overhead_gate")
                         + [REPO / "jrbench" / "study" / "quick.toml"], ids=lambda p: p.stem)
def test_committed_specs_finished_cells_stay_done(path, tmp_path):
    """A cell attacked under the rule before it was shared with the CLI (noise, PGD and FGSM on
    unless false; AutoAttack on when true or given a grid) still counts as attacked, so a sweep
    resumed after the change attacks nothing again; a missing attack is still noticed."""
    from jrbench.evaluate.attack_config import default_eps
    from jrbench.study.sweep import attack_done
    from jrbench.training import rundir

    from jrbench.specfile import read_spec

    spec = load_spec(path)
    table = read_spec(path).doc.get("attack")  # the raw table: the rule before it was shared
    if table is None:
        pytest.skip("no [attack] table")
    if any(k in table for k in ("corruptions", "corruption", "severity")):
        pytest.skip("written after the rule was shared (tests/test_corruption_specs.py: its attack step)")
    old = {a for a in ("noise", "pgd", "fgsm") if table.get(a, True)}
    if table.get("autoattack", "autoattack_eps_linf" in table or "autoattack_eps_l2" in table):
        old.add("autoattack")
    cell = spec.cells[0]
    run = tmp_path / "cell"
    run.mkdir()
    rundir.atomic_write_json(run / rundir.CONFIG, cell.to_dict())
    pd.DataFrame({"attack": sorted(old)}).to_csv(run / "attack_examples.csv", index=False)
    rows = []
    if "noise" in old:
        rows += [("noise", "gaussian", s, table.get("noise_examples", 10_000)) for s in table["sigma"]]
    for attack in ("pgd", "fgsm"):
        for norm in (table.get("norm", ["linf", "l2"]) if attack == "pgd" else ["linf"]):
            if attack in old:
                grid = table.get(f"eps_{norm}", default_eps(cell.data.dataset, norm))
                rows += [(attack, norm, e, table.get("n_examples", 1000)) for e in grid]
    if "autoattack" in old:
        rows += [("autoattack", norm, e, table.get("n_examples", 1000))
                 for norm in ("linf", "l2") for e in table.get(f"autoattack_eps_{norm}", [])]
    frame = pd.DataFrame(rows, columns=["attack", "norm", "strength", "n_examples"]).assign(example_seed=0)
    frame.to_csv(run / "attacks.csv", index=False)
    assert attack_done(run, spec.attack, spec.attack_examples)
    for attack in old:  # without one attack's rows the cell is attacked again
        frame[frame["attack"] != attack].to_csv(run / "attacks.csv", index=False)
        assert not attack_done(run, spec.attack, spec.attack_examples), attack
