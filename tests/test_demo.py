"""`make demo` leaves a fresh clone clean: the demo writes into results/runs/demo (ignored by git),
and only `make demo-report` rewrites the committed results/demo/report."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jrbench.study.demo import COMMITTED_OUT, DEMO_OUT, quick_spec, where_note

REPO = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def require_git_checkout() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{REPO} is not a git checkout (or git is missing): CI runs on a clone")
        pytest.skip(f"{REPO} is not a git checkout (or git is missing)")


def test_the_demo_writes_where_git_ignores_and_the_committed_report_is_not_ignored():
    require_git_checkout()
    assert quick_spec().folder == DEMO_OUT == Path("results/runs/demo")
    assert quick_spec(Path("x/mine")).folder == Path("x/mine")  # jrbench demo --out x/mine
    assert quick_spec(COMMITTED_OUT).folder == Path("results/demo")  # make demo-report
    ignored = DEMO_OUT / "report" / "report.md"
    committed = COMMITTED_OUT / "report" / "report.md"
    # check-ignore exits 0 (and names the path) when ignored, 1 when not
    assert subprocess.run(["git", "check-ignore", "-q", str(ignored)], cwd=REPO).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", str(committed)], cwd=REPO).returncode == 1
    assert git("ls-files", str(committed)).strip() == str(committed)
    assert "results/runs/demo/ (ignored by git)" in where_note(DEMO_OUT) and "make demo-report" in where_note(DEMO_OUT)
    assert where_note(Path("x/mine")) == "demo: runs and report in x/mine/"


# The quick profile cut down to seconds: the clone commits it, so that `make demo` runs the real
# command, target and report on the clone's own (committed) demo.
TINY_QUICK = '''name = "quick"
[base]
dataset = "synth-digits"
train_subset = 300
test_subset = 100
model = "lenet"
epochs = 1
batch_size = 50
[grid]
reg = [["none"], ["jacobian"]]
seed = [0, 1]
[attack]
n_examples = 20
sigma = [0.0, 0.5]
draws = 1
eps_linf = [0.0, 0.1]
eps_l2 = [0.0, 1.0]
steps = 2
[margins]
n_examples = 10
directions = 2
'''


@pytest.mark.slow
def test_make_demo_leaves_a_fresh_clone_clean(tmp_path):
    """The README's first command on a fresh clone: `git status` shows nothing afterwards, and the
    demo's report is in results/runs/demo. The clone's quick profile is cut to seconds (committed in
    the clone); the venv is this one's (make -o: not rebuilt)."""
    require_git_checkout()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, capture_output=True)
    (clone / "jrbench/study/quick.toml").write_text(TINY_QUICK)
    git("-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "--quiet", "-am",
        "a quick profile of seconds", cwd=clone)
    assert git("status", "--porcelain", cwd=clone) == ""
    committed = {p: (clone / COMMITTED_OUT / "report" / p).read_bytes()
                 for p in git("ls-files", cwd=clone / COMMITTED_OUT / "report").split()}
    assert len(committed) >= 10  # the committed report's files (report.md, tables, figures)
    venv = Path(sys.prefix)
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["make", "-o", f"{venv}/.installed", "demo", f"VENV={venv}"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo: runs and report in results/runs/demo/ (ignored by git)" in result.stdout
    assert (clone / DEMO_OUT / "report" / "report.md").is_file()
    assert git("status", "--porcelain", cwd=clone) == ""
    assert all((clone / COMMITTED_OUT / "report" / p).read_bytes() == data for p, data in committed.items())
