"""The 5x5 conv stack: conv 32@5x5 same -> act -> pool -> conv 16@5x5 same -> act -> pool ->
(bottleneck `features`) -> FC `hidden` -> act -> FC classes. 827,738 parameters by default."""

from __future__ import annotations

import math

from torch import nn

from mnistcnn.models.base import StudyNet
from mnistcnn.models.layers import activation, conv_block, dropout, dry_run, pool, seq


def build(cfg, num_classes: int, in_shape: tuple[int, int, int]) -> StudyNet:
    stages, c_in = {}, in_shape[0]
    for i, c_out in enumerate(cfg.channels, start=1):
        stages[f"conv{i}"] = conv_block(c_in, c_out, cfg.kernel, cfg.activation, cfg.batchnorm,
                                        padding="same")
        stages[f"pool{i}"] = pool(cfg.pool)
        c_in = c_out
    features = seq(**stages)
    flat = math.prod(dry_run(features, in_shape, "conv5x5"))
    # The bottleneck is linear (no activation) so that features=2 can be plotted as-is.
    width = cfg.features or flat
    head = seq(flatten=nn.Flatten(),
               bottleneck=nn.Linear(flat, cfg.features) if cfg.features else None,
               fc=nn.Linear(width, cfg.hidden),
               act=activation(cfg.activation),
               drop=dropout(cfg.dropout),
               out=nn.Linear(cfg.hidden, num_classes))
    return StudyNet(features, head, embedding="head.bottleneck" if cfg.features else "head.act")
