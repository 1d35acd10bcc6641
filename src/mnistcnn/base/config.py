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


@dataclass
class ReuseConfig:
    """Where a run may come from instead of being trained (runs/reuse.py): a completed run
    with the same settings, device and code version in one of `dirs` (any depth), and for a
    sweep's `trainer.epochs` arms, one training to the longest (runs/shared_prefix.py)."""

    dirs: list[str] = field(default_factory=list)  # folders to look in; empty = train
    any_version: bool = False  # also runs made by other code (their summary says so)
    # The trainer.epochs levels of this sweep whose runs share their first epochs: the job
    # of any of them trains once to the longest and writes each shorter arm as its epoch
    # ends. null = every run trains its own epochs.
    shared_epochs: list[int] | None = None


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
    reuse: ReuseConfig = field(default_factory=ReuseConfig)
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


def report_settings(cfg: DictConfig) -> DictConfig:
    """cfg.report over the schema defaults: configs saved before a key existed still work."""
    return OmegaConf.merge(OmegaConf.structured(ReportConfig), cfg.get("report") or {})


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
