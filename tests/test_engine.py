"""Optimizers, schedules, losses and the loop, in-process on synthetic data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mnistcnn import data as data_mod
from mnistcnn import engine, models
from mnistcnn.cli import compose_config
from mnistcnn.errors import UserError


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "adadelta"])
def test_every_optimizer_is_built_with_its_settings(name):
    cfg = compose_config([f"optim={name}", "optim.weight_decay=0.001"]).optim
    opt = engine.make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    assert opt.param_groups[0]["lr"] == cfg.lr and opt.param_groups[0]["weight_decay"] == 0.001


def test_nesterov_without_momentum_is_a_user_error():
    cfg = compose_config(["optim=sgd", "optim.momentum=0", "optim.nesterov=true"]).optim
    with pytest.raises(UserError, match="needs optim.momentum > 0"):
        engine.make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)


def lrs(sched_name, epochs=2, steps=5, **extra):
    cfg = compose_config([f"sched={sched_name}", *[f"sched.{k}={v}" for k, v in extra.items()]])
    opt = engine.make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optim)
    sched, unit = engine.make_scheduler(opt, cfg.sched, epochs, steps)
    seen = []
    for _ in range(epochs):
        for _ in range(steps):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            if unit == "batch":
                sched.step()
        if unit == "epoch":
            sched.step()
    return seen


def test_schedules():
    assert set(lrs("none")) == {1e-3}
    step = lrs("step", step_size=1, gamma=0.5)
    assert step[0] == 1e-3 and step[5] == pytest.approx(5e-4)
    cosine = lrs("cosine")
    assert cosine[0] == 1e-3 and cosine[-1] < 1e-4 and cosine == sorted(cosine, reverse=True)
    one = lrs("onecycle", max_lr=0.01)
    assert max(one) == pytest.approx(0.01, rel=0.05) and one[0] < 0.001 and one[-1] < one[0]


@pytest.mark.parametrize("name", ["cross_entropy", "nll", "mse"])
def test_losses_prefer_the_right_class(name):
    cfg = compose_config([f"loss.name={name}", "loss.label_smoothing=0.1"]).loss
    loss = engine.make_loss(cfg, 3)
    y = torch.tensor([0, 2])
    good = torch.tensor([[5.0, 0, 0], [0, 0, 5.0]])
    assert loss(good, y) < loss(-good, y)


def test_nll_and_cross_entropy_agree_without_smoothing():
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = engine.make_loss(compose_config([]).loss, 10)
    nll = engine.make_loss(compose_config(["loss.name=nll"]).loss, 10)
    assert torch.allclose(ce(logits, y), nll(logits, y))
    mse = engine.make_loss(compose_config(["loss.name=mse"]).loss, 10)
    expected = F.mse_loss(logits.softmax(1), F.one_hot(y, 10).float())
    assert torch.allclose(mse(logits, y), expected)


def fit_synthetic(folder, *overrides):
    cfg = compose_config([f"data.dir={folder}", "data.val_size=200", "model=classic",
                          "trainer.epochs=2", *overrides])
    engine.seed_everything(cfg.seed)
    data = data_mod.load(cfg.data, "cpu", cfg.seed)
    model = models.build(cfg.model, data.num_classes)
    seen = []
    records = engine.fit(model, data, cfg, lambda record, _training: seen.append(record))
    return records, seen, model, data


def test_fit_records_every_metric_and_is_repeatable(synthetic_dir):
    records, seen, *_ = fit_synthetic(synthetic_dir, "data.augment.rotation=10")
    assert seen == records and [r["epoch"] for r in records] == [1, 2]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_time_s"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert records[0]["acc_change"] is None
    assert records[1]["acc_change"] == pytest.approx(records[1]["val/acc"] - records[0]["val/acc"])
    again, *_ = fit_synthetic(synthetic_dir, "data.augment.rotation=10")
    strip = [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]
    assert strip == [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in again]


def test_fit_learns_and_evaluate_agrees_with_predictions(synthetic_dir):
    records, _, model, data = fit_synthetic(synthetic_dir, "trainer.epochs=3")
    assert records[-1]["val/acc"] > 0.5
    loss_fn = engine.make_loss(compose_config([]).loss, 10)
    loss, acc, logits = engine.evaluate(model, data.test, data, loss_fn, 64)
    assert logits.shape == (len(data.test), 10)
    assert acc == pytest.approx((logits.argmax(1) == data.test.labels).float().mean().item())


def test_diverging_loss_stops_the_run(synthetic_dir):
    with pytest.raises(engine.Diverged, match="non-finite loss in epoch 1, batch"):
        fit_synthetic(synthetic_dir, "optim=sgd", "optim.lr=1e12", "model.dropout=0")


def test_cuda_request_without_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA GPU"):
        engine.resolve_device("cuda")
    assert engine.resolve_device("auto").type == "cpu"


def test_resuming_from_a_saved_state_gives_the_uninterrupted_records(synthetic_dir, tmp_path):
    overrides = ["data.augment.rotation=10", "sched=cosine", "optim=sgd"]
    full, *_ = fit_synthetic(synthetic_dir, *overrides)
    cfg = compose_config([f"data.dir={synthetic_dir}", "data.val_size=200", "model=classic",
                          "trainer.epochs=2", *overrides])
    engine.seed_everything(cfg.seed)
    data = data_mod.load(cfg.data, "cpu", cfg.seed)
    saved = tmp_path / "state.pt"

    def stop_after_first(record, training):
        torch.save(training.state(), saved)
        raise engine.Interrupted(record["epoch"], 0)

    with pytest.raises(engine.Interrupted):
        engine.fit(models.build(cfg.model, 10), data, cfg, stop_after_first)
    torch.manual_seed(123)  # a fresh process would have other RNG states: the state restores them
    state = torch.load(saved, weights_only=True)
    resumed = engine.fit(models.build(cfg.model, 10), data, cfg, lambda r, t: None, resume=state)

    def strip(records):
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]
    assert strip(resumed) == strip(full)


def test_stop_request_raises_after_the_batch_in_flight(synthetic_dir):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == 3

    cfg = compose_config([f"data.dir={synthetic_dir}", "data.val_size=200", "model=tiny"])
    data = data_mod.load(cfg.data, "cpu", cfg.seed)
    with pytest.raises(engine.Interrupted, match="epoch 1 after batch 2"):
        engine.fit(models.build(cfg.model, 10), data, cfg, lambda r, t: None, stop=stop)


def test_bf16_autocast_trains_and_reports_fp32_logits(synthetic_dir):
    records, _, model, data = fit_synthetic(synthetic_dir, "trainer.precision=bf16",
                                            "trainer.epochs=3")
    assert records[-1]["val/acc"] > 0.5
    loss_fn = engine.make_loss(compose_config([]).loss, 10)
    _, _, logits = engine.evaluate(model, data.test, data, loss_fn, 64, "bf16")
    assert logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_compiled_training_matches_eager(synthetic_dir):
    eager, *_ = fit_synthetic(synthetic_dir, "model=tiny", "trainer.epochs=1")
    compiled, _, model, _ = fit_synthetic(synthetic_dir, "model=tiny", "trainer.epochs=1",
                                          "trainer.compile=true")
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert compiled[0][key] == pytest.approx(eager[0][key], rel=1e-3, abs=1e-3), key
    # The weights stay on the plain module: checkpoints and the report never see the wrapper.
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())
