# Two entry points (README): `make sweep` runs the main job on the embedded default, `make test` the tests
# (`make cluster-test`: only those on the simulated multi-node cluster).
# Each creates .venv when missing and installs the project with the pins of constraints.txt.
PY := .venv/bin/python
PIP := $(PY) -m pip

.PHONY: sweep test cluster-test lint install gpu-check
install: .venv/.installed

.venv/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3.11 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PY) -m trainers.prepare  # a first run's one-time work (DeepSpeed's CPU op, the offline model) done now
	touch $@

sweep: install
	$(PY) sweeps/ratio_search.py $(ARGS)

test: install
	$(PY) -m pytest -q --durations=25 $(ARGS)

# What CI checks before the tests: ruff's lint (pyflakes, pycodestyle, import order) and format.
lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# Only the tests on a simulated multi-node Ray cluster (tests/cluster_harness.py: needs root for
# `unshare -m` + tmpfs, and moto_server); `make test` runs them too.
cluster-test: install
	$(PY) -m pytest -q -m cluster $(ARGS)

# The GPU path end to end in one command, not part of `make test` (bench/gpu_check.py; bench/README.md says how
# to run it on a lent GPU machine): every figure in OUT/gpu_check.json. GPU_CHECK_DRY=1: its steps on CPU.
gpu-check: install
	$(PY) bench/gpu_check.py $(or $(OUT),outputs/gpu-check) $(if $(GPU_CHECK_DRY),--dry-run)
