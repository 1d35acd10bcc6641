"""The commands. Each is thin: parse, then hand over to run.py / models."""

from __future__ import annotations

import itertools
import logging
import sys

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig

from mnistcnn import models
from mnistcnn.config import CONF_DIR, register_configs, validate
from mnistcnn.errors import UserError, exit_with
from mnistcnn.run import evaluate_run, train_run

log = logging.getLogger("mnistcnn")
register_configs()
MAX_PRECHECKED_JOBS = 64  # sweeps larger than this are checked job by job as they start


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked without data: schema (done by compose), ranges, shapes."""
    validate(cfg)
    models.build(cfg.model, len(cfg.data.classes) if cfg.data.classes else 10)


def precheck(overrides: list[str], multirun: bool) -> None:
    """Compose and check the config(s) before Hydra makes a run folder, so a typo costs
    nothing: no folder, no training. A sweep is checked job by job when it is small."""
    jobs = [overrides]
    if multirun:
        parsed = OverridesParser.create().parse_overrides(overrides)
        choices = []
        for o in parsed:
            if not o.is_sweep_override():
                choices.append([o.input_line])
                continue
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # glob/interval sweeps: left to each job
                return
            choices.append([f"{o.get_key_element()}={v}" for v in values])
        jobs = [list(j) for j in itertools.islice(itertools.product(*choices),
                                                  MAX_PRECHECKED_JOBS)]
    for job in jobs:
        check_config(compose_config(job))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def train(cfg: DictConfig) -> float | None:
    """Train one run; in a multirun a failed job is recorded and the sweep goes on."""
    hc = HydraConfig.get()
    try:
        summary = train_run(cfg, hc.runtime.output_dir)
    except UserError as e:
        if hc.mode != RunMode.MULTIRUN:
            # Exit here: a raised exception would make Hydra print extra lines first.
            exit_with(str(e))
        log.error("job %s failed: %s", hc.job.num, e)
        return None
    # The sweep objective (e.g. for the Optuna sweeper): validation accuracy, never test.
    return summary.get("final/val/acc")


def summary(args: list[str]) -> None:
    """Print the configured model's layer table and parameter totals (no data is read)."""
    cfg = compose_config(args)
    check_config(cfg)
    num_classes = len(cfg.data.classes) if cfg.data.classes else 10
    model = models.build(cfg.model, num_classes)
    knobs = {k: v for k, v in cfg.model.items() if k != "name"}
    title = f"model {cfg.model.name} ({num_classes} classes): " + ", ".join(
        f"{k}={getattr(v, 'value', v)}" for k, v in knobs.items())
    print(models.format_layer_table(model, title))


def evaluate(args: list[str]) -> None:
    """evaluate run=PATH [device=cpu|cuda|auto]"""
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = [a for a in args if "=" not in a] + [k for k in opts if k not in ("run", "device")]
    if unknown or "run" not in opts:
        raise UserError("usage: python -m mnistcnn evaluate run=PATH [device=auto|cpu|cuda]"
                        + (f" (unexpected: {' '.join(unknown)})" if unknown else ""))
    result = evaluate_run(opts["run"], opts.get("device", "auto"))
    print(f"test/loss {result['test/loss']:.4f}  test/acc {100 * result['test/acc']:.2f}%  "
          f"({result['test_size']} images, {result['device']}) -> "
          f"{opts['run']}/evaluation.json, predictions.csv")


def run_train(args: list[str]) -> None:
    from hydra._internal.utils import get_args_parser

    parsed = get_args_parser().parse_args(args)
    informational = parsed.help or parsed.hydra_help or parsed.cfg or parsed.info \
        or parsed.shell_completion
    if not informational:
        precheck(parsed.overrides, parsed.multirun)
    sys.argv = [sys.argv[0], *args]
    train()


COMMANDS = {
    "train": (run_train, "train one run (or a sweep with -m); Hydra overrides follow"),
    "summary": (summary, "print the model's layer table and parameter counts; no training"),
    "evaluate": (evaluate, "re-evaluate a finished run: evaluate run=PATH"),
}
