"""The studies book: the sweep folders of the study presets -> STUDIES.md and studies.html.

It sits beside compare.py and is composed of its sections: each study is a comparison
(compare.build over the study's sweep folder) with the question it answers, its protocol
as the runs' own configs record it, a two-sample test between the best two arms and the
per-class recall of every arm. Every number comes from the run folders and from
book.json (the wall times and the command that `studies` records), so the book can be
rebuilt at any time from DIR alone.
"""

from __future__ import annotations

import csv
import math
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from mnistcnn import compare, files, pages
from mnistcnn.compare import Comparison, Row, Stat
from mnistcnn.errors import UserError
from mnistcnn.pages import ABSENT, esc, md_table

# The study presets in conf/experiment/ (all but speedrun, which is a benchmark) in the
# order of the studies they reproduce, with the question each one asks.
QUESTIONS = {
    "batchnorm": "Does batch norm improve the conv5x5 net?",
    "features": "How wide must the linear bottleneck of the conv5x5 net be, and do 20 "
                "epochs beat 10?",
    "activations": "Which activation trains the Keras net best: ReLU, sigmoid or tanh?",
    "conv_depth": "Does the Keras net do better with two conv blocks or one?",
    "neurons": "Does the classic net need 50 hidden neurons, or are 25 enough?",
    "pooling": "Max or average pooling in the classic net?",
    "tiny": "How does the tiny net do on 10 digits vs 4 grouped classes, and do augmentation, "
            "dropout or batch norm help it on the 4?",
    "mobilenet": "Do depthwise-separable (MobileNet) blocks keep up with plain conv blocks, "
                 "and does SGD or Adam train them better?",
}
BOOK_FILE = "book.json"  # what `studies` records: command(s), wall times, machine
CONFIDENCE = 0.95


# ----------------------------------------------------------------------------- statistics
@dataclass
class Welch:
    """Welch's two-sample t-test of a - b, and the confidence interval of the difference of
    means with the Welch–Satterthwaite degrees of freedom. Values as given (fractions)."""

    n_a: int
    n_b: int
    diff: float
    low: float
    high: float
    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
          ) -> Welch | None:
    """None when either sample has fewer than two values (no variance to test with). When
    neither sample varies at all, t and p are NaN and the interval is the difference."""
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / n_a, statistics.variance(b) / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return Welch(n_a, n_b, diff, diff, diff, math.nan, math.nan, math.nan)
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    result = stats.ttest_ind(a, b, equal_var=False)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Welch(n_a, n_b, diff, diff - half, diff + half, float(result.statistic), df,
                 float(result.pvalue))


def welch_text(w: Welch | None, n_a: int, n_b: int) -> str:
    """The test in words, with n stated; differences in points of accuracy."""
    if w is None:
        return (f"Welch's t-test is not possible with n = {n_a} and {n_b} (it needs at least "
                f"two seeds in each arm).")
    n = f"n = {w.n_a} and {w.n_b}"
    if math.isnan(w.p):
        return f"Welch's t-test is undefined: neither arm varies over its seeds ({n})."
    return (f"Welch's t-test: t = {w.t:.2f}, df = {w.df:.1f}, p = {w.p:.3g}; "
            f"{100 * CONFIDENCE:.0f}% interval of the difference "
            f"[{100 * w.low:+.2f}, {100 * w.high:+.2f}] points ({n}).")


# ----------------------------------------------------------------------------- findings
def finding(rows: Sequence[Row]) -> tuple[str, str]:
    """(the answer in one sentence, the winner's mean ± std) from a study's rows."""
    ranked = compare.ranked_rows(rows)
    if not ranked:
        return "No run completed: no answer.", ABSENT
    best, a = ranked[0]
    winner = f"{compare.fmt(a, 'acc')}% (n = {a.n})"
    if len(ranked) < 2:
        return f"Only {best.label} completed: nothing to compare it with.", winner
    second, b = ranked[1]
    gap = 100 * (a.mean - b.mean)
    if f"{gap:.2f}" == "0.00":
        head = (f"{best.label} and {second.label} tie at {compare.fmt(a, 'acc')}% and "
                f"{compare.fmt(b, 'acc')}% test accuracy")
    else:
        head = (f"{best.label} wins, {gap:.2f} points of test accuracy ahead of "
                f"{second.label} ({compare.fmt(a, 'acc')}% vs {compare.fmt(b, 'acc')}%)")
    if class_count(best) != class_count(second):
        head += (f" (over {class_count(best)} and {class_count(second)} classes: not the same "
                 f"task)")
    if a.std is None or b.std is None:
        return f"{head}; with one seed per arm the seed spread is unknown.", winner
    w = welch(a.values, b.values)
    spread = ("more than their seed spread" if compare.exceeds_spread(a, b)
              else "within their seed spread, so the ranking may change with other seeds")
    test = "" if w is None or math.isnan(w.p) else (
        f" (Welch p = {w.p:.2g}, {100 * CONFIDENCE:.0f}% interval "
        f"[{100 * w.low:+.2f}, {100 * w.high:+.2f}] points, n = {w.n_a} and {w.n_b})")
    return f"{head}, {spread}{test}.", winner


def class_count(row: Row) -> int:
    classes = row.runs[0].config.get("data.classes")
    return len(classes) if classes else 10


# ----------------------------------------------------------------------------- a study
@dataclass
class Study:
    name: str
    folder: Path
    comparison: Comparison | None  # None: no run folder yet (the study never started)
    wall_s: float | None
    images: dict[str, bytes]

    @property
    def question(self) -> str:
        return QUESTIONS.get(self.name, "")


def load_study(out_dir: Path, name: str, wall_s: float | None) -> Study:
    folder = out_dir / name
    try:
        runs = compare.load_runs([folder])
    except UserError:  # no folder, or no run in it yet
        return Study(name, folder, None, wall_s, {})
    comp = compare.build(runs)
    return Study(name, folder, comp, wall_s, compare.draw_figures(comp, folder))


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
        seen = dict.fromkeys(compare.show_value(r.config.get(key)) for r in comp.runs)
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
        path = run.path / "classification.csv"
        if not path.is_file():
            continue
        lines = [r for r in csv.DictReader(path.open()) if not r["class"].endswith(" avg")]
        names = tuple(r["class"] for r in lines)
        for r in lines:
            if r["recall"] != "nan":
                values.setdefault(r["class"], []).append(float(r["recall"]))
    return names, {c: compare.mean_std(v) for c, v in values.items()}


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
               [[c, *(compare.fmt(recall.get(c), "acc") for _, recall in arms)] for c in names])
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


def load(out_dir: str | Path, names: Sequence[str]) -> Book:
    out = Path(out_dir)
    record = files.read_json(out / BOOK_FILE) if (out / BOOK_FILE).is_file() else {}
    walls = record.get("wall_s", {})
    return Book(out, [load_study(out, n, walls.get(n)) for n in names], record)


def findings_table(book: Book) -> tuple[list[str], list[list[str]]]:
    body = []
    for s in book.studies:
        answer, winner = (finding(s.comparison.rows) if s.comparison
                          else ("Not run yet.", ABSENT))
        body.append([s.name, s.question, answer, winner])
    return ["study", "question", "answer", "winner (test acc, mean ± std)"], body


def best_two_test(comp: Comparison) -> list[str]:
    """The note on the best two arms' test: none when fewer than two arms completed."""
    ranked = compare.ranked_rows(comp.rows)
    if len(ranked) < 2:
        return []
    (best, a), (second, b) = ranked[:2]
    return [f"{best.label} vs {second.label}: "
            + welch_text(welch(a.values, b.values), a.n, b.n)]


def machine_rows(book: Book) -> list[list[str]]:
    """Where and how long: from the runs' summaries (device, torch) and book.json."""
    summaries = [r.summary for s in book.studies if s.comparison for r in s.comparison.runs]

    def seen(key: str) -> str:
        return ", ".join(dict.fromkeys(str(x[key]) for x in summaries if x.get(key))) or ABSENT

    machine = book.record.get("machine") or platform.platform()
    rows = [["machine", machine], ["device", seen("device")],
            ["torch", seen("torch")]]
    walls = book.record.get("wall_s", {})
    rows.append(["wall time, all studies", duration(sum(walls.values())) if walls else ABSENT])
    rows += [[f"wall time: {s.name}", duration(s.wall_s) if s.wall_s is not None else ABSENT]
             for s in book.studies]
    for command in book.record.get("commands", []):
        rows.append(["command", command])
    return rows


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def to_markdown(book: Book) -> str:
    parts = ["# Studies", "## Findings", md_table(*findings_table(book))]
    for s in book.studies:
        parts += [f"## {s.name}", f"**{s.question}**"]
        if s.comparison is None:
            parts.append(f"Not run yet: no run folders in `{s.name}/`.")
            continue
        parts.append(md_table(["protocol", ""], protocol(s.comparison)))
        parts.append(compare.markdown_section(s.comparison, book.out_dir, level=3,
                                              image_dir=f"{s.name}/", per_epoch=False,
                                              more_notes=best_two_test(s.comparison)))
        tables, note = per_class_tables(s.comparison)
        if tables:
            parts.append("### Per-class test recall (%)")
            parts += [md_table(*t) for t in tables] + ([note] if note else [])
    parts += ["## Machine and time", md_table(["", ""], machine_rows(book))]
    return "\n\n".join(parts) + "\n"


def to_html(book: Book) -> str:
    body = ["<h1>Studies</h1>",
            pages.section("Findings", pages.html_table(*findings_table(book), css_class="text"))]
    for s in book.studies:
        parts = [f"<p><b>{esc(s.question)}</b></p>"]
        if s.comparison is None:
            parts.append(f"<p>Not run yet: no run folders in {esc(s.name)}/.</p>")
        else:
            parts += [pages.html_table(["protocol", ""], protocol(s.comparison), css_class="text"),
                      compare.html_section(s.comparison, book.out_dir, s.images, level=3,
                                           per_epoch=False,
                                           more_notes=best_two_test(s.comparison))]
            tables, note = per_class_tables(s.comparison)
            parts.append(pages.section("Per-class test recall (%)", "".join(
                pages.html_table(*t) for t in tables) + (f"<p>{esc(note)}</p>" if note else ""),
                level=3))
        body.append(f'<section id="{esc(s.name)}">{pages.section(s.name, "".join(parts))}'
                    f"</section>")
    body.append(pages.section("Machine and time", pages.html_table(["", ""], machine_rows(book),
                                                                   css_class="text")))
    return pages.page("Studies", "\n".join(body))


def write(out_dir: str | Path, names: Sequence[str]) -> Book:
    """STUDIES.md and studies.html into out_dir from its study folders; returns the book."""
    book = load(out_dir, names)
    files.write_text(book.out_dir / "STUDIES.md", to_markdown(book))
    files.write_text(book.out_dir / "studies.html", to_html(book))
    return book
