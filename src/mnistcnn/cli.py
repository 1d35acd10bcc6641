"""The commands. Each is thin: parse, then hand over (runs/preflight, runs/lifecycle,
runs/evaluation, studies/command, reporting/comparison, models)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnistcnn import models
from mnistcnn.base.config import CONF_DIR, choice, compose_config, register_configs
from mnistcnn.base.errors import UserError, exit_with
from mnistcnn.base.formats import amount, pct
from mnistcnn.base.run_folder import EVALUATION, MODEL, PREDICTIONS, RunFolder
from mnistcnn.base.run_reader import load_runs
from mnistcnn.data import digits
from mnistcnn.reporting import plots
from mnistcnn.reporting.comparison import build as build_comparison
from mnistcnn.reporting.comparison import console_text, default_out_dir
from mnistcnn.reporting.comparison import write as write_comparison
from mnistcnn.runs import job_share, rerun
from mnistcnn.runs.console import console_logging
from mnistcnn.runs.evaluation import classify, evaluate_run, open_run, write_image_predictions
from mnistcnn.runs.job import resume_run, train_run
from mnistcnn.runs.preflight import check_config, check_overrides
from mnistcnn.training.device import resolve_device

log = logging.getLogger("mnistcnn")
register_configs()
DEVICES = ("auto", "cpu", "cuda")  # evaluate's and predict's device=


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def train(cfg: DictConfig) -> float | None:
    """Train one run; in a multirun a failed job is recorded and the sweep goes on."""
    hc = HydraConfig.get()
    job_share.take_share(hc, on_gpu=choice(cfg.trainer.device) != "cpu")
    try:
        summary = train_run(cfg, hc.runtime.output_dir)
    except UserError as e:
        if hc.mode != RunMode.MULTIRUN:
            # Exit here: a raised exception would make Hydra print extra lines first.
            exit_with(str(e))
        log.error("job %s failed: %s", hc.job.num, e)
        return None
    except Exception:
        if hc.mode != RunMode.MULTIRUN:
            raise
        # A bug in one job must not cost the others: its traceback goes to this job's log,
        # its summary.json says failed, and the sweep exits non-zero once all jobs ran.
        log.exception("job %s failed", hc.job.num)
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


def typed_device(value: str) -> str:
    """`device=` as evaluate and predict take it, checked so that an error names what the
    user typed (device=...) rather than the training key it stands for (trainer.device)."""
    if value not in DEVICES:
        raise UserError(f"device={value} is not a device; use device={'|'.join(DEVICES)}")
    try:
        resolve_device(value)
    except UserError:
        raise UserError(f"device={value} but no CUDA GPU is available; use device=cpu or "
                        f"device=auto") from None
    return value


@contextmanager
def writing_out(path: Path) -> Iterator[None]:
    """predict writes where --out says: a failed write names --out (not hydra.run.dir, the
    training command's way to move its files)."""
    try:
        yield
    except UserError as e:
        if not isinstance(e.__cause__, OSError):
            raise
        raise UserError(f"cannot write {path}: {e.__cause__.strerror or e.__cause__}; free "
                        f"disk space or pass --out FILE.csv in a folder you can write") from None


def evaluate(args: list[str]) -> None:
    """evaluate run=PATH [device=cpu|cuda|auto]"""
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = [a for a in args if "=" not in a] + [k for k in opts if k not in ("run", "device")]
    if unknown or "run" not in opts:
        raise UserError("usage: python -m mnistcnn evaluate run=PATH [device=auto|cpu|cuda]"
                        + (f" (unexpected: {' '.join(unknown)})" if unknown else ""))
    console_logging()
    result = evaluate_run(opts["run"], typed_device(opts.get("device", "auto")))
    print(f"test/loss {amount(result['test/loss'], 'loss')}  test/acc {pct(result['test/acc'])}  "
          f"({result['test_size']} images, {result['device']}) -> "
          f"{opts['run']}/{EVALUATION}, {PREDICTIONS}")


def compare(args: list[str]) -> None:
    """compare PATH [PATH ...] [--out DIR]"""
    parser = argparse.ArgumentParser(
        prog="python -m mnistcnn compare",
        description="Compare finished runs: one row per configuration, seeds pooled.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run or sweep folders")
    parser.add_argument("--out", metavar="DIR",
                        help="folder for the comparison files (default: the sweep folder "
                        "when PATH is one sweep, else outputs/comparisons/TIME)")
    opts = parser.parse_args(args)
    comparison = build_comparison(load_runs(opts.paths))
    written = write_comparison(comparison, opts.out or default_out_dir(opts.paths))
    print(console_text(comparison))
    print(f"-> {written[0]} ({', '.join(p.name for p in written[1:])})")


def predict(args: list[str]) -> None:
    """predict run=PATH IMAGE_OR_FOLDER ... [device=auto] [--out FILE.csv] [--show]"""
    parser = argparse.ArgumentParser(
        prog="python -m mnistcnn predict",
        description=f"Classify PNG, JPEG or BMP files with a finished run's {MODEL}.")
    parser.add_argument("items", nargs="+", metavar="run=PATH | IMAGE_OR_FOLDER",
                        help="run=PATH of a finished run, [device=auto|cpu|cuda], then "
                        "image files or folders of them")
    parser.add_argument("--out", metavar="FILE.csv", help="also write the predictions here")
    parser.add_argument("--show", action="store_true",
                        help="write the 28x28 inputs as the model saw them, with the "
                        "predictions, to a PNG sheet: FILE.png beside --out FILE.csv, else "
                        "predictions.png in the current folder")
    opts = parser.parse_args(args)
    settings = dict(i.split("=", 1) for i in opts.items if i.startswith(("run=", "device=")))
    paths = [i for i in opts.items if not i.startswith(("run=", "device="))]
    if "run" not in settings or not paths:
        raise UserError("usage: python -m mnistcnn predict run=PATH IMAGE_OR_FOLDER ... "
                        "[--out FILE.csv] [--show]")
    # The run and the device first: a mistyped run= is heard of before any image is read.
    run = open_run(settings["run"], typed_device(settings.get("device", "auto")))
    read, images, problems = digits.read_all(paths)
    for problem in problems:
        print(f"warning: {problem}; skipped", file=sys.stderr)
    if not read:
        raise UserError(f"no digit could be read from {' '.join(paths)}; pass PNG, JPEG or "
                        f"BMP files or folders holding them")
    rows = classify(run, read, images)
    for row in rows:
        top = ", ".join(f"{name} {pct(p, 1)}" for name, p in row["top"])
        print(f"{row['file']}  {row['pred']}  {pct(row['confidence'], 1)}  top-3: {top}")
    if opts.out:
        with writing_out(Path(opts.out)):
            write_image_predictions(Path(opts.out), rows)
        print(f"-> {opts.out}")
    if opts.show:
        sheet = Path(opts.out).with_suffix(".png") if opts.out else Path("predictions.png")
        with writing_out(sheet):
            plots.save_png(sheet, plots.prediction_sheet(images, rows, settings["run"]))
        print(f"-> {sheet}")


def single_run_resume(overrides: list[str]) -> str | None:
    """The folder of `train resume=PATH` (a run continues with its own saved config)."""
    values = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if not values or values[0].lower() in ("true", "false"):
        return None
    others = [o for o in overrides if not o.startswith("resume=")]
    if others:
        raise UserError(f"resume=PATH continues a run with its own config; drop "
                        f"{' '.join(others)} (or start a new run without resume)")
    return values[0]


def run_train(args: list[str]) -> None:
    from hydra._internal.utils import get_args_parser

    args = rerun.expand(args)
    parsed = get_args_parser().parse_args(args)
    informational = parsed.help or parsed.hydra_help or parsed.cfg or parsed.info \
        or parsed.shell_completion
    resume_dir = single_run_resume(parsed.overrides) if not parsed.multirun else None
    if resume_dir is not None and not informational:
        console_logging(RunFolder(Path(resume_dir)).train_log)
        resume_run(resume_dir)
        return
    if not informational:
        check_overrides(parsed.overrides, parsed.multirun)
    sys.argv = [sys.argv[0], *args]
    train()


def studies(args: list[str]) -> None:
    from mnistcnn.studies.command import run_studies  # here: the other commands need none of it

    run_studies(args)


COMMANDS = {
    "train": (run_train, "train one run (or a sweep with -m); Hydra overrides follow; "
                         "rerun=RUN_DIR starts from a run's saved config"),
    "summary": (summary, "print the model's layer table and parameter counts; no training"),
    "evaluate": (evaluate, "re-evaluate a finished run: evaluate run=PATH"),
    "compare": (compare, "compare run or sweep folders: compare PATH [PATH ...] [--out DIR]"),
    "studies": (studies, "run the study presets and write the book of findings: "
                         "studies [NAME|PATH ...] [KEY=VALUE ...] [--quick] [--jobs N] "
                         "[--out DIR] [--resume] [--seeds N] [--dry-run] [--book-only] "
                         "[--publish DEST]"),
    "predict": (predict, "classify image files with a finished run: predict run=PATH "
                "IMAGE_OR_FOLDER ... [--out FILE.csv] [--show]"),
}
