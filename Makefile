# Two commands on a fresh machine: `make demo` and `make test`. Each creates a virtual environment
# if needed and installs the versions pinned in constraints.txt (the ones the demo's numbers and the
# tests were last verified with). `make test LOCK=` installs the newest releases the package's own
# ranges allow instead, into .venv-latest.
PYTHON ?= python3
LOCK ?= constraints.txt
VENV ?= $(if $(LOCK),.venv,.venv-latest)
PY := $(VENV)/bin/python
# torch is installed first and pinned either way: an unpinned torch may pull a multi-GB CUDA build
TORCH_VERSION ?= $(shell sed -n 's/^torch==//p' constraints.txt)
CONSTRAIN := $(if $(LOCK),-c $(LOCK),)
LOCKED := $(if $(LOCK),1,0)

.PHONY: demo test lint bench lock clean

# The editable install runs with PYTHONWARNINGS=ignore: setuptools' notice that a folder named like
# the package may shadow it is not for the user (this checkout maps kernels/ itself, see
# sample_effect/__init__.py).
$(VENV)/.installed: pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 10) else "sample-effect needs Python >= 3.10, found %d.%d" % v)'
	@if [ -n "$(LOCK)" ] && ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then \
	  echo "constraints.txt was made on Python 3.11; with another Python run 'make $(MAKECMDGOALS) LOCK=' (newest releases)"; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(CONSTRAIN)
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[dev]' $(CONSTRAIN)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/sample-effect demo --out demo_out

# PYTEST_ARGS: extra pytest arguments (CI's newest-releases pass runs -m "not slow")
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	SAMPLE_EFFECT_LOCKED=$(LOCKED) $(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/per_example.py --quick --out benchmarks/results/per_example_quick.json

# Rewrite constraints.txt from a fresh install of the newest releases (then run `make test` and the demo).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet torch==$(TORCH_VERSION)
	.venv-lock/bin/python -m pip install --quiet '.[dev]'
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude sample-effect | sed 's/^\(torch==[^+]*\)+.*/\1/'; } > constraints.tmp
	mv constraints.tmp constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf .venv .venv-latest demo_out .pytest_cache .ruff_cache
