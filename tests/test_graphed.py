"""The CUDA-graph training step: when it is used (checked on any machine), and on a GPU
(tests marked `cuda`) that graphed training is the eager training, replayed."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from conftest import run_cli
from torch.utils._python_dispatch import TorchDispatchMode

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
    assert graphed.optimizer_options("sgd", ("lr",)) == {"fused": True}
    assert graphed.optimizer_options("adam", ("lr",)) == {"capturable": True, "foreach": True}
    assert graphed.optimizer_options("adam", ("lr", "betas")) == {"capturable": True,
                                                                  "foreach": False}
    assert graphed.optimizer_options("adam", None) == {}


class HostTraffic(TorchDispatchMode):
    """Counts what would cross between host and GPU inside a step on a GPU, each of which
    breaks a CUDA-graph capture: reads of a tensor's value to the host (.item(), a tensor
    passed where a number is wanted) and tensors made from Python data (torch.tensor)."""

    def __init__(self):
        super().__init__()
        self.reads = self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        self.copies += func is torch.ops.aten.lift_fresh.default
        return func(*args, **(kwargs or {}))


GRAPHED_OPTIMIZER_SCHEDULES = [
    (optim, sched) for optim in ("adam", "adamw", "sgd", "rmsprop", "adadelta")
    for sched in ("none", "step", "cosine", "onecycle", "plateau")
    if graphed.graph_off_reason(cfg_of(f"optim={optim}", f"sched={sched}"), CUDA) is None]


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """Lets optimizers built with capturable=True step CPU parameters, so that the code path
    a captured step runs can be checked here."""
    for name in ("optimizer", "adam", "adamw", "sgd", "rmsprop", "adadelta"):
        module = importlib.import_module(f"torch.optim.{name}")
        if hasattr(module, "_get_capturable_supported_devices"):
            monkeypatch.setattr(module, "_get_capturable_supported_devices",
                                lambda supports_xla=True: ["cpu", "cuda"])


@pytest.mark.parametrize("optim,sched", GRAPHED_OPTIMIZER_SCHEDULES)
def test_a_graphed_optimizer_step_reads_nothing_to_the_host(optim, sched, capturable_on_cpu):
    """What would break the capture on a GPU, checked on the CPU: the optimizer step, built
    as a graphed run builds it and reading its scheduled hyperparameters from tensors as the
    graph does, must not read a tensor's value to the host."""
    momentum = ["optim.momentum=0.9"] if optim in ("sgd", "rmsprop") else []  # buffers too
    cfg = cfg_of(f"optim={optim}", f"sched={sched}", *momentum)
    reads = graphed.scheduled_hyperparameters(cfg)
    params = [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(4))]
    opt = engine.make_optimizer(params, cfg.optim, reads)

    def step():
        sum(p.square().sum() for p in params).backward()
        opt.step()

    graph_step = graphed.CudaGraphStep(step, opt, reads)
    step()  # the optimizer makes its state in the warm-up, outside the graph
    with graph_step.reading_tensors():
        group = opt.param_groups[0]
        assert all(torch.is_tensor(group[k][0] if k == "betas" else group[k]) for k in reads)
        with HostTraffic() as host:
            step()
    # Only reads: on CPU parameters the foreach optimizers add a torch.tensor(1.0) to their
    # step counts, a branch that CUDA parameters do not take.
    assert host.reads == 0
    assert opt.param_groups[0]["lr"] == cfg.optim.lr  # the float is back


@pytest.mark.parametrize("model", ["conv5x5", "keras", "classic", "tiny", "mobilenet"])
def test_the_training_step_has_no_host_traffic(model, synthetic_dir, capturable_on_cpu):
    """The whole step (gather, augmentation, forward, smoothed loss, backward, optimizer,
    totals) on the CPU, with the optimizer a graphed run builds: nothing crosses to the host
    and no tensor is made from Python data."""
    cfg = cfg_of(f"data.dir={synthetic_dir}", "data.val_size=200", f"model={model}",
                 "trainer.device=cpu", "data.augment.rotation=10", "data.augment.translate=0.1",
                 "data.augment.brightness=0.3", "loss.label_smoothing=0.1", "sched=onecycle",
                 "data.classes={0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}")
    data = data_mod.load(cfg.data, CPU, cfg.seed)
    training = engine.Training(models.build(cfg.model, data.num_classes), data, cfg)
    reads = graphed.scheduled_hyperparameters(cfg)
    training.opt = engine.make_optimizer(training.model.parameters(), cfg.optim, reads)
    training.model.train()
    training.new_epoch()
    engine.train_step(training, cfg.trainer.batch_size)  # the optimizer makes its state
    with graphed.CudaGraphStep(lambda: None, training.opt, reads).reading_tensors():
        with HostTraffic() as host:
            engine.train_step(training, cfg.trainer.batch_size)
    assert (host.reads, host.copies) == (0, 0)
    assert int(training.totals.cursor) == 2 * cfg.trainer.batch_size


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
    with step.reading_tensors():
        group, hyper = opt.param_groups[0], step.hyper[0]
        assert group["lr"] is hyper["lr"] and group["betas"][0] is hyper["betas"]
        assert group["betas"][1] == 0.999  # a number: one-cycle leaves beta2 alone
    for _ in range(3):
        opt.step()
        sched.step()
        step._refresh_hyperparameters()
        assert isinstance(group["lr"], float)  # schedules and logs keep seeing floats
        assert hyper["lr"].item() == pytest.approx(group["lr"])
        assert hyper["betas"].item() == pytest.approx(group["betas"][0])
    assert hyper["betas"].item() != pytest.approx(0.9)  # one-cycle did move beta1


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


@pytest.fixture(autouse=True)
def no_capture_falls_back(caplog):
    """A capture that fails trains eagerly with a warning, which would make a graphed-vs-eager
    comparison compare the eager loop with itself."""
    yield
    assert "capture of the training step failed" not in caplog.text


@pytest.mark.cuda
@pytest.mark.parametrize("optim,sched", [(o, "cosine") for o in
                                         ("adam", "adamw", "sgd", "rmsprop", "adadelta")]
                         + [("adam", "onecycle"), ("adamw", "onecycle")])
def test_graphed_and_eager_training_agree(optim, sched, synthetic_dir):
    overrides = [f"optim={optim}", f"sched={sched}", "model.dropout=0",
                 "loss.label_smoothing=0.1"]
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
