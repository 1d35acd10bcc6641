"""The CUDA-graph training step: when it is used (checked on any machine), and on a GPU
(tests marked `cuda`) that graphed training is the eager training, replayed."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_cli

from mnistcnn import data as data_mod
from mnistcnn import engine, graphed, models
from mnistcnn.cli import compose_config
from mnistcnn.errors import UserError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cfg_of(*overrides):
    return compose_config(list(overrides))


# ----------------------------------------------------------------------------- any machine
def test_graph_is_used_only_where_it_can_be():
    assert graphed.graph_off_reason(cfg_of(), CUDA) is None
    assert "trains on cpu" in graphed.graph_off_reason(cfg_of(), CPU)
    assert graphed.graph_off_reason(cfg_of("trainer.cuda_graph=false"), CUDA) == \
        "trainer.cuda_graph=false"
    assert "trainer.compile" in graphed.graph_off_reason(cfg_of("trainer.compile=true"), CUDA)
    for optim in ("sgd", "rmsprop"):
        reason = graphed.graph_off_reason(cfg_of(f"optim={optim}", "sched=onecycle"), CUDA)
        assert "cycles optim.momentum" in reason
    assert graphed.graph_off_reason(cfg_of("optim=sgd", "sched=cosine"), CUDA) is None
    with pytest.raises(UserError, match="trainer.cuda_graph=true but CUDA graphs need a GPU"):
        graphed.graph_off_reason(cfg_of("trainer.cuda_graph=true"), CPU)


def test_only_scheduled_hyperparameters_become_tensors():
    assert graphed.scheduled_hyperparameters(cfg_of()) == ()
    assert graphed.scheduled_hyperparameters(cfg_of("sched=step")) == ("lr",)
    assert graphed.scheduled_hyperparameters(cfg_of("sched=onecycle")) == ("lr", "betas")
    assert graphed.optimizer_options("sgd", True) == {"fused": True}
    assert graphed.optimizer_options("adam", True) == {"capturable": True}
    assert graphed.optimizer_options("adam", False) == {}


def test_cuda_graph_true_on_a_cpu_is_one_line_and_exit_2(synthetic_dir, tmp_path):
    result = run_cli("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                     "trainer.epochs=1", "trainer.device=cpu", "trainer.cuda_graph=true",
                     "report.enabled=false",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: trainer.cuda_graph=true but CUDA graphs need a GPU and this run trains on cpu; "
        "use trainer.cuda_graph=auto or false"]


def test_bad_cuda_graph_value_is_a_user_error():
    from mnistcnn.config import validate
    with pytest.raises(UserError, match="trainer.cuda_graph=sometimes is out of range"):
        validate(cfg_of("trainer.cuda_graph=sometimes"))


def test_a_graphed_runs_optimizer_state_resumes_on_an_eager_optimizer():
    """last.pt of a GPU run holds capturable/fused flags; a CPU resume must drop them."""
    params = [torch.nn.Parameter(torch.ones(3))]
    saved_by_gpu = torch.optim.Adam(params, lr=0.1).state_dict()
    saved_by_gpu["param_groups"][0]["capturable"] = True
    opt = torch.optim.Adam(params, lr=0.1)
    opt.load_state_dict(graphed.with_optimizer_flags(saved_by_gpu, opt))
    assert opt.param_groups[0]["capturable"] is False
    params[0].grad = torch.ones(3)
    opt.step()  # a capturable group would refuse CPU parameters
    assert saved_by_gpu["param_groups"][0]["capturable"] is True  # the saved state is untouched


def test_schedule_values_reach_the_tensors_a_graph_reads():
    """What _capture installs and _refresh_hyperparameters keeps up to date, on CPU tensors."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, total_steps=10)
    step = graphed.CudaGraphStep(lambda: None, opt, ("lr", "betas"))
    step.hyper = [{"lr": torch.tensor(0.0), "betas": (torch.tensor(0.0), torch.tensor(0.0))}]
    step.written = [{"lr": None, "betas": None}]
    for _ in range(3):
        opt.step()
        sched.step()
        step._refresh_hyperparameters()
        group, hyper = opt.param_groups[0], step.hyper[0]
        assert isinstance(group["lr"], float)  # schedules and logs keep seeing floats
        assert hyper["lr"].item() == pytest.approx(group["lr"])
        assert [b.item() for b in hyper["betas"]] == pytest.approx(list(group["betas"]))


# ----------------------------------------------------------------------------- on a GPU
def fit_on(device, folder, *overrides, stop=None, on_epoch=None, resume=None):
    cfg = cfg_of(f"data.dir={folder}", "data.val_size=200", "model=classic",
                 "trainer.epochs=2", f"trainer.device={device}", *overrides)
    engine.seed_everything(cfg.seed)
    data = data_mod.load(cfg.data, torch.device(device), cfg.seed)
    model = engine.place_model(models.build(cfg.model, data.num_classes), torch.device(device))
    records = engine.fit(model, data, cfg, on_epoch or (lambda r, t: None), resume=resume,
                         stop=stop)
    return records, model


def assert_close(a: list[dict], b: list[dict], rel=1e-3, acc=0.01):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("train/loss", "val/loss"):
            assert x[key] == pytest.approx(y[key], rel=rel), key
        for key in ("train/acc", "val/acc"):
            assert abs(x[key] - y[key]) <= acc, key
        assert x["lr"] == pytest.approx(y["lr"])


@pytest.mark.cuda
@pytest.mark.parametrize("optim", ["adam", "adamw", "sgd", "rmsprop", "adadelta"])
def test_graphed_and_eager_training_agree(optim, synthetic_dir):
    overrides = [f"optim={optim}", "sched=cosine", "model.dropout=0", "loss.label_smoothing=0.1"]
    eager, _ = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=false", *overrides)
    graph, _ = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", *overrides)
    assert_close(graph, eager)


@pytest.mark.cuda
@pytest.mark.parametrize("model", ["conv5x5", "keras", "classic", "tiny", "mobilenet"])
def test_every_model_trains_graphed(model, synthetic_dir):
    records, _ = fit_on("cuda", synthetic_dir, f"model={model}", "trainer.cuda_graph=true",
                        "trainer.epochs=3")
    assert records[-1]["val/acc"] > 0.5


@pytest.mark.cuda
def test_graphed_run_with_schedule_augmentation_dropout_bf16_and_groups(synthetic_dir):
    overrides = ["sched=onecycle", "data.augment.rotation=10", "data.augment.brightness=0.3",
                 "model.dropout=0.3", "trainer.precision=bf16", "loss.name=nll",
                 "loss.label_smoothing=0.1", "trainer.epochs=3",
                 "data.classes={0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}"]
    graph, _ = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", *overrides)
    eager, _ = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=false", *overrides)
    assert all(math.isfinite(r["train/loss"]) for r in graph)
    assert graph[-1]["val/acc"] > 0.6
    # dropout draws differ between replays and eager kernels: agreement in kind, not in bits
    assert abs(graph[-1]["val/acc"] - eager[-1]["val/acc"]) < 0.1
    assert [r["lr"] for r in graph] == pytest.approx([r["lr"] for r in eager])


@pytest.mark.cuda
def test_mse_loss_trains_graphed(synthetic_dir):
    records, _ = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", "loss.name=mse",
                        "trainer.epochs=3")
    assert records[-1]["val/acc"] > 0.5


@pytest.mark.cuda
def test_graphed_resume_gives_the_uninterrupted_records(synthetic_dir, tmp_path):
    overrides = ["trainer.cuda_graph=true", "sched=cosine", "model.dropout=0",
                 "data.augment.rotation=10"]
    full, _ = fit_on("cuda", synthetic_dir, *overrides)
    saved = tmp_path / "state.pt"

    def stop_after_first(record, training):
        torch.save(training.state(), saved)
        raise engine.Interrupted(record["epoch"], 0)

    with pytest.raises(engine.Interrupted):
        fit_on("cuda", synthetic_dir, *overrides, on_epoch=stop_after_first)
    resumed, _ = fit_on("cuda", synthetic_dir, *overrides,
                        resume=torch.load(saved, weights_only=True))
    assert_close(resumed, full, rel=1e-4, acc=0.005)


@pytest.mark.cuda
def test_divergence_and_stop_requests_on_a_graphed_run(synthetic_dir):
    with pytest.raises(engine.Diverged, match="non-finite loss in epoch 1, batch"):
        fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", "optim=sgd", "optim.lr=1e12",
               "model.dropout=0")
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == 8  # after the warm-up and the capture: replays are running

    with pytest.raises(engine.Interrupted, match="epoch 1 after batch 7"):
        fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", stop=stop)


@pytest.mark.cuda
def test_cli_run_on_cuda_is_graphed_and_complete(synthetic_dir, tmp_path):
    import json

    result = run_cli("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                     "trainer.epochs=2", "trainer.device=cuda", "report.enabled=false",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert "runs eagerly" not in result.stdout + result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")
    assert summary["test/acc"] > 0.3
