# Two entry points, both self-contained on a fresh clone: `make demo` and `make test`.
# torch is pinned to the CPU wheel (torch==2.13.0); any other spec can pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hfscan-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hfscan demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) hfscan-report hfscan-out build *.egg-info
