"""End to end on synth-digits: what Jacobian regularization claims, asserted.

A Jacobian-regularized lenet against the plain one trained with the same seed (the demo's
two configurations): smaller ||J||_F, larger median random-direction and adversarial margins,
higher accuracy under noise and PGD at moderate strength.
"""
import pandas as pd
import pytest

from jrbench.attacks import AttackConfig
from jrbench.demo import quick_spec
from jrbench.evaluate import attack_run, margins_run
from jrbench.training import train


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    runs = {}
    for config in quick_spec(root / "quick").cells:
        if config.train.seed != 0:  # the demo's three seeds; one pair here (margins > 50 points on two CPUs)
            continue
        config.train.device = "cpu"
        label = "jacobian" if "jacobian" in config.reg.names else "plain"
        runs[label] = (root / label, train(config, root / label).metrics.iloc[-1])
    assert set(runs) == {"plain", "jacobian"}
    return runs


@pytest.mark.slow
def test_jacobian_regularization_buys_robustness_and_margins(demo_runs):
    (plain_dir, plain), (jr_dir, jr) = demo_runs["plain"], demo_runs["jacobian"]
    assert plain["test_acc"] >= 0.95 and jr["test_acc"] >= 0.95
    assert jr["test_jac_frob_z"] < 0.6 * plain["test_jac_frob_z"]

    config = AttackConfig(noise=True, pgd=True, fgsm=False, sigmas=[0.0, 0.4], draws=2, norms=("linf", "l2"),
                          eps_linf=[0.0, 0.1], eps_l2=[1.5], steps=20, batch_size=300)
    acc = {}
    for label, run_dir in (("plain", plain_dir), ("jacobian", jr_dir)):
        table = attack_run(run_dir, config, n_examples=300, device="cpu").table
        acc[label] = table.set_index(["attack", "norm", "strength"])["accuracy"]
        # attack outputs were checked in-ball; eps 0 and sigma 0 give clean accuracy
        assert acc[label][("pgd", "linf", 0.0)] == acc[label][("noise", "gaussian", 0.0)]
        # re-running replaces rows instead of duplicating them
        attack_run(run_dir, AttackConfig(noise=True, pgd=False, fgsm=False, sigmas=[0.0], draws=2),
                   n_examples=300, device="cpu")
        saved = pd.read_csv(run_dir / "attacks.csv")
        assert not saved.duplicated(["attack", "norm", "strength", "loss"]).any()
        assert len(saved) == len(table)
    for key in [("noise", "gaussian", 0.4), ("pgd", "linf", 0.1), ("pgd", "l2", 1.5)]:
        assert acc["jacobian"][key] > acc["plain"][key] + 0.05, (key, acc["jacobian"][key], acc["plain"][key])
        assert acc["plain"][key] < acc["plain"][("noise", "gaussian", 0.0)] - 0.05  # not trivially separable

    m = {label: margins_run(d, n_examples=300, n_directions=5, device="cpu").margins  # the attacked examples
         for label, d in (("plain", plain_dir), ("jacobian", jr_dir))}
    for col in ("margin_random_median", "margin_adv_l2"):
        assert m["jacobian"][col].median() > 1.2 * m["plain"][col].median(), col
