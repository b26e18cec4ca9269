# jrbench: make demo (the main job on the embedded default), make test (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench overhead overhead-check clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jrbench demo

test: $(STAMP)
	$(PY) -m pytest -q

# Speed and memory benchmarks (targets from the issues; each prints what it measured).
bench: $(STAMP)
	$(PY) benchmarks/bench_train_overhead.py
	$(PY) benchmarks/bench_attack_overhead.py
	$(PY) benchmarks/bench_margins.py
	$(PY) benchmarks/bench_memory.py

# The training overhead against plain SGD, written to results/overhead.csv.
overhead: $(STAMP)
	$(VENV)/bin/jrbench overhead --pairs 30 --out results/overhead.csv

# The CI gate: exit 1 naming each case whose ratio exceeds benchmarks/overhead_budget.toml.
overhead-check: $(STAMP)
	$(VENV)/bin/jrbench overhead --pairs 30 --out $(VENV)/overhead-ci.csv --check benchmarks/overhead_budget.toml

clean-venv:
	rm -rf $(VENV)
