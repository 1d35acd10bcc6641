"""The one writer of tables, pages and figures (pages.py), used by report, compare and book."""

from __future__ import annotations

import base64
import math

from mnistcnn import pages


def test_numbers_are_formatted_one_way():
    assert pages.pct(0.99123) == "99.12%"
    assert pages.pct(None) == pages.pct(math.nan) == pages.ABSENT
    assert pages.number(0.0123456) == "0.01235" and pages.number(None) == pages.ABSENT
    assert pages.mean_std(0.975, 0.00707, "acc") == "97.50 ± 0.71"
    assert pages.mean_std(0.5, None, "loss") == "0.5000"
    assert pages.mean_std(12.345, 1.01, "time") == "12.3 ± 1.0"
    assert pages.mean_std(None, None, "acc") == pages.ABSENT


def test_tables_escape_their_cells():
    md = pages.md_table(["a", "b|c"], [["1", "x|y\nz"]])
    assert md.splitlines() == ["| a | b\\|c |", "| --- | --- |", "| 1 | x\\|y z |"]
    table = pages.html_table(["k", "v"], [["<b>", "1"], ["c", "2"]], ["worst", ""])
    assert "<td>&lt;b&gt;</td>" in table and '<tr class="worst">' in table
    assert "<tr><td>c</td>" in table  # no empty class attribute
    assert pages.html_table(["q"], [["long text"]], css_class="text").startswith(
        '<table class="text">')


def test_figures_are_saved_and_embedded_as_the_same_png(tmp_path):
    fig = pages.new_figure(3.0, 2.0)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = pages.save_png(tmp_path / "f.png", fig)
    assert (tmp_path / "f.png").read_bytes() == png and png[:4] == b"\x89PNG"
    assert pages.png_width(png) == 3 * pages.DPI  # no tight-bbox cropping
    html = pages.embedded_figure(png, "f.png", "caption <x>")
    assert base64.b64encode(png).decode() in html and "caption &lt;x&gt;" in html
    assert f"max-width: {3 * pages.DPI}px" in html


def test_a_page_is_self_contained():
    page = pages.page("T <1>", pages.section("Head", "<p>body</p>") + pages.section("E", ""))
    assert page.startswith("<!DOCTYPE html>") and "<title>T &lt;1&gt;</title>" in page
    assert "<h2>Head</h2>" in page and "<h2>E</h2>" not in page  # empty sections vanish
    assert "<style>" in page and 'src="http' not in page and "<script" not in page
