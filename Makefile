# Two entry points, both self-contained on a fresh clone: `make demo` and `make test`.
# torch is pinned to the CPU wheel (torch==2.13.0); any other spec can pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hfscan-installed

.PHONY: setup demo test test-fast lint bench clean wheel

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hfscan demo

lint: $(STAMP)
	$(VENV)/bin/ruff check scanner tests bench

test: lint
	$(PY) -m pytest -q

# everything that needs no trained model (under 2 minutes on 2 cores)
test-fast: lint
	$(PY) -m pytest -q -m "not zoo"

# the wheel `pip install dist/hfscan-*.whl` takes (templates and probe data inside)
wheel: $(STAMP)
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) hfscan-report hfscan-out build dist *.egg-info
