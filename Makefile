# The two commands of the README: `make demo` and `make test`.
# Both create .venv/ on first use (Python 3.11, CPU only).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: setup demo test test-slow

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build on disk, never a multi-GB CUDA download.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/bayes-transfer demo --out demo-report

# pytest exits 5 when it collects nothing; that is not a failure of the code.
# Tests run in up to 4 worker processes (most are single-threaded fits): on 2 cores 7-15 min, by
# machine and load (README).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow
