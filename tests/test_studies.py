"""The studies book: statistics, findings sentences, the writer on hand-made sweep folders,
and the `studies` command end to end on synthetic data (smoke run, then --resume)."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli, run_main

from mnistcnn import book, compare, studies
from mnistcnn.config import CONF_DIR
from mnistcnn.errors import UserError

DIGITS = [str(d) for d in range(10)]
GROUPS = {0: [0, 6], 1: [1, 7], 2: [2, 3, 5, 8], 3: [4, 9]}


# ----------------------------------------------------------------------------- statistics
def test_welch_matches_hand_computed_values():
    # means 0.98 and 0.96, both variances 1e-4, n = 3: se = sqrt(2e-4 / 3) = 0.0081650,
    # t = 0.02 / se = sqrt(6), df = (2e-4/3)^2 / (2 (1e-4/3)^2 / 2) = 4, t_0.975(4) = 2.7764.
    w = book.welch([0.97, 0.98, 0.99], [0.95, 0.96, 0.97])
    assert (w.n_a, w.n_b) == (3, 3)
    assert w.diff == pytest.approx(0.02)
    assert w.t == pytest.approx(math.sqrt(6))
    assert w.df == pytest.approx(4.0)
    assert w.low == pytest.approx(0.02 - 2.7764451 * 0.0081650, abs=1e-6)
    assert w.high == pytest.approx(0.02 + 2.7764451 * 0.0081650, abs=1e-6)
    assert w.p == pytest.approx(0.0705, abs=5e-4)  # t table: t = 2.449, 4 df, two-sided


def test_welch_uses_the_welch_satterthwaite_degrees_of_freedom():
    # var(a)/4 = (5/3)/4 = 0.41667, var(b)/2 = 2/2 = 1:
    # df = 1.41667^2 / (0.41667^2 / 3 + 1^2 / 1) = 1.8972; t = -0.5 / sqrt(1.41667) = -0.4201
    w = book.welch([1, 2, 3, 4], [2, 4])
    assert w.df == pytest.approx(1.8972, abs=1e-4)
    assert w.t == pytest.approx(-0.4201, abs=1e-4)
    assert w.diff == pytest.approx(-0.5) and w.low < w.diff < w.high


def test_welch_needs_two_values_per_arm_and_some_spread():
    assert book.welch([0.9], [0.8, 0.85]) is None
    assert "not possible with n = 1 and 2" in book.welch_text(None, 1, 2)
    flat = book.welch([0.9, 0.9], [0.8, 0.8])
    assert math.isnan(flat.p) and flat.low == flat.high == pytest.approx(0.1)
    assert "neither arm varies" in book.welch_text(flat, 2, 2)


# ----------------------------------------------------------------------------- run folders
def make_run(folder: Path, seed: int, test_acc: float | None, classes=None, **config):
    """A job folder as `train` leaves it; test_acc None makes a failed run."""
    cfg = {"model": {"name": "classic", "pool": config.get("pool", "max"), "hidden": 50},
           "data": {"name": "mnist", "val_size": 10000, "resplit": None, "limit": None,
                    "classes": classes},
           "optim": {"name": "adam", "lr": 0.001},
           "trainer": {"epochs": 10, "batch_size": 64, "device": "cpu"}, "seed": seed}
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    choices = {"variant": config["variant"]} if "variant" in config else {}
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    summary = {"status": "failed", "error": "CUDA out of memory", "seed": seed,
               "device": "cpu", "torch": "2.x", "host": "box"}
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
    return compare.build(compare.load_runs([folder])).rows


# ----------------------------------------------------------------------------- findings
def test_finding_names_the_winner_the_gap_the_spread_and_the_test(tmp_path):
    for i, (pool, acc) in enumerate([("max", 0.990), ("max", 0.991), ("max", 0.992),
                                     ("avg", 0.980), ("avg", 0.981), ("avg", 0.982)]):
        make_run(tmp_path / f"{i}_job", i % 3, acc, pool=pool)
    answer, winner = book.finding(rows_of(tmp_path))
    assert answer.startswith("pool=max wins, 1.00 points of test accuracy ahead of pool=avg "
                             "(99.10 ± 0.10% vs 98.10 ± 0.10%), more than their seed spread")
    assert "Welch p = " in answer and "n = 3 and 3" in answer
    assert winner == "99.10 ± 0.10% (n = 3)"


def test_finding_says_when_the_gap_is_within_the_seed_spread(tmp_path):
    for i, (pool, acc) in enumerate([("max", 0.99), ("max", 0.97), ("avg", 0.985),
                                     ("avg", 0.975)]):
        make_run(tmp_path / f"{i}_job", i % 2, acc, pool=pool)
    answer, _ = book.finding(rows_of(tmp_path))
    assert "within their seed spread, so the ranking may change" in answer


def test_finding_with_one_seed_or_one_arm_or_none(tmp_path):
    make_run(tmp_path / "a" / "0_job", 0, 0.99, pool="max")
    make_run(tmp_path / "a" / "1_job", 0, 0.98, pool="avg")
    answer, winner = book.finding(rows_of(tmp_path / "a"))
    assert answer.endswith("with one seed per arm the seed spread is unknown.")
    assert winner == "99.00% (n = 1)"
    make_run(tmp_path / "b" / "0_job", 0, 0.99, pool="max")
    make_run(tmp_path / "b" / "1_job", 0, None, pool="avg")
    assert book.finding(rows_of(tmp_path / "b"))[0] == (
        "Only pool=max completed: nothing to compare it with.")
    make_run(tmp_path / "c" / "0_job", 0, None)
    assert book.finding(rows_of(tmp_path / "c")) == ("No run completed: no answer.", "—")


# ----------------------------------------------------------------------------- the writer
@pytest.fixture
def book_dir(tmp_path) -> Path:
    """pooling: 2 arms x 3 seeds, one run failed; neurons: one seed per arm; tiny: 10 vs 4
    classes; the other studies never ran."""
    out = tmp_path / "book"
    specs = [("max", 0, 0.990), ("max", 1, 0.991), ("max", 2, 0.992),
             ("avg", 0, 0.980), ("avg", 1, 0.982), ("avg", 2, None)]
    for i, (pool, seed, acc) in enumerate(specs):
        make_run(out / "pooling" / f"{i}_pool={pool},seed={seed}", seed, acc, pool=pool)
    make_run(out / "neurons" / "0_a", 0, 0.97, pool="max")
    make_run(out / "neurons" / "1_b", 0, 0.96, pool="avg")
    make_run(out / "tiny" / "0_a", 0, 0.90, variant="tiny_10classes")
    make_run(out / "tiny" / "1_b", 0, 0.95, classes=GROUPS, variant="tiny_4classes")
    (out / book.BOOK_FILE).write_text(json.dumps({
        "wall_s": {"pooling": 61.0, "neurons": 5.0, "tiny": 7.0}, "machine": "test box",
        "commands": ["python -m mnistcnn studies pooling neurons tiny"]}))
    return out


def test_book_writes_findings_sections_and_the_machine(book_dir):
    written = book.write(book_dir, list(book.QUESTIONS))
    assert [r.path.name for r in written.failed] == ["5_pool=avg,seed=2"]
    md = (book_dir / "STUDIES.md").read_text()
    findings = md.split("## Findings")[1].split("\n## ")[0]
    assert f"| pooling | {book.QUESTIONS['pooling']} | pool=max wins, 1.00 points" in findings
    assert "| batchnorm |" in findings and "Not run yet." in findings
    pooling = md.split("## pooling")[1].split("\n## ")[0]
    assert "| seeds | 0, 1, 2 (3 per arm) |" in pooling and "| model | classic |" in pooling
    assert "| split | val_size=10000 |" in pooling  # unset keys left out
    assert "failed (seed 2, 5_pool=avg,seed=2) | CUDA out of memory" in pooling
    assert "Welch's t-test: t = " in pooling and "(n = 3 and 2)" in pooling
    assert "![test accuracy](pooling/test_acc.png)" in pooling
    assert (book_dir / "pooling" / "test_acc.png").is_file()
    assert "| 9 | 90.10 ± 0.10 | 89.10 ± 0.14 |" in pooling  # recall per class and arm
    neurons = md.split("## neurons")[1].split("\n## ")[0]
    assert "Welch's t-test is not possible with n = 1 and 1" in neurons
    tiny = md.split("## tiny")[1].split("\n## ")[0]
    assert "different class sets (4 classes: variant=tiny_4classes; 10 classes: " in tiny
    assert "| {2,3,5,8} |" in tiny
    machine = md.split("## Machine and time")[1]
    assert "| machine | test box |" in machine and "| wall time, all studies | 1m13s |" in machine
    assert "| wall time: pooling | 1m01s |" in machine and "| device | cpu |" in machine
    assert "| command | python -m mnistcnn studies pooling neurons tiny |" in machine


def test_book_html_is_self_contained(book_dir):
    book.write(book_dir, ["pooling", "tiny"])
    page = (book_dir / "studies.html").read_text()
    assert page.count('<section id="') == 2 and "<h2>Findings</h2>" in page
    assert page.count("data:image/png;base64,") == 6  # 3 figures per study
    assert 'src="http' not in page and "<script" not in page
    assert "not the same task" in page  # tiny's winner and runner-up differ in classes


def test_the_studies_are_the_presets_but_speedrun():
    presets = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    assert set(book.QUESTIONS) == presets - {"speedrun"}


# ----------------------------------------------------------------------------- the command
def test_unknown_study_is_one_line_listing_the_valid_ones(tmp_path):
    result = run_main("studies", "pooling", "speedrun", "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: unknown study speedrun; choose from " + ", ".join(book.QUESTIONS)
        + " (or none for all eight)"]
    assert not (tmp_path / "b").exists()


def test_a_typo_in_an_override_stops_before_any_folder(tmp_path):
    result = run_main("studies", "pooling", "trainer.epoks=2", "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "trainer.epoks" in result.stderr
    assert not (tmp_path / "b").exists()


def test_option_mistakes_are_user_errors(monkeypatch):
    with pytest.raises(UserError, match="--resume continues a book: name its folder"):
        studies.check(studies.parse(["pooling", "--resume"]))
    monkeypatch.setattr(studies.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"--jobs needs Hydra's joblib launcher; install it"):
        studies.check(studies.parse(["--jobs", "2"]))
    names, overrides = studies.check(studies.parse(["tiny", "seed=0", "--quick", "pooling"]))
    assert names == ["tiny", "pooling"] and overrides == ["seed=0"]
    assert studies.check(studies.parse([]))[0] == list(book.QUESTIONS)


def test_book_runs_skip_reports_unless_asked(tmp_path):
    def args(*extra):
        opts = studies.parse(["pooling", *extra])
        return studies.study_overrides("pooling", tmp_path, opts, studies.check(opts)[1])

    assert args()[:3] == ["+experiment=pooling", f"hydra.sweep.dir={tmp_path / 'pooling'}",
                          "report.enabled=false"]
    assert "report.enabled=false" not in args("--reports")
    assert args("report.plots=[loss]")[-1] == "report.plots=[loss]"
    assert "report.enabled=false" not in args("report.plots=[loss]")
    assert {"quick=on", "resume=true"} <= set(args("--quick", "--resume", "--out", "x"))


@pytest.fixture(scope="module")
def quick_book(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("studies") / "book"
    args = ["studies", "pooling", "--quick", f"data.dir={synthetic_dir}", "data.val_size=200",
            "data.limit=400", "trainer.device=cpu", "--out", str(out)]
    return out, args, run_cli(*args)


@pytest.mark.slow
def test_studies_quick_writes_the_book(quick_book):
    out, _, result = quick_book
    assert result.returncode == 0, result.stderr
    assert "[2/2 runs]" in result.stderr and "elapsed" in result.stderr
    jobs = sorted(p for p in (out / "pooling").iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 2
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        assert (job / "classification.csv").is_file()
        assert not (job / "report.html").exists()  # reports only on request (--reports)
    assert (out / "pooling" / "comparison.md").is_file()
    md = (out / "STUDIES.md").read_text()
    assert "| pooling |" in md and "## Machine and time" in md and "--quick" in md
    assert "data:image/png;base64," in (out / "studies.html").read_text()
    # The book speaks only of itself: --out as seen from where the command ran, no host.
    (command,) = json.loads((out / book.BOOK_FILE).read_text())["commands"]
    typed = shlex.split(command)
    assert typed[typed.index("--out") + 1] == os.path.relpath(out, ROOT)  # ran in ROOT
    assert "host" not in json.loads((jobs[0] / "summary.json").read_text())


@pytest.mark.slow
def test_resume_reruns_only_what_is_missing(quick_book):
    out, args, first = quick_book
    assert first.returncode == 0, first.stderr
    kept, lost = sorted(p for p in (out / "pooling").iterdir()
                        if p.is_dir() and p.name[0].isdigit())
    before = {p: p.stat().st_mtime_ns for p in (kept / "summary.json", kept / "model.pt",
                                                 kept / "predictions.csv")}
    (lost / "summary.json").unlink()
    (lost / "model.pt").unlink()
    result = run_cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the completed run is kept
    assert json.loads((lost / "summary.json").read_text())["status"] == "completed"
    assert (lost / "model.pt").is_file()
    assert "[1/2 runs]" in result.stderr and "[0/2 runs]" not in result.stderr  # 1 was kept
    record = json.loads((out / book.BOOK_FILE).read_text())
    assert len(record["commands"]) == 2 and record["commands"][1].endswith("--resume")


@pytest.mark.slow
def test_a_book_folder_is_not_overwritten_without_resume(quick_book):
    out, args, _ = quick_book
    result = run_cli(*args)
    assert result.returncode == 2 and "add --resume" in result.stderr
