# One entry point, the same locally and in CI. `make up` runs the mesh, `make test` runs the tests; both create
# the virtual environment and install the pinned dependencies (constraints.txt) first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test unit gen lint format bench soak models lock clean system-deps compose-test

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "meshserve needs Python 3.11 or newer")'
	@echo "meshserve: installing the pinned dependencies into $(VENV) (first run, or after constraints.txt changed; about a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@# pip's own lines (Collecting..., Installing collected packages...) are the progress; pip's status decides
	@bash -o pipefail -c '$(BIN)/python -m pip install -c constraints.txt -e ".[dev]" \
	  | { grep --line-buffered -v "^Requirement already satisfied" || true; }'
	@touch $@

up: $(STAMP)          ## run the whole mesh on its embedded defaults (gateway on 127.0.0.1:50051)
	$(BIN)/meshserve up

test: $(STAMP) system-deps  ## every test: unit, integration (real Triton, Redis, Envoy) and end to end
	$(BIN)/pytest

# The tests start a real redis-server and make a TLS certificate with openssl: Debian packages.
system-deps:
	@missing=""; for tool in redis-server openssl; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "the tests need:$$missing (e.g. sudo apt-get install -y$$missing)"; exit 1; fi; \
	fi

unit: $(STAMP)
	$(BIN)/pytest tests/unit

gen: $(STAMP)         ## regenerate protobuf code from protos/
	$(BIN)/python -m meshserve.protogen

models: $(STAMP)      ## retrain the sample models from their fixed seed
	$(BIN)/meshserve models build

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)       ## benchmark the mesh against direct Triton (writes bench-results/), then the monitor alone
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.monitor

soak: $(STAMP)        ## a long steady load, memory per process over time (not in CI; `--minutes 30` for the long run)
	$(BIN)/python -m benchmarks.soak

# Installs Docker's engine if missing and starts a daemon of its own when none runs (as root); a few minutes cold.
compose-test: $(STAMP)  ## the compose stack end to end: build, start, score via Envoy and the gateway, tear down
	deploy/compose/test.sh

# Rewritten only when the pins change: a new mtime alone would make $(STAMP) reinstall everything next time.
lock: $(STAMP)        ## re-pin constraints.txt to what is installed
	@frozen=$$($(BIN)/python -m pip freeze --exclude-editable) || exit 1; \
	pins=$$(printf '%s\n' "$$frozen" | grep -v '^meshserve'); \
	if [ "$$pins" = "$$(cat constraints.txt 2>/dev/null)" ]; then echo "constraints.txt: unchanged"; \
	else printf '%s\n' "$$pins" > constraints.txt && echo "constraints.txt: re-pinned"; fi

clean:
	rm -rf $(VENV) .meshserve .pytest_cache bench-results
