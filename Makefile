# make demo: set up .venv (once) and run the demo on the bundled photos -> outputs/demo/
# make test: set up .venv (once) and run the test suite
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch the project is tested with (see README, "torch pin").
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.posetransfer-setup
# OpenMP threads that sleep instead of spinning while idle: with spinning (the default) torch's CPU ops
# become 10x+ slower whenever anything else wants the same cores (measured on a 2-core machine).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test setup clean-venv

demo: $(STAMP)
	$(VENV)/bin/posetransfer demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

setup: $(STAMP)

# Redone only when the venv is missing or pyproject.toml / this Makefile changed.
$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install "$(TORCH)"
	$(VENV)/bin/python -m pip install -e ".[test]"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
