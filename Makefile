# The two commands of the README. `make run` sets up .venv on first use, then starts the main job:
# FedAvg with K=100 simulated clients on the Flower simulation engine.
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Flower's runtime would otherwise `uv sync` the app's dependencies (torch included) into a fresh env per run.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup run demo test lint

# What the install reads from pyproject.toml: [build-system], [project*] and [tool.hatch*]. The file is rewritten only
# when that part changes, so editing the run config ([tool.flwr.app.config], the Flower habit) does not reinstall.
INSTALL_INPUTS := $(VENV)/.install-inputs

$(INSTALL_INPUTS): pyproject.toml
	@mkdir -p $(VENV)
	@awk '/^\[/ { keep = /^\[(build-system|project|tool\.hatch)[].]/ } keep' pyproject.toml > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(VENV)/.installed: $(INSTALL_INPUTS) overrides.txt scripts/setup.sh
	scripts/setup.sh
	touch $@

setup: $(VENV)/.installed

# = flwr run . --federation-config "num-supernodes=100 client-resources-num-cpus=1" --stream, after a local
#   check of the run config, data and weights, and with a non-zero exit unless the run completed.
run: setup
	fedtalos run . $(ARGS)

# The smoke path: a few minutes on a CPU, nothing downloaded (generated stand-in data, NOT CIFAR-100): a federated
# run, an editing run, a two-configuration sweep and the summary's figures, under ~/fedtalos/demo.
demo: setup
	fedtalos demo $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
