"""The book published in docs/studies: it must be the book its published runs make (so a
change to how books are written, or a hand edit, shows up as a failure here with the command
that rebuilds it), and the README's findings table must be the book's."""

from __future__ import annotations

import json
import shutil

from conftest import ROOT

from mnistcnn.studies import book, command

PUBLISHED = ROOT / "docs" / "studies"
REBUILD = "python -m mnistcnn studies --book-only --out docs/studies --publish docs/studies"
STUDIES = ["activations", "batchnorm", "conv_depth", "features", "mobilenet", "neurons",
           "pooling", "tiny"]


def findings_rows(markdown: str) -> list[str]:
    """The table rows of the '## Findings' section."""
    section = markdown.split("\n## Findings\n", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in section.splitlines() if ln.startswith("|")]


def test_the_published_book_is_what_its_published_runs_make(tmp_path, no_png_encoding):
    # The figures are made again (not rendered to PNG: their names and captions are what the
    # book's text holds).
    copy = shutil.copytree(PUBLISHED, tmp_path / "studies")
    names = command.book_names(copy, [], json.loads((copy / book.BOOK_FILE).read_text()))
    assert sorted(names) == STUDIES
    rebuilt = book.load(copy, names)
    assert not rebuilt.failed and not rebuilt.shortened
    assert book.markdown(rebuilt) == (PUBLISHED / "STUDIES.md").read_text(), \
        f"docs/studies/STUDIES.md is not the book of its runs; rebuild it: {REBUILD}"


def test_the_readme_findings_are_the_published_books():
    readme = findings_rows((ROOT / "README.md").read_text())
    assert len(readme) == 2 + 11  # header, rule, one row per question of the eight studies
    assert readme == findings_rows((PUBLISHED / "STUDIES.md").read_text()), \
        "README's findings table differs from docs/studies/STUDIES.md's: copy it from there"
