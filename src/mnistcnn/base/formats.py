"""How numbers are written for people, the one way each kind is shown everywhere: the run
report, the comparison, the book, the console and the benchmark.

Accuracies are fractions in files and percents for people, with two decimals; losses have
four decimals, times one (KINDS); a value pooled over seeds is its mean ± std; a missing
or undefined value is ABSENT. Durations are written compactly (1h02m03s) in tables and
progress lines, and in words (12 min) inside a sentence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

ABSENT = "—"  # a value that is missing or undefined
# How each kind of number is shown: (scale, decimals). An accuracy is a fraction in files
# and a percent for people.
KINDS = {"acc": (100, 2), "loss": (1, 4), "time": (1, 1)}


class Pooled(Protocol):
    """A value pooled over runs (reporting.metrics.Stat): its std is None for one run."""

    mean: float
    std: float | None


def amount(x: float | None, kind: str) -> str:
    """One value of a kind in KINDS, without unit: acc 0.975 -> 97.50, loss -> 0.1234."""
    if x is None or math.isnan(x):
        return ABSENT
    scale, digits = KINDS[kind]
    return f"{scale * x:.{digits}f}"


def pct(x: float | None, decimals: int = 2) -> str:
    """A fraction as a percent: 0.9912 -> 99.12% (decimals=1: a confidence, 99.1%)."""
    return ABSENT if x is None or math.isnan(x) else f"{100 * x:.{decimals}f}%"


def number(x: float | None) -> str:
    """A number of unknown range with four significant digits."""
    return ABSENT if x is None or math.isnan(x) else f"{x:.4g}"


def mean_std(stat: Pooled | None, kind: str) -> str:
    """A value pooled over seeds as `mean ± std` of a kind in KINDS (97.50 ± 0.71); a
    single run (std None) without the ±."""
    if stat is None:
        return ABSENT
    text = amount(stat.mean, kind)
    return text if stat.std is None else f"{text} ± {amount(stat.std, kind)}"


def duration(seconds: float, estimate: bool = False) -> str:
    """A time span as 1h02m03s, 2m05s or 5s (wall times, elapsed time). An estimate is
    rounded to the minute from an hour on (3h01m): seconds of a guess that long are noise."""
    if estimate and seconds >= 3600:
        hours, m = divmod(round(seconds / 60), 60)
        return f"{hours}h{m:02d}m"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def duration_words(seconds: float) -> str:
    """A time span inside a sentence, as roughly as one says it: 45 s, 12 min, 1.5 h."""
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 1 else (
        f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h")


def sample_size(counts: Sequence[int], per: str = "") -> str:
    """How many runs a result rests on: n = 3, or n = 2–3 where the arms differ; `per`
    names what each n counts (n = 3 per arm)."""
    low, high = min(counts, default=0), max(counts, default=0)
    text = f"n = {low}" if low == high else f"n = {low}–{high}"
    return f"{text} per {per}" if per else text
