"""Optimizers, schedules, losses and the loop, in-process on synthetic data."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from mnistcnn import models
from mnistcnn.base import errors
from mnistcnn.base.config import compose_config
from mnistcnn.base.errors import UserError
from mnistcnn.data import dataset
from mnistcnn.training import device as training_device
from mnistcnn.training import engine, factories
from mnistcnn.training.cuda_graph_policy import plan_graph
from mnistcnn.training.device import place_model, resolve_device, seed_everything

CPU = torch.device("cpu")


@pytest.mark.parametrize("overrides, cls, settings", [
    (["optim=adam", "optim.betas=[0.8,0.99]"], torch.optim.Adam, {"betas": (0.8, 0.99)}),
    (["optim=adamw", "optim.betas=[0.85,0.98]"], torch.optim.AdamW, {"betas": (0.85, 0.98)}),
    (["optim=sgd", "optim.momentum=0.8", "optim.nesterov=true"], torch.optim.SGD,
     {"momentum": 0.8, "nesterov": True}),
    (["optim=sgd", "optim.momentum=0"], torch.optim.SGD, {"momentum": 0, "nesterov": False}),
    (["optim=rmsprop", "optim.alpha=0.9", "optim.momentum=0.5"], torch.optim.RMSprop,
     {"alpha": 0.9, "momentum": 0.5}),
    (["optim=adadelta", "optim.rho=0.8"], torch.optim.Adadelta, {"rho": 0.8}),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_optimizer_is_built_with_its_settings(overrides, cls, settings):
    cfg = compose_config([*overrides, "optim.lr=0.003", "optim.weight_decay=0.001"]).optim
    opt = factories.make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.003 and group["weight_decay"] == 0.001
    for key, value in settings.items():
        assert group[key] == pytest.approx(value), key


def test_nesterov_without_momentum_is_a_user_error():
    cfg = compose_config(["optim=sgd", "optim.momentum=0", "optim.nesterov=true"]).optim
    with pytest.raises(UserError, match="needs optim.momentum > 0"):
        factories.make_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)


def lrs(sched_name, epochs=2, steps=5, optim="adam", **extra):
    cfg = compose_config([f"sched={sched_name}", f"optim={optim}",
                          *[f"sched.{k}={v}" for k, v in extra.items()]])
    opt = factories.make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optim)
    schedule = factories.make_schedule(opt, cfg.sched, epochs, steps)
    seen = []
    for _ in range(epochs):
        for _ in range(steps):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.after_batch()
        schedule.after_epoch({})
    return seen


def test_schedules():
    assert set(lrs("none")) == {1e-3}
    step = lrs("step", step_size=1, gamma=0.5)
    assert step[0] == 1e-3 and step[5] == pytest.approx(5e-4)
    cosine = lrs("cosine")
    assert cosine[0] == 1e-3 and cosine[-1] < 1e-4 and cosine == sorted(cosine, reverse=True)
    one = lrs("onecycle", max_lr=0.01)
    assert max(one) == pytest.approx(0.01, rel=0.05) and one[0] < 0.001 and one[-1] < one[0]
    # Adadelta has no momentum for one-cycle to cycle: only its learning rate cycles
    assert lrs("onecycle", optim="adadelta", max_lr=0.01) == pytest.approx(one)


# Targets smoothed by hand: (1 - 0.1) on the true class plus 0.1 / 3 everywhere.
SMOOTHED = torch.tensor([[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3], [0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]])


@pytest.mark.parametrize("name, expected", [
    ("cross_entropy", lambda z: -(SMOOTHED * z.log_softmax(1)).sum(1).mean()),
    ("nll", lambda z: -(SMOOTHED * z.log_softmax(1)).sum(1).mean()),
    ("mse", lambda z: ((z.softmax(1) - SMOOTHED) ** 2).mean()),
])
def test_losses_prefer_the_right_class_and_use_the_smoothing(name, expected):
    smoothed = factories.make_loss(compose_config([f"loss.name={name}",
                                                "loss.label_smoothing=0.1"]).loss, 3)
    plain = factories.make_loss(compose_config([f"loss.name={name}"]).loss, 3)
    y = torch.tensor([0, 2])
    good = torch.tensor([[5.0, 0, 0], [0, 0, 5.0]])
    assert smoothed(good, y) < smoothed(-good, y)
    assert torch.allclose(smoothed(good, y), expected(good))
    # Smoothing penalises a confident right answer: ignoring it would give the plain loss.
    assert smoothed(good, y) > plain(good, y) + 1e-3


def test_nll_and_cross_entropy_agree_without_smoothing():
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = factories.make_loss(compose_config([]).loss, 10)
    nll = factories.make_loss(compose_config(["loss.name=nll"]).loss, 10)
    assert torch.allclose(ce(logits, y), nll(logits, y))
    mse = factories.make_loss(compose_config(["loss.name=mse"]).loss, 10)
    expected = F.mse_loss(logits.softmax(1), F.one_hot(y, 10).float())
    assert torch.allclose(mse(logits, y), expected)


def test_deterministic_mode_is_each_runs_own():
    """A run with trainer.deterministic=true must not leave the mode on for the next run of
    the same process (an in-process sweep, a reused joblib worker)."""
    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(1, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def config(folder, *overrides):
    return compose_config([f"data.dir={folder}", "data.val_size=200", "model=classic",
                           "trainer.epochs=2", *overrides])


def training_of(cfg, resume=None) -> engine.Training:
    """A CPU Training of the config, on its data, with a new model (seeded first)."""
    seed_everything(cfg.seed)
    data = dataset.load(cfg.data, CPU, cfg.seed)
    return engine.Training(models.build(cfg.model, data.num_classes), data, cfg,
                           plan_graph(cfg, CPU), resume=resume)


def fit_synthetic(folder, *overrides):
    """(the Training's records, those fit yielded, the model, the data)."""
    training = training_of(config(folder, *overrides))
    seen = [epoch.record for epoch in engine.fit(training)]
    return training.records, seen, training.model, training.data


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
    loss_fn = factories.make_loss(compose_config([]).loss, 10)
    loss, acc, logits = engine.evaluate(model, data.test, data, loss_fn, 64)
    assert logits.shape == (len(data.test), 10)
    assert acc == pytest.approx((logits.argmax(1) == data.test.labels).float().mean().item())


def test_diverging_loss_stops_the_run(synthetic_dir):
    with pytest.raises(errors.Diverged, match="non-finite loss in epoch 1, batch"):
        fit_synthetic(synthetic_dir, "optim=sgd", "optim.lr=1e12", "model.dropout=0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_request_without_gpu_is_a_user_error():
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.cuda
def test_fit_on_the_gpu_learns_and_keeps_everything_there(synthetic_dir):
    assert resolve_device("auto").type == "cuda"
    cfg = config(synthetic_dir, "trainer.epochs=3", "trainer.device=cuda")
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    data = dataset.load(cfg.data, device, cfg.seed)
    model = place_model(models.build(cfg.model, data.num_classes), device)
    training = engine.Training(model, data, cfg, plan_graph(cfg, device))
    paths = [epoch.train_path for epoch in engine.fit(training)]
    records = training.records
    assert records[-1]["val/acc"] > 0.5
    assert all(math.isfinite(r["train/loss"]) for r in records)
    assert all(p.device.type == "cuda" for p in model.parameters())
    # trainer.cuda_graph=auto on a GPU, 28 full batches an epoch: the step was replayed.
    assert paths[-1]["train_path"] == "cuda_graph" and paths[-1]["graph_replays"] > 0, paths


def test_resuming_from_a_saved_state_gives_the_uninterrupted_records(synthetic_dir, tmp_path):
    overrides = ["data.augment.rotation=10", "sched=cosine", "optim=sgd"]
    full, *_ = fit_synthetic(synthetic_dir, *overrides)
    cfg = config(synthetic_dir, *overrides)
    saved = tmp_path / "state.pt"
    epochs = engine.fit(training_of(cfg))
    torch.save(next(epochs).state, saved)
    epochs.close()  # the run stops after its first epoch
    state = torch.load(saved, weights_only=True)
    torch.manual_seed(123)  # a fresh process would have other RNG states: the state restores them
    resumed = engine.Training(models.build(cfg.model, 10), dataset.load(cfg.data, CPU, cfg.seed),
                              cfg, plan_graph(cfg, CPU), resume=state)
    assert [epoch.record["epoch"] for epoch in engine.fit(resumed)] == [2]

    def strip(records):
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]
    assert strip(resumed.records) == strip(full)


def test_stop_request_raises_after_the_batch_in_flight(synthetic_dir):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == 3

    cfg = compose_config([f"data.dir={synthetic_dir}", "data.val_size=200", "model=tiny"])
    with pytest.raises(errors.Interrupted, match="epoch 1 after batch 2"):
        list(engine.fit(training_of(cfg), stop=stop))


def test_bf16_autocast_trains_and_reports_fp32_logits(synthetic_dir):
    records, _, model, data = fit_synthetic(synthetic_dir, "trainer.precision=bf16",
                                            "trainer.epochs=3")
    assert records[-1]["val/acc"] > 0.5
    loss_fn = factories.make_loss(compose_config([]).loss, 10)
    _, _, logits = engine.evaluate(model, data.test, data, loss_fn, 64, "bf16")
    assert logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def check_compiled_training_learns_like_eager(synthetic_dir):
    # Compiled kernels sum floats in another order, so near-ties flip and the numbers differ
    # slightly from eager ones (and between machines): assert what holds everywhere.
    # 512 training images: eight full batches and no ragged one, so no recompile for the
    # last batch of each epoch.
    small = ["model=tiny", "data.limit=512", "trainer.batch_size=32"]
    eager, *_ = fit_synthetic(synthetic_dir, *small)
    compiled, _, model, _ = fit_synthetic(synthetic_dir, *small, "trainer.compile=true")
    assert [set(r) for r in compiled] == [set(r) for r in eager]
    for records in (eager, compiled):
        assert all(math.isfinite(r[k]) for r in records for k in ("train/loss", "val/loss"))
        assert records[1]["train/loss"] < records[0]["train/loss"]
        assert records[1]["val/acc"] > 0.2  # chance is 0.1
    # The weights stay on the plain module: checkpoints and the report never see the wrapper.
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())


def test_compiled_training_learns_like_eager(synthetic_dir, monkeypatch):
    """torch.compile's tracing and autograd (backend aot_eager): the wrapper, the records and
    the checkpoint's keys, without Inductor's code generation (~25 s of C++ on a CPU)."""
    monkeypatch.setattr(training_device.torch, "compile",
                        functools.partial(torch.compile, backend="aot_eager"))
    check_compiled_training_learns_like_eager(synthetic_dir)


@pytest.mark.slow  # Inductor compiles C++ kernels: ~25 s with a cold cache
def test_inductor_compiled_training_learns_like_eager(synthetic_dir):
    check_compiled_training_learns_like_eager(synthetic_dir)
