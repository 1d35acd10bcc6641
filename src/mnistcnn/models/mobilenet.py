"""MobileNet-block net: `conv_blocks` plain 3x3 blocks (conv -> BN -> act), then
`mobile_blocks` depthwise-separable blocks, global pool, FC classes.

Block i has width * 2**i channels for its first four blocks (then stays), and
blocks 2-4 downsample with stride 2 (28 -> 14 -> 7 -> 4), so `conv_blocks=4,
mobile_blocks=0` is the plain net of the same depth and widths as the default
1 + 3: `summary` shows the parameter saving side by side."""

from __future__ import annotations

from torch import nn

from mnistcnn.base.config import choice
from mnistcnn.models.base import StudyNet
from mnistcnn.models.layers import (
    conv_block,
    depthwise_separable,
    dropout,
    dry_run,
    seq,
)


def build(cfg, num_classes: int, in_shape: tuple[int, int, int]) -> StudyNet:
    stages, c_in = {}, in_shape[0]
    for i in range(cfg.conv_blocks + cfg.mobile_blocks):
        c_out = cfg.width * 2 ** min(i, 3)
        stride = 2 if 1 <= i <= 3 else 1
        if i < cfg.conv_blocks:
            stages[f"conv{i + 1}"] = conv_block(c_in, c_out, 3, cfg.activation, cfg.batchnorm,
                                                stride=stride, padding=1,
                                                bias=not cfg.batchnorm)
        else:
            stages[f"mobile{i + 1}"] = depthwise_separable(c_in, c_out, stride, cfg.activation,
                                                           cfg.batchnorm)
        c_in = c_out
    features = seq(**stages)
    channels = dry_run(features, in_shape, "mobilenet")[0]
    gpool = nn.AdaptiveMaxPool2d(1) if choice(cfg.pool) == "max" else nn.AdaptiveAvgPool2d(1)
    head = seq(gpool=gpool, flatten=nn.Flatten(), drop=dropout(cfg.dropout),
               out=nn.Linear(channels, num_classes))
    return StudyNet(features, head, embedding="head.flatten")
