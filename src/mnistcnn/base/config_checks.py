"""The checks of a composed config that its schema cannot express: ranges, shapes of
lists and mappings, and the combinations that cannot train (one line each, with the fix).
`runs/preflight` runs them before a run or a sweep starts; `data/dataset` checks a class
grouping with the same rule."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from mnistcnn.base.config import MONITORS, REPORT_PLOTS, choice, report_settings
from mnistcnn.base.errors import UserError


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise UserError(f"{key}={value} is out of range: {rule}")


def validate_classes(classes: Any) -> None:
    """A grouping must map new classes 0..k-1 to digit lists that cover 0-9 exactly once."""
    if classes is None:
        return
    groups = {int(k): [int(d) for d in v] for k, v in dict(classes).items()}
    example = "e.g. data.classes='{0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}'"
    if sorted(groups) != list(range(len(groups))):
        raise UserError(f"data.classes keys must be 0..{len(groups) - 1} "
                        f"(got {sorted(groups)}); {example}")
    digits = [d for ds in groups.values() for d in ds]
    missing = sorted(set(range(10)) - set(digits))
    repeated = sorted({d for d in digits if digits.count(d) > 1})
    unknown = sorted({d for d in digits if not 0 <= d <= 9})
    if missing or repeated or unknown:
        problems = [f"{what} {lst}" for what, lst in
                    (("misses digits", missing), ("repeats digits", repeated),
                     ("has unknown digits", unknown)) if lst]
        raise UserError(f"data.classes {', '.join(problems)}: every digit 0-9 must be in "
                        f"exactly one group; {example}")


def validate(cfg: DictConfig) -> None:
    """Range and cross-field checks; raises UserError naming the key and the allowed values."""
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.trainer
    _check(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    if "momentum" in o:
        _check(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    if "betas" in o:
        _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
               list(o.betas), "must be two numbers in [0, 1)")
    _check(t.epochs >= 1, "trainer.epochs", t.epochs, "must be >= 1")
    _check(t.batch_size >= 1, "trainer.batch_size", t.batch_size, "must be >= 1")
    _check(t.eval_batch_size >= 1, "trainer.eval_batch_size", t.eval_batch_size, "must be >= 1")
    _check(str(t.cuda_graph).lower() in ("auto", "true", "false"), "trainer.cuda_graph",
           t.cuda_graph, "must be auto, true or false")
    _check(0 <= cfg.loss.label_smoothing < 1, "loss.label_smoothing", cfg.loss.label_smoothing,
           "must be in [0, 1)")
    s = cfg.sched
    if s.name == "step":
        _check(s.step_size >= 1, "sched.step_size", s.step_size, "must be >= 1")
        _check(0 < s.gamma <= 1, "sched.gamma", s.gamma, "must be in (0, 1]")
    if s.name == "cosine":
        _check(0 <= s.min_lr < o.lr, "sched.min_lr", s.min_lr, f"must be in [0, optim.lr={o.lr})")
    if s.name == "onecycle":
        _check(0 < s.pct_start < 1, "sched.pct_start", s.pct_start, "must be in (0, 1)")
        _check(s.max_lr is None or s.max_lr > 0, "sched.max_lr", s.max_lr, "must be > 0 or null")
    if s.name == "plateau":
        _check(0 < s.factor < 1, "sched.factor", s.factor, "must be in (0, 1)")
        _check(s.patience >= 0, "sched.patience", s.patience, "must be >= 0")
        _check(0 <= s.min_lr < o.lr, "sched.min_lr", s.min_lr, f"must be in [0, optim.lr={o.lr})")
    validate_early_stop(cfg)

    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)")
    for key in ("conv_dropout",):
        if key in m:
            _check(0 <= m[key] < 1, f"model.{key}", m[key], "must be in [0, 1)")
    for key in ("kernel", "hidden", "filters", "units", "width"):
        if key in m:
            _check(m[key] >= 1, f"model.{key}", m[key], "must be >= 1")
    for key in ("channels", "kernels"):
        if key in m:
            _check(len(m[key]) > 0 and all(v >= 1 for v in m[key]), f"model.{key}",
                   list(m[key]), "must be a non-empty list of positive integers")
    if m.name == "conv5x5":
        _check(m.features is None or m.features >= 1, "model.features", m.features,
               "must be >= 1 or null")
    if m.name == "tiny":
        _check(len(m.channels) == len(m.kernels) == 3, "model.channels/model.kernels",
               f"{list(m.channels)}/{list(m.kernels)}", "the tiny net has exactly 3 conv layers")
    for key in ("conv_layers", "dense_layers", "conv_blocks", "mobile_blocks"):
        if key in m:
            _check(m[key] >= 0, f"model.{key}", m[key], "must be >= 0")
    if m.name == "mobilenet":
        _check(m.conv_blocks + m.mobile_blocks >= 1, "model.conv_blocks+model.mobile_blocks",
               m.conv_blocks + m.mobile_blocks, "need at least one block")

    _check(d.val_size >= 0, "data.val_size", d.val_size, "must be >= 0 (0 = no validation)")
    _check(d.resplit is None or 0 < d.resplit < 1, "data.resplit", d.resplit,
           "must be in (0, 1), e.g. 0.8, or null")
    _check(d.limit is None or d.limit >= 1, "data.limit", d.limit, "must be >= 1 or null")
    a = d.augment
    _check(0 <= a.rotation <= 180, "data.augment.rotation", a.rotation, "degrees in [0, 180]")
    _check(0 <= a.translate < 1, "data.augment.translate", a.translate, "fraction in [0, 1)")
    _check(0 <= a.brightness < 1, "data.augment.brightness", a.brightness, "must be in [0, 1)")
    validate_classes(d.classes)
    validate_report(report_settings(cfg))


def validate_report(report: DictConfig) -> None:
    """Report settings that would only fail after training."""
    unknown = sorted(set(report.plots or []) - set(REPORT_PLOTS))
    if unknown:
        raise UserError(f"report.plots: unknown plot {', '.join(unknown)}; choose from "
                        f"{', '.join(REPORT_PLOTS)}, e.g. report.plots=[loss,confusion]")
    _check(report.sample_index >= 0, "report.sample_index", report.sample_index,
           "must be >= 0 (a test image index)")
    _check(report.tsne_samples >= 1, "report.tsne_samples", report.tsne_samples,
           "must be >= 1, e.g. 2000")


def validate_early_stop(cfg: DictConfig) -> None:
    """trainer.early_stop ranges, and a monitored value that the run will have: val/*
    needs a validation split whenever something watches it."""
    t, es = cfg.trainer, cfg.trainer.early_stop
    _check(es.monitor in MONITORS, "trainer.early_stop.monitor", es.monitor,
           f"choose one of {', '.join(MONITORS)}")
    _check(es.patience >= 0, "trainer.early_stop.patience", es.patience, "must be >= 0 (0 = off)")
    _check(es.min_delta >= 0, "trainer.early_stop.min_delta", es.min_delta, "must be >= 0")
    if es.target is not None:
        if es.monitor.endswith("/acc"):
            _check(0 < es.target <= 1, "trainer.early_stop.target", es.target,
                   "an accuracy is a fraction in (0, 1], e.g. 0.99")
        else:
            _check(es.target >= 0, "trainer.early_stop.target", es.target, "a loss is >= 0")
    watchers = [name for name, on in (
        ("trainer.early_stop.patience", es.patience > 0),
        ("trainer.early_stop.target", es.target is not None),
        ("trainer.keep=best", choice(t.keep) == "best"),
        ("sched=plateau", cfg.sched.name == "plateau")) if on]
    if watchers and es.monitor.startswith("val/") and cfg.data.val_size == 0:
        raise UserError(f"{watchers[0]} watches trainer.early_stop.monitor={es.monitor}, but "
                        f"data.val_size=0 leaves no validation split; set data.val_size "
                        f"(e.g. 10000) or trainer.early_stop.monitor=train/loss")
