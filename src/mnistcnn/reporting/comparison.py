"""Comparison of runs: finished runs (base/run_reader.py) -> comparison tables
(md/csv/html) and figures.

This is the sweep-level counterpart of run_report.py. It lives in its own module
because run_report.py is the report of one run; a comparison reads many finished
run folders and nothing else, so it can be rebuilt at any time (`compare`) and
is written by the multirun callback in studies/sweeps.py.

Rows are configurations, not runs: runs whose resolved configs differ only in
`seed` are pooled, and each number is shown as mean ± sample standard deviation
over those runs, so a reader sees the spread over seeds beside every gap.
The columns are the config keys that differ between the runs. The document is one
list of markup.py blocks (`blocks`), rendered to comparison.md and comparison.html and
taken into the studies book; its figures are drawn by plots.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from matplotlib.figure import Figure

from mnistcnn.base import run_folder
from mnistcnn.base.config_keys import NOT_SETTINGS, short_key, show_value
from mnistcnn.base.formats import ABSENT, amount, mean_std  # ABSENT: a key or metric a run lacks
from mnistcnn.base.run_folder import RunFolder
from mnistcnn.base.run_reader import Run
from mnistcnn.reporting import markup, plots
from mnistcnn.reporting.markup import Block
from mnistcnn.reporting.metrics import Stat, pooled

# The summary numbers of the main table: (summary.json key, header, how to show it).
TABLE_METRICS = [
    ("final/train/acc", "train acc (%)", "acc"),
    ("final/val/acc", "val acc (%)", "acc"),
    ("test/acc", "test acc (%)", "acc"),
    ("test/loss", "test loss", "loss"),
    ("test/macro_recall", "macro recall (%)", "acc"),
    ("train_time_s", "train time (s)", "time"),
]
EPOCH_METRICS = [("train/acc", "train acc (%)", "acc"), ("train/loss", "train loss", "loss"),
                 ("val/acc", "val acc (%)", "acc"), ("val/loss", "val loss", "loss")]
OUTPUT_FILES = ["comparison.md", "comparison.csv", "comparison.html", "curves_loss.png",
                "curves_acc.png", "test_acc.png"]


# ----------------------------------------------------------------------------- columns
def differing_keys(configs: Sequence[dict]) -> list[str]:
    """Keys whose value is not the same in every config, in config order, leaving out the
    seed (what a row pools over) and the keys that do not change what is trained."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k != "seed" and not k.startswith(NOT_SETTINGS)
            and len({show_value(c[k]) if k in c else ABSENT for c in configs}) > 1]


def split_implied(configs: Sequence[dict], keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """(columns, implied): a key whose value follows from a differing choice is implied,
    not a column. The choices are a preset or variant (undotted keys) and, for a key of a
    config group, the group's `name`: a model sweep shows one `model.name` column, not
    every knob in which two model families differ; the tiny study shows its `variant`."""
    columns, implied = [], []
    for key in keys:
        group, _, leaf = key.rpartition(".")
        choices = [k for k in keys if "." not in k] + [f"{group}.name"] * (leaf != "name")
        if group and any(c in keys and _follows(configs, key, c) for c in choices):
            implied.append(key)
        else:
            columns.append(key)
    return columns, implied


def _follows(configs: Sequence[dict], key: str, choice: str) -> bool:
    seen = {}
    for c in configs:
        value = show_value(c[key]) if key in c else ABSENT
        if seen.setdefault(show_value(c.get(choice)), value) != value:
            return False
    return True


def short_names(columns: Sequence[str]) -> dict[str, str]:
    """Legend names: each key shortened (`model.name` -> `model`), the full key where two
    columns would share a name."""
    names = [short_key(k) for k in columns]
    return {k: n if names.count(n) == 1 else k for k, n in zip(columns, names, strict=True)}


# ----------------------------------------------------------------------------- rows
@dataclass
class Row:
    values: dict[str, str]  # column key -> the shown config value
    label: str
    runs: list[Run]

    @property
    def completed(self) -> bool:
        return all(r.status == "completed" for r in self.runs)

    @property
    def status(self) -> str:
        return "completed" if self.completed else self.runs[0].status

    @property
    def n(self) -> int:
        return sum(r.status == "completed" for r in self.runs)

    def stat(self, key: str) -> Stat | None:
        return pooled([r.summary[key] for r in self.runs if r.summary.get(key) is not None])

    def constant(self, get) -> str:
        """A value that should be equal across seeds (params, epochs); all of them if not."""
        values = list(dict.fromkeys(str(v) for v in map(get, self.runs) if v is not None))
        return "/".join(values) if values else ABSENT

    def curve(self, metric: str) -> list[tuple[int, Stat]]:
        """Per epoch, the metric's mean and spread over this row's runs."""
        by_epoch: dict[int, list[float]] = {}
        for run in self.runs:
            for record in run.metrics:
                if record.get(metric) is not None:
                    by_epoch.setdefault(record["epoch"], []).append(record[metric])
        return [(epoch, pooled(v)) for epoch, v in sorted(by_epoch.items())]


def make_rows(runs: Sequence[Run], columns: Sequence[str]) -> list[Row]:
    """Completed runs pooled by configuration; every other run is a row of its own, so a
    failure is never averaged away."""
    names = short_names(columns)
    rows: dict[tuple, Row] = {}
    for run in runs:
        values = {k: show_value(run.config[k]) if k in run.config else ABSENT for k in columns}
        key = tuple(values.values()) if run.status == "completed" else (id(run),)
        label = ", ".join(f"{names[k]}={v}" for k, v in values.items()) or "all runs"
        rows.setdefault(key, Row(values, label, [])).runs.append(run)
    return sort_rows(list(rows.values()))


def sort_rows(rows: Sequence[Row]) -> list[Row]:
    """Best mean test accuracy first; rows without one (failures) last, in job order."""
    def key(row: Row):
        stat = row.stat("test/acc") if row.completed else None
        return (stat is None, -stat.mean if stat else 0)

    return sorted(rows, key=key)


# ----------------------------------------------------------------------------- notes
def ranked_rows(rows: Sequence[Row]) -> list[tuple[Row, Stat]]:
    """Completed configurations with their test accuracy, best first."""
    return [(r, r.stat("test/acc")) for r in rows if r.completed and r.stat("test/acc")]


def gap_note(rows: Sequence[Row]) -> str | None:
    """The best configuration's lead over the runner-up with their spread over seeds; the
    table tests nothing (picking the best and then testing it would be biased), so the note
    points to a study question for a verdict."""
    ranked = ranked_rows(rows)
    if len(ranked) < 2:
        return None
    (best, a), (second, b) = ranked[:2]
    gap = amount(a.mean - b.mean, "acc")
    if a.std is None or b.std is None:
        return (f"The best ({best.label}) leads the runner-up ({second.label}) by {gap} "
                f"points of test accuracy from single runs: repeat the sweep with seed=0,1,2 "
                f"before drawing a conclusion.")
    return (f"The best ({best.label}) leads the runner-up ({second.label}) by {gap} points "
            f"of test accuracy (std over seeds ± {amount(a.std, 'acc')} and "
            f"± {amount(b.std, 'acc')}). This table tests nothing; for a verdict, ask it "
            f"as a question of a study (docs/studies-guide.md).")


def notes(rows: Sequence[Row], implied: Sequence[str]) -> list[str]:
    found = [gap_note(rows)]
    if implied:
        found.append("Also differing, each set by a chosen variant, preset or group option: "
                     + ", ".join(f"`{k}`" for k in implied) + ".")
    failed = [r for r in rows if not r.completed]
    if failed:
        found.append(f"{len(failed)} run(s) did not complete; they are the rows with a status "
                     f"and an error.")
    return [n for n in found if n]


# ----------------------------------------------------------------------------- comparison
@dataclass
class Comparison:
    runs: list[Run]
    columns: list[str]
    implied: list[str]
    rows: list[Row]
    notes: list[str]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.status != "completed"]


def build(runs: Sequence[Run]) -> Comparison:
    configs = [r.config for r in runs]
    columns, implied = split_implied(configs, differing_keys(configs))
    rows = make_rows(runs, columns)
    return Comparison(list(runs), columns, implied, rows, notes(rows, implied))


def _params(run: Run):
    return (run.summary.get("params") or {}).get("total")


def _epochs(run: Run):
    return run.summary.get("epochs")


def status_text(row: Row) -> tuple[str, str]:
    """(status naming the failed run's seed and folder, its error) for the people's table."""
    if row.completed:
        return "completed", ""
    run = row.runs[0]
    return f"{run.status} (seed {run.seed}, {run.path.name})", run.summary.get("error", "")


def main_table(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """The table for people; status and error columns only when something failed."""
    show_status = bool(comp.failed)
    header = [*comp.columns, "params", "epochs", "n", *(h for _, h, _ in TABLE_METRICS)]
    header += ["status", "error"] if show_status else []
    body = []
    for row in comp.rows:
        params = row.constant(_params)
        cells = [*row.values.values(),
                 f"{int(params):,}" if params.isdigit() else params,
                 row.constant(_epochs), str(row.n),
                 *(mean_std(row.stat(key), kind) for key, _, kind in TABLE_METRICS)]
        body.append(cells + (list(status_text(row)) if show_status else []))
    return header, body


def csv_table(comp: Comparison) -> tuple[list[str], list[list]]:
    """The table for programs: fractions, separate mean and std columns, every run's path."""
    header = [*comp.columns, "params", "epochs", "n", "seeds", "status", "error"]
    for key, _, _ in TABLE_METRICS:
        header += [f"{key}_mean", f"{key}_std"]
    header.append("runs")
    body = []
    for row in comp.rows:
        cells = [*row.values.values(), row.constant(_params), row.constant(_epochs), row.n,
                 " ".join(str(r.seed) for r in row.runs), row.status,
                 "" if row.completed else row.runs[0].summary.get("error", "")]
        for key, _, _ in TABLE_METRICS:
            stat = row.stat(key)
            cells += [stat.mean if stat else "", stat.std if stat and stat.std is not None else ""]
        body.append(cells + [";".join(str(r.path) for r in row.runs)])
    return header, body


def epoch_table(comp: Comparison, metric: str, kind: str) -> tuple[list[str], list[list[str]]]:
    """Epochs as rows, configurations as columns: the side-by-side form of study reports."""
    rows = [r for r in comp.rows if r.completed]
    curves = [dict(r.curve(metric)) for r in rows]
    epochs = sorted({e for c in curves for e in c})
    return (["epoch", *(r.label for r in rows)],
            [[str(e), *(mean_std(c.get(e), kind) if e in c else "" for c in curves)]
             for e in epochs])


def runs_table(comp: Comparison, out_dir: Path) -> tuple[list[str], list[list[str]]]:
    """Which folder holds which configuration and seed: the way back to the evidence."""
    label = {id(run): row.label for row in comp.rows for run in row.runs}
    return (["run", "configuration", "seed", "status", "test acc (%)"],
            [[_where(r.path, out_dir), label[id(r)], str(r.seed), r.status,
              amount(r.summary.get("test/acc"), "acc")]
             for r in comp.runs])


def _where(path: Path, out_dir: Path) -> str:
    """A run folder as seen from the comparison: relative inside a sweep, else relative to
    where the command ran (never an absolute path of this machine)."""
    path, out_dir = path.resolve(), out_dir.resolve()
    return str(path.relative_to(out_dir)) if path.is_relative_to(out_dir) else os.path.relpath(path)


# ----------------------------------------------------------------------------- the document
def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def intro(comp: Comparison) -> str:
    configs = sum(r.completed for r in comp.rows)
    keys = ", ".join(f"`{k}`" for k in comp.columns) or "none (the runs differ only in seed)"
    return (f"{_count(len(comp.runs), 'run')} of {_count(configs, 'configuration')}. "
            f"Keys that differ: {keys}. "
            f"Each row pools the seeds of one configuration: mean ± standard deviation over "
            f"its n runs. Sorted by test accuracy.")


def summary_blocks(comp: Comparison, more_notes: Sequence[str] = ()) -> list[Block]:
    """What the console shows too: which keys differ, the table, the notes."""
    return [markup.Paragraph(intro(comp)), markup.Table(*main_table(comp)),
            markup.Bullets([*comp.notes, *more_notes])]


def blocks(comp: Comparison, out_dir: Path, images: dict[str, bytes], level: int = 2,
           image_dir: str = "", per_epoch: bool = True, more_notes: Sequence[str] = ()
           ) -> list[Block]:
    """The comparison below a heading of the given level (the caller's): the table, the
    notes (then more_notes), the figures (PNG bytes by file name; image_dir/NAME relative
    to the document), the per-epoch tables when per_epoch, and the runs."""
    out = summary_blocks(comp, more_notes)
    out.append(markup.Figures([markup.Image(f"{image_dir}{name}", images[name], FIGURE_TITLES[name])
                    for name in FIGURES if name in images]))
    if per_epoch:
        out += [markup.Section(f"Per epoch: {title}", [markup.Table(*table)], level)
                for title, table in epoch_sections(comp)]
    out.append(markup.Section("Runs", [markup.Table(*runs_table(comp, out_dir))], level))
    return out


def epoch_sections(comp: Comparison) -> list[tuple[str, tuple]]:
    return [(title, table) for metric, title, kind in EPOCH_METRICS
            if (table := epoch_table(comp, metric, kind))[1]]


def document(comp: Comparison, out_dir: Path, images: dict[str, bytes]) -> list[Block]:
    """comparison.md and comparison.html: one heading over the blocks."""
    return [markup.Heading("Comparison"), *blocks(comp, out_dir, images)]


# ----------------------------------------------------------------------------- figures
def curves_figure(comp: Comparison, quantity: str) -> Figure:
    """Train and validation curves of every configuration: mean line, ± std band."""
    rows = [r for r in comp.rows if r.completed]
    # One empty panel when no run completed: the figure still says what it would show.
    splits = [s for s in ("train", "val")
              if any(r.curve(f"{s}/{quantity}") for r in rows)] or ["train"]
    panels = [("validation" if split == "val" else "training",
               [(row.label, row.curve(f"{split}/{quantity}")) for row in rows])
              for split in splits]
    name = "accuracy" if quantity == "acc" else "loss"
    return plots.seed_curves(panels, quantity,
                             f"{name.capitalize()} per epoch (mean ± std over seeds)")


def test_acc_figure(comp: Comparison) -> Figure:
    """The configurations' test accuracies, best on top."""
    return plots.accuracy_bars([(r.label, s) for r, s in ranked_rows(comp.rows)],
                               "Test accuracy (mean ± std over seeds; dots are single runs)")


def draw_figures(comp: Comparison, out_dir: Path) -> dict[str, bytes]:
    """Every comparison figure into out_dir/NAME; returns the PNGs by file name."""
    return {name: plots.save_png(out_dir / name, draw(comp))
            for name, draw in FIGURES.items()}


FIGURES = {"test_acc.png": test_acc_figure,
           "curves_acc.png": lambda comp: curves_figure(comp, "acc"),
           "curves_loss.png": lambda comp: curves_figure(comp, "loss")}
FIGURE_TITLES = {"test_acc.png": "test accuracy", "curves_acc.png": "accuracy",
                 "curves_loss.png": "loss"}


# ----------------------------------------------------------------------------- writing
def write(comp: Comparison, out_dir: str | Path) -> list[Path]:
    """Every comparison file into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = document(comp, out, draw_figures(comp, out))
    run_folder.write_text(out / "comparison.md", markup.markdown(doc) + "\n")
    run_folder.write_csv(out / "comparison.csv", *csv_table(comp))
    run_folder.write_text(out / "comparison.html", markup.page("Comparison", doc))
    return [out / name for name in OUTPUT_FILES]


def default_out_dir(paths: Sequence[str | Path]) -> Path:
    """A single sweep folder is rebuilt in place; anything else gets a folder of its own."""
    if len(paths) == 1 and not RunFolder(Path(paths[0])).config.is_file():
        return Path(paths[0])
    return Path("outputs/comparisons") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def console_text(comp: Comparison) -> str:
    """What `compare` and the end of a sweep print: which keys differ, the table, the notes."""
    return markup.markdown(summary_blocks(comp))


def failure_line(comp: Comparison) -> str:
    """One line naming each run that did not complete and why."""
    parts = [f"{r.path.name} ({r.status}: {r.summary.get('error', 'no error recorded')})"
             for r in comp.failed]
    return f"{len(comp.failed)} of {len(comp.runs)} jobs did not complete: " + "; ".join(parts)
