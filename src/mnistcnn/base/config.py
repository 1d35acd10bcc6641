"""Config schemas (dataclasses registered in Hydra's ConfigStore) and validation.

The schemas make Hydra reject a misspelt key, a wrong type or an unknown choice
while it composes the config; `validate` adds the range and cross-field checks
that types cannot express. Both run before any data is read or model trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from mnistcnn.base.errors import UserError, yaml_problem

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # package data: a wheel carries it


class Activation(Enum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    leaky_relu = "leaky_relu"
    elu = "elu"
    gelu = "gelu"


class Pool(Enum):
    max = "max"
    avg = "avg"


class Dataset(Enum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"


class Loss(Enum):
    cross_entropy = "cross_entropy"
    nll = "nll"
    mse = "mse"


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # bfloat16 autocast for forward passes; weights and optimizer stay fp32


class Keep(Enum):
    last = "last"  # the final epoch's weights
    best = "best"  # the weights of the epoch with the best trainer.early_stop.monitor


class CompileMode(Enum):
    default = "default"
    reduce_overhead = "reduce-overhead"  # CUDA graphs on a GPU
    max_autotune = "max-autotune"


def choice(value: Any) -> Any:
    """The plain string behind an Enum field (config values may be Enum members or strings)."""
    return value.value if isinstance(value, Enum) else value


# ----------------------------------------------------------------------------- models
@dataclass
class ModelConfig:
    name: str = MISSING
    activation: Activation = Activation.relu
    pool: Pool = Pool.max
    batchnorm: bool = False
    dropout: float = 0.0


@dataclass
class Conv5x5Config(ModelConfig):
    name: str = "conv5x5"
    channels: list[int] = field(default_factory=lambda: [32, 16])
    kernel: int = 5
    hidden: int = 1024
    # Width of a linear bottleneck between the flatten and the hidden layer (null = none).
    features: int | None = None


@dataclass
class KerasConfig(ModelConfig):
    name: str = "keras"
    batchnorm: bool = True
    dropout: float = 0.5  # after each dense layer
    conv_layers: int = 2
    dense_layers: int = 3
    filters: int = 64
    kernel: int = 3
    units: int = 128
    conv_dropout: float = 0.25  # after each conv block


@dataclass
class ClassicConfig(ModelConfig):
    name: str = "classic"
    dropout: float = 0.5  # before the last FC layer
    channels: list[int] = field(default_factory=lambda: [10, 20])
    kernel: int = 5
    hidden: int = 50
    conv_dropout: float = 0.5  # Dropout2d after the second conv


@dataclass
class TinyConfig(ModelConfig):
    name: str = "tiny"
    channels: list[int] = field(default_factory=lambda: [16, 8, 4])
    kernels: list[int] = field(default_factory=lambda: [7, 5, 3])


@dataclass
class MobileNetConfig(ModelConfig):
    name: str = "mobilenet"
    batchnorm: bool = True
    conv_blocks: int = 1
    mobile_blocks: int = 3
    # Channels of the first block; they double at each of the next three (downsampling) blocks.
    width: int = 32


MODEL_SCHEMAS = {
    "conv5x5": Conv5x5Config,
    "keras": KerasConfig,
    "classic": ClassicConfig,
    "tiny": TinyConfig,
    "mobilenet": MobileNetConfig,
}


# ----------------------------------------------------------------------------- data
@dataclass
class AugmentConfig:
    rotation: float = 0.0  # degrees, drawn uniformly from [-rotation, rotation]
    translate: float = 0.0  # fraction of the image side, drawn from [-translate, translate]
    brightness: float = 0.0  # pixel factor drawn from [1 - brightness, 1 + brightness]


@dataclass
class DataConfig:
    name: Dataset = Dataset.mnist
    dir: str | None = None
    val_size: int = 10000
    resplit: float | None = None
    limit: int | None = None
    # Optional grouping {new_class: [digits]}; typed Any because OmegaConf cannot merge a
    # dict into a None-valued typed dict node. validate_classes checks it instead.
    classes: Any | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ----------------------------------------------------------------------------- optimizers
@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class AdamConfig(OptimConfig):
    name: str = "adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 0.01


@dataclass
class SGDConfig(OptimConfig):
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class RMSpropConfig(OptimConfig):
    name: str = "rmsprop"
    alpha: float = 0.99
    momentum: float = 0.0


@dataclass
class AdadeltaConfig(OptimConfig):
    name: str = "adadelta"
    lr: float = 1.0
    rho: float = 0.9


OPTIM_SCHEMAS = {
    "adam": AdamConfig,
    "adamw": AdamWConfig,
    "sgd": SGDConfig,
    "rmsprop": RMSpropConfig,
    "adadelta": AdadeltaConfig,
}


# ----------------------------------------------------------------------------- schedules
@dataclass
class SchedConfig:
    name: str = MISSING


@dataclass
class NoSchedConfig(SchedConfig):
    name: str = "none"


@dataclass
class StepSchedConfig(SchedConfig):
    name: str = "step"
    step_size: int = 1  # epochs between decays
    gamma: float = 0.7


@dataclass
class CosineSchedConfig(SchedConfig):
    name: str = "cosine"
    min_lr: float = 0.0  # reached at the last batch of the last epoch


@dataclass
class OneCycleSchedConfig(SchedConfig):
    name: str = "onecycle"
    max_lr: float | None = None  # null = optim.lr
    pct_start: float = 0.3


@dataclass
class PlateauSchedConfig(SchedConfig):
    """ReduceLROnPlateau on trainer.early_stop.monitor, stepped once per epoch."""

    name: str = "plateau"
    factor: float = 0.1  # lr multiplier at each reduction
    patience: int = 2  # epochs without improvement before the rate is reduced
    min_lr: float = 0.0


SCHED_SCHEMAS = {
    "none": NoSchedConfig,
    "step": StepSchedConfig,
    "cosine": CosineSchedConfig,
    "onecycle": OneCycleSchedConfig,
    "plateau": PlateauSchedConfig,
}


# ----------------------------------------------------------------------------- loggers
@dataclass
class LoggerConfig:
    name: str = MISSING


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


@dataclass
class TensorBoardLoggerConfig(LoggerConfig):
    """Per-epoch scalars and, at the end, hyperparameters with final metrics in RUN/tb/."""

    name: str = "tensorboard"


@dataclass
class MLflowLoggerConfig(LoggerConfig):
    """Each run an MLflow run: params, per-epoch metrics, final metrics, tags, artifacts."""

    name: str = "mlflow"
    # A SQLite file (relative to where the command runs) or a tracking server's URL.
    tracking_uri: str = "sqlite:///outputs/mlflow.db"
    experiment: str | None = None  # null = the sweep's (or outputs/runs') folder
    log_model: bool = False  # also upload model.pt as an artifact


LOGGER_SCHEMAS = {"none": NoLoggerConfig, "tensorboard": TensorBoardLoggerConfig,
                  "mlflow": MLflowLoggerConfig}


# ----------------------------------------------------------------------------- top level
@dataclass
class LossConfig:
    name: Loss = Loss.cross_entropy
    label_smoothing: float = 0.0


# What early stopping, trainer.keep=best and sched=plateau watch; accuracies are maximised,
# losses minimised.
MONITORS = ("val/acc", "val/loss", "train/acc", "train/loss")


@dataclass
class EarlyStopConfig:
    monitor: str = "val/acc"  # one of MONITORS; train/* when there is no val split
    patience: int = 0  # stop after this many epochs without improvement; 0 = never
    min_delta: float = 0.0  # the smallest change that counts as an improvement
    target: float | None = None  # stop as soon as the monitored value reaches this


@dataclass
class TrainerConfig:
    epochs: int = 3
    batch_size: int = 64
    # Validation/test/report batches. On a 2-core CPU 256 ran val passes 2-2.7x faster than
    # 1,000 (whose activations outgrow the caches); a GPU can take more.
    eval_batch_size: int = 256
    device: Device = Device.auto
    deterministic: bool = False
    precision: Precision = Precision.fp32
    # torch.compile the model for training and validation passes (compile time is paid
    # at the first batch of each batch shape and counted in the first epoch's time).
    compile: bool = False
    compile_mode: CompileMode = CompileMode.default
    # Which weights model.pt holds and the test set is scored on: the last epoch's (what
    # the studies report) or those of the best epoch by early_stop.monitor.
    keep: Keep = Keep.last
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    # Replay each full-size training step as one CUDA graph (training/cuda_graph.py): auto = on when
    # training on CUDA and the configuration allows it; true = the same, but a
    # configuration that cannot be graphed is an error; false = always the eager loop.
    # A string, not an Enum, because YAML and overrides turn true/false into booleans.
    cuda_graph: str = "auto"


# The run report's figures, the values report.plots takes (file stems under plots/): the one
# list of their names. reporting/run_figures.FIGURES pairs each with its maker (base cannot
# import it), in this order; tests/test_report.py checks that the two name the same plots.
REPORT_PLOTS = ("loss", "accuracy", "confusion", "errors", "correct", "filters_first",
                "filters_last", "feature_maps", "embedding")


@dataclass
class ReportConfig:
    """What the run report draws; run_figures.FIGURES draws each of REPORT_PLOTS."""

    enabled: bool = True
    plots: list[str] | None = None  # null = every plot; else a subset of plot names
    sample_index: int = 0  # the test image whose feature maps are drawn
    tsne_samples: int = 2000  # test images in the embedding plot


# ----------------------------------------------------------------------------- studies
@dataclass
class QuestionConfig:
    """One question of a study (docs/studies-guide.md): the factor it is about (a key the
    sweep varies, a config group such as optim, or variant), optionally the baseline level
    ("does X help?"), the levels it is about (default: all), its kind (questions.KINDS:
    baseline, best, enough, describe; default baseline with a baseline, else best) and a
    margin in points of test accuracy (what "enough" or "no difference" allows)."""

    factor: str = MISSING
    ask: str = ""
    baseline: Any = None
    levels: Any = None  # a list of levels, or null
    kind: str | None = None
    margin: float | None = None


@dataclass
class StudyConfig:
    """What a study preset asks; the `studies` command answers it in the book."""

    title: str = ""
    questions: list[QuestionConfig] = field(default_factory=list)


@dataclass
class Config:
    model: Any = MISSING
    data: DataConfig = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    logger: Any = MISSING
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    seed: int = 0
    # In a sweep (`train -m ... resume=true hydra.sweep.dir=OLD`): skip jobs that completed,
    # continue interrupted ones from their last.pt. A single run resumes with resume=PATH.
    resume: bool = False
    # A study preset's title and questions (conf/experiment/); null outside a study.
    study: StudyConfig | None = None


def folder_name(overrides: str) -> str:
    """A sweep job's folder name from its overrides: a `/` in a value (val/loss,
    sqlite:///dir/m.db) would make nested folders, so it becomes `-`."""
    return overrides.replace("/", "-")


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore; group YAMLs extend them via `/schema/...`;
    `${folder_name:...}` for the sweep's job folders (conf/config.yaml)."""
    OmegaConf.register_new_resolver("folder_name", folder_name, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="schema/data", name="data", node=DataConfig)
    for group, schemas in (("model", MODEL_SCHEMAS), ("optim", OPTIM_SCHEMAS),
                           ("sched", SCHED_SCHEMAS),
                           ("logger", LOGGER_SCHEMAS)):
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The config `train OVERRIDES` would run with (and Hydra's own part when with_hydra),
    composed from the package's conf/ without running anything."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)


# ----------------------------------------------------------------------------- validation
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


def report_settings(cfg: DictConfig) -> DictConfig:
    """cfg.report over the schema defaults: configs saved before a key existed still work."""
    return OmegaConf.merge(OmegaConf.structured(ReportConfig), cfg.get("report") or {})


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


def read_saved_config(config_path: Path, fix: str) -> DictConfig:
    """A run's RUN_DIR/.hydra/config.yaml, or a one-line UserError ending in `fix` when it
    is no run's config: not YAML, or YAML that is not a mapping holding the model's
    settings."""
    try:
        saved = OmegaConf.load(config_path)
    except yaml.YAMLError as e:
        raise UserError(f"{config_path} is not valid YAML ({yaml_problem(e)}); {fix}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{config_path} is not valid YAML (not UTF-8 text: {e.reason} at "
                        f"byte {e.start}); {fix}") from None
    if not isinstance(saved, DictConfig) or not isinstance(saved.get("model"), DictConfig):
        raise UserError(f"{config_path} is not a run's saved config (a mapping with model, "
                        f"data, optim, ...); {fix}")
    return saved


def saved_config(saved: Any) -> DictConfig:
    """A config saved by a run (a dict or a loaded YAML) with trainer keys added since then
    at their defaults, so runs made by an earlier version can be resumed and evaluated."""
    cfg = OmegaConf.create(saved) if not isinstance(saved, DictConfig) else saved
    cfg.trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer)
    return cfg


def to_plain(cfg: DictConfig | ListConfig) -> Any:
    """Resolved config as plain dicts/lists/strings: safe for JSON and weights_only checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
