"""The one writer of documents for people: the run report (run_report.py), the comparison
(comparison.py) and the studies book (studies/book.py) are each a list of blocks built
once, and rendered here to Markdown and to self-contained HTML.

A block (Heading, Paragraph, Bullets, Table, Cards, Code, Image, Figures, Section) knows
its two renderings; `markdown(blocks)` and `html(blocks)` join them, `page(title,
blocks)` wraps the HTML in one file (style inline, figures embedded as base64 PNG,
nothing fetched). Prose is written once, in Markdown's inline syntax: `code` and
**bold** spans become <code> and <b> in HTML. The numbers in blocks arrive written by
base/formats.py; figures arrive as PNG bytes drawn by plots.py.
"""

from __future__ import annotations

import base64
import html as html_lib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


# ----------------------------------------------------------------------------- text
def esc(text: Any) -> str:
    return html_lib.escape(str(text))


def prose(text: str) -> str:
    """A sentence written for markdown as HTML: escaped, `code` and **bold** spans kept."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


# ----------------------------------------------------------------------------- tables
def md_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ")
                                 for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)])


def html_table(header: Sequence[str], body: Sequence[Sequence[Any]],
               row_classes: Sequence[str] | None = None, css_class: str = "") -> str:
    """An HTML table; row_classes (one CSS class per row, "" for none) marks rows;
    css_class="text" left-aligns and wraps every cell (tables of sentences, whose **bold**
    and `code` spans are kept as in prose)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    classes = row_classes or [""] * len(body)
    cell = prose if css_class == "text" else esc
    rows = "".join((f'<tr class="{kind}">' if kind else "<tr>")
                   + "".join(f"<td>{cell(str(c))}</td>" for c in cells) + "</tr>"
                   for kind, cells in zip(classes, body, strict=True))
    table = f'<table class="{css_class}">' if css_class else "<table>"
    return f"{table}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# ----------------------------------------------------------------------------- blocks
class Block:
    """A piece of a document with its Markdown and its HTML; "" renders as nothing."""

    def markdown(self) -> str:
        raise NotImplementedError

    def html(self) -> str:
        raise NotImplementedError


@dataclass
class Heading(Block):
    text: str
    level: int = 1

    def markdown(self) -> str:
        return f"{'#' * self.level} {self.text}"

    def html(self) -> str:
        return f"<h{self.level}>{esc(self.text)}</h{self.level}>"


@dataclass
class Paragraph(Block):
    """Prose; style is a CSS class of the HTML page ("note", "note warn", "label")."""

    text: str
    style: str = ""

    def markdown(self) -> str:
        return self.text

    def html(self) -> str:
        attr = f' class="{self.style}"' if self.style else ""
        return f"<p{attr}>{prose(self.text)}</p>" if self.text else ""


@dataclass
class Bullets(Block):
    items: Sequence[str]

    def markdown(self) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def html(self) -> str:
        items = "".join(f"<li>{prose(item)}</li>" for item in self.items)
        return f"<ul>{items}</ul>" if self.items else ""


@dataclass
class Table(Block):
    """header and rows of cells; row_classes mark HTML rows (the report's average, never
    predicted and worst classes); style="text" for tables of sentences."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    row_classes: Sequence[str] | None = None
    style: str = ""

    def markdown(self) -> str:
        return md_table(self.header, self.rows)

    def html(self) -> str:
        return html_table(self.header, self.rows, self.row_classes, self.style)


@dataclass
class Cards(Block):
    """Headline numbers, (name, value) pairs: cards in HTML, a two-column table in Markdown."""

    pairs: Sequence[tuple[str, str]]

    def markdown(self) -> str:
        return md_table(["", ""], self.pairs)

    def html(self) -> str:
        return '<div class="cards">' + "".join(
            f"<div class=\"card\"><b>{esc(value)}</b><span>{esc(name)}</span></div>"
            for name, value in self.pairs) + "</div>"


@dataclass
class Code(Block):
    text: str

    def markdown(self) -> str:
        return f"```\n{self.text.rstrip()}\n```"

    def html(self) -> str:
        return f"<pre>{esc(self.text)}</pre>"


@dataclass
class Image(Block):
    """A PNG figure: a link to its file (path, relative to the document) in Markdown,
    the PNG itself embedded in HTML with the path as its caption."""

    path: str
    png: bytes
    alt: str = ""  # Markdown's text for the image (default: the path)

    def markdown(self) -> str:
        return f"![{self.alt or self.path}]({self.path})"

    def html(self) -> str:
        # The id is the path without .png: unique in a book of several comparisons.
        return embedded_figure(self.png, str(Path(self.path).with_suffix("")), self.path)


@dataclass
class Figures(Block):
    """Images (and notes in place of skipped ones) side by side in HTML; one under the
    other in Markdown."""

    items: Sequence[Block]

    def markdown(self) -> str:
        return markdown(self.items)

    def html(self) -> str:
        inner = "".join(item.html() for item in self.items)
        return f'<div class="figs">{inner}</div>' if inner else ""


@dataclass
class Section(Block):
    """A heading over blocks; nothing at all when the blocks render to nothing. anchor
    wraps the HTML in <section id=anchor> (the book's studies, linkable)."""

    heading: str
    blocks: Sequence[Block] = field(default_factory=list)
    level: int = 2
    anchor: str = ""

    def markdown(self) -> str:
        inner = markdown(self.blocks)
        return f"{Heading(self.heading, self.level).markdown()}\n\n{inner}" if inner else ""

    def html(self) -> str:
        inner = html(self.blocks)
        if not inner:
            return ""
        text = f"{Heading(self.heading, self.level).html()}\n{inner}"
        return f'<section id="{esc(self.anchor)}">{text}</section>' if self.anchor else text


def markdown(blocks: Sequence[Block]) -> str:
    """Blocks as Markdown, a blank line between them."""
    return "\n\n".join(text for block in blocks if (text := block.markdown()))


def html(blocks: Sequence[Block]) -> str:
    return "\n".join(text for block in blocks if (text := block.html()))


# ----------------------------------------------------------------------------- pages
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; color: #222; max-width: 1320px; margin: 0 auto;
       padding: 16px 24px 48px; }
/* A run folder's name is one long word: it wraps rather than runs off the page. */
h1 { font-size: 24px; margin: 8px 0 2px; overflow-wrap: anywhere; }
h2 { font-size: 19px; margin: 34px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 16px; }
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


def page(title: str, blocks: Sequence[Block]) -> str:
    """A whole self-contained HTML page of blocks."""
    return PAGE.format(title=esc(title), css=CSS, body=html(blocks))


def embedded_figure(png: bytes, name: str, caption: str) -> str:
    """A PNG embedded as a data: URI in a <figure>, never wider than drawn (no blur);
    figures narrower than about half the page share a row, wider ones get a row each."""
    width = png_width(png)
    style = f"flex: 1 1 {int(0.85 * width)}px; max-width: {width}px"
    data = base64.b64encode(png).decode()
    return (f'<figure id="{esc(name)}" style="{style}"><img src="data:image/png;base64,{data}" '
            f'alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>')


def png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")  # the IHDR chunk's width field
