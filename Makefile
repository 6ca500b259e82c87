# Two entry points (README): `make sweep` runs the main job on the embedded default, `make test` the tests.
# Each creates .venv when missing and installs the project with the pins of constraints.txt.
PY := .venv/bin/python
PIP := $(PY) -m pip

.PHONY: sweep test install
install: .venv/.installed

.venv/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3.11 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@

sweep: install
	$(PY) sweeps/ratio_search.py $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)
