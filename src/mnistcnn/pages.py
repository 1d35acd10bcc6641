"""The one writer of tables, pages and figures for people: the run report (report.py), the
comparison (compare.py) and the studies book (book.py) all draw with these.

Tables come as markdown or HTML from the same (header, rows) pair; a page is one
self-contained HTML file (style inline, figures embedded as base64 PNG, nothing fetched);
figures are matplotlib Figures on the Agg canvas (no display, no pyplot registry growing
over a sweep) rendered at DPI; numbers are formatted the one way the tables use:
accuracies as percents with two decimals, losses with four, times with one.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mnistcnn import files

DPI = 100
ABSENT = "—"  # a value that is missing or undefined
# How each kind of number is shown: (scale, decimals).
KINDS = {"acc": (100, 2), "loss": (1, 4), "time": (1, 1)}


# ----------------------------------------------------------------------------- numbers
def pct(x: float | None) -> str:
    """A fraction as a percent with two decimals: 0.9912 -> 99.12%."""
    return ABSENT if x is None or math.isnan(x) else f"{100 * x:.2f}%"


def number(x: float | None) -> str:
    """A number of unknown range with four significant digits."""
    return ABSENT if x is None or math.isnan(x) else f"{x:.4g}"


def mean_std(mean: float | None, std: float | None, kind: str) -> str:
    """`mean ± std` of a kind in KINDS; a single value (std None) without the ±."""
    if mean is None:
        return ABSENT
    scale, digits = KINDS[kind]
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def esc(text: Any) -> str:
    return html.escape(str(text))


def prose(text: str) -> str:
    """A sentence written for markdown as HTML: escaped, `code` spans kept as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


# ----------------------------------------------------------------------------- tables
def md_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ")
                                 for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)])


def html_table(header: Sequence[str], body: Sequence[Sequence[Any]],
               row_classes: Sequence[str] | None = None, css_class: str = "") -> str:
    """An HTML table; row_classes (one CSS class per row, "" for none) marks rows;
    css_class="text" left-aligns and wraps every cell (tables of sentences)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    classes = row_classes or [""] * len(body)
    rows = "".join((f'<tr class="{kind}">' if kind else "<tr>")
                   + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
                   for kind, cells in zip(classes, body, strict=True))
    table = f'<table class="{css_class}">' if css_class else "<table>"
    return f"{table}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# ----------------------------------------------------------------------------- pages
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; color: #222; max-width: 1320px; margin: 0 auto;
       padding: 16px 24px 48px; }
h1 { font-size: 24px; margin: 8px 0 2px; } h2 { font-size: 19px; margin: 34px 0 10px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 16px; }
.label { color: #555; margin: 0 0 14px; }
.note { padding: 8px 12px; margin: 6px 0; border-radius: 4px; background: #f3f3f3; }
.note.warn { background: #fde8e8; border-left: 4px solid #c62828; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 20px; } .card span { color: #666; font-size: 13px; }
.figs { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #777; font-size: 12px; font-family: monospace; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
/* A table wider than the page (long run folders, many arms) scrolls on its own. */
table { display: block; max-width: 100%; overflow-x: auto; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e6e6e6; text-align: right; }
th { background: #f6f6f6; } td:first-child, th:first-child { text-align: left; }
table.text td, table.text th { text-align: left; vertical-align: top; }
tr.avg td { font-weight: bold; } tr.never td { background: #fde8e8; }
tr.worst td { background: #fff4d6; } tr.failed td { background: #fde8e8; }
pre, code { background: #f6f6f6; font-size: 13px; }
pre { padding: 10px 14px; overflow-x: auto; white-space: pre-wrap; }
"""
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title><style>{css}</style></head>
<body>
{body}
</body></html>
"""


def page(title: str, body: str) -> str:
    """A whole self-contained HTML page around body (already HTML)."""
    return PAGE.format(title=esc(title), css=CSS, body=body)


def section(heading: str, content: str, level: int = 2) -> str:
    """A heading over content; nothing at all when there is no content."""
    return f"<h{level}>{esc(heading)}</h{level}>\n{content}" if content else ""


def embedded_figure(png: bytes, name: str, caption: str | None = None) -> str:
    """A PNG embedded as a data: URI in a <figure>, never wider than drawn (no blur);
    figures narrower than about half the page share a row, wider ones get a row each."""
    width = png_width(png)
    style = f"flex: 1 1 {int(0.85 * width)}px; max-width: {width}px"
    data = base64.b64encode(png).decode()
    return (f'<figure id="{esc(name)}" style="{style}"><img src="data:image/png;base64,{data}" '
            f'alt="{esc(caption or name)}"><figcaption>{esc(caption or name)}</figcaption>'
            f"</figure>")


def figure_row(figures: Sequence[str]) -> str:
    """embedded_figure()s side by side."""
    return f'<div class="figs">{"".join(figures)}</div>' if figures else ""


def png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")  # the IHDR chunk's width field


# ----------------------------------------------------------------------------- figures
def new_figure(width: float, height: float) -> Figure:
    """An empty figure of width x height inches on the Agg canvas, laid out by matplotlib's
    constrained layout (no tight-bbox cropping: the PNG is exactly width*DPI wide)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_png(path: Path, fig: Figure) -> bytes:
    """Render fig, write it atomically to path, and return the PNG (to embed it)."""
    png = to_png(fig)
    files.atomic_write(path, lambda f: f.write(png))
    return png
