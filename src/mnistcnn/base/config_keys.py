"""A run's settings as flat keys: its resolved config flattened ("model.pool"), the preset
choices Hydra recorded for it (experiment, variant, quick), the keys that do not change what
is trained, and how a value is written (as in an override). Shared by the comparison, the
studies and the trackers (TensorBoard's HParams, MLflow's params).
"""

from __future__ import annotations

from pathlib import Path

from mnistcnn.base.run_folder import RunFolder

# Where the data lives, where it runs, how a run is reported, resumed, rerun, reused or logged,
# what a study asks: two runs that differ only in these ran the same experiment (one comparison row,
# one arm of a book). Each entry is a key or a group with every key under it (`logger` covers
# logger=mlflow and logger.tracking_uri): `key.startswith(NOT_SETTINGS)`. Job folder names
# leave out the same keys: conf/config.yaml's exclude_keys lists each key under these, as
# Hydra matches whole keys, and tests/test_config.py keeps the two lists equal.
NOT_SETTINGS = ("data.dir", "trainer.device", "trainer.cuda_graph", "trainer.eval_batch_size",
                "report", "resume", "rerun", "reuse", "logger", "study")


def preset_choices(path: Path, config: dict) -> dict:
    """The options of config groups that merge into the whole config (experiment, variant,
    quick), from Hydra's record of the run. Their names say in one word what a handful of
    keys say together (variant=tiny_4classes_augment); groups with a node of their own
    (model, optim) are already in the config as model.name, and hydra/* choices do not
    change what is trained."""
    hydra = RunFolder(path).read_hydra_record()
    if hydra is None:
        return {}
    choices = hydra.runtime.get("choices", {})
    return {group: choice for group, choice in choices.items()
            if "/" not in group and group not in config}


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b.c": leaf}. Dicts keyed by non-strings (data.classes) are
    leaves: their keys are data, not config keys."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def settings(config: dict) -> dict:
    """A plain config's flat keys that change what is trained: {"optim.lr": 0.001, ...}."""
    return {k: v for k, v in flatten(config).items() if not k.startswith(NOT_SETTINGS)}


def show_value(value) -> str:
    """A config value as one would write it in an override: true, null, [32,16], {0:[0,6]}."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def short_key(key: str) -> str:
    """A key as a label or a legend says it: its last part (`model.pool` -> `pool`), the
    group for a group's choice (`model.name` -> `model`)."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]
