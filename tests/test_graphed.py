"""The CUDA-graph training step: when it is used (checked on any machine), and on a GPU
(tests marked `cuda`) that graphed training is the eager training, replayed."""

from __future__ import annotations

import contextlib
import gc
import importlib
import math
import weakref

import pytest
import torch
from conftest import run_cli, run_main
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mnistcnn import models
from mnistcnn.base import errors
from mnistcnn.base.config import compose_config
from mnistcnn.base.errors import UserError
from mnistcnn.data import dataset
from mnistcnn.training import cuda_graph, engine, factories
from mnistcnn.training.cuda_graph_policy import GraphPlan, plan_graph, scheduled_hyperparameters
from mnistcnn.training.device import place_model, seed_everything

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda"), torch.device("meta")


def cfg_of(*overrides):
    return compose_config(list(overrides))


# ----------------------------------------------------------------------------- any machine
def eager_reason(*overrides, device=CUDA):
    return plan_graph(cfg_of(*overrides), device).eager_reason


def test_graph_is_used_only_where_it_can_be():
    assert eager_reason() is None
    assert "trains on cpu" in eager_reason(device=CPU)
    assert eager_reason("trainer.cuda_graph=false") == "trainer.cuda_graph=false"
    assert "trainer.compile" in eager_reason("trainer.compile=true")
    for optim in ("sgd", "rmsprop"):
        assert "cycles optim.momentum" in eager_reason(f"optim={optim}", "sched=onecycle")
    assert eager_reason("optim=sgd", "sched=cosine") is None
    with pytest.raises(UserError, match="trainer.cuda_graph=true but CUDA graphs need a GPU"):
        plan_graph(cfg_of("trainer.cuda_graph=true"), CPU)


def test_the_plan_carries_what_the_run_builds():
    assert plan_graph(cfg_of("sched=cosine"), CUDA) == GraphPlan(None, False, ("lr",))
    assert plan_graph(cfg_of("trainer.cuda_graph=true"), CUDA) == GraphPlan(None, True, ())
    assert plan_graph(cfg_of("sched=cosine"), CPU) == GraphPlan(
        "CUDA graphs need a GPU and this run trains on cpu", False, None)


def test_only_scheduled_hyperparameters_become_tensors():
    assert scheduled_hyperparameters(cfg_of()) == ()
    assert scheduled_hyperparameters(cfg_of("sched=step")) == ("lr",)
    assert scheduled_hyperparameters(cfg_of("sched=onecycle")) == ("lr", "betas")
    assert factories.optimizer_options("sgd", ("lr",)) == {"fused": True}
    assert factories.optimizer_options("adam", ("lr",)) == {"capturable": True,
                                                             "foreach": True}
    assert factories.optimizer_options("adam", ("lr", "betas")) == {"capturable": True,
                                                                      "foreach": False}
    assert factories.optimizer_options("adam", None) == {}


def test_cuda_graph_true_on_a_split_too_small_for_the_capture_is_a_user_error(synthetic_dir):
    """An epoch must hold the warm-up steps and the capture in full-size batches, or a run
    with trainer.cuda_graph=true would train eagerly all along; known once the data is."""
    cfg = cfg_of(f"data.dir={synthetic_dir}", "data.val_size=200", "model=tiny",
                 "data.limit=200", "trainer.cuda_graph=true")  # 3 full batches of 64
    data = dataset.load(cfg.data, CPU, cfg.seed)
    plan = plan_graph(cfg, CUDA)
    with pytest.raises(UserError) as error:
        engine.Training(models.build(cfg.model, data.num_classes), data, cfg, plan)
    assert str(error.value) == (
        "trainer.cuda_graph=true but an epoch of 200 training images has 3 full batches of "
        "64, and the capture comes after 3 warm-up steps; use trainer.batch_size=50 or less, "
        "or trainer.cuda_graph=auto")
    plan.check_reaches_capture(200, 50)  # 4 full batches: the 4th is captured
    GraphPlan(None).check_reaches_capture(200, 64)  # auto: the run records why it was eager
    with pytest.raises(UserError, match="has 0 full batches of 64, .*; use trainer.cuda_graph"):
        plan.check_reaches_capture(3, 64)


class HostTraffic(TorchDispatchMode):
    """Counts, op by op, what breaks or silently falsifies a CUDA-graph capture when the step
    runs on a GPU: reads of a tensor's value to the host (.item(), a tensor passed where a
    number is wanted), tensors made from Python data (torch.tensor: a host-to-device copy),
    shapes that depend on the data (nonzero, masked_select, boolean-mask indexing: the host
    waits for the count), and tensors on another device than the step's (a CPU index into
    device tensors, a 0-dim CPU tensor whose value a capture bakes in, a copy across
    devices). The last is visible only when the step's tensors are not on the CPU: see
    test_the_training_step_runs_off_the_host."""

    DYNAMIC = {torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
               torch.ops.aten._unique2.default, torch.ops.aten.unique_dim.default,
               torch.ops.aten.unique_consecutive.default}
    INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default,
                torch.ops.aten.index_put.default, torch.ops.aten._index_put_impl_.default}

    def __init__(self, device: torch.device = CPU):
        super().__init__()
        self.device = device
        self.seen: dict[str, list[str]] = {"reads": [], "from_python": [], "dynamic": [],
                                           "off_device": []}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = [x for x in tree_leaves((args, kwargs)) if torch.is_tensor(x)]
        name = str(func)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.seen["reads"].append(name)
        if func is torch.ops.aten.lift_fresh.default:
            self.seen["from_python"].append(name)
        if func in self.DYNAMIC or (func in self.INDEXING and any(
                x.dtype == torch.bool for x in tree_leaves(args[1]) if torch.is_tensor(x))):
            self.seen["dynamic"].append(name)
        out = func(*args, **kwargs)
        devices = {x.device for x in leaves + [x for x in tree_leaves(out) if torch.is_tensor(x)]}
        if "device" in kwargs:
            devices.add(torch.device(kwargs["device"]))
        if devices - {self.device}:
            self.seen["off_device"].append(f"{name} on {sorted(map(str, devices))}")
        return out

    def found(self, *kinds: str) -> dict[str, list[str]]:
        """The ops seen of the given kinds (all kinds by default), for an assertion message."""
        return {k: v for k, v in self.seen.items() if v and (not kinds or k in kinds)}


def graphed_training_step_is_clean(training: engine.Training, reads: tuple[str, ...],
                                   device: torch.device, *kinds: str) -> HostTraffic:
    """Build the optimizer as a graphed run does, run one step to make its state (the
    warm-up), then run the step as the graph would capture it, counting host traffic."""
    cfg = training.cfg
    training.opt = factories.make_optimizer(training.model.parameters(), cfg.optim, reads)
    training.model.train()
    training.new_epoch()
    engine.train_step(training, cfg.trainer.batch_size)
    step = cuda_graph.CudaGraphStep(engine.train_step, training.opt, reads)
    step._make_tensors()
    with step.holding_tensors(), HostTraffic(device) as host:
        engine.train_step(training, cfg.trainer.batch_size)
    return host


GRAPHED_OPTIMIZER_SCHEDULES = [
    (optim, sched) for optim in ("adam", "adamw", "sgd", "rmsprop", "adadelta")
    for sched in ("none", "step", "cosine", "onecycle", "plateau")
    if eager_reason(f"optim={optim}", f"sched={sched}") is None]


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """Lets optimizers built with capturable=True step CPU (and meta) parameters, so that the
    code path a captured step runs can be checked here."""
    for name in ("optimizer", "adam", "adamw", "sgd", "rmsprop", "adadelta"):
        module = importlib.import_module(f"torch.optim.{name}")
        if hasattr(module, "_get_capturable_supported_devices"):
            monkeypatch.setattr(module, "_get_capturable_supported_devices",
                                lambda supports_xla=True: ["cpu", "cuda", "meta"])


def optimizer_step(optim: str, sched: str, device: torch.device):
    """(step function, optimizer, graph reads) for two small parameters on `device`."""
    momentum = ["optim.momentum=0.9"] if optim in ("sgd", "rmsprop") else []  # buffers too
    cfg = cfg_of(f"optim={optim}", f"sched={sched}", *momentum)
    reads = scheduled_hyperparameters(cfg)
    params = [torch.nn.Parameter(torch.ones(4, 3, device=device)),
              torch.nn.Parameter(torch.ones(4, device=device))]
    opt = factories.make_optimizer(params, cfg.optim, reads)

    def step():
        sum(p.square().sum() for p in params).backward()
        opt.step()

    return step, opt, reads


@pytest.mark.parametrize("optim,sched", GRAPHED_OPTIMIZER_SCHEDULES)
def test_a_graphed_optimizer_step_reads_nothing_to_the_host(optim, sched, capturable_on_cpu):
    """The optimizer step as a graphed run builds it, reading its scheduled hyperparameters
    from tensors as the graph does, on the CPU: no value read to the host, no data-dependent
    shape. (On CPU parameters the foreach optimizers add a torch.tensor(1.0) to their step
    counts, a branch CUDA parameters do not take: the meta-device test below covers that.)"""
    step, opt, reads = optimizer_step(optim, sched, CPU)
    graph_step = cuda_graph.CudaGraphStep(step, opt, reads)
    step()  # the optimizer makes its state in the warm-up, outside the graph
    graph_step._make_tensors()
    with graph_step.holding_tensors():
        group = opt.param_groups[0]
        assert all(torch.is_tensor(group[k][0] if k == "betas" else group[k]) for k in reads)
        with HostTraffic() as host:
            step()
    assert not host.found("reads", "dynamic")
    assert opt.param_groups[0]["lr"] == cfg_of(f"optim={optim}").optim.lr  # the float is back


@pytest.fixture
def on_meta(monkeypatch, capturable_on_cpu):
    """The step with every tensor it holds on the meta device, which stands in for a GPU:
    it runs the device-side branches the CPU skips (torch's dropout, the optimizers'
    capturable paths), refuses to read a value to the host, and makes every tensor that was
    not created on the step's device visible. Autocast knows no meta device; these runs
    are fp32, where it is off anyway."""
    monkeypatch.setattr(engine, "autocast", lambda device, precision: contextlib.nullcontext())


@pytest.mark.parametrize("optim,sched", [(o, s) for o, s in GRAPHED_OPTIMIZER_SCHEDULES
                                         if o != "sgd"])  # fused SGD has no meta kernel
def test_a_graphed_optimizer_step_stays_on_the_device(optim, sched, on_meta):
    step, opt, reads = optimizer_step(optim, sched, META)
    graph_step = cuda_graph.CudaGraphStep(step, opt, reads)
    step()
    graph_step._make_tensors()
    with graph_step.holding_tensors(), HostTraffic(META) as host:
        step()
    assert not host.found(), host.found()


STEP_OVERRIDES = ["data.val_size=200", "data.augment.rotation=10", "data.augment.translate=0.1",
                  "data.augment.brightness=0.3", "loss.label_smoothing=0.1", "sched=onecycle",
                  "data.classes={0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}"]
MODELS = ["conv5x5", "keras", "classic", "tiny", "mobilenet"]


def dropout_of(model: str) -> list[str]:
    return [] if model == "mobilenet" else ["model.dropout=0.3"]


@pytest.mark.parametrize("model", MODELS)
def test_the_training_step_has_no_host_traffic(model, synthetic_dir, capturable_on_cpu):
    """The whole step (gather, augmentation, forward, dropout, smoothed loss, backward,
    optimizer, totals) on the CPU, with the optimizer a graphed run builds."""
    cfg = cfg_of(f"data.dir={synthetic_dir}", f"model={model}", "trainer.device=cpu",
                 *STEP_OVERRIDES, *dropout_of(model))
    data = dataset.load(cfg.data, CPU, cfg.seed)
    training = engine.Training(models.build(cfg.model, data.num_classes), data, cfg,
                               plan_graph(cfg, CPU))
    host = graphed_training_step_is_clean(training, scheduled_hyperparameters(cfg), CPU)
    assert not host.found(), host.found()
    assert int(training.totals.cursor) == 2 * cfg.trainer.batch_size


@pytest.mark.parametrize("model,optim,loss", [(m, "adam", "cross_entropy") for m in MODELS]
                         + [("classic", o, "cross_entropy") for o in ("adamw", "rmsprop",
                                                                       "adadelta")]
                         + [("classic", "adam", loss) for loss in ("nll", "mse")])
def test_the_training_step_runs_off_the_host(model, optim, loss, synthetic_dir, on_meta):
    """The same step with all its tensors on the meta device (see on_meta): nothing is read to
    the host, made from Python data or made on the CPU."""
    sched = "cosine" if optim in ("rmsprop", "adadelta") else "onecycle"
    cfg = cfg_of(f"data.dir={synthetic_dir}", f"model={model}", f"optim={optim}",
                 *STEP_OVERRIDES, f"sched={sched}", f"loss.name={loss}", *dropout_of(model))
    data = dataset.load(cfg.data, CPU, cfg.seed)
    for split in (data.train, data.val, data.test):
        split.images, split.labels = split.images.to(META), split.labels.to(META)
    model_on_meta = place_model(models.build(cfg.model, data.num_classes), META)
    training = engine.Training(model_on_meta, data, cfg, plan_graph(cfg, META))
    host = graphed_training_step_is_clean(training, scheduled_hyperparameters(cfg), META)
    assert not host.found(), host.found()


def test_host_traffic_sees_what_breaks_a_capture():
    """The counter itself: each kind of traffic, made on purpose, is seen."""
    x = torch.ones(4, device=META)
    with HostTraffic(META) as host:
        x + torch.tensor(2.0)  # from Python data, and a CPU tensor into a device op
        torch.arange(4).to(META)  # made on the host, copied across
    with HostTraffic() as cpu:
        torch.ones(3).sum().item()
        torch.ones(3)[torch.ones(3, dtype=torch.bool)]  # a data-dependent shape
    assert set(host.found()) == {"from_python", "off_device"}
    assert cpu.found() == {"reads": ["aten._local_scalar_dense.default"],
                           "dynamic": ["aten.index.Tensor"]}


# ----------------------------------------------------------------------------- capture control
class FakeCuda:
    """Stands in for torch.cuda on a machine without a GPU, for the control flow of
    CudaGraphStep: streams, the current stream, and torch.cuda.graph, whose capture records
    (here: runs nothing of the graph) and whose exit calls capture_end() *before* it leaves its
    stream context, as torch's does, so a failed capture leaves the capture stream current
    unless the caller restores it."""

    class Stream:
        def wait_stream(self, other) -> None:
            pass

    def __init__(self, monkeypatch, fail_capture_with: Exception | None = None):
        self.default = self.Stream()
        self.current = self.default
        self.fail_capture_with = fail_capture_with
        self.captures, self.replays, self.resets, self.capture_streams = 0, 0, 0, []
        fake = self

        class Graph:
            def replay(self) -> None:
                fake.replays += 1

            def reset(self) -> None:
                fake.resets += 1

        class graph:  # noqa: N801 (torch's name)
            def __init__(self, cuda_graph, pool=None, stream=None, **_):
                self.stream = stream or fake.Stream()

            def __enter__(self):
                self.previous = fake.current
                fake.current = self.stream
                fake.capture_streams.append(self.stream)

            def __exit__(self, *exc):
                if exc[0] is not None:  # capture_end() of an invalidated capture
                    raise RuntimeError("operation failed due to a previous error during capture")
                fake.captures += 1
                fake.current = self.previous

        @contextlib.contextmanager
        def stream(s):
            previous, fake.current = fake.current, s
            try:
                yield
            finally:
                fake.current = previous

        for name, value in {"Stream": self.Stream, "CUDAGraph": Graph, "graph": graph,
                            "stream": stream, "current_stream": lambda: fake.current,
                            "set_stream": lambda s: setattr(fake, "current", s),
                            "synchronize": lambda: None}.items():
            monkeypatch.setattr(torch.cuda, name, value)


def counting_step(fake: FakeCuda, fail_in_capture: Exception | None = None):
    """A step that records on which stream it ran and whether inside a capture."""
    calls = []

    def step(*args):
        capturing = fake.current in fake.capture_streams
        calls.append(("capture" if capturing else "eager", fake.current, args))
        if capturing and fail_in_capture is not None:
            raise fail_in_capture

    return step, calls


def test_warm_up_capture_and_replays_are_counted_on_one_stream(monkeypatch):
    fake = FakeCuda(monkeypatch)
    step, calls = counting_step(fake)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
    graph_step = cuda_graph.CudaGraphStep(step, opt)
    for _ in range(10):
        graph_step("t", 64)
    kinds = [kind for kind, _, _ in calls]
    assert kinds == ["eager"] * cuda_graph.WARMUP_STEPS + ["capture"]
    warm_up_streams = {stream for kind, stream, _ in calls}
    assert warm_up_streams == {graph_step.side_stream} and fake.default not in warm_up_streams
    assert all(args == ("t", 64) for _, _, args in calls)
    assert fake.replays == 7 and graph_step.replays == 7
    assert graph_step.train_path() == {"train_path": "cuda_graph", "graph_replays": 7}
    assert fake.current is fake.default
    graph_step.release()
    assert fake.resets == 1 and graph_step.graph is None


def test_a_failed_capture_restores_the_stream_names_the_cause_and_trains_eagerly(
        monkeypatch, caplog):
    fake = FakeCuda(monkeypatch)
    step, calls = counting_step(fake, RuntimeError("CUDA error: operation not permitted when "
                                                   "stream is capturing\nmore detail"))
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
    graph_step = cuda_graph.CudaGraphStep(step, opt)
    for _ in range(6):
        graph_step()
    assert fake.current is fake.default  # not the capture stream
    cause = "CUDA error: operation not permitted when stream is capturing"
    assert [r.getMessage() for r in caplog.get_records("call")] == [
        f"CUDA graph capture of the training step failed ({cause}); this run trains eagerly"]
    # the batch being captured is trained eagerly, then every one after it
    assert [kind for kind, _, _ in calls] == ["eager"] * 3 + ["capture"] + ["eager"] * 3
    assert [stream for _, stream, _ in calls[-3:]] == [fake.default] * 3
    assert graph_step.train_path() == {"train_path": "fallback", "train_path_reason": cause,
                                 "graph_replays": 0}
    assert fake.replays == 0


def test_a_failed_capture_with_cuda_graph_true_is_a_user_error(monkeypatch):
    fake = FakeCuda(monkeypatch)
    step, _ = counting_step(fake, RuntimeError("CUDA error: capture not allowed"))
    graph_step = cuda_graph.CudaGraphStep(step, torch.optim.Adam([torch.nn.Parameter(
        torch.ones(2))]), required=True)
    for _ in range(cuda_graph.WARMUP_STEPS):
        graph_step()
    with pytest.raises(UserError, match=r"^trainer.cuda_graph=true but the capture of the "
                       r"training step failed \(CUDA error: capture not allowed\); use "
                       r"trainer.cuda_graph=auto to train eagerly$"):
        graph_step()
    assert fake.current is fake.default


@pytest.mark.parametrize("optim", ["adam", "sgd", "rmsprop"])
def test_after_a_failed_capture_the_optimizer_is_an_eager_runs_with_its_state(
        optim, monkeypatch, capturable_on_cpu):
    """The eager steps after a failed capture (with `auto`) run the optimizer an eager run
    builds (no capturable, fused or forced foreach path), continuing its state."""
    fake = FakeCuda(monkeypatch)
    step, opt, reads = optimizer_step(optim, "cosine", CPU)
    params = opt.param_groups[0]["params"]
    eager_flags = factories.optimizer_flags(factories.make_optimizer(
        params, cfg_of(f"optim={optim}").optim))
    assert factories.optimizer_flags(opt) != eager_flags

    def step_that_cannot_be_captured():
        if fake.current in fake.capture_streams:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        step()

    graph_step = cuda_graph.CudaGraphStep(step_that_cannot_be_captured, opt, reads)
    for _ in range(cuda_graph.WARMUP_STEPS + 2):  # the warm-up, the failed capture, one more
        graph_step()
    assert graph_step.train_path()["train_path"] == "fallback"
    assert factories.optimizer_flags(opt) == eager_flags
    # The state went on from the warm-up: the same steps on an eager optimizer from the start.
    again = [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(4))]
    momentum = [] if optim == "adam" else ["optim.momentum=0.9"]  # as optimizer_step has
    eager_opt = factories.make_optimizer(again, cfg_of(f"optim={optim}", *momentum).optim)
    for _ in range(cuda_graph.WARMUP_STEPS + 2):
        sum(p.square().sum() for p in again).backward()
        eager_opt.step()
    for p, q in zip(params, again, strict=True):
        assert torch.allclose(p, q), optim
        for key, value in eager_opt.state[q].items():
            assert torch.allclose(opt.state[p][key], value), key
            assert opt.state[p][key].device == value.device, key


def test_describe_path_says_which_loop_ran():
    assert cuda_graph.describe_path({"train_path": "cuda_graph", "graph_replays": 2340}) == \
        "CUDA graph (2,340 steps replayed)"
    assert cuda_graph.describe_path({"train_path": "fallback", "train_path_reason": "x",
                                  "graph_replays": 0}) == \
        "eager after a failed CUDA graph capture (x)"
    eager = {"train_path": "eager", "train_path_reason": "y"}
    assert cuda_graph.describe_path(eager) == "eager (y)"


class ReplayEagerly(cuda_graph.CudaGraphStep):
    """A CudaGraphStep with capture switched off and everything else kept: the optimizer's
    graph flags, the warm-up, the hyperparameters read from tensors refreshed from the
    schedule, the counts. Its "replay" runs the step eagerly with those tensors (and the
    arguments of the capture, which a graph's replays reuse), so on a GPU it is what a graph
    replay must equal, and on the CPU it runs the graphed loop's logic."""

    def _on_side_stream(self, fn, *args):
        fn(*args)

    def _capture(self, *args) -> bool:
        self._make_tensors()
        self.graph, self.captured_args = EagerGraph(), args
        return True

    def _replay(self) -> None:
        with self.holding_tensors():
            self.step(*self.captured_args)


class EagerGraph:
    def reset(self) -> None:
        pass


@pytest.fixture
def graphed_on_cpu(monkeypatch, capturable_on_cpu):
    """A Training with a GPU's plan (fit_cpu(graphed=True)) takes the graphed loop on the CPU,
    with ReplayEagerly in place of the graph."""
    monkeypatch.setattr(engine, "CudaGraphStep", ReplayEagerly)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


def test_a_run_does_not_keep_its_graph_alive(synthetic_dir, graphed_on_cpu):
    """No reference cycle between a run's Training and its graph step: the graph, its memory
    pool and the device data go when the run's last reference does, not at the next full
    garbage collection (another graph alive on the same stream must not see them freed
    late)."""
    cfg = cfg_of(f"data.dir={synthetic_dir}", "data.val_size=200", "model=tiny",
                 "trainer.device=cpu")
    data = dataset.load(cfg.data, CPU, cfg.seed)
    training = engine.Training(models.build(cfg.model, data.num_classes), data, cfg,
                               plan_graph(cfg, CUDA))
    assert isinstance(training.graph, ReplayEagerly)
    graph_step = weakref.ref(training.graph)
    gc.disable()
    try:
        del training
        assert graph_step() is None
    finally:
        gc.enable()


def fit_cpu(folder, *overrides, graphed=False):
    """(records, train_path after each epoch) of a classic-net fit on the CPU; `graphed`: with
    the plan a GPU would have (see graphed_on_cpu)."""
    cfg = cfg_of(f"data.dir={folder}", "data.val_size=200", "model=classic", "trainer.epochs=2",
                 "trainer.device=cpu", "model.dropout=0", *overrides)
    seed_everything(cfg.seed)
    data = dataset.load(cfg.data, CPU, cfg.seed)
    training = engine.Training(models.build(cfg.model, data.num_classes), data, cfg,
                               plan_graph(cfg, CUDA if graphed else CPU))
    paths = [epoch.train_path for epoch in engine.fit(training)]
    return training.records, paths


@pytest.mark.parametrize("optim,sched", [("adam", "onecycle"), ("sgd", "cosine"),
                                         ("rmsprop", "step")])
def test_the_graphed_loop_trains_as_the_eager_loop_does(optim, sched, synthetic_dir,
                                                        graphed_on_cpu, monkeypatch):
    """On the CPU, the graphed loop's logic (warm-up, capture, tensors refreshed from the
    schedule, replays) against the plain loop with the same optimizer flags: the same
    training, up to float32 hyperparameters, and the steps are counted."""
    overrides = [f"optim={optim}", f"sched={sched}", "data.limit=520"]
    released = []
    monkeypatch.setattr(ReplayEagerly, "release",
                        lambda self, after_error=False: released.append(self.replays) or
                        cuda_graph.CudaGraphStep.release(self, after_error))
    graph, paths = fit_cpu(synthetic_dir, *overrides, graphed=True)
    # 520 training images: 8 full batches of 64 an epoch and a ragged one (eager)
    assert paths[-1] == {"train_path": "cuda_graph",
                         "graph_replays": 2 * 8 - cuda_graph.WARMUP_STEPS}
    assert released == [2 * 8 - cuda_graph.WARMUP_STEPS]
    monkeypatch.setattr(engine, "CudaGraphStep", lambda step, opt, reads, required: None)
    eager, paths = fit_cpu(synthetic_dir, *overrides, graphed=True)
    assert paths[-1] == {"train_path": "eager", "train_path_reason": None}
    assert_close(graph, eager, rel=1e-4, acc=2 / 200)


def test_the_graph_is_released_when_training_fails(synthetic_dir, graphed_on_cpu, monkeypatch):
    released = []
    monkeypatch.setattr(ReplayEagerly, "release",
                        lambda self, after_error=False: released.append(after_error))
    with pytest.raises(errors.Diverged):
        fit_cpu(synthetic_dir, "optim=sgd", "optim.lr=1e12", "sched=cosine", graphed=True)
    assert released == [True]


def test_a_sticky_cuda_error_leaves_the_first_error_the_one_raised(synthetic_dir,
                                                                   graphed_on_cpu, monkeypatch):
    """After a sticky CUDA error every device call fails, the release's sync too: the error
    that ended training is the one raised (and recorded), not the sync's."""
    def sticky():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "synchronize", sticky)
    with pytest.raises(errors.Diverged):
        fit_cpu(synthetic_dir, "optim=sgd", "optim.lr=1e12", "sched=cosine", graphed=True)
    # Without an error in flight, a failing release is an error of its own.
    with pytest.raises(RuntimeError, match="illegal memory access"):
        fit_cpu(synthetic_dir, "trainer.epochs=1", graphed=True)


def test_a_cpu_run_records_that_it_trained_eagerly_and_why(synthetic_dir):
    _, paths = fit_cpu(synthetic_dir, "trainer.epochs=1")
    assert paths == [{"train_path": "eager", "train_path_reason":
                      "CUDA graphs need a GPU and this run trains on cpu"}]


def test_cuda_graph_true_on_a_cpu_is_one_line_and_exit_2(synthetic_dir, tmp_path):
    result = run_main("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                      "trainer.epochs=1", "trainer.device=cpu", "trainer.cuda_graph=true",
                      "report.enabled=false",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: trainer.cuda_graph=true but CUDA graphs need a GPU and this run trains on cpu; "
        "use trainer.cuda_graph=auto or false"]


def test_bad_cuda_graph_value_is_a_user_error():
    from mnistcnn.base.config_checks import validate
    with pytest.raises(UserError, match="trainer.cuda_graph=sometimes is out of range"):
        validate(cfg_of("trainer.cuda_graph=sometimes"))


def test_a_graphed_runs_optimizer_state_resumes_on_an_eager_optimizer():
    """last.pt of a GPU run holds capturable/fused flags; a CPU resume must drop them."""
    params = [torch.nn.Parameter(torch.ones(3))]
    saved_by_gpu = torch.optim.Adam(params, lr=0.1).state_dict()
    saved_by_gpu["param_groups"][0]["capturable"] = True
    opt = torch.optim.Adam(params, lr=0.1)
    opt.load_state_dict(factories.with_optimizer_flags(saved_by_gpu,
                                                       factories.optimizer_flags(opt)))
    assert opt.param_groups[0]["capturable"] is False
    params[0].grad = torch.ones(3)
    opt.step()  # a capturable group would refuse CPU parameters
    assert saved_by_gpu["param_groups"][0]["capturable"] is True  # the saved state is untouched


def test_schedule_values_reach_the_tensors_a_graph_reads():
    """What _capture installs and _refresh_hyperparameters keeps up to date, on CPU tensors."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, total_steps=10)
    step = cuda_graph.CudaGraphStep(lambda: None, opt, ("lr", "betas"))
    step._make_tensors()
    with step.holding_tensors():
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
# The tolerance two CUDA runs of the same config meet (kernels may sum in another order).
REPEAT = {"rel": 1e-3, "acc": 0.01}


def training_on(device, folder, *overrides, resume=None) -> engine.Training:
    """A classic-net Training on `device`, planned as a run there is."""
    cfg = cfg_of(f"data.dir={folder}", "data.val_size=200", "model=classic",
                 "trainer.epochs=2", f"trainer.device={device}", *overrides)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    data = dataset.load(cfg.data, torch.device(device), cfg.seed)
    model = place_model(models.build(cfg.model, data.num_classes), torch.device(device))
    return engine.Training(model, data, cfg, plan_graph(cfg, torch.device(device)),
                           resume=resume)


def fit_on(device, folder, *overrides, stop=None, resume=None):
    """(records, model, the train_path after each epoch) of a classic-net fit."""
    training = training_on(device, folder, *overrides, resume=resume)
    paths = [epoch.train_path for epoch in engine.fit(training, stop=stop)]
    return training.records, training.model, paths


def assert_close(a: list[dict], b: list[dict], rel=1e-3, acc=0.01):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("train/loss", "val/loss"):
            assert x[key] == pytest.approx(y[key], rel=rel), key
        for key in ("train/acc", "val/acc"):
            assert abs(x[key] - y[key]) <= acc, key
        assert x["lr"] == pytest.approx(y["lr"])


def assert_graphed(paths: list[dict]) -> None:
    """The graph was captured and replayed: not an eager run that fell back."""
    assert paths and paths[-1]["train_path"] == "cuda_graph", paths[-1]
    assert paths[-1]["graph_replays"] > 0


@pytest.fixture(autouse=True)
def no_capture_falls_back(caplog, request):
    """On a GPU, a capture that fails trains eagerly with a warning, which would make a
    graphed-vs-eager comparison compare the eager loop with itself. Read in teardown, from
    the records of the test's own call phase (caplog.text is empty by then)."""
    yield
    if request.node.get_closest_marker("cuda") is None:
        return  # the CPU tests above make captures fail on purpose
    messages = [r.getMessage() for r in caplog.get_records("call")]
    assert not [m for m in messages if "capture of the training step failed" in m]


@pytest.mark.cuda
@pytest.mark.parametrize("optim,sched", [(o, "cosine") for o in
                                         ("adam", "adamw", "sgd", "rmsprop", "adadelta")]
                         + [("adam", "onecycle"), ("adamw", "onecycle")])
def test_a_replayed_graph_is_the_same_step_run_eagerly(optim, sched, synthetic_dir,
                                                       monkeypatch):
    """The replayed graph against the same Training run eagerly with the same optimizer flags
    and the same hyperparameter tensors (ReplayEagerly), in deterministic mode: the same
    kernels on the same data, so the same numbers but for the last bits."""
    overrides = [f"optim={optim}", f"sched={sched}", "model.dropout=0", "trainer.epochs=1",
                 "loss.label_smoothing=0.1", "trainer.deterministic=true",
                 "trainer.cuda_graph=true"]
    graph, _, paths = fit_on("cuda", synthetic_dir, *overrides)
    assert_graphed(paths)
    monkeypatch.setattr(engine, "CudaGraphStep", ReplayEagerly)
    eager, _, eager_paths = fit_on("cuda", synthetic_dir, *overrides)
    assert eager_paths[-1]["graph_replays"] == paths[-1]["graph_replays"]
    assert_close(graph, eager, rel=1e-4, acc=1 / 200)


@pytest.mark.cuda
def test_a_replayed_graph_trains_on_each_epochs_own_draw(synthetic_dir, monkeypatch):
    """Two epochs with augmentation, against the same Training run eagerly (ReplayEagerly)
    in deterministic mode: the graph must read epoch 2's order and augmentation, which are
    copied into the tensors it captured, and not replay epoch 1's."""
    overrides = ["optim=adam", "sched=cosine", "model.dropout=0", "trainer.epochs=2",
                 "data.augment.rotation=10", "data.augment.translate=0.1",
                 "data.augment.brightness=0.3", "trainer.deterministic=true",
                 "trainer.cuda_graph=true"]
    graph, _, paths = fit_on("cuda", synthetic_dir, *overrides)
    assert_graphed(paths)
    assert paths[0]["graph_replays"] < paths[1]["graph_replays"]  # replays in both epochs
    monkeypatch.setattr(engine, "CudaGraphStep", ReplayEagerly)
    eager, _, eager_paths = fit_on("cuda", synthetic_dir, *overrides)
    assert eager_paths[-1]["graph_replays"] == paths[-1]["graph_replays"]
    assert_close(graph, eager, rel=1e-4, acc=1 / 200)


@pytest.mark.cuda
@pytest.mark.parametrize("optim,sched", [("adam", "onecycle"), ("sgd", "cosine")])
def test_graphed_training_agrees_with_the_plain_eager_loop(optim, sched, synthetic_dir):
    """Against trainer.cuda_graph=false, whose optimizer takes its default code path (float
    hyperparameters, bias correction on the host): the same training within the tolerance of
    two CUDA runs."""
    overrides = [f"optim={optim}", f"sched={sched}", "model.dropout=0"]
    eager, _, eager_paths = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=false",
                                   *overrides)
    graph, _, paths = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", *overrides)
    assert eager_paths[-1] == {"train_path": "eager",
                               "train_path_reason": "trainer.cuda_graph=false"}
    assert_graphed(paths)
    assert_close(graph, eager, **REPEAT)


@pytest.mark.cuda
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_graphed(model, synthetic_dir):
    overrides = [f"model={model}", "model.dropout=0" if model != "mobilenet" else "seed=0"]
    graph, _, paths = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", *overrides)
    eager, _, _ = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=false", *overrides)
    assert_graphed(paths)
    assert_close(graph, eager, **REPEAT)


@pytest.mark.cuda
def test_graphed_run_with_schedule_augmentation_dropout_bf16_and_groups(synthetic_dir):
    overrides = ["sched=onecycle", "data.augment.rotation=10", "data.augment.brightness=0.3",
                 "model.dropout=0.3", "trainer.precision=bf16", "loss.name=nll",
                 "loss.label_smoothing=0.1", "trainer.epochs=3",
                 "data.classes={0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}"]
    graph, _, paths = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", *overrides)
    eager, _, _ = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=false", *overrides)
    assert_graphed(paths)
    assert all(math.isfinite(r["train/loss"]) for r in graph)
    # dropout draws differ between replays and eager kernels: agreement in kind, not in bits
    assert abs(graph[-1]["val/acc"] - eager[-1]["val/acc"]) < 0.1
    assert [r["lr"] for r in graph] == pytest.approx([r["lr"] for r in eager])


@pytest.mark.cuda
def test_mse_loss_trains_graphed(synthetic_dir):
    graph, _, paths = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", "loss.name=mse",
                             "model.dropout=0")
    eager, _, _ = fit_on("cuda", synthetic_dir, "trainer.cuda_graph=false", "loss.name=mse",
                         "model.dropout=0")
    assert_graphed(paths)
    assert_close(graph, eager, **REPEAT)


@pytest.mark.cuda
def test_graphed_resume_gives_the_uninterrupted_records(synthetic_dir, tmp_path):
    overrides = ["trainer.cuda_graph=true", "sched=cosine", "model.dropout=0",
                 "data.augment.rotation=10"]
    full, _, _ = fit_on("cuda", synthetic_dir, *overrides)
    saved = tmp_path / "state.pt"
    with contextlib.closing(engine.fit(training_on("cuda", synthetic_dir, *overrides))) as epochs:
        torch.save(next(epochs).state, saved)  # the run stops after its first epoch
    resumed, _, paths = fit_on("cuda", synthetic_dir, *overrides,
                               resume=torch.load(saved, weights_only=True))
    assert_graphed(paths)
    assert_close(resumed, full, **REPEAT)


@pytest.mark.cuda
def test_divergence_and_stop_requests_on_a_graphed_run(synthetic_dir):
    with pytest.raises(errors.Diverged, match="non-finite loss in epoch 1, batch"):
        fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", "optim=sgd", "optim.lr=1e12",
               "model.dropout=0")
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == 8  # after the warm-up and the capture: replays are running

    with pytest.raises(errors.Interrupted, match="epoch 1 after batch 7"):
        fit_on("cuda", synthetic_dir, "trainer.cuda_graph=true", stop=stop)


@pytest.mark.cuda
def test_cli_run_on_cuda_is_graphed_and_complete(synthetic_dir, tmp_path):
    import json

    result = run_cli("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                     "trainer.epochs=2", "trainer.device=cuda", "report.enabled=false",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert "trains eagerly" not in result.stdout + result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")
    assert summary["train_path"] == "cuda_graph" and summary["graph_replays"] > 0
    assert "training step: CUDA graph (" in result.stdout + result.stderr
    assert summary["test/acc"] > 0.3
