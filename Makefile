# The two commands of the README. `make run` sets up .venv on first use, then starts the main job:
# FedAvg with K=100 simulated clients on the Flower simulation engine.
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Flower's runtime would otherwise `uv sync` the app's dependencies (torch included) into a fresh env per run.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup run test lint

$(VENV)/.installed: pyproject.toml overrides.txt scripts/setup.sh
	scripts/setup.sh
	touch $@

setup: $(VENV)/.installed

# = flwr run . --federation-config "num-supernodes=100 client-resources-num-cpus=1" --stream, after a local
#   check of the run config, data and weights, and with a non-zero exit unless the run completed.
run: setup
	fedtalos run . $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
