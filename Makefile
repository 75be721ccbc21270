# The README's commands. Each target installs what it needs first.
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
# The first Python 3.11+ on the PATH.
PYTHON  ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
             command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; \
           done)
PORT    ?= 8000
PYTEST_ARGS ?=

.PHONY: help install lock browser deploy-tools test-image run demo test test-fast lint format bench-fanout bench-status bench-declare clean

help:
	@echo "make run    run the whole service on the embedded default (port $(PORT))"
	@echo "make demo   see it work: a synthetic network, an exercise, the live view"
	@echo "make test   run the test suite (PostgreSQL/Redis if RRMM_TEST_*_URL are set)"
	@echo "make test-fast  the suite without the tests that start a worker, a browser or rrmm run"
	@echo "make lint   ruff + mypy"
	@echo "make bench-fanout  worker CPU per delivery vs the client libraries and the protocol floor"
	@echo "make test-image   build the Dockerfile with buildah on a debootstrap base, run it (~5 min, root)"
	@echo "make bench-status   status polled by 200 dashboards during a fan-out; 100 vs 100,000 members"
	@echo "make bench-declare  declaration latency at 10, 10,000 and 100,000 members"

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# After changing a range in pyproject.toml: resolve afresh in a scratch venv and pin what
# it took (then `make test`, and commit both files).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	{ sed -n '1,3p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .lock-venv

run: install
	$(BIN)/rrmm run --port $(PORT)

demo: install
	$(BIN)/rrmm demo --port $(PORT)

# The browser test drives Debian's Chromium (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
	  else \
	    echo "the browser test needs Chromium: sudo apt-get install chromium" >&2; exit 1; \
	  fi; }

# The deployment tests (tests/deploy/) run Debian's nginx (`nginx -t`, then on loopback with
# their own configuration and prefix: never the system service, never port 80) and
# prometheus's promtool (`promtool test rules`). Installed like Chromium when missing;
# without them those tests skip, saying so.
deploy-tools:
	@{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } && command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's nginx and prometheus (promtool) for the deployment tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx prometheus) >/dev/null; \
	  else \
	    echo "the deployment tests need nginx and promtool: sudo apt-get install nginx prometheus (they skip without)" >&2; \
	  fi; }

test: install browser deploy-tools
	$(BIN)/pytest $(PYTEST_ARGS)

# Everything not marked `slow` (no real worker, browser or `rrmm run`): minutes, not ~20.
test-fast: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# The image built for real (tests/deploy/test_image.py, about 5 minutes, so not in `test`):
# Debian's debootstrap makes the base, buildah builds the Dockerfile on it and runs it.
# Needs root and a TCP Redis: RRMM_TEST_BROKER_URL=redis://127.0.0.1:6379/N make test-image
test-image: install
	@command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
	  echo "installing Debian's buildah and debootstrap for the image test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap) >/dev/null; }
	RRMM_TEST_IMAGE=1 $(BIN)/pytest tests/deploy/test_image.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app workers migrations tests bench

# N members (default 10000) on the embedded default, RUNS runs (median and spread);
# see bench/README.md for PostgreSQL, --workers and --receiver-latency.
MEMBERS ?= 10000
RUNS    ?= 3
BENCH_ARGS ?=
bench-fanout: install
	$(BIN)/python -m bench.fanout --members $(MEMBERS) --runs $(RUNS) $(BENCH_ARGS)

# 200 pollers on an incident's status during its fan-out vs /healthz; status at 100 and
# 100,000 members. See bench/README.md.
bench-status: install
	$(BIN)/python -m bench.status

# Declaration latency with 10, 10,000 and 100,000 members in the network (no worker: the
# request alone). See bench/README.md.
bench-declare: install
	$(BIN)/python -m bench.declare $(BENCH_ARGS)

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
