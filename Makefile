# Two set-up-and-go commands (see README): `make demo` and `make test`.
# Each creates the virtual environment when missing and is safe to run again.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.isoflop-installed

.PHONY: demo test lint setup clean

setup: $(STAMP)

# torch==2.13.0 first: a CPU wheel kept on disk here, the CUDA build on a GPU cluster (see
# the platform notes in the README); the project's own range then installs nothing more.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/isoflop run studies/quickstart.yaml
	$(VENV)/bin/isoflop export studies/quickstart.yaml --format json --output .isoflop/quickstart-law.json

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .isoflop
