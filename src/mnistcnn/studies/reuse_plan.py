"""What a book's plan will reuse rather than train (--dry-run): a pending job whose
settings, device and code match a completed run where its jobs will look (the book and
--reuse-from folders, runs/reuse.py), or a job planned before it in the same book, which
will have completed by the time it runs; and the epoch arms written from a longer arm's
training (runs/shared_prefix.py)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from mnistcnn.base.config import compose_config, to_plain
from mnistcnn.runs import reuse, shared_prefix
from mnistcnn.training.device import resolve_device


def frozen(identity: dict) -> str:
    """An identity as a set member (its values may be lists and dicts)."""
    return json.dumps(identity, sort_keys=True, default=str)


class ReusePlan:
    """Answers, job by job in the order the book runs them, whether a job will be reused."""

    def __init__(self, dirs: Sequence[str], any_version: bool, enabled: bool = True,
                 threads: int = 1):
        self.enabled = enabled
        self.known: set[str] = set()
        self.composed: dict[tuple[str, ...], DictConfig] = {}  # a job's overrides but its seed
        self.identities: dict[tuple[str, ...], dict] = {}  # the same, their identity
        self.parser = OverridesParser.create()
        if not enabled:
            return
        self.known = {frozen(identity) for identity, _ in
                      reuse.usable_runs(list(dirs), threads, any_version)}

    def fork(self) -> ReusePlan:
        """A plan that knows what this one knows now and learns on its own from here."""
        other = copy.copy(self)
        other.known = set(self.known)
        return other

    def arm(self, job: Sequence[str]) -> tuple[tuple[str, ...], DictConfig, Any]:
        """(the job's overrides but its seed, their config composed once, the seed or
        None): the seed changes one key, so each arm is composed once."""
        seed = [o for o in job if self.parser.parse_override(o).key_or_group == "seed"]
        rest = tuple(o for o in job if o not in seed)
        if rest not in self.composed:
            self.composed[rest] = compose_config(list(rest))
        return rest, self.composed[rest], \
            self.parser.parse_override(seed[0]).value() if seed else None

    def identity(self, job: Sequence[str]) -> dict:
        rest, cfg, seed = self.arm(job)
        if rest not in self.identities:
            self.identities[rest] = reuse.identity(to_plain(cfg),
                                                   str(resolve_device(cfg.trainer.device)))
        identity = self.identities[rest]
        return identity if seed is None else {**identity, "seed": seed}

    def shared_epochs(self, job: Sequence[str]) -> int:
        """The epochs the job takes from a longer arm's training instead of training them:
        all of its own when a longer level of its group shares them, else 0."""
        if not self.enabled:
            return 0
        cfg = self.arm(job)[1]
        levels = shared_prefix.levels(cfg)
        return cfg.trainer.epochs if levels and cfg.trainer.epochs < levels[-1] else 0

    def will_reuse(self, job: Sequence[str]) -> bool:
        """Whether the job will find an identical run; either way, a later job will find
        this one."""
        if not self.enabled:
            return False
        key = frozen(self.identity(job))
        if key in self.known:
            return True
        self.known.add(key)
        return False
