"""The statistics under a study's answers: one difference of test accuracy (points), the
three tests an answer asks of it, and the seeds that would detect it.

A difference comes from one of two variance models:

- `WelchDifference`: two arms' own runs, each with its own variance (Welch's t-test,
  scipy.stats.ttest_ind);
- `ModelDifference`: a contrast of the cell means of a crossed grid, with the residual
  variance pooled over the cells (a statsmodels OLS and its t_test), so that a grid's
  ANOVA, its averaged levels and its per-level tests all rest on one variance model.

Each answers three tests at a level `alpha` that the caller has already adjusted for the
number of comparisons, and each test comes with the interval that agrees with it: p < alpha
exactly when the interval leaves out what the test rejects.

- difference: two-sided, "is there a difference?", with the (1 - alpha) interval;
- non-inferiority within a margin: one-sided, "is it no worse than margin below the
  reference?", with the (1 - 2 alpha) interval whose low end is the one-sided bound;
- equivalence within ±margin: two one-sided tests (statsmodels ttost_ind for Welch), with
  the (1 - 2 alpha) interval that must lie inside ±margin.

Power is statsmodels' TTestIndPower at 80%, with the study's own seed standard deviation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.weightstats import ttost_ind

ALPHA = 0.05  # the family-wise error rate of every answer
POWER = 0.8
MAX_SEEDS = 100  # beyond this many seeds per arm an effect is not worth chasing


@dataclass(frozen=True)
class Test:
    p: float
    low: float  # the interval that agrees with the test
    high: float


def bonferroni(p: float, m: int) -> float:
    """p adjusted over a family of m comparisons. Bonferroni rather than Holm because its
    intervals, at 1 - alpha/m, agree with its adjusted p-values; Holm's step-down p-values
    have no such intervals."""
    return min(1.0, m * p)


class WelchDifference:
    """mean(a) - mean(b) of two arms' runs (points), unequal variances."""

    cells = 1  # runs per arm that each seed adds

    def __init__(self, a: Sequence[float], b: Sequence[float]):
        self.a, self.b = list(a), list(b)
        self.diff = statistics.fmean(self.a) - statistics.fmean(self.b)
        self.n = min(len(self.a), len(self.b))

    @property
    def untestable(self) -> str:
        """Why no test is possible, or ''."""
        if self.n < 2:
            return (f"one seed per arm (n = {len(self.a)} and {len(self.b)}) has no spread to "
                    f"test with")
        if statistics.variance(self.a) == 0 and statistics.variance(self.b) == 0:
            return "neither arm varies over its seeds, so there is nothing to test with"
        return ""

    @property
    def sd(self) -> float:
        """The seed standard deviation of one run, the two arms' variances averaged."""
        return math.sqrt((statistics.variance(self.a) + statistics.variance(self.b)) / 2)

    def _welch(self, shift: float = 0.0, alternative: str = "two-sided"):
        return stats.ttest_ind(np.add(self.a, shift), self.b, equal_var=False,
                               alternative=alternative)

    def interval(self, confidence: float) -> tuple[float, float]:
        ci = self._welch().confidence_interval(confidence)
        return float(ci.low), float(ci.high)

    def difference(self, alpha: float) -> Test:
        return Test(float(self._welch().pvalue), *self.interval(1 - alpha))

    def noninferiority(self, margin: float, alpha: float) -> Test:
        p = self._welch(shift=margin, alternative="greater").pvalue
        return Test(float(p), *self.interval(1 - 2 * alpha))

    def equivalence(self, margin: float, alpha: float) -> Test:
        p = ttost_ind(self.a, self.b, -margin, margin, usevar="unequal")[0]
        return Test(float(p), *self.interval(1 - 2 * alpha))


class ModelDifference:
    """weights @ params of a fitted statsmodels OLS: a contrast of cell means (points).
    cells: how many cells of each level the contrast averages (a seed adds that many runs
    to each side)."""

    def __init__(self, fit, weights: np.ndarray, cells: int, n: int):
        self.fit, self.weights, self.cells, self.n = fit, np.asarray(weights, float), cells, n
        self.diff = float(self.weights @ fit.params)

    @property
    def untestable(self) -> str:
        if self.fit.df_resid <= 0:
            return "one run per cell leaves no residual to test with"
        return ""

    @property
    def sd(self) -> float:
        return math.sqrt(self.fit.mse_resid)

    def _t(self, value: float = 0.0):
        return self.fit.t_test((self.weights[None, :], np.array([value])))

    def interval(self, confidence: float) -> tuple[float, float]:
        low, high = np.squeeze(self._t().conf_int(alpha=1 - confidence))
        return float(low), float(high)

    def difference(self, alpha: float) -> Test:
        return Test(float(np.squeeze(self._t().pvalue)), *self.interval(1 - alpha))

    def _one_sided(self, value: float, upper: bool) -> float:
        t = self._t(value)
        tvalue = float(np.squeeze(t.tvalue))
        return float(stats.t.cdf(tvalue, t.df_denom) if upper else stats.t.sf(tvalue, t.df_denom))

    def noninferiority(self, margin: float, alpha: float) -> Test:
        return Test(self._one_sided(-margin, upper=False), *self.interval(1 - 2 * alpha))

    def equivalence(self, margin: float, alpha: float) -> Test:
        p = max(self._one_sided(-margin, upper=False), self._one_sided(margin, upper=True))
        return Test(p, *self.interval(1 - 2 * alpha))


Difference = WelchDifference | ModelDifference


# ----------------------------------------------------------------------------- power
def _alternative(one_sided: bool) -> str:
    return "larger" if one_sided else "two-sided"


def detectable(d: Difference, alpha: float, one_sided: bool = False) -> float | None:
    """The smallest difference (points) that d's test detects with 80% power at its n,
    with its own seed standard deviation; None without a spread to scale by."""
    if d.untestable or d.sd == 0:
        return None
    try:
        effect = TTestIndPower().solve_power(effect_size=None, nobs1=d.n * d.cells,
                                             alpha=alpha, power=POWER, ratio=1.0,
                                             alternative=_alternative(one_sided))
    except ValueError:  # no root: too few runs for 80% power at any effect
        return None
    return float(effect) * d.sd if np.isfinite(effect) else None


def seeds_for(effect: float, d: Difference, alpha: float, one_sided: bool = False
              ) -> int | None:
    """Seeds per arm (per cell) at which a true difference of `effect` points is detected
    with 80% power; None when effect <= 0, there is no spread, or more than MAX_SEEDS
    would be needed."""
    if effect <= 0 or d.untestable or d.sd == 0:
        return None
    size = effect / d.sd
    power = TTestIndPower()
    most = MAX_SEEDS * d.cells
    # solve_power's root finder is unreliable at either end, so check both ends first.
    def enough(nobs: float) -> bool:
        # statsmodels returns nan where the power is 1 to machine precision.
        return not power.power(size, nobs1=nobs, alpha=alpha, ratio=1.0,
                               alternative=_alternative(one_sided)) < POWER

    if not enough(most):
        return None
    if enough(2 * d.cells):
        return 2
    nobs = power.solve_power(effect_size=size, nobs1=None, alpha=alpha, power=POWER,
                             ratio=1.0, alternative=_alternative(one_sided))
    return max(2, math.ceil(float(nobs) / d.cells))
