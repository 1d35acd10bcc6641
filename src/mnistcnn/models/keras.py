"""The Keras-style net: [conv 64@3x3 valid -> act -> BN -> maxpool -> dropout 0.25] x conv_layers
-> flatten -> [dense 128 -> act -> BN -> dropout 0.5] x dense_layers -> dense classes.
278,858 parameters by default (277,834 trainable + 1,024 BN running statistics)."""

from __future__ import annotations

import math

from torch import nn

from mnistcnn.models.base import StudyNet
from mnistcnn.models.layers import activation, dropout, dry_run, pool, seq


def build(cfg, num_classes: int, in_shape: tuple[int, int, int]) -> StudyNet:
    stages, c_in = {}, in_shape[0]
    for i in range(1, cfg.conv_layers + 1):
        stages[f"conv{i}"] = seq(conv=nn.Conv2d(c_in, cfg.filters, cfg.kernel),
                                 act=activation(cfg.activation),
                                 bn=nn.BatchNorm2d(cfg.filters) if cfg.batchnorm else None)
        stages[f"pool{i}"] = seq(pool=pool(cfg.pool), drop=dropout(cfg.conv_dropout))
        c_in = cfg.filters
    features = seq(**stages)
    width = math.prod(dry_run(features, in_shape, "keras"))
    dense = {"flatten": nn.Flatten()}
    for i in range(1, cfg.dense_layers + 1):
        dense[f"fc{i}"] = nn.Linear(width, cfg.units)
        dense[f"act{i}"] = activation(cfg.activation)
        dense[f"bn{i}"] = nn.BatchNorm1d(cfg.units) if cfg.batchnorm else None
        dense[f"drop{i}"] = dropout(cfg.dropout)
        width = cfg.units
    dense["out"] = nn.Linear(width, num_classes)
    head = seq(**dense)
    return StudyNet(features, head, embedding=_before_out(head))


def _before_out(head: nn.Sequential) -> str:
    names = [n for n, _ in head.named_children()]
    return "head." + names[-2]
