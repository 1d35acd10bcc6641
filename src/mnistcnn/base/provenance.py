"""What code a run ran: the package version, the git commit of the working tree the package
is imported from (when it lives in one) and whether that tree had uncommitted changes, and
the versions of Python and the libraries that decide the numbers; and, for a dated
measurement (the studies book, the benchmark), the machine it names and the command it
records.

Recorded in every summary.json, so a run folder from last month can say whether today's
code would give the same numbers; `train rerun=RUN_DIR` compares it with the code of now.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from functools import cache
from importlib import metadata
from pathlib import Path

from mnistcnn import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Distributions whose version is recorded (import names differ: hydra-core is `hydra`).
LIBRARIES = ("torch", "torchvision", "hydra-core", "numpy")
# The keys that say which code ran; the rest (library versions) say what it ran on.
# git_changes names the uncommitted changes of a dirty tree (a hash of `git diff HEAD`), so
# two runs of one dirty tree are known to have run the same code.
CODE_KEYS = ("mnistcnn", "git_commit", "git_dirty", "git_changes")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(folder: Path, *args: str) -> str | None:
    """Output of a git command in folder; None without git or outside a repository."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folder: Path = PACKAGE_DIR) -> dict:
    """git_commit, git_dirty and git_changes of the working tree holding folder's
    __init__.py (this package's sources); all None when it is not a tracked file of one (an
    installed wheel, or a site-packages that happens to sit inside some other repository).
    Untracked files do not count as changes, as for `git describe --dirty`; git_changes is
    a hash of the uncommitted changes (null on a clean tree)."""
    if _git(folder, "ls-files", "--error-unmatch", "__init__.py") is None:
        return {"git_commit": None, "git_dirty": None, "git_changes": None}
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    dirty = bool(status) if status is not None else None
    diff = _git(folder, "diff", "HEAD", "--binary") if dirty else None
    return {"git_commit": _git(folder, "rev-parse", "HEAD"), "git_dirty": dirty,
            "git_changes": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None}


@cache
def record() -> dict:
    """The summary.json keys; computed once per process (a sweep's jobs share the code)."""
    return {"mnistcnn": __version__, **git_state(), "python": platform.python_version(),
            **{dist: _version(dist) for dist in LIBRARIES}}


def short(value: object) -> object:
    """A commit as people quote it (12 hex digits); other values as they are."""
    is_commit = isinstance(value, str) and len(value) == 40 and value.isalnum()
    return value[:12] if is_commit else value


def differences(recorded: dict, now: dict | None = None) -> list[str]:
    """What differs between a run's recorded provenance and the code of now (or of `now`,
    another run's record), as "torch 2.3.0 -> 2.4.1". A tree with uncommitted changes (then
    or now) counts as different, since the commit alone does not say what ran, unless both
    hold the same changes (git_changes) on the same commit."""
    now = record() if now is None else now
    if not any(key in recorded for key in CODE_KEYS[:3]):
        return ["no code version recorded (the run predates it)"]
    dirty = ("git_commit", "git_dirty", "git_changes")
    changed = [f"{key} {short(recorded.get(key))} -> {short(now.get(key))}"
               for key in ("mnistcnn", "git_commit", "python", *LIBRARIES)
               if key in recorded and recorded[key] != now.get(key)]
    if (recorded.get("git_dirty") or now.get("git_dirty")) and (
            not recorded.get("git_changes") or
            any(recorded.get(key) != now.get(key) for key in dirty)):
        if recorded.get("git_dirty"):
            changed.append("the run's tree had uncommitted changes")
        if now.get("git_dirty"):
            changed.append("the tree has uncommitted changes now")
    return changed


# ----------------------------------------------------------------------------- measurements
def cpu_model() -> str:
    """The CPU as its maker names it (/proc/cpuinfo's model name on Linux), else what
    platform knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The machine a measurement names, in one line: CPU model, cores and system (never a
    host name)."""
    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}"


def recorded_command(program: Sequence[str], args: Sequence[str],
                     path_options: Sequence[str]) -> str:
    """A command as a result records it: the value of each path option (`--out DIR` or
    `--out=DIR`) relative to where it ran, so a result never carries the machine's own
    folders."""
    typed = []
    for i, arg in enumerate(args):
        option, eq, value = arg.partition("=")
        if eq and option in path_options and value:
            arg = f"{option}={os.path.relpath(value)}"
        elif i and args[i - 1] in path_options and arg:
            arg = os.path.relpath(arg)
        typed.append(arg)
    return shlex.join([*program, *typed])
