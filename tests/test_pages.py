"""The one writer of documents (markup.py): tables and blocks that render the same content
to Markdown and to HTML, used by the run report, the comparison and the book; and the
numbers in them, written one way everywhere (base/formats.py)."""

from __future__ import annotations

import base64
import math

from mnistcnn.base import formats
from mnistcnn.reporting import markup, plots
from mnistcnn.reporting.metrics import pooled


def test_numbers_are_formatted_one_way():
    assert formats.pct(0.99123) == "99.12%" and formats.pct(0.99123, 1) == "99.1%"
    assert formats.pct(None) == formats.pct(math.nan) == formats.ABSENT
    assert formats.number(0.0123456) == "0.01235" and formats.number(None) == formats.ABSENT
    assert formats.amount(0.975, "acc") == "97.50" and formats.amount(0.5, "loss") == "0.5000"
    assert formats.amount(None, "time") == formats.ABSENT
    assert formats.mean_std(pooled([0.98, 0.97]), "acc") == "97.50 ± 0.71"
    assert formats.mean_std(pooled([0.5]), "loss") == "0.5000"
    assert formats.mean_std(pooled([11.6, 13.0]), "time") == "12.3 ± 1.0"
    assert formats.mean_std(None, "acc") == formats.ABSENT


def test_durations_are_compact_in_tables_and_rough_in_sentences():
    assert [formats.duration(s) for s in (5, 59.6, 125, 3723)] == ["5s", "1m00s", "2m05s",
                                                                    "1h02m03s"]
    # An estimate drops the seconds from an hour on; below, it is to the second.
    assert formats.duration(3 * 3600 + 61, estimate=True) == "3h01m"
    assert formats.duration(59, estimate=True) == "59s"
    assert formats.duration(3599.6, estimate=True) == "1h00m00s"
    assert [formats.duration_words(s) for s in (45, 720, 5400)] == ["45 s", "12 min", "1.5 h"]


def test_sample_sizes_say_what_each_n_counts():
    assert formats.sample_size([3, 3]) == "n = 3" and formats.sample_size([]) == "n = 0"
    assert formats.sample_size([2, 3], "arm") == "n = 2–3 per arm"
    assert formats.sample_size([4], "cell") == "n = 4 per cell"


def test_tables_escape_their_cells():
    md = markup.md_table(["a", "b|c"], [["1", "x|y\nz"]])
    assert md.splitlines() == ["| a | b\\|c |", "| --- | --- |", "| 1 | x\\|y z |"]
    table = markup.html_table(["k", "v"], [["<b>", "1"], ["c", "2"]], ["worst", ""])
    assert "<td>&lt;b&gt;</td>" in table and '<tr class="worst">' in table
    assert "<tr><td>c</td>" in table  # no empty class attribute
    assert markup.html_table(["q"], [["long text"]], css_class="text").startswith(
        '<table class="text">')


def test_one_list_of_blocks_renders_to_markdown_and_html():
    blocks = [markup.Heading("Title <1>"),
              markup.Paragraph("Keys that differ: `model.pool`; **why?**"),
              markup.Bullets(["a note", "another"]), markup.Bullets([]),
              markup.Section("Runs", [markup.Table(["run", "acc"], [["0_job", "98.00"]])], 3),
              markup.Section("Empty", [markup.Paragraph("")]),
              markup.Code("a: 1\n")]
    assert markup.markdown(blocks).split("\n\n") == [
        "# Title <1>", "Keys that differ: `model.pool`; **why?**", "- a note\n- another",
        "### Runs", "| run | acc |\n| --- | --- |\n| 0_job | 98.00 |", "```\na: 1\n```"]
    html = markup.html(blocks)
    assert html.startswith("<h1>Title &lt;1&gt;</h1>")
    assert "<p>Keys that differ: <code>model.pool</code>; <b>why?</b></p>" in html
    assert "<ul><li>a note</li><li>another</li></ul>" in html and html.count("<ul>") == 1
    assert "<h3>Runs</h3>\n<table>" in html
    assert "Empty" not in html and "Empty" not in markup.markdown(blocks)  # empty sections vanish
    assert "<pre>a: 1\n</pre>" in html


def test_figures_link_in_markdown_and_embed_in_html(tmp_path):
    fig = plots.new_figure(3.0, 2.0)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = plots.save_png(tmp_path / "f.png", fig)
    row = markup.Figures([markup.Image("study/f.png", png, "the figure"),
                         markup.Paragraph("plots/g.png skipped: no <conv>.", "note")])
    assert row.markdown() == ("![the figure](study/f.png)\n\n"
                              "plots/g.png skipped: no <conv>.")
    html = row.html()
    assert html.startswith('<div class="figs"><figure id="study/f"')
    assert base64.b64encode(png).decode() in html and "<figcaption>study/f.png</figcaption>" in html
    assert f"max-width: {3 * plots.DPI}px" in html  # never drawn wider than the PNG
    assert '<p class="note">plots/g.png skipped: no &lt;conv&gt;.</p>' in html
    assert markup.Figures([]).html() == ""


def test_a_page_is_self_contained():
    page = markup.page("T <1>", [markup.Section("Head", [markup.Paragraph("body")], anchor="h"),
                                markup.Cards([("test accuracy", "99.00%")])])
    assert page.startswith("<!DOCTYPE html>") and "<title>T &lt;1&gt;</title>" in page
    assert '<section id="h"><h2>Head</h2>\n<p>body</p></section>' in page
    assert '<div class="card"><b>99.00%</b><span>test accuracy</span></div>' in page
    assert "<style>" in page and 'src="http' not in page and "<script" not in page
