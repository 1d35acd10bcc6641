"""The guide's measured figures stand in one dated page, docs/measurements.md, each with its
date, machine and command, so that refreshing a number is one edit there: every link to a
page of the guide lands on a heading, no other page carries a date of its own, and the
guide's copy of the published book's plan is what the command prints from the repository's
files (docs/studies/, the generated book, is checked by test_published_book.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT, run_main

MEASUREMENTS = ROOT / "docs" / "measurements.md"
GUIDE = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIELDS = ("**Date:**", "**Machine:**", "**Command:**")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
HEADING = re.compile(r"^(#{1,6}) (.+)$", re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
PLAN = ("studies", "--dry-run", "--out", "docs/studies")
PLAN_COMMAND = " ".join(("$ python -m mnistcnn", *PLAN))


def prose(markdown: str) -> str:
    """The page without its fenced code blocks (example outputs, commands)."""
    return FENCE.sub("", markdown)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(title) for _, title in HEADING.findall(prose(path.read_text()))}


def sections(markdown: str) -> list[tuple[str, str, str]]:
    """(level marks, title, body) of every heading."""
    found = list(HEADING.finditer(markdown))
    ends = [m.start() for m in found[1:]] + [len(markdown)]
    return [(m.group(1), m.group(2), markdown[m.end():end]) for m, end in
            zip(found, ends, strict=True)]


def test_every_measurement_names_its_date_machine_and_command():
    measured = [(title, body) for level, title, body in sections(prose(MEASUREMENTS.read_text()))
                if level == "###" or any(f in body for f in FIELDS)]
    assert len(measured) > 10
    for title, body in measured:
        missing = [f for f in FIELDS if f not in body]
        assert not missing, f"docs/measurements.md, '{title}' lacks {', '.join(missing)}"


def test_every_link_between_pages_of_the_guide_lands_on_a_heading():
    for page in GUIDE:
        for target in LINK.findall(prose(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            where = f"{page.relative_to(ROOT)} links to {target}"
            assert linked.exists(), f"{where}, which does not exist"
            if anchor and linked.suffix == ".md":
                assert anchor in anchors(linked), f"{where}, a heading it does not have"


def test_no_page_but_measurements_carries_a_date():
    for page in GUIDE:
        if page != MEASUREMENTS:
            dates = DATE.findall(prose(page.read_text()))
            assert not dates, (f"{page.relative_to(ROOT)} dates something ({', '.join(dates)}): "
                               f"a dated figure belongs in docs/measurements.md, linked from here")


@pytest.mark.slow  # the whole dry run of the published book: ~20 s of composing its arms
def test_the_guide_shows_the_published_books_plan_as_the_command_prints_it():
    guide = (ROOT / "docs" / "studies-guide.md").read_text()
    block = guide.split(PLAN_COMMAND + "\n", 1)[1].split("\n\n", 1)[0]
    shown = [line.removeprefix("    ") for line in block.splitlines()]
    result = run_main(*PLAN)
    assert result.returncode == 0, result.stderr
    assert shown == result.stdout.splitlines(), (
        "docs/studies-guide.md shows another plan of the published book than "
        f"`{PLAN_COMMAND[2:]}` prints: paste its output there")
