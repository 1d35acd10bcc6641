"""The studies book and the `studies` command: the writer on hand-made sweep folders, study
files and their checks, --dry-run, --book-only and --publish, and the command end to end on
synthetic data (a preset and a person's own study file, smoke size, then --resume).
The statistics themselves are checked against scipy and statsmodels in test_questions.py."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_main

from mnistcnn.base import run_reader
from mnistcnn.base.config import CONF_DIR
from mnistcnn.base.errors import UserError
from mnistcnn.reporting import comparison
from mnistcnn.studies import book, command, study_files

# Books draw many figures; what these tests read is the text that names them, so the
# figures are not rendered to PNG (test_plots.py and test_report.py check the pictures).
pytestmark = pytest.mark.usefixtures("no_png_encoding")

DIGITS = [str(d) for d in range(10)]
GROUPS = {0: [0, 6], 1: [1, 7], 2: [2, 3, 5, 8], 3: [4, 9]}
POOLING = {"title": "Pooling in the classic net",
           "questions": [{"factor": "model.pool", "ask": "Max or average pooling?",
                          "baseline": None, "levels": None}]}
PRESETS = ["activations", "batchnorm", "conv_depth", "features", "mobilenet", "neurons",
           "pooling", "tiny"]


# ----------------------------------------------------------------------------- calibration
@pytest.fixture(autouse=True)
def calibrations(monkeypatch) -> list[list[str]]:
    """A dry run times the arms that have no finished run by training them briefly
    (calibration.py, tested in test_seeds_and_calibration.py); here every such run is
    timed at 100 s without training, and the jobs asked about are listed."""
    asked: list[list[str]] = []

    class Calibrator:
        how, spent_s, rates = "3 epochs of 512 images per arm on cpu", 0.0, {}

        def run_seconds(self, job: list[str]) -> float:
            asked.append(job)
            return 100.0

    monkeypatch.setattr(command.calibration, "Calibrator", Calibrator)
    return asked


# ----------------------------------------------------------------------------- run folders
def make_run(folder: Path, seed: int, test_acc: float | None, classes=None, study=None,
             **config):
    """A job folder as `train` leaves it; test_acc None makes a failed run."""
    cfg = {"model": {"name": "classic", "pool": config.get("pool", "max"), "hidden": 50},
           "data": {"name": "mnist", "val_size": 10000, "resplit": None, "limit": None,
                    "classes": classes},
           "optim": {"name": "adam", "lr": 0.001},
           "trainer": {"epochs": 10, "batch_size": 64, "device": "cpu"}, "seed": seed,
           "study": study}
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    choices = {k: config[k] for k in ("variant", "quick") if k in config}
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    summary = {"status": "failed", "error": "CUDA out of memory", "seed": seed,
               "device": "cpu", "torch": "2.x", "train_path": "eager", "mnistcnn": "0.1.0",
               "git_commit": "0123456789abcdef", "git_dirty": False}
    if test_acc is not None:
        summary.update({"status": "completed", "test/acc": test_acc, "test/loss": 1 - test_acc,
                        "final/train/acc": test_acc, "final/val/acc": test_acc, "epochs": 2,
                        "params": {"total": 21840}, "train_time_s": 5.0})
        names = [f"{{{','.join(map(str, v))}}}" for v in classes.values()] if classes \
            else DIGITS
        with (folder / "classification.csv").open("w", newline="") as f:
            writer = csv.writer(f)  # quotes the grouped names, as the run's writer does
            writer.writerow(["class", "precision", "recall", "f1", "support"])
            writer.writerows([n, test_acc, test_acc - 0.01 * i, test_acc, 50]
                             for i, n in enumerate(names))
            writer.writerow(["macro avg", test_acc, test_acc, test_acc, 500])
        records = [{"epoch": e, "train/acc": test_acc - 0.1 / e, "train/loss": 0.3 / e,
                    "val/acc": test_acc - 0.05 / e, "val/loss": 0.2 / e} for e in (1, 2)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "summary.json").write_text(json.dumps(summary))


def rows_of(folder: Path):
    return comparison.build(run_reader.load_runs([folder])).rows


# ----------------------------------------------------------------------------- the writer
@pytest.fixture
def book_dir(tmp_path) -> Path:
    """pooling: 2 arms x 3 seeds, one run failed, its questions in the runs' configs;
    hidden: one seed per arm, its questions only in book.json; tiny: 10 vs 4 classes;
    bn: recorded, never ran. pooling and tiny are presets, whose files ask the questions;
    hidden and bn are no study file's, so book.json's record asks theirs."""
    out = tmp_path / "book"
    specs = [("max", 0, 0.990), ("max", 1, 0.991), ("max", 2, 0.992),
             ("avg", 0, 0.980), ("avg", 1, 0.982), ("avg", 2, None)]
    for i, (pool, seed, acc) in enumerate(specs):
        make_run(out / "pooling" / f"{i}_pool={pool},seed={seed}", seed, acc, pool=pool,
                 study=POOLING)
    make_run(out / "hidden" / "0_a", 0, 0.97, pool="max")
    make_run(out / "hidden" / "1_b", 0, 0.96, pool="avg")
    tiny = {"title": "Tiny", "questions": [{"factor": "variant", "ask": "10 or 4 classes?"}]}
    make_run(out / "tiny" / "0_a", 0, 0.90, variant="tiny_10classes", study=tiny)
    make_run(out / "tiny" / "1_b", 0, 0.95, classes=GROUPS, variant="tiny_4classes", study=tiny)
    (out / book.BOOK_FILE).write_text(json.dumps({
        "wall_s": {"pooling": 61.0, "hidden": 5.0, "tiny": 7.0}, "machine": "test box",
        "commands": ["python -m mnistcnn studies pooling hidden tiny"],
        "studies": {"hidden": {"title": "Hidden neurons", "questions": [
                        {"factor": "model.pool", "ask": "50 or 25?"}]},
                    "bn": {"title": "Batch norm", "questions": [
                        {"factor": "model.batchnorm", "ask": "Does BN help?"}]}}}))
    return out


def test_book_answers_every_question_from_the_runs(book_dir):
    written = book.write(book_dir, ["pooling", "hidden", "tiny", "bn"])
    assert [r.path.name for r in written.failed] == ["5_pool=avg,seed=2"]
    md = (book_dir / "STUDIES.md").read_text()
    assert "Smoke runs" not in md  # full-length runs: no warning
    findings = md.split("## Findings")[1].split("\n## ")[0]
    assert "| study | question | verdict | numbers (points; interval, adjusted p) |" in findings
    # The pooling preset's question now (kind best), of the runs' numbers.
    assert ("| pooling | Max or average pooling in the classic net? | **pool=max is better than "
            "pool=avg** | max − avg +1.00 [") in findings
    assert "| bn | Does BN help? | Not run yet. |  |" in findings
    assert "| hidden | 50 or 25? | **Not tested at n = 1 per arm** | n = 1 per arm, no test |" \
        in findings
    pooling = md.split("## pooling")[1].split("\n## ")[0]
    assert "**Pooling in the classic net**" in pooling
    assert "### Max or average pooling in the classic net?" in pooling
    assert "**pool=max is better than pool=avg.** pool=max − pool=avg +1.00 points" in pooling
    assert "1 run(s) did not complete and are left out." in pooling
    assert "![pool=max is better than pool=avg](pooling/question1.png)" in pooling
    assert (book_dir / "pooling" / "question1.png").is_file()
    assert "| comparison | difference (points) | interval | test | p | p adjusted |" in pooling
    assert "| seeds | 0, 1, 2 (3 per arm) |" in pooling and "| model | classic |" in pooling
    assert "| split | val_size=10000 |" in pooling  # unset keys left out
    assert "failed (seed 2, 5_pool=avg,seed=2) | CUDA out of memory" in pooling
    assert "![test accuracy](pooling/test_acc.png)" in pooling
    assert (book_dir / "pooling" / "test_acc.png").is_file()
    assert "| 9 | 90.10 ± 0.10 | 89.10 ± 0.14 |" in pooling  # recall per class and arm
    hidden = md.split("## hidden")[1].split("\n## ")[0]
    assert "**Hidden neurons**" in hidden  # title from book.json: the runs carry none
    assert "one seed per arm (n = 1 and 1) has no spread to test with" in hidden
    tiny = md.split("## tiny")[1].split("\n## ")[0]
    assert "different class sets (4 classes: variant=tiny_4classes; 10 classes: " in tiny
    assert "**Described, not tested.** Not tested: the arms predict different class sets" in tiny
    assert "| {2,3,5,8} |" in tiny
    machine = md.split("## Machine and time")[1]
    assert "| machine | test box |" in machine and "| wall time, all studies | 1m13s |" in machine
    assert "| wall time: pooling | 1m01s |" in machine and "| device | cpu |" in machine
    assert "| command | python -m mnistcnn studies pooling hidden tiny |" in machine
    assert "| training step | eager |" in machine and "| torch | 2.x |" in machine
    assert "| code | mnistcnn 0.1.0, commit 0123456789ab |" in machine


def test_a_study_that_another_study_trained_too_says_so(tmp_path):
    for name, label in (("first", "pool=max"), ("second", "pool=max")):
        for seed in (0, 1):
            make_run(tmp_path / name / f"{seed}_{label},seed={seed}", seed, 0.99 - seed / 100,
                     pool="max", study=POOLING)
        make_run(tmp_path / name / f"2_{name}", 0, 0.98, pool="avg" if name == "first"
                 else "max", study=POOLING, **{"variant": "other"} if name == "second" else {})
    md = book.markdown(book.load(tmp_path, ["first", "second"]))
    assert md.count("Runs another study has too (the same settings and seeds): pool=max here "
                    "is ") == 1 and md.count("(trained in both).") == 2
    assert "| runs | 6 |" in md
    # The second study's runs copied from the first's (runs/reuse.py): trained once.
    for seed in (0, 1):
        path = tmp_path / "second" / f"{seed}_pool=max,seed={seed}" / "summary.json"
        path.write_text(json.dumps(dict(json.loads(path.read_text()),
                                        reused_from=f"first/{seed}_pool=max,seed={seed}",
                                        reused_from_other_code=["torch 2.0 -> 2.1"])))
    md = book.markdown(book.load(tmp_path, ["first", "second"]))
    first, second = md.split("\n## first")[1].split("\n## second")
    assert " in second (reused there, trained once)." in first
    assert " in first (reused from there, trained once)." in second
    assert "| runs | 6, of which 4 trained on their own, 2 reused from identical runs " \
           "(`reused_from` in their summary.json) |" in md
    assert "| reused from other code | torch 2.0 -> 2.1 |" in md  # --reuse-any-version


def test_a_book_of_short_runs_says_so_at_the_top(book_dir):
    for job in (book_dir / "pooling").iterdir():  # as `studies --quick` records them
        hydra = job / ".hydra" / "hydra.yaml"
        hydra.write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"quick": "on"}}}}))
    md = book.markdown(book.load(book_dir, ["pooling"]))
    top = md.split("## Findings")[0]
    assert "**Smoke runs, not findings: the runs of this book are shorter than their " \
           "studies' protocol (quick=on: 1 epoch and 1,000 training images a run)." in top
    findings = md.split("## Findings")[1].split("\n## ")[0]
    assert "| pooling | Max or average pooling in the classic net? | **Smoke runs, not a " \
           "finding** |" in findings
    assert "wins" not in findings


def test_book_html_is_self_contained(book_dir):
    book.write(book_dir, ["pooling", "tiny"])
    page = (book_dir / "studies.html").read_text()
    assert page.count('<section id="') == 2 and "<h2>Findings</h2>" in page
    # 3 comparison figures per study, and each question's picture (tiny's second question
    # has nothing to compare: its levels did not run).
    assert page.count("data:image/png;base64,") == 3 + 3 + 1 + 1
    assert 'src="http' not in page and "<script" not in page
    assert "<h3>Max or average pooling in the classic net?</h3>" in page
    assert "<b>pool=max is better than pool=avg.</b>" in page


def test_the_studies_are_the_presets_with_a_study_block():
    presets = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    assert study_files.preset_names() == PRESETS == sorted(presets - {"speedrun"})


def test_a_book_rebuilds_from_its_small_files_alone(book_dir, tmp_path):
    book.write(book_dir, ["pooling", "tiny"])
    dest = tmp_path / "published"
    from mnistcnn.studies import publish

    publish.publish(book_dir, ["pooling", "tiny"], dest)
    kept = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert "pooling/0_pool=max,seed=0/.hydra/config.yaml" in kept
    assert "pooling/0_pool=max,seed=0/classification.csv" in kept
    assert "book.json" in kept and "STUDIES.md" in kept and "pooling/test_acc.png" in kept
    assert not any(k.endswith((".pt", "predictions.csv", ".html")) for k in kept)
    job = dest / "tiny" / "1_b"
    assert "host" not in json.loads((job / "summary.json").read_text())  # no machine names
    assert yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text()) == {
        "hydra": {"runtime": {"choices": {"variant": "tiny_4classes"}}}}

    def findings(folder):
        return (folder / "STUDIES.md").read_text().split("## Findings")[1].split("\n## ")[0]
    assert findings(dest) == findings(book_dir)


def test_publishing_again_replaces_the_earlier_publish(book_dir, tmp_path):
    from mnistcnn.studies import publish

    dest = tmp_path / "published"
    publish.publish(book_dir, ["pooling", "tiny"], dest)
    gone = "5_pool=avg,seed=2"  # a run of the earlier book that the new one no longer has
    shutil.rmtree(book_dir / "pooling" / gone)
    again = publish.publish(book_dir, ["pooling", "tiny"], dest)
    assert not (dest / "pooling" / gone).exists() and not again.failed
    assert len(again.studies[0].comparison.runs) == 5


def test_publish_stops_at_a_study_folder_it_did_not_write(book_dir, tmp_path):
    from mnistcnn.studies import publish

    dest = tmp_path / "published"
    publish.publish(book_dir, ["pooling", "tiny"], dest)
    (dest / "tiny" / "notes.txt").write_text("mine")
    before = sorted(p for p in dest.rglob("*"))
    with pytest.raises(UserError, match=r"tiny holds tiny/notes.txt, which a publish does not"):
        publish.publish(book_dir, ["pooling", "tiny"], dest)
    assert sorted(p for p in dest.rglob("*")) == before  # pooling was not cleared either
    other = tmp_path / "other_book"  # another book's own runs, checkpoints and all
    (other / "pooling" / "0_pool=max,seed=0").mkdir(parents=True)
    (other / "pooling" / "0_pool=max,seed=0" / "model.pt").write_bytes(b"weights")
    with pytest.raises(UserError, match=r"pooling/0_pool=max,seed=0/model.pt, which a pub"):
        publish.publish(book_dir, ["pooling"], other)
    assert (other / "pooling" / "0_pool=max,seed=0" / "model.pt").is_file()


def test_a_published_book_rebuilds_in_place(book_dir, tmp_path, capsys):
    dest = tmp_path / "published"
    command.run_studies(["--book-only", "--out", str(book_dir), "--publish", str(dest)])
    first = (dest / "STUDIES.md").read_text()
    (dest / "STUDIES.md").write_text("stale")
    files_before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    command.run_studies(["--book-only", "--out", str(dest), "--publish", str(dest)])
    assert (dest / "STUDIES.md").read_text() == first
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == files_before  # no html
    assert capsys.readouterr().err.splitlines()[-1] == f"published -> {dest / 'STUDIES.md'}"


# ----------------------------------------------------------------------------- the command
def test_unknown_study_is_one_line_listing_the_valid_ones(tmp_path):
    result = run_main("studies", "pooling", "speedrun", "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: unknown study speedrun; choose from " + ", ".join(PRESETS)
        + " (or none for all of them), or pass the path of a study file"]
    assert not (tmp_path / "b").exists()


def test_a_typo_in_an_override_stops_before_any_folder(tmp_path):
    result = run_main("studies", "pooling", "trainer.epoks=2", "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "trainer.epoks" in result.stderr
    assert not (tmp_path / "b").exists()


def test_option_mistakes_are_user_errors(monkeypatch):
    with pytest.raises(UserError, match="--resume continues a book: name its folder"):
        command.check(command.parse(["pooling", "--resume"]))
    with pytest.raises(UserError, match="--book-only writes the book of finished study"):
        command.check(command.parse(["--book-only"]))
    monkeypatch.setattr(command.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"--jobs needs Hydra's joblib launcher; install it"):
        command.check(command.parse(["--jobs", "2"]))
    found, overrides = command.check(command.parse(["tiny", "seed=0", "--quick", "pooling"]))
    assert [s.name for s in found] == ["tiny", "pooling"] and overrides == ["seed=0"]
    assert [s.name for s in command.check(command.parse([]))[0]] == PRESETS


DROPOUT_STUDY = """# @package _global_
defaults:
  - _self_
  - /quick: null
  - override /model: classic

trainer:
  epochs: 2

study:
  title: Dropout in the classic net
  questions:
    - ask: Does dropout 0.25 or 0.5 help the classic net?
      factor: model.dropout
      baseline: 0.0

hydra:
  sweeper:
    params:
      model.dropout: 0.0,0.25,0.5
      seed: 0,1,2
"""


def study_file(tmp_path: Path, text: str = DROPOUT_STUDY, name: str = "dropout") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("change, message", [
    (("factor: model.dropout", "factor: model.dropuot"),
     "question 1: unknown factor model.dropuot; name a key the sweep varies (model.dropout)"),
    (("factor: model.dropout", "factor: model.hidden"),
     "question 1: its sweep does not vary model.hidden (it varies model.dropout); add it to "
     "hydra.sweeper.params or ask about one of those"),
    (("baseline: 0.0", "baseline: 0.1"),
     "question 1: baseline 0.1 is not a level of model.dropout (0.0, 0.25, 0.5)"),
    (("baseline: 0.0", "baseline: 0.0\n      kind: biggest"),
     "question 1: kind biggest is not one of baseline, best, enough, describe"),
    (("baseline: 0.0", "baseline: 0.0\n      margin: -0.5"),
     "question 1: margin -0.5 must be a positive number of points of test accuracy"),
])
def test_a_wrong_study_file_is_one_line_before_anything_runs(tmp_path, change, message):
    path = study_file(tmp_path, DROPOUT_STUDY.replace(*change))
    with pytest.raises(UserError, match=re.escape(f"study dropout (dropout.yaml), {message}")):
        command.run_studies([path, "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def test_a_baseline_is_matched_by_value_not_spelling(tmp_path, capsys):
    """The sweep writes 0.0 and the runs record 0.0: baseline 0 is that level."""
    command.run_studies([study_file(tmp_path, DROPOUT_STUDY.replace("baseline: 0.0",
                                                                    "baseline: 0")),
                         "--dry-run"])
    assert "dropout: 3 arm(s) x 3 seed(s) = 9 runs" in capsys.readouterr().out


def test_a_misspelt_study_block_is_a_config_error(tmp_path):
    path = study_file(tmp_path, DROPOUT_STUDY.replace("study:", "stud:"))
    result = run_main("studies", path, "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "stud" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_study_file_without_questions_or_named_as_a_preset(tmp_path):
    bare = DROPOUT_STUDY.split("study:")[0] + "hydra:" + DROPOUT_STUDY.split("hydra:")[1]
    with pytest.raises(UserError, match=r"study dropout \(dropout.yaml\) asks nothing: add a "
                                        r"study: block"):
        command.run_studies([study_file(tmp_path, bare), "--dry-run"])
    with pytest.raises(UserError, match="has the name of the preset pooling; rename the file"):
        command.check(command.parse([study_file(tmp_path, name="pooling")]))
    with pytest.raises(UserError, match="study file nowhere.yaml does not exist"):
        command.check(command.parse(["nowhere.yaml"]))


def test_dry_run_plans_every_study_and_runs_nothing(tmp_path, capsys, calibrations):
    command.run_studies(["--dry-run", study_file(tmp_path), "pooling", "features", "--quick"])
    how = "calibrated: 3 epochs of 512 images per arm on cpu"
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"dropout: 3 arm(s) x 1 seed(s) = 3 runs; ~5m00s ({how})",
        # Its max arm is dropout's 0.5 (the classic net's default) at quick size: reused.
        f"pooling: 2 arm(s) x 1 seed(s) = 2 runs (1 reused from identical runs); "
        f"~1m40s ({how})",
        f"features: 4 arm(s) x 1 seed(s) = 4 runs; ~6m40s ({how})",
        f"in all: 9 runs, 9 to run (1 reused from identical runs); ~13m20s "
        f"({how}); no study was run"]
    assert len(calibrations) == 8 and all("quick=on" in job for job in calibrations)
    command.run_studies(["--dry-run", "tiny", "mobilenet"])
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"tiny: 5 arm(s) x 3 seed(s) = 15 runs; ~25m00s ({how})",
        f"mobilenet: 6 arm(s) x 3 seed(s) = 18 runs; ~30m00s ({how})"]


def test_book_runs_skip_reports_unless_asked(tmp_path):
    def args(*extra):
        opts = command.parse(["pooling", *extra])
        return command.study_overrides("pooling", tmp_path, opts, command.check(opts)[1])

    assert args()[:3] == ["+experiment=pooling", f"hydra.sweep.dir={tmp_path / 'pooling'}",
                          "report.enabled=false"]
    assert "report.enabled=false" not in args("--reports")
    assert args("report.plots=[loss]")[-1] == "report.plots=[loss]"
    assert "report.enabled=false" not in args("report.plots=[loss]")
    assert {"quick=on", "resume=true"} <= set(args("--quick", "--resume", "--out", "x"))


@pytest.fixture(scope="module")
def quick_book(synthetic_dir, tmp_path_factory):
    """A preset and a person's own study file (model.dropout at three levels) at smoke
    size, seeds 0 and 1 so that each arm can be tested."""
    root = tmp_path_factory.mktemp("studies")
    out = root / "book"
    path = study_file(root)
    args = ["studies", "pooling", path, "--quick", "seed=0,1", f"data.dir={synthetic_dir}",
            "data.val_size=200", "data.limit=400", "trainer.device=cpu", "--out", str(out)]
    return out, args, run_main(*args)  # its `train -m` children are real processes


def jobs_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0].isdigit())


@pytest.mark.slow  # ten smoke runs in a subprocess (shared by these tests)
def test_studies_quick_writes_the_book(quick_book):
    out, _, result = quick_book
    assert result.returncode == 0, result.stderr
    assert "[10/10 runs]" in result.stderr and "elapsed" in result.stderr
    assert len(jobs_of(out / "pooling")) == 4 and len(jobs_of(out / "dropout")) == 6
    for job in jobs_of(out / "pooling"):
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        assert (job / "classification.csv").is_file()
        assert not (job / "report.html").exists()  # reports only on request (--reports)
    assert (out / "study_files" / "experiment" / "dropout.yaml").is_file()
    assert (out / "pooling" / "comparison.md").is_file()
    # dropout=0.5 is the classic net's default: those runs are pooling's max runs, reused.
    pooling = {job.name: job for job in jobs_of(out / "pooling")}
    for job in jobs_of(out / "dropout"):
        summary = json.loads((job / "summary.json").read_text())
        if "model.dropout=0.5" not in job.name:
            assert "reused_from" not in summary
            continue
        source = pooling[Path(summary["reused_from"]).name]
        assert summary["reused_from"] == f"pooling/{source.name}" and "pool=max" in source.name
        for name in ("metrics.jsonl", "predictions.csv", "classification.csv", "model.pt"):
            assert (job / name).read_bytes() == (source / name).read_bytes()
    md = (out / "STUDIES.md").read_text()
    assert md.startswith("# Studies\n\n**Smoke runs, not findings")
    assert "| dropout | Does dropout 0.25 or 0.5 help the classic net? | **Smoke runs, not a " \
           "finding** | " in md
    assert "dropout=0.25 − dropout=0.0" in md and "n = 2 per arm" in md
    assert "| runs | 10, of which 8 trained on their own, 2 reused from identical runs" in md
    assert "## Machine and time" in md and "--quick" in md
    assert "data:image/png;base64," in (out / "studies.html").read_text()
    record = json.loads((out / book.BOOK_FILE).read_text())
    assert list(record["studies"]) == ["pooling", "dropout"]
    # The book speaks only of itself: --out as seen from where the command ran, no host.
    command = json.loads((out / book.BOOK_FILE).read_text())["commands"][-1]
    typed = shlex.split(command)
    assert typed[typed.index("--out") + 1] == os.path.relpath(out, ROOT)  # ran in ROOT
    assert "host" not in json.loads((jobs_of(out / "pooling")[0] / "summary.json").read_text())


@pytest.mark.slow  # ten smoke runs in a subprocess (shared by these tests)
def test_dry_run_of_a_started_book_counts_and_times_its_runs(quick_book, capsys):
    out, args, first = quick_book
    assert first.returncode == 0, first.stderr
    command.run_studies([*args[1:], "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"pooling: 2 arm(s) x 2 seed(s) = 4 runs; 4 complete in "
                               f"{out / 'pooling'}, 0 to run")
    again = [a.replace("seed=0,1", "seed=0,1,2") for a in args[1:]]
    command.run_studies([*again, "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pooling: 2 arm(s) x 3 seed(s) = 6 runs; 4 complete in ")
    assert "2 to run; ~" in lines[0] and lines[0].endswith("(from finished runs of the same arm)")


@pytest.mark.slow  # ten smoke runs in a subprocess (shared by these tests)
def test_book_only_and_publish_rebuild_without_training(quick_book, tmp_path, capsys):
    out, args, first = quick_book
    assert first.returncode == 0, first.stderr
    before = (out / "STUDIES.md").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    (out / "STUDIES.md").unlink()
    dest = tmp_path / "published"
    command.run_studies(["--book-only", "--out", str(out), "--publish", str(dest)])
    assert (out / "STUDIES.md").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == mtimes
    assert not list(dest.rglob("model.pt")) and len(list(dest.rglob("summary.json"))) == 10

    def findings(folder):
        return (folder / "STUDIES.md").read_text().split("## Findings")[1].split("\n## ")[0]
    assert findings(dest) == findings(out)
    capsys.readouterr()
    command.run_studies([*args[1:-1], str(dest), "--dry-run"])  # a published book continues
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pooling: 2 arm(s) x 2 seed(s) = 4 runs; 4 complete in ")
    assert lines[-1].startswith("in all: 10 runs, 0 to run")
    again = run_main(*args[:-1], str(dest), "--resume")  # and --resume trains nothing
    assert again.returncode == 0, again.stderr
    assert "[10/10 runs]" in again.stderr and not list(dest.rglob("model.pt"))
    assert findings(dest) == findings(out)


@pytest.mark.slow  # ten smoke runs in a subprocess (shared by these tests)
def test_resume_reruns_only_what_is_missing(quick_book):
    out, args, first = quick_book
    assert first.returncode == 0, first.stderr
    kept, lost = jobs_of(out / "pooling")[:2]
    before = {p: p.stat().st_mtime_ns for p in (kept / "summary.json", kept / "model.pt",
                                                 kept / "predictions.csv")}
    (lost / "summary.json").unlink()
    (lost / "model.pt").unlink()
    result = run_main(*args, "--resume")
    assert result.returncode == 0, result.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the completed run is kept
    assert json.loads((lost / "summary.json").read_text())["status"] == "completed"
    assert (lost / "model.pt").is_file()
    assert "[10/10 runs]" in result.stderr and "[8/10 runs]" not in result.stderr  # 9 kept
    record = json.loads((out / book.BOOK_FILE).read_text())
    assert len(record["commands"]) == 2 and record["commands"][1].endswith("--resume")


@pytest.mark.slow  # ten smoke runs in a subprocess (shared by these tests)
def test_a_book_folder_is_not_overwritten_without_resume(quick_book):
    out, args, _ = quick_book
    result = run_main(*args)
    assert result.returncode == 2 and "add --resume" in result.stderr
