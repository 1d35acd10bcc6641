"""The studies book: the sweep folders of the studies -> STUDIES.md and studies.html.

It sits above reporting/comparison.py and is composed of its sections: each study is a
comparison (comparison.build over the runs of the study's sweep folder) with its title,
its questions answered by questions.py, its protocol as the runs' own configs record it
and the per-class recall of every arm. The questions are the study block of the runs'
resolved configs (book.json's copy for a study that has not run yet). Every number comes
from the run folders and from book.json (the wall times and the command that `studies`
records), so the book can be rebuilt at any time from DIR alone, or from the small files
of its runs (publish.py).
The book is one list of markup.py blocks (`document`), rendered to both files.
"""

from __future__ import annotations

import csv
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mnistcnn.base import run_folder
from mnistcnn.base.config_keys import NOT_SETTINGS, short_key, show_value
from mnistcnn.base.errors import UserError
from mnistcnn.base.formats import ABSENT, duration, mean_std
from mnistcnn.base.run_folder import SUMMARY, RunFolder
from mnistcnn.base.run_reader import Run, load_runs
from mnistcnn.reporting import comparison, markup, plots
from mnistcnn.reporting.comparison import Comparison, Row
from mnistcnn.reporting.markup import Block, Heading, Paragraph, Section, Table
from mnistcnn.reporting.metrics import Stat, pooled
from mnistcnn.runs.reuse import OTHER_CODE, REUSED_FROM
from mnistcnn.runs.shared_prefix import TAKEN_FROM
from mnistcnn.studies import questions, study_files

BOOK_FILE = "book.json"  # what `studies` records: command(s), wall times, machine, studies
QUICK = "quick=on: 1 epoch and 1,000 training images a run"  # conf/quick/on.yaml


# ----------------------------------------------------------------------------- a study
@dataclass
class Study:
    name: str
    comparison: Comparison | None  # None: no run folder yet (the study never started)
    wall_s: float | None
    images: dict[str, bytes]
    title: str = ""
    answers: list[questions.Answer] = field(default_factory=list)
    asks: list[str] = field(default_factory=list)  # the questions, answered or not


def study_block(name: str, out_dir: Path, comp: Comparison | None, recorded: dict | None
                ) -> dict:
    """The study's title and questions: from its study file as it is now (questions are
    asked of the runs and change nothing they trained, so a question can be added or
    sharpened and the book rebuilt without training), else as `studies` recorded them in
    book.json, else from its runs' configs."""
    current = study_files.current_block(name, out_dir)
    if current:
        return current
    if recorded:
        return recorded
    for run in comp.runs if comp else []:
        if run.config.get("study.title") is not None or run.config.get("study.questions"):
            return {"title": run.config.get("study.title") or "",
                    "questions": run.config.get("study.questions") or []}
    return {}


def load_study(out_dir: Path, name: str, wall_s: float | None, recorded: dict | None = None,
               provisional: bool = False, figures: bool = True) -> Study:
    """A study of the book; figures=False reads and answers without drawing (nor writing)
    anything."""
    folder = out_dir / name
    try:
        runs = load_runs([folder])
    except UserError:  # no folder, or no run in it yet
        runs = []
    comp = comparison.build(runs) if runs else None
    block = study_block(name, out_dir, comp, recorded)
    asked = questions.questions_of(block)
    short = provisional or any(r.config.get("quick") == "on" for r in runs)
    answers = [questions.answer(q, runs, short) for q in asked] if comp else []
    images = comparison.draw_figures(comp, folder) if comp and figures else {}
    for number, a in enumerate(answers if figures else [], 1):
        if a.contrasts:
            images[question_figure(number)] = plots.save_png(folder / question_figure(number),
                                                             effects_figure(a))
    return Study(name, comp, wall_s, images, block.get("title") or name,
                 answers, [q.ask for q in asked])


def question_figure(number: int) -> str:
    return f"question{number}.png"


def is_question_figure(name: str) -> bool:
    return name.startswith("question") and name.endswith(".png")


def effects_figure(a: questions.Answer):
    """The answer's comparisons with their intervals against zero (and the margin)."""
    name = short_key(a.question.factor)
    rows = [(f"{name}={c.level} − {c.reference}" + (f"\nat {c.at}" if c.at else ""), c.diff,
             c.low, c.high, questions.reading(c, a.question.margin)) for c in a.contrasts]
    return plots.effects(rows, a.question.margin, a.question.procedure == "enough",
                         f"{a.question.ask}\n{a.verdict}")


PROTOCOL = [  # (what, config keys shown together)
    ("model", ("model.name",)),
    ("epochs", ("trainer.epochs",)),
    ("batch", ("trainer.batch_size",)),
    ("optimizer", ("optim.name", "optim.lr")),
    ("split", ("data.val_size", "data.resplit", "data.limit", "data.classes")),
]


def protocol(comp: Comparison) -> list[tuple[str, str]]:
    """(what, values) from the runs' resolved configs; a key that varies lists each value."""
    def values(key: str) -> str:
        seen = dict.fromkeys(show_value(r.config.get(key)) for r in comp.runs)
        return " / ".join(seen)

    def shown(keys: Sequence[str]) -> str:
        if len(keys) == 1:
            return values(keys[0])
        # Unset keys (null in every run: no resplit, no limit, all classes) say nothing.
        return ", ".join(f"{key.split('.')[-1]}={values(key)}" for key in keys
                         if values(key) != "null") or "as the data set comes"

    rows = [(what, shown(keys)) for what, keys in PROTOCOL]
    seeds = sorted({r.seed for r in comp.runs}, key=str)
    rows.append(("seeds", f"{', '.join(map(str, seeds))} ({len(seeds)} per arm)"))
    return rows


# ----------------------------------------------------------------------------- per class
def class_recall(row: Row) -> tuple[tuple[str, ...], dict[str, Stat]]:
    """The row's class names and each class's test recall over its runs (classification.csv;
    an undefined recall, `nan`, is left out)."""
    names: tuple[str, ...] = ()
    values: dict[str, list[float]] = {}
    for run in row.runs:
        path = RunFolder(run.path).classification
        if not path.is_file():
            continue
        lines = [r for r in csv.DictReader(path.open()) if not r["class"].endswith(" avg")]
        names = tuple(r["class"] for r in lines)
        for r in lines:
            if r["recall"] != "nan":
                values.setdefault(r["class"], []).append(float(r["recall"]))
    return names, {c: pooled(v) for c, v in values.items()}


def per_class_tables(comp: Comparison) -> tuple[list[tuple[list[str], list[list[str]]]], str]:
    """One table (classes as rows, arms as columns) per class set, and a note when the arms
    do not share one (their accuracies then count different tasks)."""
    groups: dict[tuple[str, ...], list[tuple[Row, dict[str, Stat]]]] = {}
    for row in comp.rows:
        if row.completed:
            names, recall = class_recall(row)
            if names:
                groups.setdefault(names, []).append((row, recall))
    tables = [(["class", *(row.label for row, _ in arms)],
               [[c, *(mean_std(recall.get(c), "acc") for _, recall in arms)] for c in names])
              for names, arms in groups.items()]
    note = ""
    if len(groups) > 1:
        note = ("The arms predict different class sets (" + "; ".join(
            f"{len(names)} classes: {', '.join(r.label for r, _ in arms)}"
            for names, arms in groups.items()) + "): their accuracies are over different "
            "tasks, and recall is compared within each set.")
    return tables, note


# ----------------------------------------------------------------------------- the book
@dataclass
class Book:
    out_dir: Path
    studies: list[Study]
    record: dict  # book.json

    @property
    def failed(self) -> list:
        return [r for s in self.studies if s.comparison for r in s.comparison.failed]

    @property
    def shortened(self) -> str:
        """Why the runs are shorter than their studies' protocol, or '' when they are not:
        quick=on in the runs' own record, or what `studies` recorded in book.json."""
        quick = any(r.config.get("quick") == "on" for s in self.studies if s.comparison
                    for r in s.comparison.runs)
        return QUICK if quick else self.record.get("shortened", "")


def load(out_dir: str | Path, names: Sequence[str], figures: bool = True) -> Book:
    """The book of out_dir's study folders; figures=False leaves the folders untouched."""
    out = Path(out_dir)
    record = run_folder.read_json(out / BOOK_FILE) if (out / BOOK_FILE).is_file() else {}
    walls, recorded = record.get("wall_s", {}), record.get("studies", {})
    shortened = bool(record.get("shortened"))
    return Book(out, [load_study(out, n, walls.get(n), recorded.get(n), shortened, figures)
                      for n in names], record)


def training_key(run: Run, seed: bool = True) -> frozenset:
    """What a run trained: its settings but those that change nothing it trained (where it
    ran, how it is reported, what its study asks) and the preset that launched it."""
    return frozenset((k, show_value(v)) for k, v in run.config.items()
                     if not k.startswith(NOT_SETTINGS) and k != "experiment"
                     and (seed or k != "seed"))


def shared_arms(book: Book, study: Study) -> list[str]:
    """The study's arms that another study of the book has too (same settings, seeds
    included): one phrase each, naming the arm there and whether its runs were trained
    once (one study reused the other's, runs/reuse.py) or twice."""
    if study.comparison is None:
        return []
    elsewhere: dict[frozenset, tuple[str, Row]] = {}
    for other in book.studies:
        if other is not study and other.comparison:
            for row in other.comparison.rows:
                if row.completed:
                    elsewhere[frozenset(map(training_key, row.runs))] = (other.name, row)
    found = []
    for row in study.comparison.rows:
        match = elsewhere.get(frozenset(map(training_key, row.runs)))
        if not (row.completed and match):
            continue
        name, there = match
        if all(reused(r) for r in row.runs):
            how = "reused from there, trained once"
        elif all(reused(r) for r in there.runs):
            how = "reused there, trained once"
        else:
            how = "trained in both"
        found.append(f"{row.label} here is {there.label} in {name} ({how})")
    return found


def reused(run: Run) -> bool:
    return REUSED_FROM in run.summary


def from_longer(run: Run) -> bool:
    """Whether a run is a shorter epoch arm written from a longer arm's training
    ("taken_from": trainer.epochs=LONGEST; the longest arm itself was trained)."""
    taken = str(run.summary.get(TAKEN_FROM, ""))
    return taken.startswith("trainer.epochs=") and \
        int(taken.partition("=")[2]) != run.config.get("trainer.epochs")


def shortened_note(book: Book) -> list[str]:
    """The warning at the top of a book whose runs are shorter than the protocol."""
    if not book.shortened:
        return []
    return [f"Smoke runs, not findings: the runs of this book are shorter than their "
            f"studies' protocol ({book.shortened}). Its numbers show that the pipeline runs; "
            f"they answer none of the questions. Run the studies without shortening them "
            f"for answers."]


def findings_table(book: Book) -> tuple[list[str], list[list[str]]]:
    """One row per question: the study, the question, its verdict and its numbers in short
    (the whole answer is in the study's section)."""
    body = []
    for s in book.studies:
        if not s.answers:
            body += [[s.name, ask, "Not run yet.", ""] for ask in s.asks or [s.title]]
        body += [[s.name, a.question.ask, f"**{a.verdict}**", a.brief] for a in s.answers]
    return ["study", "question", "verdict", "numbers (points; interval, adjusted p)"], body


def answer_blocks(study: Study) -> list[Block]:
    """Each question of a study under its own heading: the verdict in bold and the answer,
    its picture, then its tables."""
    blocks = []
    for number, a in enumerate(study.answers, 1):
        figure = question_figure(number)
        picture = ([markup.Image(f"{study.name}/{figure}", study.images[figure], a.verdict)]
                   if figure in study.images else [])
        blocks.append(Section(a.question.ask, [
            Paragraph(f"**{a.verdict}.** {a.sentence}"), *picture,
            *(block for title, table in a.tables
              for block in (Paragraph(title, style="label"), Table(*table)))], level=3))
    return blocks


def machine_rows(book: Book) -> list[list[str]]:
    """Where, with what and how long: from the runs' summaries (device, the training step's
    path: eager or CUDA graph, the code version and library versions) and book.json."""
    summaries = [r.summary for s in book.studies if s.comparison for r in s.comparison.runs]

    def seen(key: str) -> str:
        return ", ".join(dict.fromkeys(str(x[key]) for x in summaries if x.get(key))) or ABSENT

    machine = book.record.get("machine") or platform.platform()
    rows = [["machine", machine], ["device", seen("device")],
            ["training step", seen("train_path")],
            ["code", ", ".join(dict.fromkeys(code_version(x) for x in summaries)) or ABSENT],
            *([key, seen(key)] for key in ("python", "torch", "torchvision", "numpy"))]
    rows.append(["runs", runs_made(book)])
    other_code = sorted({d for x in summaries for d in x.get(OTHER_CODE, [])})
    if other_code:
        rows.append(["reused from other code", "; ".join(other_code)])
    walls = book.record.get("wall_s", {})
    rows.append(["wall time, all studies", duration(sum(walls.values())) if walls else ABSENT])
    rows += [[f"wall time: {s.name}", duration(s.wall_s) if s.wall_s is not None else ABSENT]
             for s in book.studies]
    for command in book.record.get("commands", []):
        rows.append(["command", command])
    return rows


def runs_made(book: Book) -> str:
    """How many runs the studies hold and how many of them were trained on their own: a run
    reused from another study or book (runs/reuse.py) holds that run's files, and an epoch
    arm taken from a longer arm's training (runs/shared_prefix.py) was not trained alone."""
    runs = [r for s in book.studies if s.comparison for r in s.comparison.runs]
    copies = sum(reused(r) for r in runs)
    taken = sum(from_longer(r) and not reused(r) for r in runs)
    parts = [f"{copies} reused from identical runs (`{REUSED_FROM}` in their {SUMMARY})"
             ] if copies else []
    if taken:
        parts.append(f"{taken} written from a longer run's first epochs (`{TAKEN_FROM}`)")
    if not parts:
        return f"{len(runs)}"
    return (f"{len(runs)}, of which {len(runs) - copies - taken} trained on their own, "
            + " and ".join(parts))


def code_version(summary: dict) -> str:
    """mnistcnn's version and the commit it ran from (provenance.py), as recorded."""
    text = f"mnistcnn {summary.get('mnistcnn') or ABSENT}"
    if summary.get("git_commit"):
        text += f", commit {summary['git_commit'][:12]}"
        text += " with uncommitted changes" if summary.get("git_dirty") else ""
    return text


def document(book: Book) -> list[Block]:
    """STUDIES.md and studies.html: the findings, a section per study, the machine."""
    return [Heading("Studies"), *(Paragraph(f"**{n}**") for n in shortened_note(book)),
            Section("Findings", [Table(*findings_table(book), style="text")]),
            *(Section(s.name, study_blocks(book, s), anchor=s.name) for s in book.studies),
            Section("Machine and time", [Table(["", ""], machine_rows(book), style="text")])]


def study_blocks(book: Book, s: Study) -> list[Block]:
    """A study's title, protocol, answered questions, comparison (without per-epoch tables)
    and per-class recall."""
    out: list[Block] = [Paragraph(f"**{s.title}**")]
    if s.comparison is None:
        return [*out, Paragraph(f"Not run yet: no run folders in `{s.name}/`.")]
    out.append(Table(["protocol", ""], protocol(s.comparison), style="text"))
    shared = shared_arms(book, s)
    if shared:
        out.append(Paragraph("Runs another study has too (the same settings and seeds): "
                             + "; ".join(shared) + "."))
    out += answer_blocks(s)
    out += comparison.blocks(s.comparison, book.out_dir, s.images, level=3,
                             image_dir=f"{s.name}/", per_epoch=False)
    tables, note = per_class_tables(s.comparison)
    out.append(Section("Per-class test recall (%)",
                       [*(Table(*t) for t in tables), Paragraph(note)], level=3))
    return out


def write(out_dir: str | Path, names: Sequence[str]) -> Book:
    """STUDIES.md and studies.html into out_dir from its study folders; returns the book."""
    book = load(out_dir, names)
    run_folder.write_text(book.out_dir / "STUDIES.md", markdown(book))
    run_folder.write_text(book.out_dir / "studies.html", markup.page("Studies", document(book)))
    return book


def markdown(book: Book) -> str:
    """STUDIES.md's text."""
    return markup.markdown(document(book)) + "\n"
