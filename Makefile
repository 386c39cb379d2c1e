# pod-cycle: the two commands (README) and the setup they share.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-fast smoke lint dataset clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'

setup: $(STAMP) system-packages bytecode  ## Virtualenv, pinned packages, Debian packages (idempotent)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The project's own modules compiled once (only what changed since): every `inv`, pod script
# and trainer imports them, and where PYTHONDONTWRITEBYTECODE is set (containers, CI images)
# each process would compile them again from source.
.PHONY: bytecode
bytecode: $(STAMP)
	@$(PY) -m compileall -q podcycle tasks chessbot deploy scripts bench >/dev/null

.PHONY: system-packages
system-packages:
	@missing=""; \
	for pair in sshd:openssh-server rsync:rsync ssh:openssh-client stockfish:stockfish; do \
	  bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || test -x /usr/sbin/$$bin || test -x /usr/games/$$bin || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    scripts/apt_install.sh $$missing; \
	  else \
	    echo "missing:$$missing — install them (sudo apt-get install$$missing) and run make again" >&2; exit 1; \
	  fi; \
	fi

# Test workers (pytest-xdist). Much end-to-end time is spent waiting on pods, sshd and
# processes starting, so more workers than cores pays; each worker owns its local RunPods.
# On two cores, 6 workers took 205 s and 205 s where 4 took 225 s and 219 s (8: 217 s).
# A worker takes a whole module at a time (its local RunPod is set up once), in the order
# tests/conftest.py gives (the spend guard's waits, then the longest modules first), and the
# next only when its own is down to its last test. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 6
TEST_DIST := $(if $(filter 0,$(TEST_WORKERS)),,--dist loadscope --no-loadscope-reorder)

# pytest keeps its rewritten test modules as bytecode even where PYTHONDONTWRITEBYTECODE is
# set (containers, CI images): each worker would rewrite and compile them all again.
PYTEST := PYTHONDONTWRITEBYTECODE= $(PY) -m pytest

test: setup  ## Run the whole test suite (CI runs exactly this)
	$(PYTEST) -n $(TEST_WORKERS) $(TEST_DIST) $(PYTEST_ARGS)

test-fast: setup  ## The suite without the slow end-to-end tests (the in-process layer)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

smoke: setup  ## Run the whole training cycle (local RunPod when no key is configured)
	$(VENV)/bin/inv cycle.full-smoke

lint: setup  ## ruff, shellcheck, hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/shellcheck deploy/runpod_cloud_training/*.sh scripts/*.sh .ci/run
	$(VENV)/bin/hadolint deploy/runpod_cloud_training/Dockerfile

dataset: setup  ## Re-make data/dataset/_smoke_runpod (installs Debian's stockfish if missing)
	@command -v stockfish >/dev/null 2>&1 || test -x /usr/games/stockfish || { \
	  if [ "$$(id -u)" = 0 ]; then scripts/apt_install.sh stockfish; \
	  else echo "stockfish is missing: sudo apt-get install stockfish" >&2; exit 1; fi; }
	$(PY) scripts/make_smoke_dataset.py --seed 20260226 --positions 15000 --depth 8 \
	  --max-plies 60 --out data/dataset/_smoke_runpod

clean:  ## Remove the virtualenv and local RunPod state
	-$(VENV)/bin/inv local.down --force 2>/dev/null
	rm -rf $(VENV) .pod-cycle
