"""What code a run ran: the package version, the git commit of the working tree the package
is imported from (when it lives in one) and whether that tree had uncommitted changes, and
the versions of Python and the libraries that decide the numbers; and, for a dated
measurement (the studies book, the benchmark), the machine it names and the command it
records.

Recorded in every summary.json, so a run folder from last month can say whether today's
code would give the same numbers; `train rerun=RUN_DIR` compares it with the code of now.
"""

from __future__ import annotations

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
CODE_KEYS = ("mnistcnn", "git_commit", "git_dirty")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Output of a git command in the package's folder; None without git or outside a
    repository."""
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, uncommitted changes) of the working tree holding this package's sources;
    (None, None) when the package is not a tracked file of one (an installed wheel, or a
    site-packages that happens to sit inside some other repository). Untracked files do not
    count as changes, as for `git describe --dirty`."""
    if _git("ls-files", "--error-unmatch", "__init__.py") is None:
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


@cache
def record() -> dict:
    """The summary.json keys; computed once per process (a sweep's jobs share the code)."""
    commit, dirty = git_state()
    return {"mnistcnn": __version__, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(),
            **{dist: _version(dist) for dist in LIBRARIES}}


def short(value: object) -> object:
    """A commit as people quote it (12 hex digits); other values as they are."""
    is_commit = isinstance(value, str) and len(value) == 40 and value.isalnum()
    return value[:12] if is_commit else value


def differences(recorded: dict) -> list[str]:
    """What differs between a run's recorded provenance and the code of now, as
    "torch 2.3.0 -> 2.4.1"; a tree with uncommitted changes (then or now) counts as
    different, since the commit alone does not say what ran."""
    now = record()
    if not any(key in recorded for key in CODE_KEYS):
        return ["no code version recorded (the run predates it)"]
    changed = [f"{key} {short(recorded[key])} -> {short(now[key])}" for key in now
               if key != "git_dirty" and key in recorded and recorded[key] != now[key]]
    if recorded.get("git_dirty"):
        changed.append("the run's tree had uncommitted changes")
    if now["git_dirty"]:
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
