# Set-up and entry points. `make demo` and `make test` each work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests start: tool -> package (PortAudio is a library, checked apart)
DEB_TOOLS := chromium:chromium turnserver:coturn iptables:iptables redis-server:redis-server \
             ip:iproute2 openssl:openssl
PG_BIN = $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast bench lint deb clean

# Install the Debian packages the suite needs (Linux with apt-get only; elsewhere say what is missing)
deb:
	@missing=""; for pair in $(DEB_TOOLS); do tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$pkg"; done; \
	  ldconfig -p 2>/dev/null | grep -q libportaudio || missing="$$missing libportaudio2"; \
	  [ -n "$(PG_BIN)" ] || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    if command -v apt-get >/dev/null; then echo "apt-get install$$missing"; \
	      $(SUDO) sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null"; \
	    else echo "install these packages for the full test suite:$$missing" >&2; fi; fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,devices,postgres,redis,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/callkit demo

# lint first: a finding fails the run before the tests start
test: deb $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not loopback and not slow and not nat"

# every benchmark, each bounded by BENCH_TIMEOUT s; latency and calls per core run N = 1, 4, 8,
# 16, 24 by default, group calls (bench_group.py) sizes 3, 4, 6, 9
BENCH_TIMEOUT ?= 900
bench: $(STAMP)
	@for f in bench/bench_*.py; do \
	  case $$f in bench/bench_connections.py) args="--logins 1000 --idle 4000";; *) args="";; esac; \
	  echo "== $$f $$args"; timeout $(BENCH_TIMEOUT) $(BIN)/python $$f $$args || exit 1; done

LINT_PATHS := callkit tests bench docs/gen_api.py

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy callkit

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
