"""Sweeps: the jobs of `train -m` listed before Hydra starts them (so a typo costs nothing),
and the Hydra callback that ends every multirun with its comparison.

The callback is registered in conf/config.yaml under `hydra.callbacks`, so any sweep —
whatever its sweeper (basic, optuna) or launcher (basic, joblib, submitit) — writes
comparison.md/.csv/.html and the comparison figures into its sweep folder once the last
job has returned. It runs in the process that launched the sweep, after every job, which
is why it is also where a sweep with failed jobs turns into a non-zero exit.
"""

from __future__ import annotations

import itertools
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnistcnn import models
from mnistcnn.base.config import compose_config, validate
from mnistcnn.base.errors import UserError
from mnistcnn.reporting import comparison
from mnistcnn.tracking import mlflow_tracker, tensorboard_tracker

# Exit code of a sweep that ran to its end with failed jobs; 2 stays "the command could
# not start" (a config or data error), as for every other command.
FAILED_JOBS_EXIT = 1
MAX_PRECHECKED_JOBS = 64  # sweeps larger than this are checked job by job as they start


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked without data: schema (done by compose), ranges, shapes."""
    validate(cfg)
    tensorboard_tracker.check_available(cfg)
    mlflow_tracker.check_available(cfg)
    models.build(cfg.model, len(cfg.data.classes) if cfg.data.classes else 10)


def precheck(overrides: list[str], multirun: bool) -> None:
    """Compose and check the config(s) before Hydra makes a run folder, so a typo costs
    nothing: no folder, no training. A sweep is checked job by job when it is small."""
    jobs = [overrides]
    if multirun:
        jobs = sweep_jobs(overrides, one_seed=True)
        if jobs is None:  # glob/interval sweeps: left to each job
            return
        jobs = list(itertools.islice(jobs, MAX_PRECHECKED_JOBS))
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


class ComparisonCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            comp = comparison.build(comparison.load_runs([sweep_dir]))
            comparison.write(comp, sweep_dir)
        except Exception:
            # Hydra would turn an exception here into a warning and exit 0: a sweep whose
            # comparison is missing must fail visibly, with the traceback of the bug.
            traceback.print_exc()
            fail(f"the comparison of {sweep_dir} could not be written (traceback above)")
        # print, not logging: after a sweep in this process, logging still writes into the
        # last job's train.log.
        print(f"\n{comparison.console_text(comp)}")
        print(f"comparison -> {sweep_dir / 'comparison.md'} (.csv, .html, *.png)")
        if comp.failed:
            fail(comparison.failure_line(comp) + f"; see {sweep_dir / 'comparison.md'}")


def fail(message: str) -> None:
    """One error line and a non-zero exit. SystemExit passes through Hydra's callback
    handler (it only catches Exception) and through hydra.main."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(FAILED_JOBS_EXIT)
