# make demo:        set up .venv (once) and run the demo on the bundled photos -> outputs/demo/
# make test:        set up .venv (once) from the lock, test-constraints.txt, and run the whole test suite
# make test-quick:  the same without the tests that build ComfyUI environments with pip (a few minutes)
# make test-latest: a separate .venv-latest with the newest versions pyproject.toml allows, whole suite
# make lock:        after test-latest passed, write its versions into test-constraints.txt
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch the project is tested with (see README, "torch pin").
TORCH  ?= torch==2.13.0
# Exact versions of everything else in the test environment (empty: the newest allowed).
LOCK   ?= test-constraints.txt
STAMP  := $(VENV)/.posetransfer-setup
PYTEST := $(VENV)/bin/python -m pytest -q
# OpenMP threads that sleep instead of spinning while idle: with spinning (the default) torch's CPU ops
# become 10x+ slower whenever anything else wants the same cores (measured on a 2-core machine).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-quick test-latest lock setup clean-venv

demo: $(STAMP)
	$(VENV)/bin/posetransfer demo

test: $(STAMP)
	$(PYTEST)

test-quick: $(STAMP)
	$(PYTEST) -m "not env_install"

test-latest:
	$(MAKE) test VENV=.venv-latest LOCK=

lock:
	test -x .venv-latest/bin/python || { echo "run make test-latest first"; exit 1; }
	{ sed -n '1,3p' test-constraints.txt; .venv-latest/bin/python -m pip freeze --exclude-editable \
	  | grep -iv '^torch=='; } > test-constraints.txt.new && mv test-constraints.txt.new test-constraints.txt

setup: $(STAMP)

# Redone only when the venv is missing or pyproject.toml, the lock or this Makefile changed.
$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install "$(TORCH)"
	$(VENV)/bin/python -m pip install $(if $(LOCK),-c $(LOCK),--upgrade --upgrade-strategy eager) "$(TORCH)" -e ".[test]"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV) .venv-latest
