# jrbench: make demo (the main job on the embedded default), make test (the test suite),
# make test-fast (the quick loop: the suite less its slow and Ray tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-report test test-fast test-cpus bench overhead overhead-check clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

# The demo writes into results/runs/demo (ignored by git): a fresh clone stays clean.
demo: $(STAMP)
	$(VENV)/bin/jrbench demo

# The committed demo report, results/demo/report, rewritten from runs in results/demo (on purpose only).
demo-report: $(STAMP)
	$(VENV)/bin/jrbench demo --out results/demo

test: $(STAMP)
	$(PY) -m pytest -q

# The quick loop while editing: everything but the tests marked slow or ray; CI runs `make test`.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not ray"

# The kernel-dependent tests again under other CPUs' float rounding: the portable kernels
# (ATEN_CPU_CAPABILITY=default) always, and avx2 where this CPU has AVX-512 (CI runs this).
test-cpus: $(STAMP)
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m kernels
	if grep -q avx512f /proc/cpuinfo 2>/dev/null; then ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -m kernels; fi

# Speed and memory benchmarks (targets from the issues; each prints what it measured).
bench: $(STAMP)
	$(PY) benchmarks/bench_train_overhead.py
	$(PY) benchmarks/bench_attack_overhead.py
	$(PY) benchmarks/bench_margins.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_autoattack.py
	$(PY) benchmarks/bench_attack_cost.py
	$(PY) benchmarks/bench_certify.py

# The training overhead against plain SGD, written to results/overhead.csv.
overhead: $(STAMP)
	$(VENV)/bin/jrbench overhead --pairs 30 --out results/overhead.csv

# The CI gate: this checkout against the baseline commit of benchmarks/overhead_gate.toml, timed
# interleaved in one process; exit 1 naming each case whose overhead ratio regressed.
overhead-check: $(STAMP)
	COLUMNS=120 $(VENV)/bin/jrbench gate benchmarks/overhead_gate.toml --device cpu --out $(VENV)/overhead-gate.csv

clean-venv:
	rm -rf $(VENV)
