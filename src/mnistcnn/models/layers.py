"""Building blocks shared by the model families, and the dry run that infers shapes."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from mnistcnn.base.config import choice
from mnistcnn.base.errors import UserError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def activation(name) -> nn.Module:
    return ACTIVATIONS[choice(name)]()


def pool(kind, kernel: int = 2) -> nn.Module:
    return nn.MaxPool2d(kernel) if choice(kind) == "max" else nn.AvgPool2d(kernel)


def seq(**layers: nn.Module | None) -> nn.Sequential:
    """An nn.Sequential with named layers; None entries (switched-off options) are left out."""
    return nn.Sequential(OrderedDict((k, v) for k, v in layers.items() if v is not None))


def conv_block(c_in: int, c_out: int, kernel: int, act, batchnorm: bool, stride: int = 1,
               padding: int | str = 0, bias: bool = True) -> nn.Sequential:
    """conv -> (BatchNorm) -> activation."""
    return seq(conv=nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias),
               bn=nn.BatchNorm2d(c_out) if batchnorm else None,
               act=activation(act))


def depthwise_separable(c_in: int, c_out: int, stride: int, act, batchnorm: bool) -> nn.Sequential:
    """MobileNet block: depthwise 3x3 -> BN -> act -> pointwise 1x1 -> BN -> act."""
    return seq(dw=nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in,
                            bias=not batchnorm),
               dw_bn=nn.BatchNorm2d(c_in) if batchnorm else None,
               dw_act=activation(act),
               pw=nn.Conv2d(c_in, c_out, 1, bias=not batchnorm),
               pw_bn=nn.BatchNorm2d(c_out) if batchnorm else None,
               pw_act=activation(act))


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from 16-bit slices of random 64-bit words.

    torch's CPU dropout draws one Bernoulli sample per element, ~20x slower than
    filling the same mask from bulk random integers: 17% of the Keras net's step
    time went to it. The keep probability is rounded to a multiple of 1/65536 (0.25
    and 0.5 are exact). Other devices, and eval mode, use nn.Dropout as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        keep, n = 1 - self.p, x.numel()
        words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        mask = words.view(torch.int16)[:n] < round(keep * 2**16) - 2**15
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            b, c, h, w = x.shape  # lay the mask out like x, so the product streams memory
            mask = mask.view(b, h, w, c).permute(0, 3, 1, 2)
        else:
            mask = mask.view(x.shape)
        return x * mask.to(x.dtype).mul_(1 / keep)


def dropout(p: float, two_d: bool = False) -> nn.Module | None:
    if not p:
        return None
    return nn.Dropout2d(p) if two_d else Dropout(p)


def dry_run(stages: nn.Sequential, in_shape: tuple[int, ...], model: str) -> tuple[int, ...]:
    """Push one dummy image through the conv/pool stages and return the output shape.

    This is what lets every knob combination build: the head is sized from the
    result. A feature map that shrinks below a kernel or pool size becomes a
    UserError naming the stage and the sizes, at build time, not mid-training.
    """
    x = torch.zeros(1, *in_shape)
    with torch.no_grad():
        for name, stage in stages.named_children():
            h, w = x.shape[-2:]
            try:
                x = stage(x)
            except RuntimeError as e:
                raise UserError(f"model {model}: stage '{name}' gets a {h}x{w} feature map, too "
                                f"small for its kernel/pool ({_kernel_sizes(stage)}); use fewer "
                                f"layers or smaller kernels") from e
            if x.shape[-1] == 0 or x.shape[-2] == 0:
                raise UserError(f"model {model}: stage '{name}' shrinks a {h}x{w} feature map to "
                                f"nothing; use fewer layers or smaller kernels")
    return tuple(x.shape[1:])


def _kernel_sizes(stage: nn.Module) -> str:
    sizes = []
    for m in stage.modules():
        k = getattr(m, "kernel_size", None)
        if k is not None:
            k = (k, k) if isinstance(k, int) else tuple(k)
            sizes.append(f"{type(m).__name__} {k[0]}x{k[1]}")
    return ", ".join(sizes) or "no kernel"
