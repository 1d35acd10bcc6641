"""What a publisher copies: a book's small files, enough to rebuild it and check its numbers.

For every run of the book's studies: the resolved config (.hydra/config.yaml), the job's
overrides (.hydra/overrides.yaml: what `--dry-run` tells the jobs apart by, so a published
book copied into a book folder plans and resumes with its runs complete), the config group
choices Hydra recorded for the job (hydra.yaml reduced to hydra.runtime.choices: the variant
and quick choices live there; the rest of it holds this machine's paths), metrics.jsonl,
summary.json without the host name, and the per-class report
(classification.csv); and the book's own book.json. No checkpoints, predictions or plots:
a few kilobytes a run. The book is then written in the destination from those files
alone, so what is published is proven to rebuild. A study published there before is
replaced as a whole, so runs of an older book never mix into the new one; a study folder
holding anything a publish does not write is left alone and the publish stops.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from mnistcnn.base import run_folder
from mnistcnn.base.errors import UserError
from mnistcnn.base.run_folder import (
    CLASSIFICATION,
    CONFIG,
    HYDRA_RECORD,
    METRICS,
    OVERRIDES,
    SUMMARY,
    RunFolder,
)
from mnistcnn.base.run_reader import find_runs
from mnistcnn.reporting import comparison
from mnistcnn.studies import book

COPIED = (CONFIG, OVERRIDES, METRICS, CLASSIFICATION)
PRIVATE = ("host",)  # summary.json keys that name the machine, not the run
WRITTEN = {Path(n).name for n in COPIED} | {SUMMARY, Path(HYDRA_RECORD).name,
                                             *comparison.FIGURES}  # all a publish leaves


def earlier_publish(study: Path) -> Path | None:
    """study, when it holds an earlier publish (only files a publish writes), else None; a
    UserError when it holds anything else."""
    if not study.exists():
        return None
    foreign = [p for p in study.rglob("*") if p.is_file() and p.name not in WRITTEN
               and not book.is_question_figure(p.name)]
    if foreign:
        raise UserError(f"{study} holds {foreign[0].relative_to(study.parent)}, which a publish "
                        f"does not write; --publish into an empty folder or an earlier publish")
    return study


def copy_run(run: Path, target: Path) -> None:
    for name in COPIED:
        if (run / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / name, target / name)
    source, copy = RunFolder(run), RunFolder(target)
    if source.summary.is_file():
        summary = run_folder.read_json(source.summary)
        run_folder.write_json(copy.summary,
                              {k: v for k, v in summary.items() if k not in PRIVATE})
    hydra = source.read_hydra_record()
    if hydra is not None:
        choices = hydra.runtime.get("choices", {})
        record = {"hydra": {"runtime": {"choices": OmegaConf.to_container(choices)}}}
        copy.hydra_record.parent.mkdir(parents=True, exist_ok=True)
        run_folder.write_text(copy.hydra_record, OmegaConf.to_yaml(record))


def copy_small_files(book_dir: Path, names: Sequence[str], dest: Path) -> None:
    """Every run's small files from book_dir/NAME/ to dest/NAME/ (same relative paths)."""
    for name in names:
        if (book_dir / name).is_dir():
            for run in find_runs([book_dir / name]):
                copy_run(run, dest / run.relative_to(book_dir))


def publish(book_dir: Path, names: Sequence[str], dest: Path) -> book.Book:
    """The small files and book.json to dest, then STUDIES.md (with its figures) written
    there from them; returns that book. With dest the book folder itself (a published
    book), only STUDIES.md and its figures are written again."""
    if dest.resolve() != book_dir.resolve():  # else: the published book rebuilt in place
        for earlier in [earlier_publish(dest / name) for name in names]:  # all checked first
            if earlier:
                shutil.rmtree(earlier)
        dest.mkdir(parents=True, exist_ok=True)
        copy_small_files(book_dir, names, dest)
        if (book_dir / book.BOOK_FILE).is_file():
            shutil.copyfile(book_dir / book.BOOK_FILE, dest / book.BOOK_FILE)
    # Markdown and PNGs only: the HTML page embeds the same figures again (megabytes).
    published = book.load(dest, names)
    run_folder.write_text(dest / "STUDIES.md", book.markdown(published))
    return published
