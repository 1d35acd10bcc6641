"""Pre-flight: every check that needs no data, before a run folder exists, so a typo costs
nothing. `train` checks the config of each job its command line makes (a sweep's jobs
listed as Hydra's basic sweeper will run them), `summary` checks its one config, `studies`
checks each study's sweep, and every run checks its own config again as it starts (each
job of a sweep too large or not listable ahead, a resumed run).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from mnistcnn import models
from mnistcnn.base.config import compose_config
from mnistcnn.base.config_checks import validate
from mnistcnn.base.errors import UserError
from mnistcnn.tracking import trackers

MAX_CHECKED_JOBS = 64  # sweeps larger than this are checked job by job as they start


def check_run(cfg: DictConfig) -> None:
    """What a run checks as it starts: ranges and cross-field rules (the schema's types were
    checked by compose), and the chosen tracker's package and store."""
    validate(cfg)
    trackers.check_available(cfg)


def check_config(cfg: DictConfig) -> None:
    """check_run, and the model built from the config: its shapes."""
    check_run(cfg)
    models.build(cfg.model, len(cfg.data.classes) if cfg.data.classes else 10)


def check_overrides(overrides: list[str], multirun: bool) -> None:
    """Compose and check the config(s) of `train [-m] OVERRIDES` before Hydra makes a run
    folder. A sweep is checked job by job when it is small."""
    jobs = [overrides]
    if multirun:
        jobs = sweep_jobs(overrides, one_seed=True)
        if jobs is None:  # glob/interval sweeps: left to each job
            return
        jobs = list(itertools.islice(jobs, MAX_CHECKED_JOBS))
    for job in jobs:
        check_config(compose_config(job))


def sweep_jobs(overrides: list[str], one_seed: bool = False) -> Iterator[list[str]] | None:
    """The override list of every job of `train -m OVERRIDES` (the preset's sweep and the
    command line's, as Hydra's basic sweeper combines them), or None where a sweep cannot
    be listed (glob, interval). one_seed: only the first seed, since a seed never makes a
    config invalid and checking one keeps seed sweeps cheap."""
    sweeper = sweeper_config(overrides)
    check_objective(sweeper)
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + overrides)
    # One override per key, the command line's where both set it (as Hydra's sweeper).
    parsed = list({o.get_key_element(): o for o in parsed}.values())
    choices = []
    for o in parsed:
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        try:
            values = list(o.sweep_string_iterator())
        except Exception:
            return None
        values = values[:1] if one_seed and o.get_key_element() == "seed" else values
        choices.append([f"{o.get_key_element()}={v}" for v in values])
    return (list(j) for j in itertools.product(*choices))


def sweeper_config(overrides: list[str]) -> DictConfig:
    """hydra.sweeper, whose params hold a preset's sweep; composed without the command
    line's sweeps (a config cannot compose with a sweep)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    return compose_config(fixed, with_hydra=True).hydra.sweeper


def check_objective(sweeper: DictConfig) -> None:
    """`train` returns validation accuracy; Optuna's default direction would minimise it."""
    direction = sweeper.get("direction")
    name = getattr(direction, "name", direction)
    if direction is not None and name != "maximize":
        raise UserError(f"hydra.sweeper.direction={name} does not maximise validation "
                        f"accuracy, the one objective `train` returns; add "
                        f"hydra.sweeper.direction=maximize")
