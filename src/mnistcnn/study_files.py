"""A study is a file: a preset in conf/experiment/ or a person's own YAML in the same format.

A study file is an experiment preset (`# @package _global_`, defaults, a sweep in
hydra.sweeper.params) with a `study:` block: its title and its questions (config.py's
StudyConfig). This module turns NAME|PATH into what `train -m` needs (a person's file is
copied into a folder that Hydra searches, as conf/experiment/ is), checks the questions
against the file's own sweep before anything runs, and plans a book (`studies --dry-run`):
arms x seeds, the runs already complete in the book folder and a time estimate from them.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mnistcnn import files
from mnistcnn.config import CONF_DIR, compose_config
from mnistcnn.errors import UserError
from mnistcnn.settings import NOT_SETTINGS, flatten, show_value
from mnistcnn.sweeps import sweep_jobs

PRESET_DIR = CONF_DIR / "experiment"
SEARCH_GROUP = "experiment"  # a person's file runs as +experiment=NAME, as a preset does
GUIDE = "docs/studies-guide.md"


def preset_names() -> list[str]:
    """The presets that are studies: those with a `study:` block (speedrun is a benchmark)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml")
                  if "study" in (yaml.safe_load(p.read_text()) or {}))


@dataclass(frozen=True)
class StudyFile:
    name: str  # the study's folder in the book: a preset's name or the file's stem
    path: Path
    preset: bool


def is_path(item: str) -> bool:
    return item.endswith((".yaml", ".yml")) or "/" in item or Path(item).is_file()


def resolve(items: Sequence[str]) -> list[StudyFile]:
    """Study names and paths, as typed, -> study files; all the presets when none."""
    presets = preset_names()
    found: dict[str, StudyFile] = {}
    for item in items or presets:
        if is_path(item):
            path = Path(item).resolve()
            if not path.is_file():
                raise UserError(f"study file {item} does not exist; pass a preset name "
                                f"({', '.join(presets)}) or the path of a study YAML file")
            if path.stem in presets and path != (PRESET_DIR / f"{path.stem}.yaml").resolve():
                raise UserError(f"study file {item} has the name of the preset {path.stem}; "
                                f"rename the file (its name names the study's folder)")
            study = StudyFile(path.stem, path, preset=False)
        elif item in presets:
            study = StudyFile(item, PRESET_DIR / f"{item}.yaml", preset=True)
        else:
            raise UserError(f"unknown study {item}; choose from {', '.join(presets)} (or "
                            f"none for all of them), or pass the path of a study file")
        if found.get(study.name, study) != study:
            raise UserError(f"two studies are named {study.name}; rename one of the files")
        found[study.name] = study
    return list(found.values())


def search_overrides(studies: Sequence[StudyFile], root: Path) -> list[str]:
    """Copy the people's study files to ROOT/experiment/ and return the override that makes
    Hydra search ROOT (none when every study is a preset)."""
    own = [s for s in studies if not s.preset]
    for study in own:
        (root / SEARCH_GROUP).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(study.path, root / SEARCH_GROUP / f"{study.name}.yaml")
    return [f"hydra.searchpath=['file://{root.resolve()}']"] if own else []


# ----------------------------------------------------------------------------- questions
def swept_levels(jobs: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """{key: levels} of every key the jobs give more than one value (the seed too), keys
    without Hydra's +/~ prefix and levels as settings.show_value writes the runs' values."""
    parser = OverridesParser.create()
    levels: dict[str, list[str]] = {}
    for job in jobs:
        for o in parser.parse_overrides([j for j in job if not j.startswith("hydra.")]):
            seen = levels.setdefault(o.key_or_group, [])
            if show_value(o.value()) not in seen:
                seen.append(show_value(o.value()))
    return {k: v for k, v in levels.items() if len(v) > 1}


def check_questions(study: StudyFile, search: Sequence[str]) -> dict:
    """The study block (title, questions) of a study file; a one-line UserError for a file
    without questions, a question about an unknown key or one its sweep does not vary, or
    a baseline or level the sweep lacks."""
    own = [f"+experiment={study.name}", *search]
    cfg = compose_config(own)
    where = f"study {study.name} ({study.path.name})"
    if not cfg.get("study") or not cfg.study.questions:
        raise UserError(f"{where} asks nothing: add a study: block with a title and "
                        f"questions (factor, ask, optional baseline), see {GUIDE}")
    jobs = sweep_jobs(own)
    varied = swept_levels(list(jobs) if jobs is not None else [])
    varied.pop("seed", None)
    known = flatten(OmegaConf.to_container(cfg, resolve=True))
    for number, q in enumerate(cfg.study.questions, 1):
        ask = f"{where}, question {number}"
        factor = q.factor[:-len(".name")] if q.factor.endswith(".name") else q.factor
        if factor not in varied:
            sweeps = ", ".join(varied) or "nothing but the seed"
            if factor in known or f"{factor}.name" in known:
                raise UserError(f"{ask}: its sweep does not vary {q.factor} (it varies "
                                f"{sweeps}); add it to hydra.sweeper.params or ask about one "
                                f"of those")
            raise UserError(f"{ask}: unknown factor {q.factor}; name a key the sweep "
                            f"varies ({sweeps})")
        levels = varied[factor]
        if q.baseline is not None and show_value(q.baseline) not in levels:
            raise UserError(f"{ask}: baseline {show_value(q.baseline)} is not a level of "
                            f"{q.factor} ({', '.join(levels)})")
        chosen = [show_value(v) for v in (q.levels or [])]
        wrong = [v for v in chosen if v not in levels]
        if wrong or len(chosen) == 1:
            raise UserError(f"{ask}: levels {', '.join(wrong or chosen)} "
                            f"{'are not levels' if wrong else 'is one level'} of {q.factor}; "
                            f"choose two or more of {', '.join(levels)}")
        if chosen and q.baseline is not None and show_value(q.baseline) not in chosen:
            raise UserError(f"{ask}: baseline {show_value(q.baseline)} is not among its "
                            f"levels ({', '.join(chosen)})")
    return OmegaConf.to_container(cfg.study, resolve=True)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    name: str
    arms: int
    seeds: int
    runs: int
    complete: int = 0
    estimate_s: float = 0.0  # of the pending runs that have finished runs like them
    estimated: int = 0  # how many pending runs the estimate covers
    missing: list[str] = field(default_factory=list)  # arms with no finished run to time

    @property
    def pending(self) -> int:
        return self.runs - self.complete


def job_key(overrides: Sequence[str], leave_out: Sequence[str] = ()) -> frozenset:
    """What tells a job apart: its overrides but Hydra's own and those that do not change
    what is trained (the keys a job folder's name leaves out, settings.NOT_SETTINGS)."""
    parser = OverridesParser.create()
    return frozenset((o.key_or_group, show_value(o.value())) for o in parser.parse_overrides(
        [j for j in overrides if not j.startswith("hydra.")])
        if not o.key_or_group.startswith(NOT_SETTINGS) and o.key_or_group not in leave_out)


def finished_runs(folder: Path) -> dict[frozenset, float]:
    """{job key: run duration (s)} of the completed runs in a study folder, keyed by the
    overrides Hydra recorded for each job (.hydra/overrides.yaml)."""
    found: dict[frozenset, float] = {}
    for summary_path in folder.glob("*/summary.json") if folder.is_dir() else []:
        overrides_path = summary_path.parent / ".hydra" / "overrides.yaml"
        try:
            summary = files.read_json(summary_path)
            if summary.get("status") != "completed" or not overrides_path.is_file():
                continue
            seconds = (datetime.fromisoformat(summary["finished"])
                       - datetime.fromisoformat(summary["started"])).total_seconds()
        except (KeyError, ValueError, UserError):
            continue
        found[job_key(yaml.safe_load(overrides_path.read_text()) or [])] = seconds
    return found


def plan(name: str, overrides: Sequence[str], folder: Path | None) -> Plan:
    """Arms x seeds of one study as `train -m OVERRIDES` would run it, what of it is complete
    in folder, and the time of the rest from finished runs of the same arm there."""
    jobs = sweep_jobs(list(overrides))
    if jobs is None:
        raise UserError(f"study {name}: its sweep (glob or interval) cannot be listed ahead")
    jobs = list(jobs)
    keys = [job_key(j) for j in jobs]
    arms = [job_key(j, leave_out=["seed"]) for j in jobs]
    seeds = {v for key in keys for k, v in key if k == "seed"}
    result = Plan(name, len(set(arms)), max(len(seeds), 1), len(keys))
    finished = finished_runs(folder) if folder is not None else {}
    by_arm: dict[frozenset, list[float]] = {}
    for key, seconds in finished.items():
        by_arm.setdefault(frozenset(kv for kv in key if kv[0] != "seed"), []).append(seconds)
    varied = [k for k in swept_levels(jobs) if k != "seed"]
    for key, arm in zip(keys, arms, strict=True):
        if key in finished:
            result.complete += 1
        elif arm in by_arm:
            result.estimate_s += statistics.fmean(by_arm[arm])
            result.estimated += 1
        else:
            values = dict(arm)
            label = ", ".join(f"{k}={values.get(k)}" for k in varied) or "all"
            result.missing += [label] * (label not in result.missing)
    return result
