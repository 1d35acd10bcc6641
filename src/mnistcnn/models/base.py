"""The common shape of every study model: conv/pool stages, then a dense head."""

from __future__ import annotations

from torch import nn


class StudyNet(nn.Module):
    """`features` holds the named conv/pool stages (a feature-map row each), `head` the
    flatten + dense layers ending in the class logits. `embedding` names the module
    whose output is the learned representation: a bottleneck when the model has one,
    else the input of the last linear layer."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential, embedding: str):
        super().__init__()
        self.features = features
        self.head = head
        self.embedding = embedding

    def forward(self, x):
        return self.head(self.features(x))
