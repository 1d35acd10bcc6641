"""The tiny net: conv 16@7x7 pad 3 -> act -> pool -> conv 8@5x5 pad 2 -> act -> pool ->
conv 4@3x3 stride 2 pad 1 -> act -> avgpool -> flatten 16 -> FC classes.
4,470 parameters with 10 classes, 4,368 with 4."""

from __future__ import annotations

import math

from torch import nn

from mnistcnn.models.base import StudyNet
from mnistcnn.models.layers import conv_block, dropout, dry_run, pool, seq


def build(cfg, num_classes: int, in_shape: tuple[int, int, int]) -> StudyNet:
    (c1, c2, c3), (k1, k2, k3) = cfg.channels, cfg.kernels
    act, bn = cfg.activation, cfg.batchnorm
    features = seq(
        conv1=conv_block(in_shape[0], c1, k1, act, bn, padding=k1 // 2),
        pool1=pool(cfg.pool),
        conv2=conv_block(c1, c2, k2, act, bn, padding=k2 // 2),
        pool2=pool(cfg.pool),
        conv3=conv_block(c2, c3, k3, act, bn, stride=2, padding=k3 // 2),
        # The last pool is always an average: it summarises the map for the classifier.
        pool3=nn.AvgPool2d(2),
    )
    flat = math.prod(dry_run(features, in_shape, "tiny"))
    head = seq(flatten=nn.Flatten(), drop=dropout(cfg.dropout),
               out=nn.Linear(flat, num_classes))
    return StudyNet(features, head, embedding="head.flatten")
