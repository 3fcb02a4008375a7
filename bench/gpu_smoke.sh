#!/usr/bin/env bash
# GPU smoke test of the real-model paths (bf16 training with AdamW and SOAP, LoRA adapters,
# vLLM and hf generation): one NVIDIA GPU, no internet. See bench/gpu_smoke.py for what it checks.
#   bash bench/gpu_smoke.sh [--json out.json] [--layers 16 ...]
# Exit codes: 0 ok, 1 a check failed, 2 no GPU / no CUDA vllm.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
  echo "gpu_smoke: FAIL: $PY not found: run 'make' first (or set PYTHON=...)" >&2
  exit 2
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_smoke: FAIL: no NVIDIA GPU here (nvidia-smi missing or sees no device); this smoke test needs one GPU" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" bench/gpu_smoke.py "$@"
