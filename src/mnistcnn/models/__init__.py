"""Model registry: `build(cfg.model, num_classes)` -> nn.Module, plus the layer table."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mnistcnn.models import classic, conv5x5, keras, mobilenet, tiny
from mnistcnn.models.base import StudyNet

BUILDERS: dict[str, Callable[..., StudyNet]] = {
    "conv5x5": conv5x5.build,
    "keras": keras.build,
    "classic": classic.build,
    "tiny": tiny.build,
    "mobilenet": mobilenet.build,
}
IN_SHAPE = (1, 28, 28)


def build(model_cfg, num_classes: int = 10, in_shape: tuple[int, int, int] = IN_SHAPE) -> StudyNet:
    return BUILDERS[model_cfg.name](model_cfg, num_classes, in_shape)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Trainable, non-trainable and total, counting BatchNorm running mean/variance as
    non-trainable the way Keras does (num_batches_tracked is bookkeeping, not a weight)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers()
                if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
    return {"trainable": trainable, "non_trainable": frozen + stats,
            "total": trainable + frozen + stats}


def layer_table(model: nn.Module, in_shape: tuple[int, int, int] = IN_SHAPE) -> list[dict]:
    """One row per leaf layer: qualified name, type, output shape and parameters
    (trainable + BN statistics), from a forward pass of one dummy image in eval mode."""
    rows: list[dict] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            def record(mod, _inp, out, name=name):
                rows.append({"layer": name, "type": type(mod).__name__,
                             "output": tuple(out.shape[1:]),
                             "params": param_counts(mod)["total"]})
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def format_layer_table(model: nn.Module, title: str, in_shape=IN_SHAPE) -> str:
    rows = layer_table(model, in_shape)
    width = max(len(r["layer"]) + len(r["type"]) + 3 for r in rows)
    lines = [title, f"{'layer':<{width}} {'output shape':>16} {'params':>10}",
             "-" * (width + 28)]
    for r in rows:
        label = f"{r['layer']} ({r['type']})"
        shape = "x".join(map(str, r["output"]))
        lines.append(f"{label:<{width}} {shape:>16} {r['params']:>10,}")
    counts = param_counts(model)
    lines += ["-" * (width + 28),
              f"trainable params:     {counts['trainable']:>12,}",
              f"non-trainable params: {counts['non_trainable']:>12,}",
              f"total params:         {counts['total']:>12,}"]
    return "\n".join(lines)
