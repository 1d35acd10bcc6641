"""Early stopping, targets, trainer.keep=best and sched=plateau: the stopper alone, the
loop on synthetic data (in-process), and runs and sweeps through the CLI."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import run_main

from mnistcnn import models
from mnistcnn.base.config import compose_config
from mnistcnn.base.config_checks import validate
from mnistcnn.base.errors import UserError
from mnistcnn.data import dataset
from mnistcnn.training import engine, factories
from mnistcnn.training.cuda_graph_policy import plan_graph
from mnistcnn.training.device import seed_everything
from mnistcnn.training.stopping import EarlyStopping


def feed(stopper: EarlyStopping, values, key="val/acc", model=None) -> list[int]:
    """Epochs fed until the stopper says stop (all of them if it never does)."""
    model = model or torch.nn.Linear(1, 1)
    fed = []
    for epoch, value in enumerate(values, 1):
        fed.append(epoch)
        stopper.update({"epoch": epoch, key: value, "epoch_time_s": 2.0}, model)
        if stopper.stopped:
            break
    return fed


def test_patience_counts_epochs_without_improvement():
    stopper = EarlyStopping("val/acc", patience=2)
    assert feed(stopper, [0.5, 0.6, 0.6, 0.55, 0.9]) == [1, 2, 3, 4]
    assert (stopper.best, stopper.best_epoch, stopper.stop_reason) == (0.6, 2, "patience")
    losses = EarlyStopping("val/loss", patience=1, min_delta=0.05)
    assert feed(losses, [1.0, 0.97, 0.5], key="val/loss") == [1, 2]  # 0.03 is no improvement
    assert losses.best_epoch == 1


def test_patience_zero_never_stops_but_still_tracks_the_best():
    stopper = EarlyStopping("train/loss")
    assert feed(stopper, [3.0, 1.0, 2.0, 2.5], key="train/loss") == [1, 2, 3, 4]
    assert stopper.best_epoch == 2 and not stopper.stopped


def test_target_stops_at_the_first_epoch_reaching_it_with_the_time_so_far():
    stopper = EarlyStopping("val/acc", target=0.9)
    assert feed(stopper, [0.5, 0.92, 0.95]) == [1, 2]
    summary = stopper.summary(epochs_asked=10, epochs_run=2)
    assert summary["stopped_early"] and summary["stop_reason"] == "target"
    assert summary["target_reached_epoch"] == 2 and summary["target_reached_s"] == 4.0
    assert summary["monitor"] == "val/acc" and summary["best/val/acc"] == 0.92


def test_a_target_reached_at_the_last_epoch_is_not_an_early_stop():
    stopper = EarlyStopping("val/acc", target=0.9)
    feed(stopper, [0.5, 0.92])
    assert not stopper.summary(epochs_asked=2, epochs_run=2)["stopped_early"]


def test_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    stopper = EarlyStopping("val/loss", patience=3, keep_best=True)
    feed(stopper, [1.0, 0.5, 0.7], key="val/loss", model=model)
    torch.save(stopper.state_dict(), tmp_path / "s.pt")
    again = EarlyStopping("val/loss", patience=3, keep_best=True)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (again.best, again.best_epoch, again.bad_epochs) == (0.5, 2, 1)
    assert torch.equal(again.best_weights["weight"], model.weight)


# ----------------------------------------------------------------------------- config checks
@pytest.mark.parametrize("overrides, message", [
    (["data.val_size=0", "trainer.early_stop.patience=2"], "leaves no validation split"),
    (["data.val_size=0", "trainer.keep=best"], "trainer.keep=best watches"),
    (["data.val_size=0", "sched=plateau"], "sched=plateau watches"),
    (["trainer.early_stop.monitor=val/f1"], "choose one of val/acc"),
    (["trainer.early_stop.target=99"], "an accuracy is a fraction"),
    (["trainer.early_stop.patience=-1"], "must be >= 0"),
    (["sched=plateau", "sched.factor=1.5"], "sched.factor"),
])
def test_bad_stopping_settings_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        validate(compose_config(overrides))


def test_train_loss_can_be_watched_without_a_val_split():
    validate(compose_config(["data.val_size=0", "trainer.keep=best",
                             "trainer.early_stop.monitor=train/loss"]))
    validate(compose_config(["data.val_size=0"]))  # nothing watches val/acc: no error


def test_val_monitor_without_val_split_is_one_line_before_any_run_folder(tmp_path):
    result = run_main("train", "data.val_size=0", "trainer.early_stop.patience=2",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "trainer.early_stop.monitor=train/loss" in result.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the loop
def training_of(folder, *overrides, resume=None) -> engine.Training:
    cfg = compose_config([f"data.dir={folder}", "data.val_size=200", "model=tiny",
                          "data.limit=300", "trainer.epochs=10", *overrides])
    seed_everything(cfg.seed)
    data = dataset.load(cfg.data, "cpu", cfg.seed)
    return engine.Training(models.build(cfg.model, 10), data, cfg,
                           plan_graph(cfg, torch.device("cpu")), resume=resume)


def fit(folder, *overrides, resume=None):
    """(every record of the run, resumed ones too; its early stopping), after fit's epochs."""
    training = training_of(folder, *overrides, resume=resume)
    for _ in engine.fit(training):
        pass
    return training.records, training.stopper


def strip(records):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]


# min_delta=1 makes every epoch after the first "no improvement" (accuracies are <= 1),
# so the stopping epoch is known in advance whatever the network learns.
NO_IMPROVEMENT = ["trainer.early_stop.min_delta=1"]


def test_fit_stops_after_patience_epochs_and_resumes_with_the_stopper_state(synthetic_dir,
                                                                            tmp_path):
    overrides = [*NO_IMPROVEMENT, "trainer.early_stop.patience=2", "trainer.keep=best"]
    training = training_of(synthetic_dir, *overrides)
    saved, early_stops = tmp_path / "state.pt", []
    for end in engine.fit(training):
        early_stops.append(end.early_stop)
        if end.record["epoch"] == 2:  # last.pt of a run stopped after epoch 2
            torch.save(end.state, saved)
    full, stopper = training.records, training.stopper
    assert [r["epoch"] for r in full] == [1, 2, 3] and stopper.stop_reason == "patience"
    assert stopper.best_epoch == 1
    assert early_stops == [None, None, stopper.describe()] and "for 2 epochs" in early_stops[2]
    # trainer.keep=best: after fit the model holds the best epoch's weights, not the last's.
    for key, value in training.model.state_dict().items():
        assert torch.equal(value, stopper.best_weights[key]), key

    state = torch.load(saved, weights_only=True)
    resumed, again = fit(synthetic_dir, *overrides, resume=state)
    # Without the saved stopper the resumed run would take epoch 3 as its first and best
    # epoch and train on to epoch 5.
    assert strip(resumed) == strip(full) and again.best_epoch == 1
    for key, value in stopper.best_weights.items():
        assert torch.equal(again.best_weights[key], value), key


def test_a_resumed_run_that_had_stopped_trains_no_more(synthetic_dir, tmp_path):
    overrides = [*NO_IMPROVEMENT, "trainer.early_stop.patience=1"]
    saved = tmp_path / "state.pt"
    training = training_of(synthetic_dir, *overrides)
    for end in engine.fit(training):
        torch.save(end.state, saved)
    full = training.records
    assert len(full) == 2
    resumed = training_of(synthetic_dir, *overrides, resume=torch.load(saved, weights_only=True))
    assert list(engine.fit(resumed)) == []
    assert strip(resumed.records) == strip(full) and resumed.stopper.stopped


def test_target_stops_the_loop_at_the_epoch_that_reached_it(synthetic_dir):
    records, stopper = fit(synthetic_dir, "data.limit=null", "trainer.early_stop.target=0.5")
    reached = [r["epoch"] for r in records if r["val/acc"] >= 0.5]
    assert reached == [records[-1]["epoch"]] and len(records) < 10
    assert stopper.target_epoch == records[-1]["epoch"]
    assert stopper.target_s == pytest.approx(sum(r["epoch_time_s"] for r in records))


# ----------------------------------------------------------------------------- plateau
def test_plateau_schedule_reduces_the_rate_after_patience_flat_epochs():
    cfg = compose_config(["sched=plateau", "sched.factor=0.5", "sched.patience=1"])
    opt = factories.make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optim)
    stopper = EarlyStopping("val/acc")
    schedule = factories.make_schedule(opt, cfg.sched, 10, 5, stopper.score)
    seen = []
    for acc in [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7]:
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.after_batch()  # plateau steps only after an epoch
        schedule.after_epoch({"val/acc": acc})
    # Flat at the 3rd value (1 epoch: patience) and reduced after the 4th, then again.
    assert seen == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4])
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_plateau_in_the_loop_halves_the_rate_exactly_when_the_monitor_stalls(synthetic_dir):
    records, _ = fit(synthetic_dir, "trainer.epochs=5", "sched=plateau", "sched.patience=0",
                     "sched.factor=0.5", "trainer.early_stop.monitor=val/loss")
    best, expected = float("inf"), [1e-3]
    for r in records[:-1]:
        improved = r["val/loss"] < best
        best = min(best, r["val/loss"])
        expected.append(expected[-1] * (1 if improved else 0.5))
    assert [r["lr"] for r in records] == pytest.approx(expected)


# ----------------------------------------------------------------------------- whole runs
def train(run_dir, data_dir, *overrides):
    return run_main("train", f"data.dir={data_dir}", "data.val_size=200", "model=tiny",
                    "data.limit=300", "trainer.device=cpu", "report.plots=[loss,accuracy]",
                    f"hydra.run.dir={run_dir}", *overrides)


def test_keep_best_scores_and_saves_the_best_epochs_weights(synthetic_dir, tmp_path):
    best = train(tmp_path / "best", synthetic_dir, "trainer.epochs=3", "trainer.keep=best",
                 *NO_IMPROVEMENT)
    first = train(tmp_path / "first", synthetic_dir, "trainer.epochs=1")
    assert best.returncode == 0 and first.returncode == 0, best.stderr + first.stderr
    s_best = json.loads((tmp_path / "best" / "summary.json").read_text())
    s_first = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert s_best["epochs"] == 3 and s_best["best_epoch"] == 1 and not s_best["stopped_early"]
    # The same seed trains the same first epoch: keep=best must hold exactly its weights.
    w_best = torch.load(tmp_path / "best" / "model.pt", weights_only=True)["model"]
    w_first = torch.load(tmp_path / "first" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(w_best[k], w_first[k]) for k in w_first)
    assert s_best["test/acc"] == s_first["test/acc"]
    assert s_best["final/val/acc"] != s_first["final/val/acc"]  # the last epoch differs


def test_an_early_stopped_run_records_it_and_a_sweep_shows_epochs_run(synthetic_dir, tmp_path):
    result = run_main("train", "-m", f"data.dir={synthetic_dir}", "data.val_size=200",
                      "model=tiny", "data.limit=500", "trainer.epochs=6",
                      "report.enabled=false", *NO_IMPROVEMENT,
                      "trainer.early_stop.patience=1,2", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    summaries = sorted((json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")),
                       key=lambda s: s["epochs"])
    assert [s["epochs"] for s in summaries] == [2, 3]
    assert all(s["stopped_early"] and s["best_epoch"] == 1 for s in summaries)
    assert all(s["stop_reason"] == "patience" and "best/val/acc" in s for s in summaries)
    with open(tmp_path / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["epochs"]) for r in rows) == [2, 3]


def test_the_curves_mark_the_best_and_the_stopping_epoch():
    from mnistcnn.reporting import plots

    records = [{"epoch": e, "train/acc": a, "val/acc": a} for e, a in
               enumerate([0.5, 0.8, 0.7, 0.6], 1)]
    fig = plots.curves(records, "acc", 0.79, "t", {"best val/acc (epoch 2)": 2,
                                                   "stopped early (epoch 4)": 4}, test_epoch=2)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[-3:] == ["test (epoch 2) 79.00%", "best val/acc (epoch 2)",
                           "stopped early (epoch 4)"]
    vertical = [line.get_xdata()[0] for line in ax.get_lines() if line.get_label() in labels[-2:]]
    assert vertical == [2, 4]
