# Set-up and entry points. `make demo` and `make test` each work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	@# PortAudio for sounddevice (microphone / speaker); the device tests use it
	@if [ "$$(uname)" = Linux ] && ! ldconfig -p | grep -q libportaudio; then \
	  if command -v apt-get >/dev/null; then \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) sh -c 'apt-get update -qq && apt-get install -y -qq libportaudio2'; \
	  else echo "install PortAudio (libportaudio2) for the device tests" >&2; fi; fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,devices]' ruff
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/callkit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not loopback"

bench: $(STAMP)
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check callkit signaling media tests samples bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
