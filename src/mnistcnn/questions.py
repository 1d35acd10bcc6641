"""What a study asks, answered from its runs: plain data (a sentence, tables, numbers).

A study file names its questions (`study.questions` in the preset: a factor, optionally a
baseline level and a subset of levels). Each question is answered from the completed runs
of the study, by test accuracy in points (percent):

- one factor, two levels: the difference, Welch's t-test and its 95% interval;
- one factor, more levels: every level against the baseline (or the best), Welch's
  t-tests Holm-corrected over the comparisons; for a numeric factor without a baseline,
  the smallest level not significantly worse than the best;
- the factor crossed with what else the study varies: two-way ANOVA (type II) for the main
  effects and their interaction, the factor's levels averaged over the other factor
  (contrasts of the cell means, pooled variance) and its effect at each other level.

The tests and corrections are scipy's and statsmodels'; this module chooses them, feeds
them and says in words what they allow. Nothing here reads files or renders pages.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from mnistcnn.compare import Run, differing_keys, split_implied
from mnistcnn.settings import show_value

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
# Type II sums of squares: each main effect is tested after the other main effect and
# without the interaction, which respects marginality and stays right for unbalanced grids
# (a failed run leaves a cell short); type III would test a main effect in the presence of
# an interaction, which is rarely meaningful and depends on the contrast coding. Balanced
# grids give the same answer under types I, II and III.
ANOVA_TYPE = 2
Table = tuple[list[str], list[list[str]]]


# ----------------------------------------------------------------------------- questions
@dataclass(frozen=True)
class Question:
    ask: str
    factor: str  # a swept config key, a config group (optim) or a variant-like choice
    baseline: str | None = None  # a level as settings.show_value writes it
    levels: tuple[str, ...] | None = None  # only these levels (None: all of them)


def questions_of(study: dict | None) -> list[Question]:
    """The questions of a study block (as the runs' resolved config holds it)."""
    return [Question(q.get("ask") or f"What does {q['factor']} change?", q["factor"],
                     None if q.get("baseline") is None else show_value(q["baseline"]),
                     tuple(show_value(v) for v in q["levels"]) if q.get("levels") else None)
            for q in (study or {}).get("questions") or []]


def level_of(run: Run, factor: str) -> str | None:
    """The run's level of a factor: its config value, or its group's choice (optim -> the
    value of optim.name), as settings.show_value writes it."""
    for key in (factor, f"{factor}.name"):
        if key in run.config:
            return show_value(run.config[key])
    return None


def short(factor: str) -> str:
    parts = factor.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


# ----------------------------------------------------------------------------- tests
@dataclass
class Contrast:
    """level - reference in points of test accuracy, with the test that compared them."""

    level: str
    reference: str
    diff: float
    low: float | None = None  # the 95% interval; None where no test was possible
    high: float | None = None
    p: float | None = None
    p_holm: float | None = None  # set when the contrast is one of several
    within_spread: bool | None = None  # |diff| below the two arms' seed spreads together
    untested: str = ""  # why there is no test
    at: str = ""  # the other factor's level it was measured at ('' = averaged over them)


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float, float]:
    """(t, df, p, low, high) of Welch's t-test of mean(a) - mean(b) (scipy); the interval
    uses the Welch–Satterthwaite degrees of freedom."""
    result = stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(CONFIDENCE)
    return (float(result.statistic), float(result.df), float(result.pvalue), float(ci.low),
            float(ci.high))


def why_untestable(a: Sequence[float], b: Sequence[float]) -> str:
    """Why Welch's t-test cannot compare a and b, or '' when it can."""
    if len(a) < 2 or len(b) < 2:
        return (f"Welch's t-test needs two seeds per arm (n = {len(a)} and {len(b)}), so the "
                f"seed spread is unknown")
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return "neither arm varies over its seeds, so there is nothing to test with"
    return ""


def welch_contrast(level: str, reference: str, a: Sequence[float], b: Sequence[float]
                   ) -> Contrast:
    c = Contrast(level, reference, statistics.fmean(a) - statistics.fmean(b))
    c.untested = why_untestable(a, b)
    if not c.untested:
        _, _, c.p, c.low, c.high = welch(a, b)
        c.within_spread = abs(c.diff) < statistics.stdev(a) + statistics.stdev(b)
    return c


def holm(contrasts: Sequence[Contrast]) -> None:
    """Holm's correction (statsmodels) over the contrasts that have a p-value."""
    tested = [c for c in contrasts if c.p is not None]
    if len(tested) > 1:
        corrected = multipletests([c.p for c in tested], alpha=ALPHA, method="holm")[1]
        for c, p in zip(tested, corrected, strict=True):
            c.p_holm = float(p)


def p_used(c: Contrast) -> float | None:
    return c.p_holm if c.p_holm is not None else c.p


# ----------------------------------------------------------------------------- answers
@dataclass
class Answer:
    question: Question
    sentence: str
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (title, table)
    numbers: dict = field(default_factory=dict)  # the computed values, for programs and tests


def answer(question: Question, runs: Sequence[Run], provisional: bool = False) -> Answer:
    """The question answered from the study's runs (failed runs are counted, not used).
    provisional: the runs are shorter than the protocol, so the sentence says it is not a
    finding."""
    chosen = [r for r in runs if level_of(r, question.factor) is not None and (
        question.levels is None or level_of(r, question.factor) in question.levels)]
    done = [r for r in chosen if r.status == "completed" and r.summary.get("test/acc") is not None]
    others = other_factors(done, question.factor)
    result = (one_factor(question, done) if not others
              else two_factors(question, done, others))
    lost = len(chosen) - len(done)
    if lost:
        result.sentence += f" {lost} run(s) did not complete and are left out."
    result.numbers["failed"] = lost
    if provisional:
        result.sentence = ("Smoke runs, shorter than the protocol: not a finding. "
                           + result.sentence)
    return result


def other_factors(runs: Sequence[Run], factor: str) -> list[str]:
    """What else differs between the runs (the comparison's columns but the factor's)."""
    configs = [r.config for r in runs]
    columns, _ = split_implied(configs, differing_keys(configs))
    return [c for c in columns if c not in (factor, f"{factor}.name")]


def samples_by_level(runs: Sequence[Run], factor: str, levels: Sequence[str] | None
                     ) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for run in runs:
        found.setdefault(level_of(run, factor), []).append(100 * run.summary["test/acc"])
    order = list(levels or []) + sorted(set(found) - set(levels or []), key=numeric_key)
    return {lv: found[lv] for lv in order if lv in found}


def numeric_key(level: str) -> tuple:
    try:
        return (0, float(level), "")
    except ValueError:
        return (1, 0.0, level)


def is_numeric(levels: Sequence[str]) -> bool:
    return all(numeric_key(lv)[0] == 0 for lv in levels)


def reference_of(question: Question, means: dict[str, float]) -> str:
    """The baseline when the question names one that ran, else the best level."""
    if question.baseline in means:
        return question.baseline
    return max(means, key=means.get)


def one_factor(question: Question, runs: Sequence[Run]) -> Answer:
    name = short(question.factor)
    samples = samples_by_level(runs, question.factor, question.levels)
    if len(samples) < 2:
        only = ", ".join(f"{name}={lv}" for lv in samples) or "no level"
        return Answer(question, f"Only {only} completed: nothing to compare.",
                      numbers={"levels": list(samples)})
    means = {lv: statistics.fmean(v) for lv, v in samples.items()}
    ref = reference_of(question, means)
    if len(samples) == 2 and question.baseline is None:
        ref = min(means, key=means.get)  # "A is d points above B" reads better than -d
    contrasts = [welch_contrast(lv, ref, v, samples[ref]) for lv, v in samples.items()
                 if lv != ref]
    holm(contrasts)
    smallest = (smallest_not_worse(contrasts, ref, means)
                if question.baseline is None and len(samples) > 2 and is_numeric(list(samples))
                else None)
    sentence = one_factor_sentence(name, samples, means, ref, contrasts, question.baseline)
    if smallest is not None:
        sentence += (f" The smallest {name} not significantly worse than the best ({name}="
                     f"{ref}) is {smallest} (Holm p ≥ {ALPHA:g} or a higher mean); not "
                     f"significantly worse is not the same as equal.")
    header = ["level", "n", "test acc (%)", f"vs {name}={ref} (points)",
              f"{100 * CONFIDENCE:.0f}% interval", "p (Welch)"]
    header += ["p (Holm)"] * (len(contrasts) > 1)
    body = [[f"{name}={ref}", str(len(samples[ref])), mean_std_text(samples[ref]), "reference",
             "", "", *[""] * (len(contrasts) > 1)]]
    body += [[f"{name}={c.level}", str(len(samples[c.level])), mean_std_text(samples[c.level]),
              f"{c.diff:+.2f}", interval_text(c), p_text(c.p),
              *[p_text(c.p_holm)] * (len(contrasts) > 1)] for c in contrasts]
    numbers = {"test": "welch", "reference": ref, "means": means,
               "n": {lv: len(v) for lv, v in samples.items()},
               "contrasts": [vars(c) for c in contrasts], "smallest_not_worse": smallest}
    return Answer(question, sentence, [("", (header, body))], numbers)


def smallest_not_worse(contrasts: Sequence[Contrast], best: str, means: dict[str, float]
                       ) -> str | None:
    """The smallest numeric level whose mean is at least the best's, or whose (Holm)
    p-value against the best is not below ALPHA; None when an untested level is in the way
    (one seed per arm: nothing can be called not worse)."""
    by_level = {c.level: c for c in contrasts}
    for level in sorted(means, key=numeric_key):
        c = by_level.get(level)
        if c is None or c.diff >= 0:
            return level
        if p_used(c) is None:
            return None
        if p_used(c) >= ALPHA:
            return level
    return None


def one_factor_sentence(name: str, samples: dict[str, list[float]], means: dict[str, float],
                        ref: str, contrasts: Sequence[Contrast], baseline: str | None) -> str:
    n = n_text([len(v) for v in samples.values()])
    if len(contrasts) == 1 and baseline is None:
        c = contrasts[0]
        head = (f"{name}={c.level} is {c.diff:.2f} points above {name}={ref} "
                f"({means[c.level]:.2f}% vs {means[ref]:.2f}%, {n})")
        return f"{head}; {contrast_clause(c, 'Welch')}."
    against = (f"Against the baseline {name}={ref}" if ref == baseline
               else f"Against the best, {name}={ref}")
    reasons = {c.untested for c in contrasts}
    if len(reasons) == 1 and "" not in reasons:  # no test at all: say why once
        parts = [f"{name}={c.level} {c.diff:+.2f} points" for c in contrasts]
        return (f"{against} ({means[ref]:.2f}%, {n}): {'; '.join(parts)}. No test: "
                f"{reasons.pop()}.")
    parts = [f"{name}={c.level} {c.diff:+.2f} points ({contrast_clause(c, 'Welch')})"
             for c in contrasts]
    tested = sum(c.p_holm is not None for c in contrasts)
    corrected = f" Welch's t-tests, Holm-corrected over {tested} comparisons." if tested else ""
    return f"{against} ({means[ref]:.2f}%, {n}): {'; '.join(parts)}.{corrected}"


def contrast_clause(c: Contrast, test: str) -> str:
    """The test in words: p (Holm-corrected where it is), the interval, the spread."""
    if c.untested:
        return c.untested
    p = (f"Holm p = {c.p_holm:.2g}" if c.p_holm is not None else f"{test} p = {c.p:.2g}")
    spread = ("" if c.within_spread is None else
              ", within the seed spread" if c.within_spread else ", beyond the seed spread")
    return f"{p}, {100 * CONFIDENCE:.0f}% interval {interval_text(c)} points{spread}"


def mean_std_text(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def interval_text(c: Contrast) -> str:
    return "" if c.low is None else f"[{c.low:+.2f}, {c.high:+.2f}]"


def p_text(p: float | None) -> str:
    return "" if p is None or math.isnan(p) else f"{p:.2g}"


def n_text(counts: Sequence[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"n = {lo} per arm" if lo == hi else f"n = {lo}–{hi} per arm"


# ----------------------------------------------------------------------------- two factors
def two_factors(question: Question, runs: Sequence[Run], others: Sequence[str]) -> Answer:
    """The factor crossed with the rest of the study's grid (its other columns taken
    together as one factor)."""
    name = short(question.factor)
    other = ", ".join(short(k) for k in others)
    g_values = [[show_value(r.config.get(k)) for k in others] for r in runs]
    g_labels = [", ".join(f"{short(k)}={v}" for k, v in zip(others, values, strict=True))
                for values in g_values]
    frame = pd.DataFrame({"y": [100 * r.summary["test/acc"] for r in runs],
                          "f": [level_of(r, question.factor) for r in runs], "g": g_labels})
    g_order = {label: tuple(map(numeric_key, values))
               for label, values in zip(g_labels, g_values, strict=True)}
    f_levels = list(samples_by_level(runs, question.factor, question.levels))
    if len(f_levels) < 2:
        only = ", ".join(f"{name}={lv}" for lv in f_levels) or "no level"
        return Answer(question, f"Only {only} completed: nothing to compare.",
                      numbers={"levels": f_levels})
    g_levels = sorted(g_order, key=g_order.get)
    cells = frame.groupby(["f", "g"]).y
    counts = cells.size()
    cell_mean = cells.mean()
    anova, model_note = two_way_anova(frame, counts, len(f_levels) * len(g_levels))
    marginal = {lv: float(np.mean([cell_mean[(lv, g)] for g in g_levels
                                   if (lv, g) in cell_mean.index])) for lv in f_levels}
    ref = reference_of(question, marginal)
    contrasts = marginal_contrasts(frame, f_levels, g_levels, ref)
    holm(contrasts)
    at_each = per_level_contrasts(frame, f_levels, g_levels, ref)
    holm(at_each)
    smallest = (smallest_not_worse(contrasts, ref, marginal)
                if question.baseline is None and len(f_levels) > 2 and is_numeric(f_levels)
                else None)

    n = n_text(list(counts)).replace("per arm", "per cell")
    against = (f"the baseline {name}={ref}" if ref == question.baseline
               else f"the best, {name}={ref}")
    parts = [f"{name}={c.level} {c.diff:+.2f} points ({contrast_clause(c, 'contrast')})"
             for c in contrasts]
    sentence = (f"Averaged over {other} (t-tests of cell-mean contrasts, pooled variance), "
                f"against {against} ({marginal[ref]:.2f}%): "
                f"{'; '.join(parts)}.")
    if anova is not None:
        p_f, p_fg = anova.get("f"), anova.get("f × g")
        sentence += (f" Two-way ANOVA (type {roman(ANOVA_TYPE)}, {n}): {name} p = "
                     f"{p_text(p_f)}")
        sentence += (f", interaction {name} × {other} p = {p_text(p_fg)}"
                     + (f": the effect of {name} depends on {other}, so read it at each "
                        f"level" if p_fg is not None and p_fg < ALPHA else "")
                     if p_fg is not None else f"; {model_note}")
        sentence += "."
    else:
        sentence += f" No ANOVA: {model_note}."
    if len(f_levels) == 2 and at_each:
        sentence += (f" At each level of {other}: " + "; ".join(
            f"{c.at}: {c.diff:+.2f} ({contrast_clause(c, 'Welch')})"
            for c in at_each) + ".")
    if smallest is not None:
        sentence += (f" The smallest {name} not significantly worse than the best ({name}="
                     f"{ref}) is {smallest}; not significantly worse is not the same as equal.")

    tables = [("Averaged over " + other, marginal_table(name, f_levels, marginal, ref,
                                                         contrasts)),
              (f"At each level of {other}", cell_table(name, f_levels, g_levels, frame, ref))]
    if anova is not None:
        tables.insert(0, (f"Two-way ANOVA, type {roman(ANOVA_TYPE)}",
                          anova_table(anova, name, other)))
    numbers = {"test": "two-way", "reference": ref, "marginal": marginal,
               "anova_p": {k: v for k, v in (anova or {}).items() if not k.startswith("_")},
               "cell_n": {f"{f}|{g}": int(v) for (f, g), v in counts.items()},
               "contrasts": [vars(c) for c in contrasts],
               "at_each": [vars(c) for c in at_each], "smallest_not_worse": smallest}
    return Answer(question, sentence, tables, numbers)


def roman(n: int) -> str:
    return {1: "I", 2: "II", 3: "III"}[n]


def two_way_anova(frame: pd.DataFrame, counts: pd.Series, grid_cells: int
                  ) -> tuple[dict | None, str]:
    """({term: p, '_table': rows}, note) of `y ~ f * g` by statsmodels' anova_lm; the
    additive model `y ~ f + g` when the interaction cannot be tested (an empty cell, or one
    run per cell leaves no residual); (None, why) when even that cannot be fitted."""
    full = len(counts) == grid_cells and len(frame) > grid_cells
    formula = "y ~ C(f) * C(g)" if full else "y ~ C(f) + C(g)"
    n_params = grid_cells if full else frame.f.nunique() + frame.g.nunique() - 1
    if len(frame) <= n_params:
        return None, f"{len(frame)} runs leave no residual to test with"
    note = ("" if full else "interaction not testable: " + (
        "a cell has no completed run" if len(counts) < grid_cells else "one run per cell"))
    table = anova_lm(smf.ols(formula, data=frame).fit(), typ=ANOVA_TYPE)
    return {"_table": table, **{TERM_NAMES[t]: float(table.loc[t, "PR(>F)"])
                               for t in table.index if t in TERM_NAMES}}, note


TERM_NAMES = {"C(f)": "f", "C(g)": "g", "C(f):C(g)": "f × g"}


def anova_table(anova: dict, name: str, other: str) -> Table:
    table = anova["_table"]
    shown = {"f": name, "g": other, "f × g": f"{name} × {other}"}
    rows = [[shown.get(TERM_NAMES.get(t, ""), "residual"), f"{table.loc[t, 'df']:.0f}",
             "" if math.isnan(table.loc[t, "F"]) else f"{table.loc[t, 'F']:.2f}",
             p_text(table.loc[t, "PR(>F)"])] for t in table.index]
    return ["term", "df", "F", "p"], rows


def cell_means_fit(frame: pd.DataFrame, cells: Sequence[tuple[str, str]]):
    """OLS of y on one indicator per cell: the cell means, with the variance pooled over
    all cells (statsmodels), so that contrasts of cell means get a t-test."""
    index = {cell: i for i, cell in enumerate(cells)}
    design = np.zeros((len(frame), len(cells)))
    for row, (f, g) in enumerate(zip(frame.f, frame.g, strict=True)):
        design[row, index[(f, g)]] = 1.0
    return sm.OLS(frame.y.to_numpy(), design).fit(), index


def marginal_contrasts(frame: pd.DataFrame, f_levels: Sequence[str], g_levels: Sequence[str],
                       ref: str) -> list[Contrast]:
    """Each level against ref, averaged over the other factor's levels where both ran."""
    cells = sorted(set(zip(frame.f, frame.g, strict=True)))
    fit, index = cell_means_fit(frame, cells)
    tested = fit.df_resid > 0
    contrasts = []
    for level in f_levels:
        if level == ref:
            continue
        shared = [g for g in g_levels if (level, g) in index and (ref, g) in index]
        weights = np.zeros(len(cells))
        for g in shared:
            weights[index[(level, g)]] += 1 / len(shared)
            weights[index[(ref, g)]] -= 1 / len(shared)
        c = Contrast(level, ref, float(weights @ fit.params))
        if not shared:
            c.untested = "no level of the other factor ran with both"
        elif not tested:
            c.untested = "one run per cell leaves no residual to test with"
        else:
            t = fit.t_test(weights[None, :])
            c.p = float(np.squeeze(t.pvalue))
            c.low, c.high = (float(x) for x in np.squeeze(t.conf_int(alpha=ALPHA)))
            # The seed spread of one cell is the residual standard deviation.
            c.within_spread = abs(c.diff) < 2 * math.sqrt(fit.mse_resid)
        contrasts.append(c)
    return contrasts


def per_level_contrasts(frame: pd.DataFrame, f_levels: Sequence[str], g_levels: Sequence[str],
                        ref: str) -> list[Contrast]:
    """With two levels: the other level against ref at each level of the other factor
    (Welch's t-test; Holm-corrected over those levels by the caller)."""
    if len(f_levels) != 2:
        return []
    level = next(lv for lv in f_levels if lv != ref)
    found = []
    for g in g_levels:
        a = frame.y[(frame.f == level) & (frame.g == g)].tolist()
        b = frame.y[(frame.f == ref) & (frame.g == g)].tolist()
        if a and b:
            found.append(welch_contrast(level, ref, a, b))
            found[-1].at = g
    return found


def marginal_table(name: str, f_levels: Sequence[str], marginal: dict[str, float], ref: str,
                   contrasts: Sequence[Contrast]) -> Table:
    by_level = {c.level: c for c in contrasts}
    header = ["level", "mean of cell means (%)", f"vs {name}={ref} (points)",
              f"{100 * CONFIDENCE:.0f}% interval", "p", "p (Holm)"]
    body = []
    for lv in f_levels:
        c = by_level.get(lv)
        body.append([f"{name}={lv}", f"{marginal[lv]:.2f}",
                     "reference" if c is None else f"{c.diff:+.2f}",
                     "" if c is None else interval_text(c) or c.untested,
                     "" if c is None else p_text(c.p), "" if c is None else p_text(c.p_holm)])
    return header, body


def cell_table(name: str, f_levels: Sequence[str], g_levels: Sequence[str], frame: pd.DataFrame,
               ref: str) -> Table:
    """Other levels as rows, the factor's levels as columns: mean ± std (n), then each
    level's difference from ref at that row."""
    diffs = [lv for lv in f_levels if lv != ref]
    header = ["", *(f"{name}={lv}" for lv in f_levels),
              *(f"{name}={lv} − {ref} (points)" for lv in diffs)]
    body = []
    for g in g_levels:
        values = {lv: frame.y[(frame.f == lv) & (frame.g == g)].tolist() for lv in f_levels}
        cells = [f"{mean_std_text(v)} (n = {len(v)})" if v else "—" for v in values.values()]
        gaps = [f"{statistics.fmean(values[lv]) - statistics.fmean(values[ref]):+.2f}"
                if values[lv] and values[ref] else "—" for lv in diffs]
        body.append([g, *cells, *gaps])
    return header, body
