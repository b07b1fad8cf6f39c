# Two entry points, both working on a fresh clone: `make demo` and `make test`.
# Each (re)creates .venv and installs everything needed, Debian packages included.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-all demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_system_packages.sh scripts/install_kenlm.sh
	bash scripts/install_system_packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, from the local CPU wheel: anything else would pull GBs of CUDA packages.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	bash scripts/install_kenlm.sh $(VENV)
	touch $(STAMP)

test: setup
	$(PY) -m pytest

test-all: setup  # the default suite plus the `slow` end-to-end tests (the full demo, the reproduction study)
	$(PY) -m pytest -m ""

demo: setup
	$(PY) -m hfspeech.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
