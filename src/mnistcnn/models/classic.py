"""The classic net: conv 10@5x5 -> pool -> act -> conv 20@5x5 -> Dropout2d -> pool -> act ->
flatten 320 -> FC `hidden` (50) -> act -> dropout -> FC classes. 21,840 parameters."""

from __future__ import annotations

import math

from torch import nn

from mnistcnn.models.base import StudyNet
from mnistcnn.models.layers import activation, dropout, dry_run, pool, seq


def build(cfg, num_classes: int, in_shape: tuple[int, int, int]) -> StudyNet:
    (c1, c2), k = cfg.channels, cfg.kernel
    bn = cfg.batchnorm
    features = seq(
        conv1=seq(conv=nn.Conv2d(in_shape[0], c1, k), bn=nn.BatchNorm2d(c1) if bn else None),
        pool1=seq(pool=pool(cfg.pool), act=activation(cfg.activation)),
        conv2=seq(conv=nn.Conv2d(c1, c2, k), bn=nn.BatchNorm2d(c2) if bn else None,
                  drop=dropout(cfg.conv_dropout, two_d=True)),
        pool2=seq(pool=pool(cfg.pool), act=activation(cfg.activation)),
    )
    flat = math.prod(dry_run(features, in_shape, "classic"))
    head = seq(flatten=nn.Flatten(),
               fc=nn.Linear(flat, cfg.hidden),
               act=activation(cfg.activation),
               drop=dropout(cfg.dropout),
               out=nn.Linear(cfg.hidden, num_classes))
    return StudyNet(features, head, embedding="head.act")
