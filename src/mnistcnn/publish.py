"""What a publisher copies: a book's small files, enough to rebuild it and check its numbers.

For every run of the book's studies: the resolved config and Hydra's record of the job
(.hydra/config.yaml, hydra.yaml, overrides.yaml: the variant and quick choices live in
hydra.yaml), metrics.jsonl, summary.json and the per-class report (classification.csv);
and the book's own book.json. No checkpoints, predictions or plots: a few kilobytes a run.
The book is then written in the destination from those files alone, so what is published
is proven to rebuild.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from mnistcnn import book, compare, files

SMALL_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
               "metrics.jsonl", "summary.json", "classification.csv")


def copy_small_files(book_dir: Path, names: Sequence[str], dest: Path) -> int:
    """Every run's small files from book_dir/NAME/ to dest/NAME/ (same relative paths);
    returns how many runs were copied."""
    copied = 0
    for name in names:
        if not (book_dir / name).is_dir():
            continue
        for run in compare.find_runs([book_dir / name]):
            for small in SMALL_FILES:
                source = run / small
                if source.is_file():
                    target = dest / run.relative_to(book_dir) / small
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
            copied += 1
    return copied


def publish(book_dir: Path, names: Sequence[str], dest: Path) -> Path:
    """The small files and book.json to dest, then STUDIES.md (with its figures) written
    there from them; returns the path of that STUDIES.md."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_small_files(book_dir, names, dest)
    if (book_dir / book.BOOK_FILE).is_file():
        shutil.copyfile(book_dir / book.BOOK_FILE, dest / book.BOOK_FILE)
    # Markdown and PNGs only: the HTML page embeds the same figures again (megabytes).
    files.write_text(dest / "STUDIES.md", book.to_markdown(book.load(dest, names)))
    return dest / "STUDIES.md"
