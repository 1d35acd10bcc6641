"""`train rerun=RUN_DIR [KEY=VALUE ...]`: a new run with the saved config of RUN_DIR.

RUN_DIR/.hydra/config.yaml is the whole resolved config of that run. It goes into Hydra's
ConfigStore as the config option `rerun=saved`, merged over the defaults, with the choice of
each config group (model, optim, ...) that its values belong to where that is not the
default one (so a sweep's job folders are named after what the command line varies, as
`rerun` itself is left out of those names); overrides on the command
line then apply on top, as in any `train`. So the rerun is an ordinary Hydra run (its own
folder, schema checks, sweeps with -m), and its config is the saved one whatever the
defaults or presets say today. Hydra's own `--experimental-rerun` replays a pickled config
but takes no overrides, which is why it is not used here.

A group choice on the command line (model=keras) replaces that group's saved values with
the option's defaults. When the code that made RUN_DIR differs from today's (summary.json's
provenance), one warning line says how, before the run starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mnistcnn.base import provenance, run_folder
from mnistcnn.base.config import CONF_DIR, read_saved_config
from mnistcnn.base.errors import UserError
from mnistcnn.base.run_folder import CONFIG, RunFolder

# Groups whose option is a node of the config (model: {name: tiny, ...}): their saved
# values need the matching option's schema. Every other group (experiment, variant,
# quick) only changes values that the saved config already holds.
NODE_GROUPS = ("model", "data", "optim", "sched", "logger")
OPTION = "rerun=saved"


def rerun_dir(overrides: list[str]) -> str | None:
    values = [o.split("=", 1)[1] for o in overrides if o.startswith("rerun=")]
    return values[0] if values else None


def group_of(override: str) -> str | None:
    """The config group an override chooses an option of (model=keras -> model)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key if "." not in key and (CONF_DIR / key).is_dir() else None


def expand(args: list[str]) -> list[str]:
    """args with rerun=RUN_DIR replaced by what composes RUN_DIR's saved config; args
    without it are returned unchanged."""
    run = rerun_dir(args)
    if run is None:
        return args
    config_path = RunFolder(Path(run)).config
    if not config_path.is_file():
        raise UserError(f"{run} is not a run folder (no {CONFIG}); pass "
                        f"rerun=PATH of a folder written by `train`")
    chosen = {group_of(a) for a in args} - {None}
    others = sorted(chosen - set(NODE_GROUPS))
    if others:
        raise UserError(f"rerun= starts from the whole saved config of {run}, which "
                        f"already holds what {others[0]}= set; pass KEY=VALUE overrides (or "
                        f"{'/'.join(NODE_GROUPS)} options), or drop rerun=")
    saved = read_saved_config(config_path, "restore it, or pass rerun=PATH of another folder "
                                           "written by `train`")
    for group in chosen:  # the command line's option, with its own defaults
        saved.pop(group)
    saved.resume = False  # a new run, even when the saved one was a resumed job
    saved.pop("reuse", None)  # and trained: not copied from the run it reruns, nor its group
    ConfigStore.instance().store(group="rerun", name="saved", package="_global_",
                                 node=OmegaConf.to_container(saved))
    warn_if_code_differs(Path(run))
    defaults = default_options()
    choices = [f"{g}={saved[g].name}" for g in NODE_GROUPS
               if g in saved and saved[g].name != defaults.get(g)]
    index = next(i for i, a in enumerate(args) if a.startswith("rerun="))
    return [*args[:index], *choices, f"+{OPTION}", *args[index + 1:]]


def default_options() -> dict[str, str]:
    """The option of each group in conf/config.yaml's defaults ({"model": "conv5x5", ...}):
    a saved option equal to it needs no override (and no word in a job folder's name)."""
    entries = OmegaConf.load(CONF_DIR / "config.yaml").defaults
    return {k: v for entry in entries if isinstance(entry, DictConfig)
            for k, v in entry.items()}


def warn_if_code_differs(run: Path) -> None:
    summary_path = RunFolder(run).summary
    recorded = run_folder.read_json(summary_path) if summary_path.is_file() else {}
    changed = provenance.differences(recorded)
    if changed:
        print(f"warning: {run} was made by other code ({'; '.join(changed)}); its numbers "
              f"may not come out the same", file=sys.stderr)
