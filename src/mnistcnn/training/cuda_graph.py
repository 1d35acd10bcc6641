"""The training step as one CUDA graph: captured once, replayed for every full-size batch.

On a GPU the eager loop is bound by kernel launches: a step of these small nets is dozens
of tiny kernels, and the GPU idles between them. Replaying the whole step (batch gather,
augmentation, forward, loss, backward, optimizer) as one graph removes that overhead.
The step itself is `engine.train_step`, the same function the CPU runs eagerly; this
module only captures and replays it (whether it is captured is decided once per run in
cuda_graph_policy.py; the optimizer flags a captured step needs are set in factories.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mnistcnn.base.errors import UserError
from mnistcnn.training.factories import train_eagerly

log = logging.getLogger(__name__)

# Eager steps before the capture: they are real training steps, run on a side stream so
# cuDNN/cuBLAS pick their kernels and the optimizer creates its state outside the graph.
WARMUP_STEPS = 3


def graph_read_value(key: str, value: Any) -> float:
    """The number a graph reads from its tensor for param_group[key]: for "betas" only
    beta1, which one-cycle moves; beta2 stays a number (a tensor beta2 is read with .item()
    even by Adam's per-parameter path)."""
    return float(value[0] if key == "betas" else value)


def graph_group_value(key: str, value: Any, tensor: torch.Tensor) -> Any:
    """What param_group[key] holds while the step is captured: `tensor` where the graph reads
    one (see graph_read_value), the numbers it bakes in elsewhere."""
    return (tensor, *value[1:]) if key == "betas" else tensor


class CudaGraphStep:
    """Call it with the step's arguments instead of `step(...)` for every full-size batch.

    The first WARMUP_STEPS calls run `step` eagerly on the side stream; the next captures it
    on that same stream and every call from then on replays the graph (the arguments must be
    the same objects every call: the graph reads and writes their memory, not them).
    Hyperparameters a schedule changes (`scheduled`, from scheduled_hyperparameters) stay
    floats in the optimizer's param_groups (so schedules, checkpoints and logs work as in
    the eager loop); the graph reads them from device tensors, which are refreshed from the
    floats when a schedule moved them. A capture that fails leaves the run training eagerly
    with one warning line, its optimizer turned into the one an eager run builds (state kept;
    the step it was capturing runs eagerly, so no batch is lost), or, with `required`
    (trainer.cuda_graph=true), ends it with a UserError naming the cause.

    The object holds the step function, the optimizer and the graph, and nothing that holds
    it: so the graph dies with its run. `release()` frees it (and its memory pool) at once;
    `fit` calls it when training ends, however it ends."""

    def __init__(self, step: Callable[..., None], opt: torch.optim.Optimizer,
                 scheduled: tuple[str, ...] = (), warmup: int = WARMUP_STEPS,
                 required: bool = False):
        self.step, self.opt, self.scheduled = step, opt, scheduled
        self.warmup_left, self.required = warmup, required
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failure: str | None = None  # why the capture failed: the run trains eagerly
        self.replays = 0
        self.side_stream: torch.cuda.Stream | None = None
        self.hyper: list[dict[str, Any]] = []  # per group: device tensors the graph reads
        self.written: list[dict[str, Any]] = []  # per group: the floats last written there

    def __call__(self, *args: Any) -> None:
        if self.failure is not None:
            self.step(*args)
            return
        if self.graph is None:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                self._on_side_stream(self.step, *args)
                return
            if not self._capture(*args):
                self.step(*args)
                return
        self._refresh_hyperparameters()
        self._replay()
        self.replays += 1

    def train_path(self) -> dict[str, Any]:
        """How the run's full-size steps trained, for summary.json (see engine.Training)."""
        if self.failure is not None:
            return {"train_path": "fallback", "train_path_reason": self.failure,
                    "graph_replays": self.replays}
        if self.graph is None:
            return {"train_path": "eager", "train_path_reason":
                    f"training ended before the capture (after {WARMUP_STEPS} warm-up steps)"}
        return {"train_path": "cuda_graph", "graph_replays": self.replays}

    def release(self, after_error: bool = False) -> None:
        """Free the graph, its private memory pool and the tensors it reads, now rather than
        whenever the garbage collector gets to them (a graph freed late, while another one
        captured on the same stream lives, can free cuBLAS workspace that one baked in),
        after a device sync that lets a replay in flight finish. `after_error`: training is
        ending with an error, which may be a sticky CUDA error that the sync would raise
        again; a failure here is then dropped, so that the first error is the one seen."""
        graph = self.graph
        self.graph, self.hyper, self.written, self.side_stream = None, [], [], None
        if graph is None:
            return
        try:
            torch.cuda.synchronize()
            graph.reset()
        except RuntimeError:
            if not after_error:
                raise

    def _on_side_stream(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn` on the side stream (made on first use), ordered after the caller's work
        and before the caller's next: warm-up steps there let cuDNN/cuBLAS pick their
        kernels and the optimizer create its state outside the graph, on the capture stream."""
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream()
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream):
            fn(*args)
        torch.cuda.current_stream().wait_stream(self.side_stream)

    def _capture(self, *args: Any) -> bool:
        """Capture `step` (which records kernels and runs none) on the side stream; True when
        it worked. On failure the caller's stream is current again and the device idle."""
        caller = torch.cuda.current_stream()
        graph = torch.cuda.CUDAGraph()
        self._make_tensors()
        try:
            with self.holding_tensors(), torch.cuda.graph(graph, stream=self.side_stream):
                self.step(*args)
        except RuntimeError as e:
            # torch.cuda.graph's exit raises from capture_end() before it leaves the stream
            # context: put the caller's stream back by hand.
            torch.cuda.set_stream(caller)
            torch.cuda.synchronize()
            self.failure = first_line(root_cause(e))
            if self.required:
                raise UserError(f"trainer.cuda_graph=true but the capture of the training "
                                f"step failed ({self.failure}); use trainer.cuda_graph=auto "
                                f"to train eagerly") from e
            log.warning("CUDA graph capture of the training step failed (%s); this run "
                        "trains eagerly", self.failure)
            train_eagerly(self.opt)
            return False
        self.graph = graph
        return True

    def _replay(self) -> None:
        self.graph.replay()

    def _make_tensors(self) -> None:
        """The device tensors the graph will read for the scheduled hyperparameters, made
        from the param_groups' current floats."""
        groups = self.opt.param_groups
        device = groups[0]["params"][0].device
        self.written = [{k: g[k] for k in self.scheduled} for g in groups]
        self.hyper = [{k: torch.tensor(graph_read_value(k, v), device=device)
                       for k, v in floats.items()} for floats in self.written]

    @contextlib.contextmanager
    def holding_tensors(self) -> Iterator[None]:
        """While inside, the param_groups hold the device tensors of _make_tensors for the
        scheduled hyperparameters; on the way out the floats are put back."""
        groups = self.opt.param_groups
        floats = [{k: g[k] for k in self.scheduled} for g in groups]
        try:
            for group, tensors, values in zip(groups, self.hyper, floats, strict=True):
                group.update({k: graph_group_value(k, values[k], t) for k, t in tensors.items()})
            yield
        finally:
            for group, values in zip(groups, floats, strict=True):
                group.update(values)

    def _refresh_hyperparameters(self) -> None:
        """Write into the graph's tensors the values a schedule gave the param_groups."""
        for group, tensors, written in zip(self.opt.param_groups, self.hyper, self.written,
                                           strict=True):
            for key, tensor in tensors.items():
                value = group[key]
                if value != written[key]:
                    tensor.fill_(graph_read_value(key, value))
                    written[key] = value


def root_cause(error: BaseException) -> BaseException:
    """The first error of a chain: a failed capture raises "operation failed due to a
    previous error during capture" from capture_end(), with the real cause as its context."""
    while error.__context__ is not None and error.__cause__ is None:
        error = error.__context__
    return error


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe_path(path: dict[str, Any]) -> str:
    """One line for people from Training.train_path()'s keys (as summary.json holds them)."""
    kind = path.get("train_path")
    if kind == "cuda_graph":
        return f"CUDA graph ({path['graph_replays']:,} steps replayed)"
    if kind == "fallback":
        return f"eager after a failed CUDA graph capture ({path['train_path_reason']})"
    if kind == "eager":
        return f"eager ({path['train_path_reason']})"
    return "not recorded"
