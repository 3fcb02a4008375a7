#!/usr/bin/env bash
# The wheels bench/gpu_smoke.sh needs on a bare GPU machine whose python has torch, transformers,
# peft and accelerate (and pandas, pyarrow, xxhash) but not the training stack: TRL, datasets
# and their pure-Python dependencies, and pytorch-optimizer, at the versions of the lock.
# Run here (needs PyPI), then carry .whl/ to the GPU machine; gpu_smoke.sh installs it.
#   bash bench/gpu_wheels.sh [python-version, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-3.12}"
pin() { grep -oP "^$1==\K[^ ]+" requirements/cpu.txt; }
mkdir -p .whl
for name in trl datasets dill multiprocess pytorch-optimizer; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$name==$(pin "$name")"
done
du -sh .whl
