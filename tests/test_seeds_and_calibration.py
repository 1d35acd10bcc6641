"""`studies --seeds N` and what `--dry-run` says about time and seeds: the plan and its
arithmetic on hand-made job folders, the renumbering that keeps a book's runs when its
sweep grows, the calibration of arms that have no finished run (on synthetic data), the
seeds each question needs, and --seeds 3 then --seeds 5 end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import run_main

from mnistcnn.base.errors import UserError
from mnistcnn.studies import calibration, command, study_files

POOLING = ["+experiment=pooling", "report.enabled=false"]


def make_job(folder: Path, number: int, pool: str, seed: int, seconds: float = 60.0,
             status: str = "completed") -> Path:
    """A job folder of the pooling preset as `train -m` leaves it, as far as the plan reads
    it: the overrides Hydra recorded and summary.json's status, started and finished."""
    job = folder / f"{number}_+experiment=pooling,model.pool={pool},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"model.pool={pool}", f"seed={seed}", "+experiment=pooling", "report.enabled=False"]))
    minutes, rest = divmod(seconds, 60)
    (job / "summary.json").write_text(json.dumps({
        "status": status, "seed": seed, "started": "2025-01-01T10:00:00+00:00",
        "finished": f"2025-01-01T10:{int(minutes):02d}:{int(rest):02d}+00:00"}))
    return job


def three_seed_book(folder: Path, seconds: dict[str, float] | None = None) -> list[Path]:
    """The pooling study's folder after `--seeds 3`: arm by arm, seeds innermost."""
    seconds = seconds or {"max": 60.0, "avg": 90.0}
    return [make_job(folder, i, pool, seed, seconds[pool])
            for i, (pool, seed) in enumerate((p, s) for p in ("max", "avg") for s in range(3))]


# ----------------------------------------------------------------------------- the plan
def test_a_plan_times_the_new_seeds_from_finished_runs_of_their_arm(tmp_path):
    three_seed_book(tmp_path / "pooling")
    p = study_files.plan("pooling", command.with_seeds(POOLING, 5), tmp_path / "pooling")
    assert (p.arms, p.seeds, p.runs, p.complete, p.pending) == (2, 5, 10, 6, 4)
    assert (p.timed, p.timed_s, p.untimed, p.finished) == (4, 2 * 60 + 2 * 90, {}, [3, 3])


def test_a_plan_leaves_arms_without_a_finished_run_to_calibrate(tmp_path):
    folder = tmp_path / "pooling"
    make_job(folder, 0, "max", 0, 60)
    make_job(folder, 1, "max", 1, 80)
    make_job(folder, 3, "avg", 0, 70, status="failed")  # no time: it did not complete
    p = study_files.plan("pooling", command.with_seeds(POOLING, 3), folder)
    assert (p.complete, p.timed, p.timed_s, p.finished) == (2, 1, 70.0, [2, 0])
    [(arm, (job, runs))] = p.untimed.items()
    assert dict(arm)["model.pool"] == "avg" and runs == 3
    assert "model.pool=avg" in job and "seed=0" in job
    assert study_files.arm_label("pooling", arm, POOLING) == "model.pool=avg"


def test_estimates_say_where_they_come_from():
    how = "3 epochs of 512 images per arm on cpu"
    assert command.estimate_text(0, 0, 0) == ""
    assert command.estimate_text(4, 750, 4) == "~12m30s (from finished runs of the same arm)"
    assert command.estimate_text(6, 0, 0, 840, 6, how) == f"~14m00s (calibrated: {how})"
    assert command.estimate_text(6, 100, 2, 200, 4, how) == (
        f"~5m00s (2 from finished runs of the same arm; 4 calibrated: {how})")
    assert command.estimate_text(6, 100, 2, 0, 0, how, ["pooling model.pool=avg: no data"]) \
        == ("~1m40s (2 from finished runs of the same arm; no estimate for 4 (pooling "
            "model.pool=avg: no data))")
    assert command.estimate_text(3, 0, 0, failed=["x: y"]) == "no estimate (x: y)"
    assert command.estimate_text(2, 3 * 3600 + 61, 2) == (
        "~3h01m (from finished runs of the same arm)")  # to the minute from an hour on


# ----------------------------------------------------------------------------- --seeds
@pytest.mark.parametrize("value", ["0", "-2", "three", "2.5"])
def test_a_bad_seed_count_is_one_line_before_anything_runs(tmp_path, value):
    result = run_main("studies", "pooling", f"--seeds={value}", "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --seeds {value}: must be a whole number >= 1 (the seeds 0..N-1 of every arm)"]
    assert not (tmp_path / "b").exists()


def test_seeds_replace_the_sweep_and_conflict_with_a_typed_seed():
    _, overrides = command.check(command.parse(["pooling", "--seeds", "4", "trainer.epochs=2"]))
    assert overrides == ["trainer.epochs=2", "seed=0,1,2,3"]
    assert command.with_seeds(["seed=7", "+seed=1", "a=1"], 1) == ["a=1", "seed=0"]
    with pytest.raises(UserError, match=r"^--seeds 4 and seed=0,1: choose one \(--seeds 4 "
                                        r"runs seeds 0..3\)$"):
        command.check(command.parse(["pooling", "--seeds", "4", "seed=0,1"]))
    with pytest.raises(UserError, match="--book-only trains nothing"):
        command.check(command.parse(["--book-only", "--out", "x", "--seeds", "4"]))
    opts = command.parse(["pooling", "--seeds", "5", "--out", "x"])
    args = command.study_overrides("pooling", Path("x"), opts, command.check(opts)[1])
    assert "resume=true" in args and args[-1] == "seed=0,1,2,3,4"  # continues a book


def test_a_study_file_without_a_seed_sweep_gets_one(tmp_path):
    path = tmp_path / "noseeds.yaml"
    path.write_text((Path(study_files.PRESET_DIR) / "pooling.yaml").read_text()
                    .replace("      seed: 0,1,2\n", ""))
    p = study_files.plan("noseeds", ["+experiment=pooling"], None)
    assert (p.arms, p.seeds) == (2, 3)  # the preset, for comparison
    search = study_files.search_overrides([study_files.StudyFile("noseeds", path, False)],
                                          tmp_path / "search")
    assert study_files.plan("noseeds", ["+experiment=noseeds", *search], None).runs == 2
    seeded = command.with_seeds(["+experiment=noseeds", *search], 4)
    assert (study_files.plan("noseeds", seeded, None).runs,
            study_files.plan("noseeds", seeded, None).seeds) == (8, 4)


def test_earlier_runs_move_to_their_jobs_numbers_when_the_sweep_grows(tmp_path):
    folder = tmp_path / "pooling"
    before = {j.name.split("_", 1)[1]: (j / "summary.json").read_bytes()
              for j in three_seed_book(folder)}
    (folder / "comparison.md").write_text("not a job")
    (folder / "7_stray").mkdir()  # no overrides.yaml: not a job of the sweep, left alone
    assert study_files.renumber_jobs(folder, command.with_seeds(POOLING, 5)) == 3
    names = sorted(p.name for p in folder.iterdir() if p.name[0].isdigit())
    assert names == sorted([f"{i}_+experiment=pooling,model.pool=max,seed={i}" for i in range(3)]
                           + [f"{5 + i}_+experiment=pooling,model.pool=avg,seed={i}"
                              for i in range(3)] + ["7_stray"])
    after = {p.parent.name.split("_", 1)[1]: p.read_bytes() for p in folder.glob("*/summary.json")}
    assert after == before  # every run kept, as it was
    assert study_files.renumber_jobs(folder, command.with_seeds(POOLING, 5)) == 0
    assert study_files.renumber_jobs(folder, command.with_seeds(POOLING, 3)) == 3  # and back
    assert (folder / "3_+experiment=pooling,model.pool=avg,seed=0").is_dir()
    # A job already at its new number (it ran there) keeps its place; the older copy stays.
    make_job(folder, 5, "avg", 0)
    assert study_files.renumber_jobs(folder, command.with_seeds(POOLING, 5)) == 2
    assert (folder / "3_+experiment=pooling,model.pool=avg,seed=0").is_dir()


# ----------------------------------------------------------------------------- calibration
def test_rates_scale_a_calibration_to_the_full_protocol(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(
        {"train_time_s": 3.1, "data_load_s": 0.5, "device": "cpu"}))
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "epoch_time_s": t}) + "\n"
        for e, t in ((1, 1.5), (2, 0.25), (3, 0.75))))  # warm-up; undisturbed; slowed
    # wall 6.1 s: fixed 3 s, of which 2.5 s the 10,000 test images (0.25 ms each); the
    # fastest epoch but the first: 0.25 s for 500 training images (0.5 ms each); 0.2 s per
    # epoch besides (3.1 s of training, 2.5 s of it in the epochs themselves).
    rates = calibration.rates_of(tmp_path, 6.1, calibration.Sizes(500, 0, 10000, 3))
    assert rates.fixed_s == pytest.approx(3.0) and rates.eval_s == pytest.approx(0.00025)
    assert rates.train_s == pytest.approx(0.0005) and rates.epoch_s == pytest.approx(0.2)
    assert rates.device == "cpu"
    full = calibration.Sizes(train=50000, val=10000, test=10000, epochs=10)
    assert rates.run_seconds(full) == pytest.approx(3 + 10 * (0.2 + 50000 * 0.0005 + 2.5))


def test_a_calibration_replaces_what_would_make_it_long():
    job = ["+experiment=pooling", "model.pool=avg", "seed=2", "trainer.epochs=20",
           "data.limit=9000", "logger=tensorboard", "resume=true", "data.dir=/d",
           "trainer.early_stop.patience=3"]
    got = calibration.calibration_overrides(job)
    assert got[:3] == ["+experiment=pooling", "model.pool=avg", "data.dir=/d"]
    assert got[3:] == [
        f"data.limit={calibration.CALIBRATION_IMAGES}", "data.val_size=0",
        f"trainer.epochs={calibration.CALIBRATION_EPOCHS}",
        "trainer.early_stop.monitor=train/loss", "trainer.early_stop.patience=0",
        "trainer.early_stop.target=null", "report.enabled=false", "logger=none",
        "resume=false", "seed=0"]


def test_calibration_times_each_distinct_arm_once_on_synthetic_data(synthetic_dir, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(calibration, "CALIBRATION_IMAGES", 64)
    monkeypatch.chdir(tmp_path)  # a calibration leaves nothing behind, here or anywhere
    calibrator = calibration.Calibrator()
    data = [f"data.dir={synthetic_dir}", "data.val_size=200", "trainer.device=cpu"]

    def job(pool: str, seed: int, epochs: int = 10) -> list[str]:
        return [*POOLING, *data, f"model.pool={pool}", f"seed={seed}", f"trainer.epochs={epochs}"]

    ten = calibrator.run_seconds(job("max", 0))
    assert ten > 0 and len(calibrator.rates) == 1
    [rates] = calibrator.rates.values()
    assert rates.device == "cpu" and rates.train_s > 0 and rates.eval_s > 0
    sizes = calibration.Sizes(train=1800, val=200, test=500, epochs=10)
    assert ten == pytest.approx(rates.run_seconds(sizes))
    assert calibrator.run_seconds(job("max", 2)) == ten  # seeds do not change the cost
    twenty = calibrator.run_seconds(job("max", 1, epochs=20))  # nor epochs the rates
    assert len(calibrator.rates) == 1 and twenty > ten
    calibrator.run_seconds(job("avg", 0))
    assert len(calibrator.rates) == 2
    assert calibrator.how == "3 epochs of 64 images per arm on cpu"
    assert list(tmp_path.iterdir()) == []


class FakeCalibrator:
    """Calibrator's interface, timing every run at 100 s without training."""

    calls: list[list[str]] = []

    def __init__(self):
        self.spent_s, self.rates = 0.0, {}

    def run_seconds(self, job):
        FakeCalibrator.calls.append(job)
        return 100.0

    how = "3 epochs of 512 images per arm on cpu"


@pytest.fixture
def fake_calibrator(monkeypatch):
    FakeCalibrator.calls = []
    monkeypatch.setattr(calibration, "Calibrator", FakeCalibrator)
    return FakeCalibrator


def test_dry_run_from_nothing_calibrates_each_arm_once(tmp_path, capsys, fake_calibrator):
    command.run_studies(["--dry-run", "pooling", "features", "--out", str(tmp_path / "new"),
                         "--no-reuse"])
    out = capsys.readouterr()
    how = "calibrated: 3 epochs of 512 images per arm on cpu"
    assert out.out.splitlines() == [
        f"pooling: 2 arm(s) x 3 seed(s) = 6 runs; ~10m00s ({how})",
        f"features: 8 arm(s) x 3 seed(s) = 24 runs; ~40m00s ({how})",
        f"in all: 30 runs, 30 to run; ~50m00s ({how}); no study was run"]
    assert len(fake_calibrator.calls) == 10  # arms, not runs
    assert "timing 10 arm(s) with no finished run" in out.err
    assert not (tmp_path / "new").exists()
    # Sharing: the 10-epoch arms of features are written from the 20-epoch runs' training.
    fake_calibrator.calls.clear()
    command.run_studies(["--dry-run", "features", "--out", str(tmp_path / "new")])
    out = capsys.readouterr()
    shared = "12 written from longer runs' first epochs, 120 epochs not trained"
    assert out.out.splitlines() == [
        f"features: 8 arm(s) x 3 seed(s) = 24 runs ({shared}); ~20m00s ({how})",
        f"in all: 24 runs, 24 to run ({shared}); ~20m00s ({how}); no study was run"]
    assert len(fake_calibrator.calls) == 4 and "timing 4 arm(s)" in out.err


# ----------------------------------------------------------------------------- questions
def answer(ask: str, seeds_needed=None, contrasts=()) -> SimpleNamespace:
    """What the dry run reads of a questions.Answer."""
    return SimpleNamespace(question=SimpleNamespace(ask=ask, procedure="baseline"),
                           seeds_needed=seeds_needed,
                           contrasts=list(contrasts))


def test_dry_run_of_a_book_says_what_more_seeds_would_decide(tmp_path, capsys, monkeypatch,
                                                            fake_calibrator):
    three_seed_book(tmp_path / "pooling", {"max": 60.0, "avg": 90.0})
    decided = SimpleNamespace(open=False, untested="")
    hopeless = SimpleNamespace(open=True, untested="")
    answers = [answer("Max or average pooling?", 5), answer("Is max enough?", None, [decided]),
               answer("Does avg help?", None, [hopeless]), answer("Again?", 5),
               answer("Many?", 8),
               answer("Different tasks?", None, []),
               answer("Recipes?", None, [SimpleNamespace(open=False, untested="")])]
    answers[-1].question.procedure = "describe"
    monkeypatch.setattr(command, "answers_of", lambda out, name: answers)
    command.run_studies(["--dry-run", "pooling", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"pooling: 2 arm(s) x 3 seed(s) = 6 runs; 6 complete in {tmp_path / 'pooling'}, 0 to run",
        "  Q1 Max or average pooling?: 5 seeds per arm would decide it: --seeds 5 adds 4 runs, "
        "~5m00s (from finished runs of the same arm)",
        "  Q2 Is max enough?: decided at n = 3",
        "  Q3 Does avg help?: not decided at n = 3, and no estimate of the seeds that would "
        "decide it",
        "  Q4 Again?: 5 seeds per arm would decide it: --seeds 5 adds 4 runs, ~5m00s (from "
        "finished runs of the same arm)",
        "  Q5 Many?: 8 seeds per arm would decide it: --seeds 8 adds 10 runs, ~12m30s (from "
        "finished runs of the same arm)",
        "  Q6 Different tasks?: described at n = 3, with no test for more seeds to decide",
        "  Q7 Recipes?: described at n = 3, with no test for more seeds to decide",
        "in all: 6 runs, 0 to run; no study was run"]
    assert fake_calibrator.calls == []  # every arm has finished runs to time it


def test_a_book_is_read_for_its_answers_without_writing_in_it(tmp_path):
    from test_studies import POOLING as BLOCK
    from test_studies import make_run

    for i, (pool, seed, acc) in enumerate([("max", 0, 0.990), ("max", 1, 0.991),
                                           ("avg", 0, 0.980), ("avg", 1, 0.982)]):
        make_run(tmp_path / "mine" / f"{i}_pool={pool},seed={seed}", seed, acc, pool=pool,
                 study=BLOCK)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert [a.question.ask for a in command.answers_of(tmp_path, "mine")] == [
        "Max or average pooling?"]
    assert sorted(p for p in tmp_path.rglob("*")) == before
    # A person's study file as the book keeps it: its questions as the file asks them now.
    copy = tmp_path / study_files.BOOK_COPIES / "experiment" / "mine.yaml"
    copy.parent.mkdir(parents=True)
    copy.write_text(yaml.safe_dump({"study": {**BLOCK, "questions": [
        {**BLOCK["questions"][0], "ask": "Max or average, as the file asks now?"}]}}))
    before = sorted(p for p in tmp_path.rglob("*"))
    asked = [a.question.ask for a in command.answers_of(tmp_path, "mine")]
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert asked == ["Max or average, as the file asks now?"]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow  # two `train -m` processes, 10 smoke runs
def test_more_seeds_on_a_book_train_only_the_new_seeds(synthetic_dir, tmp_path):
    out = tmp_path / "book"
    args = ["studies", "pooling", "--quick", f"data.dir={synthetic_dir}", "data.val_size=100",
            "data.limit=64", "trainer.device=cpu", "--out", str(out)]
    first = run_main(*args, "--seeds", "3")  # its `train -m` children are real processes
    assert first.returncode == 0, first.stderr
    runs = {p.parent.name.split("_", 1)[1]: (p.read_text(), p.stat().st_mtime_ns)
            for p in (out / "pooling").glob("*/summary.json")}
    assert len(runs) == 6
    second = run_main(*args, "--seeds", "5")
    assert second.returncode == 0, second.stderr
    assert "pooling: 3 earlier run folder(s) renamed" in second.stderr
    assert "[10/10 runs]" in second.stderr
    assert not re.search(r"\[[0-5]/10 runs\]", second.stderr)  # it started with 6 done
    jobs = sorted((p for p in (out / "pooling").iterdir() if p.name[0].isdigit()),
                  key=lambda p: int(p.name.split("_")[0]))
    assert [p.name for p in jobs] == [
        f"{i}_+experiment=pooling,data.limit=64,data.val_size=100,model.pool={pool},quick=on,"
        f"seed={seed},trainer.epochs=1"
        for i, (pool, seed) in enumerate((p, s) for p in ("max", "avg") for s in range(5))]
    for job in jobs:
        summary = job / "summary.json"
        assert json.loads(summary.read_text())["status"] == "completed"
        name = job.name.split("_", 1)[1]
        if name in runs:  # the first book's runs: not trained again
            assert (summary.read_text(), summary.stat().st_mtime_ns) == runs[name]
    planned = run_main(*args[:-2], "--out", str(out), "--seeds", "5", "--dry-run")
    assert planned.stdout.startswith(f"pooling: 2 arm(s) x 5 seed(s) = 10 runs; 10 complete "
                                     f"in {out / 'pooling'}, 0 to run")
