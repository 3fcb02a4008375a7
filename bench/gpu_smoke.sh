#!/usr/bin/env bash
# GPU smoke test of the real-model paths: bf16 mixed-precision training with AdamW and SOAP on a
# random Llama-3.2-1B-shaped model, LoRA adapters, hf and (when installed) vLLM generation; prints
# tokens/s, MFU and peak memory beside the memory model. One NVIDIA GPU, no internet; see
# bench/gpu_smoke.py for what it checks and which packages it needs.
#   bash bench/gpu_smoke.sh [--json out.json] [--layers 16 ...]
#   PYTHON=python3 PYTHONPATH=src bash bench/gpu_smoke.sh   (a machine's own torch stack)
#   On a machine with only torch, transformers, peft and accelerate: bash bench/gpu_wheels.sh
#   here first, carry .whl/ (2.2 MB) with the tree; this script installs it.
# Exit codes: 0 ok, 1 a check failed, 2 no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_smoke: FAIL: $PY not found: run 'make' first (or set PYTHON=...)" >&2
  exit 2
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_smoke: FAIL: no NVIDIA GPU here (nvidia-smi missing or sees no device); this smoke test needs one GPU" >&2
  exit 2
fi
# A bare GPU machine lacks the training stack: bench/gpu_wheels.sh fetched it into .whl/ here.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_smoke-site .whl/*.whl
  export PYTHONPATH="/tmp/gpu_smoke-site:src${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" bench/gpu_smoke.py "$@"
