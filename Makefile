# Two commands on a fresh machine: `make run` (the pipeline on the small preset) and `make test`.
# Both create the virtual environment .venv from requirements.txt when it is missing or stale.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= small
# each preset its own run dir: a debug run never meets a small one
RUN_DIR ?= runs/$(PRESET)
ARGS ?=
# pytest-xdist workers for `make test`: most tests wait on one process at a time (and the SLURM
# tests on the cluster), so three keep a 2-core machine's cores busier than two (docs/testing.md);
# TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 3

.PHONY: venv run test bench clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 on PATH"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python venv support is missing; installing python3-venv (Debian)"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "error: run 'sudo apt-get install python3-venv' and retry"; exit 1; fi; \
	  rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

run: venv
	$(PY) -m wm --run_dir=$(RUN_DIR) --config=configs/carracing.py:$(PRESET) $(ARGS)

test: venv
	$(PY) -m pytest -c tests/pytest.ini --rootdir=. tests -q -n $(TEST_WORKERS) --dist=loadgroup \
	  $(ARGS)

bench: venv
	$(PY) scripts/benchmark_data.py

clean-venv:
	rm -rf $(VENV)
