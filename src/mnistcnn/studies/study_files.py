"""A study is a file: a preset in conf/experiment/ or a person's own YAML in the same format.

A study file is an experiment preset (`# @package _global_`, defaults, a sweep in
hydra.sweeper.params) with a `study:` block: its title and its questions (config.py's
StudyConfig). This module turns NAME|PATH into what `train -m` needs (a person's file is
copied into a folder that Hydra searches, as conf/experiment/ is), reads a study's
questions as its file asks them now, checks them against the file's own sweep before
anything runs, and plans a book (`studies --dry-run`): arms x seeds, the runs already
complete in the book folder, their time (from finished runs of the same arm; arms without
one are timed by calibration.py), and the renumbering of earlier run folders when a
longer seed list moves their jobs.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mnistcnn.base import run_folder
from mnistcnn.base.config import CONF_DIR, compose_config
from mnistcnn.base.config_keys import NOT_SETTINGS, flatten, show_value
from mnistcnn.base.errors import UserError, yaml_problem
from mnistcnn.base.run_folder import SUMMARY, RunFolder
from mnistcnn.base.run_reader import wall_seconds
from mnistcnn.runs.preflight import sweep_jobs
from mnistcnn.studies.questions import KINDS, is_numeric, same_level
from mnistcnn.studies.reuse_plan import ReusePlan

PRESET_DIR = CONF_DIR / "experiment"
SEARCH_GROUP = "experiment"  # a person's file runs as +experiment=NAME, as a preset does
BOOK_COPIES = "study_files"  # DIR/study_files/experiment/NAME.yaml: people's study files
GUIDE = "docs/studies-guide.md"


def current_block(name: str, book_dir: Path) -> dict | None:
    """The `study:` block of a study as its file says now: the copy a book keeps of a
    person's file (BOOK_COPIES), else the preset of that name; None when neither exists or
    the file cannot be read (the book then uses what was recorded)."""
    for path in (book_dir / BOOK_COPIES / SEARCH_GROUP / f"{name}.yaml",
                 PRESET_DIR / f"{name}.yaml"):
        if path.is_file():
            try:
                block = (yaml.safe_load(path.read_text()) or {}).get("study")
            except (yaml.YAMLError, AttributeError):
                return None
            return block if isinstance(block, dict) else None
    return None


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


def read_study_file(path: Path, typed: str) -> dict:
    """A person's study file parsed, or a one-line UserError naming it (as typed) and the
    place where it stops being YAML or a mapping; Hydra would print a traceback later."""
    try:
        content = yaml.safe_load(path.read_bytes())
    except yaml.YAMLError as e:
        raise UserError(f"study file {typed} is not valid YAML ({yaml_problem(e)}); fix the "
                        f"file (see {GUIDE} for the format)") from None
    except OSError as e:
        raise UserError(f"study file {typed} cannot be read ({e.strerror or e}); pass a "
                        f"file you can read") from None
    if not isinstance(content, dict):
        held = ("nothing" if content is None else "a list" if isinstance(content, list)
                else "a single value")
        raise UserError(f"study file {typed} holds {held}, not a mapping of keys; write it "
                        f"as a preset is written (see {GUIDE})")
    return content


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
            read_study_file(path, item)
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
    without Hydra's +/~ prefix and levels as config_keys.show_value writes the runs' values."""
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
        check_levels(ask, q, varied[factor])
    return OmegaConf.to_container(cfg.study, resolve=True)


def check_levels(ask: str, q, levels: Sequence[str]) -> None:
    """A question's baseline, levels, kind and margin against the levels its sweep gives
    (matched by value: 0, 0.0 and "0" are one level)."""
    def known(value) -> bool:
        return any(same_level(show_value(value), lv) for lv in levels)

    if q.baseline is not None and not known(q.baseline):
        raise UserError(f"{ask}: baseline {show_value(q.baseline)} is not a level of "
                        f"{q.factor} ({', '.join(levels)})")
    chosen = [show_value(v) for v in (q.levels or [])]
    wrong = [v for v in chosen if not known(v)]
    if wrong or len(chosen) == 1:
        raise UserError(f"{ask}: levels {', '.join(wrong or chosen)} "
                        f"{'are not levels' if wrong else 'is one level'} of {q.factor}; "
                        f"choose two or more of {', '.join(levels)}")
    if chosen and q.baseline is not None and not any(
            same_level(show_value(q.baseline), v) for v in chosen):
        raise UserError(f"{ask}: baseline {show_value(q.baseline)} is not among its "
                        f"levels ({', '.join(chosen)})")
    if q.kind is not None and q.kind not in KINDS:
        raise UserError(f"{ask}: kind {q.kind} is not one of {', '.join(KINDS)}; see {GUIDE}")
    if q.margin is not None and not q.margin > 0:
        raise UserError(f"{ask}: margin {q.margin} must be a positive number of points of "
                        f"test accuracy (e.g. margin: 0.25)")
    if q.kind == "enough" and q.baseline is None and not is_numeric(chosen or levels):
        raise UserError(f"{ask}: kind enough asks whether levels come close enough to a "
                        f"reference: name it with baseline: (one of {', '.join(levels)})")


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    name: str
    arms: int
    seeds: int
    runs: int
    complete: int = 0
    timed_s: float = 0.0  # the pending runs that finished runs of their arm time
    timed: int = 0  # how many pending runs that is
    # The arms of the other pending runs: {arm: (one pending job's overrides, its runs)},
    # for command.py to time by a calibration.
    untimed: dict[frozenset, tuple[list[str], int]] = field(default_factory=dict)
    calibrated_s: float = 0.0  # the untimed runs as calibrations time them
    calibrated: int = 0
    failed: list[str] = field(default_factory=list)  # why an untimed arm has no estimate
    finished: list[int] = field(default_factory=list)  # completed runs of each arm in folder
    reused: int = 0  # pending runs that will be copied from an identical run, not trained
    shared: int = 0  # pending runs written from a longer epoch arm's training
    shared_epochs: int = 0  # the epochs those runs do not train

    @property
    def pending(self) -> int:
        return self.runs - self.complete

    @property
    def to_train(self) -> int:
        return self.pending - self.reused - self.shared


def job_key(overrides: Sequence[str], leave_out: Sequence[str] = ()) -> frozenset:
    """What tells a job apart: its overrides but Hydra's own and those that do not change
    what is trained (the keys a job folder's name leaves out, config_keys.NOT_SETTINGS)."""
    parser = OverridesParser.create()
    return frozenset((o.key_or_group, show_value(o.value())) for o in parser.parse_overrides(
        [j for j in overrides if not j.startswith("hydra.")])
        if not o.key_or_group.startswith(NOT_SETTINGS) and o.key_or_group not in leave_out)


def arm_of(key: frozenset) -> frozenset:
    """A job key without its seed: what the runs of an arm share."""
    return frozenset(kv for kv in key if kv[0] != "seed")


def recorded_key(job_dir: Path) -> frozenset | None:
    """The job key of a job folder, from the overrides Hydra recorded for it."""
    path = RunFolder(job_dir).overrides
    try:
        return job_key(yaml.safe_load(path.read_text()) or []) if path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        return None


def finished_runs(folder: Path) -> dict[frozenset, float]:
    """{job key: run duration (s)} of the completed runs in a study folder, keyed by the
    overrides Hydra recorded for each job (.hydra/overrides.yaml)."""
    found: dict[frozenset, float] = {}
    for summary_path in folder.glob(f"*/{SUMMARY}") if folder.is_dir() else []:
        key = recorded_key(summary_path.parent)
        try:
            summary = run_folder.read_json(summary_path)
        except UserError:
            continue
        seconds = wall_seconds(summary)
        if summary.get("status") == "completed" and key is not None and seconds is not None:
            found[key] = seconds
    return found


def listed_jobs(name: str, overrides: Sequence[str]) -> list[list[str]]:
    jobs = sweep_jobs(list(overrides))
    if jobs is None:
        raise UserError(f"study {name}: its sweep (glob or interval) cannot be listed ahead")
    return list(jobs)


def plan(name: str, overrides: Sequence[str], folder: Path | None,
         reusing: ReusePlan | None = None) -> Plan:
    """Arms x seeds of one study as `train -m OVERRIDES` would run it, what of it is complete
    in folder, what `reusing` says will be reused or written from a longer arm, and the time
    of the rest from finished runs of the same arm there; the arms with no finished run to
    time are left in Plan.untimed."""
    jobs = listed_jobs(name, overrides)
    keys = [job_key(j) for j in jobs]
    arms = [arm_of(k) for k in keys]
    seeds = {v for key in keys for k, v in key if k == "seed"}
    result = Plan(name, len(set(arms)), max(len(seeds), 1), len(keys))
    finished = finished_runs(folder) if folder is not None else {}
    by_arm: dict[frozenset, list[float]] = {}
    for key, seconds in finished.items():
        by_arm.setdefault(arm_of(key), []).append(seconds)
    result.finished = [len(by_arm.get(arm, [])) for arm in dict.fromkeys(arms)]
    for job, key, arm in zip(jobs, keys, arms, strict=True):
        if key in finished:
            result.complete += 1
        elif reusing is not None and reusing.will_reuse(job):
            result.reused += 1
        elif reusing is not None and (epochs := reusing.shared_epochs(job)):
            result.shared += 1
            result.shared_epochs += epochs
        elif arm in by_arm:
            result.timed_s += statistics.fmean(by_arm[arm])
            result.timed += 1
        else:
            first, count = result.untimed.get(arm, (job, 0))
            result.untimed[arm] = (first, count + 1)
    return result


def arm_label(name: str, arm: frozenset, overrides: Sequence[str]) -> str:
    """An arm as people name it: the values of what its study varies (but the seed)."""
    varied = [k for k in swept_levels(listed_jobs(name, overrides)) if k != "seed"]
    values = dict(arm)
    return ", ".join(f"{k}={values.get(k)}" for k in varied) or "all"


def renumber_jobs(folder: Path, overrides: Sequence[str]) -> int:
    """Give the job folders of an earlier sweep of a study the numbers that the sweep of
    OVERRIDES gives their jobs; returns how many folders were renamed.

    Hydra names a job's folder NUM_OVERRIDES (hydra.sweep.subdir in conf/config.yaml) and a
    sweep with resume=true finds a job's earlier run by that name. NUM is the job's place in
    the sweep, which moves when the sweep grows: the presets list the seed last, so seeds
    vary fastest and seed 0 of the second arm is job 3 of a 3-seed sweep but job 5 of a
    5-seed one (`studies --seeds 5` on a 3-seed book). Renaming each earlier folder to its
    job's new number, the jobs told apart by their recorded overrides as --dry-run counts
    complete runs (job_key), lets the sweep find every earlier run where it looks: a
    completed one is kept, an interrupted one continues from its last.pt, a failed one is
    run again in place. Other ways were weighed: listing the seeds first keeps the numbers
    only of books made that way (not the presets' own, nor a published book); a folder name
    without the number would orphan every book made so far; and skipping complete jobs
    inside the sweep needs the run lifecycle to know about books. A folder whose job the new
    sweep lacks (a seed dropped), or whose new name is taken, is left as it is."""
    if not folder.is_dir():
        return 0
    jobs = sweep_jobs(list(overrides))
    numbers: dict[frozenset, int | None] = {}
    for number, job in enumerate(jobs if jobs is not None else []):
        key = job_key(job)
        numbers[key] = None if key in numbers else number  # two jobs, one key: left alone
    renamed = 0
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        num, sep, rest = path.name.partition("_")
        key = recorded_key(path)
        number = numbers.get(key) if key is not None else None
        if not (num.isdigit() and sep) or number is None or number == int(num):
            continue
        target = path.with_name(f"{number}_{rest}")
        if not target.exists():
            path.rename(target)
            renamed += 1
    return renamed
