"""What a study asks, answered from its runs: a verdict first, then the effects with
intervals that agree with their tests, the tests, and how many seeds would decide what the
runs leave open. Plain data (words, tables, numbers); nothing here reads files or draws.

A question (`study.questions` of a study file) names a factor and is of one kind, which
chooses the procedure (docs/studies-guide.md says what each verdict means):

- `baseline` ("does X help?"): every level against the baseline, Welch's t-tests
  Bonferroni-adjusted over the comparisons, each with its interval at 1 - 0.05/m;
- `best` ("which is best?"): all pairs of levels, Bonferroni-adjusted; the answer is the
  set of levels no other level beats, so nothing is picked before it is tested;
- `enough` ("is a smaller level enough?"): with a `margin` (points), non-inferiority tests
  from the level nearest the reference down, in that fixed order, each at 0.05; without a
  margin, the loss each level rules out, and never "enough";
- `describe`: arms that are different tasks or recipes: their means, no test.

A `margin` on a baseline or best question also lets "no difference" be shown: an
equivalence test (two one-sided tests) within ±margin. When the study varies another factor
too, the same procedures run on a two-way model of cell means with one pooled variance
(inference.ModelDifference): the levels averaged over the other factor, a type II ANOVA for
the main effects and the interaction, and the procedure at each level of the other factor
whenever the interaction is significant.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from mnistcnn.base.config_keys import short_key, show_value
from mnistcnn.base.formats import duration_words, sample_size
from mnistcnn.base.run_reader import Run, wall_seconds
from mnistcnn.reporting.comparison import differing_keys, split_implied
from mnistcnn.studies.inference import (
    ALPHA,
    MAX_SEEDS,
    Difference,
    ModelDifference,
    WelchDifference,
    bonferroni,
    detectable,
    seeds_for,
)

KINDS = ("baseline", "best", "enough", "describe")
# Type II sums of squares: each main effect is tested after the other main effect and
# without the interaction, which respects marginality and stays right for unbalanced grids;
# balanced grids give the same answer under types I, II and III.
ANOVA_TYPE = 2
Table = tuple[list[str], list[list[str]]]


# ----------------------------------------------------------------------------- questions
@dataclass(frozen=True)
class Question:
    ask: str
    factor: str  # a swept config key, a config group (optim) or a variant-like choice
    baseline: str | None = None  # a level as config_keys.show_value writes it
    levels: tuple[str, ...] | None = None  # only these levels (None: all of them)
    kind: str | None = None  # one of KINDS; None: baseline with a baseline, else best
    margin: float | None = None  # points of test accuracy

    @property
    def procedure(self) -> str:
        return self.kind or ("baseline" if self.baseline is not None else "best")


def questions_of(study: dict | None) -> list[Question]:
    """The questions of a study block (as the runs' resolved config holds it)."""
    return [Question(q.get("ask") or f"What does {q['factor']} change?", q["factor"],
                     None if q.get("baseline") is None else show_value(q["baseline"]),
                     tuple(show_value(v) for v in q["levels"]) if q.get("levels") else None,
                     q.get("kind"), None if q.get("margin") is None else float(q["margin"]))
            for q in (study or {}).get("questions") or []]


def level_key(level: str) -> tuple:
    """What makes two written levels one: 0, 0.0 and "0" are the same number; null is the
    last of a numeric factor (features: no bottleneck at all)."""
    if level == "null":
        return (0, math.inf, "")
    try:
        return (0, float(level), "")
    except ValueError:
        return (1, 0.0, level)


def same_level(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and level_key(a) == level_key(b)


def level_of(run: Run, factor: str) -> str | None:
    """The run's level of a factor: its config value, or its group's choice (optim -> the
    value of optim.name), as config_keys.show_value writes it."""
    for key in (factor, f"{factor}.name"):
        if key in run.config:
            return show_value(run.config[key])
    return None


def is_numeric(levels: Sequence[str]) -> bool:
    return all(level_key(lv)[0] == 0 for lv in levels)


# ----------------------------------------------------------------------------- contrasts
@dataclass
class Contrast:
    """level - reference in points of test accuracy, and what its test decided."""

    level: str
    reference: str
    diff: float
    test: str = ""  # difference, non-inferiority, equivalence, ruled-out loss; '' untested
    low: float | None = None  # the interval that agrees with the test
    high: float | None = None
    confidence: float | None = None  # of that interval
    p: float | None = None  # the test's own p-value
    p_adjusted: float | None = None  # over the question's comparisons (Bonferroni)
    decision: str = ""  # better, worse, equivalent, enough, too-low, open, unreached, ''
    untested: str = ""  # why there is no test
    at: str = ""  # the other factor's level it was measured at ('' = averaged over them)
    n: int = 0  # runs per arm (per cell) it rests on
    detectable: float | None = None  # the smallest difference its n detects (80% power)
    seeds: int | None = None  # seeds per arm that would decide it; None: none practical

    @property
    def open(self) -> bool:
        return self.decision in ("open", "unreached")


def judge(kind: str, margin: float | None, pairs: Sequence[tuple[str, str, Difference]],
          at: str = "", family: int | None = None) -> list[Contrast]:
    """The pairs (level, reference, difference) tested as the kind asks. family: the number
    of comparisons to adjust for when it is more than these pairs (per-level tests)."""
    found = [Contrast(lv, ref, d.diff, at=at, n=d.n, untested=d.untestable)
             for lv, ref, d in pairs]
    tested = [(c, d) for c, (_, _, d) in zip(found, pairs, strict=True) if not c.untested]
    if kind == "describe" or not tested:
        return found
    m = family or len(pairs)
    if kind == "enough":
        judge_enough(tested, margin, m if margin is None else 1)
        return found
    alpha = ALPHA / m
    for c, d in tested:
        t = d.difference(alpha)
        c.test, c.p, c.low, c.high, c.confidence = "difference", t.p, t.low, t.high, 1 - alpha
    for c, _ in tested:
        c.p_adjusted = bonferroni(c.p, m)
        c.decision = ("better" if c.diff > 0 else "worse") if c.p_adjusted < ALPHA else "open"
    for c, d in tested:
        if c.decision == "open" and margin is not None:
            t = d.equivalence(margin, alpha)
            if t.p < alpha:
                c.test, c.p, c.p_adjusted = "equivalence", t.p, bonferroni(t.p, m)
                c.low, c.high, c.confidence = t.low, t.high, 1 - 2 * alpha
                c.decision = "equivalent"
        if c.decision == "open":
            c.detectable = detectable(d, alpha)
            c.seeds = seeds_for(abs(c.diff), d, alpha)
    return found


def judge_enough(tested: Sequence[tuple[Contrast, Difference]], margin: float | None,
                 m: int) -> None:
    """Non-inferiority within the margin in the given order, each at ALPHA, stopping at the
    first level not shown (a fixed sequence keeps the family-wise rate at ALPHA); without a
    margin, the one-sided bound of each loss, adjusted over the m levels."""
    alpha = ALPHA / m
    stopped = False
    for c, d in tested:
        t = d.noninferiority(margin or 0.0, alpha)
        c.low, c.high, c.confidence, c.p = t.low, t.high, 1 - 2 * alpha, t.p
        if margin is None:
            c.test, c.decision = "ruled-out loss", "bounded"
            continue
        c.test = "non-inferiority"
        if t.high < -margin:  # the whole interval below the margin: it loses more
            c.decision = "too-low"
            stopped = True
        elif stopped:
            c.decision = "unreached"
        elif t.p < alpha:
            c.decision = "enough"
        else:
            c.decision = "open"
            stopped = True
        if c.decision in ("open", "unreached"):
            c.detectable = detectable(d, alpha, one_sided=True)
            c.seeds = seeds_for(c.diff + margin, d, alpha, one_sided=True)


# ----------------------------------------------------------------------------- answers
@dataclass
class Answer:
    question: Question
    verdict: str  # the answer in a few words, from the vocabulary of the studies guide
    sentence: str  # the effects, the tests and the power, after the verdict
    brief: str = ""  # one short line of numbers (the findings table)
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (title, table)
    numbers: dict = field(default_factory=dict)  # the computed values, for programs and tests
    contrasts: list[Contrast] = field(default_factory=list)  # those the verdict rests on
    seeds_needed: int | None = None  # seeds per arm (--seeds N) that would decide it


def answer(question: Question, runs: Sequence[Run], provisional: bool = False) -> Answer:
    """The question answered from the study's runs (failed runs and runs without a level of
    the factor are counted, not used). provisional: the runs are shorter than the protocol,
    so the answer says it is not a finding."""
    with_level = [r for r in runs if level_of(r, question.factor) is not None]
    chosen = [r for r in with_level if question.levels is None or any(
        same_level(level_of(r, question.factor), lv) for lv in question.levels)]
    done = [r for r in chosen if r.status == "completed" and r.summary.get("test/acc") is not None]
    others = other_factors(done, question.factor)
    result = (one_factor(question, done) if not others
              else two_factors(question, done, others))
    lost = len(chosen) - len(done)
    if lost:
        result.sentence += f" {lost} run(s) did not complete and are left out."
    if len(runs) > len(with_level):
        result.sentence += (f" {len(runs) - len(with_level)} run(s) have no "
                            f"{question.factor} and are left out.")
    result.numbers["failed"] = lost
    result.numbers["no_level"] = len(runs) - len(with_level)
    result.numbers["kind"] = question.procedure
    result.numbers["seeds_needed"] = result.seeds_needed
    seconds = run_seconds(done)
    if result.seeds_needed and seconds:
        arms = len(result.numbers.get("n", result.numbers.get("cell_n", {})))
        now = min(c.n for c in result.contrasts)
        more = (result.seeds_needed - now) * arms
        result.sentence += (f" That is {more} more runs of these arms (--seeds "
                            f"{result.seeds_needed}), about {duration_words(more * seconds)} "
                            f"on the machine that made these.")
    if provisional:
        result.verdict = "Smoke runs, not a finding"
        result.sentence = "The runs are shorter than the protocol. " + result.sentence
    return result


def run_seconds(runs: Sequence[Run]) -> float | None:
    """The mean wall time of a run."""
    times = [t for t in (wall_seconds(r.summary) for r in runs) if t is not None]
    return statistics.fmean(times) if times else None


def other_factors(runs: Sequence[Run], factor: str) -> list[str]:
    """What else differs between the runs (the comparison's columns but the factor's)."""
    configs = [r.config for r in runs]
    columns, _ = split_implied(configs, differing_keys(configs))
    return [c for c in columns if c not in (factor, f"{factor}.name")]


def samples_by_level(runs: Sequence[Run], factor: str, levels: Sequence[str] | None
                     ) -> dict[str, list[float]]:
    """{level: test accuracies (points)}, levels that are one value merged under the name
    the runs record, in the question's order, then in numeric or alphabetical order."""
    found: dict[tuple, tuple[str, list[float]]] = {}
    for run in runs:
        level = level_of(run, factor)
        found.setdefault(level_key(level), (level, []))[1].append(100 * run.summary["test/acc"])
    asked = [level_key(lv) for lv in levels or []]
    order = [k for k in asked if k in found] + sorted(set(found) - set(asked))
    return {found[k][0]: found[k][1] for k in order}


def named(level: str | None, levels: Sequence[str]) -> str | None:
    """The level among levels that is the same value as level."""
    return next((lv for lv in levels if same_level(lv, level)), None)


def missing_level(question: Question, levels: Sequence[str], means: dict) -> Answer | None:
    """An answer when there is nothing to compare, or the baseline has no completed run."""
    name = short_key(question.factor)
    if len(levels) < 2:
        only = ", ".join(f"{name}={lv}" for lv in levels) or "no level"
        return Answer(question, "Nothing to compare", f"Only {only} completed.",
                      "nothing to compare", numbers={"levels": list(levels)})
    if question.baseline is not None and named(question.baseline, levels) is None:
        return Answer(question, "No answer: the baseline did not run",
                      f"The baseline {name}={question.baseline} has no completed run, so "
                      f"nothing can be compared with it; rerun the study with --resume.",
                      "baseline missing", numbers={"levels": list(levels), "means": means})
    return None


def reference_of(question: Question, levels: Sequence[str]) -> str:
    """The baseline; for `enough` without one, the last level (the largest number)."""
    return named(question.baseline, levels) or levels[-1]


def pairs_of(question: Question, levels: Sequence[str], means: dict[str, float],
             difference: Callable[[str, str], Difference]) -> list[tuple[str, str, Difference]]:
    """(level, reference, difference) of the comparisons the kind makes."""
    kind = question.procedure
    if kind == "best" or (kind == "describe" and question.baseline is None):
        # Each pair once, the higher mean first (ties: the first level first).
        return [(a, b, difference(a, b)) if means[a] >= means[b] else (b, a, difference(b, a))
                for a, b in combinations(levels, 2)]
    ref = reference_of(question, levels)
    others = [lv for lv in levels if lv != ref]
    if kind == "enough" and is_numeric(levels):  # the nearest to the reference first
        others.sort(key=lambda lv: abs(level_key(lv)[1] - level_key(ref)[1]))
    return [(lv, ref, difference(lv, ref)) for lv in others]


def different_tasks(runs: Sequence[Run], factor: str) -> str:
    """Why the levels are different tasks (their runs predict different class sets), or ''."""
    sets = {}
    for run in runs:
        classes = show_value(run.config.get("data.classes"))
        sets.setdefault(level_of(run, factor), set()).add(classes)
    if len({frozenset(s) for s in sets.values()}) > 1:
        return "the arms predict different class sets, so they are different tasks"
    return ""


# ----------------------------------------------------------------------------- one factor
def one_factor(question: Question, runs: Sequence[Run]) -> Answer:
    name = short_key(question.factor)
    samples = samples_by_level(runs, question.factor, question.levels)
    means = {lv: statistics.fmean(v) for lv, v in samples.items()}
    levels = list(samples)
    early = missing_level(question, levels, means)
    if early:
        return early
    tasks = different_tasks(runs, question.factor)
    kind = "describe" if tasks else question.procedure
    q = Question(question.ask, question.factor, named(question.baseline, levels), None, kind,
                 question.margin)
    pairs = pairs_of(q, levels, means,
                     lambda a, b: WelchDifference(samples[a], samples[b]))
    contrasts = judge(kind, question.margin, pairs)
    n = {lv: len(v) for lv, v in samples.items()}
    verdict, body, power, brief = words(q, name, levels, contrasts,
                                        sample_size(list(n.values()), "arm"),
                                        tasks or "the study file asks for a description")
    result = Answer(question, verdict, body + power, brief)
    result.tables = [("", level_table(name, samples)),
                     ("", contrast_table(name, contrasts, q.margin))]
    result.contrasts = contrasts
    result.seeds_needed = seeds_needed(contrasts)
    result.numbers = {"test": "welch", "means": means, "n": n,
                      "contrasts": [vars(c) for c in contrasts]}
    return result


def level_table(name: str, samples: dict[str, list[float]]) -> Table:
    return (["level", "n", "test acc (%)"],
            [[f"{name}={lv}", str(len(v)), mean_std_text(v)] for lv, v in samples.items()])


def contrast_table(name: str, contrasts: Sequence[Contrast], margin: float | None) -> Table:
    header = ["comparison", "difference (points)", "interval", "test", "p", "p adjusted",
              "reading", "seeds per arm to decide"]
    body = [[f"{name}={c.level} − {name}={c.reference}" + (f" at {c.at}" if c.at else ""),
             f"{c.diff:+.2f}", interval_text(c), c.test or "none", p_text(c.p),
             p_text(c.p_adjusted), reading(c, margin), seeds_text(c)] for c in contrasts]
    return header, body


def reading(c: Contrast, margin: float | None) -> str:
    """The contrast's decision in a few words."""
    if c.untested:
        return "no test"
    if c.decision == "bounded":
        return f"loss ≤ {max(0.0, -c.low):.2f}"
    if c.decision in ("equivalent", "enough", "too-low"):
        return {"equivalent": f"within ±{margin:g}", "enough": f"within {margin:g} below",
                "too-low": f"more than {margin:g} below"}[c.decision]
    return {"better": "higher", "worse": "lower", "open": "not shown",
            "unreached": "not tested (sequence stopped)"}.get(c.decision, "described")


def seeds_text(c: Contrast) -> str:
    if not c.open:
        return ""
    return str(c.seeds) if c.seeds else f"> {MAX_SEEDS}"


def seeds_needed(contrasts: Sequence[Contrast]) -> int | None:
    """Seeds per arm that would decide every open contrast that a practical number of seeds
    can decide (the largest of theirs); None when none is open or none can be."""
    found = [c.seeds for c in contrasts if c.open and c.seeds]
    return max(found) if found else None


# ----------------------------------------------------------------------------- words
def words(q: Question, name: str, levels: Sequence[str], contrasts: Sequence[Contrast],
          n: str, why_described: str, model: bool = False) -> tuple[str, str, str, str]:
    """(verdict, effects and tests, power, brief) of one family of contrasts; model: they
    are contrasts of the two-way model, not Welch's tests of two arms."""
    kind = q.procedure
    untested = {c.untested for c in contrasts if c.untested}
    effects = "; ".join(effect_text(name, c) for c in contrasts)
    if kind == "describe":
        return ("Described, not tested", f"Not tested: {why_described}. Differences ({n}): "
                f"{effects}.", "", "; ".join(f"{c.level} − {c.reference} {c.diff:+.2f}"
                                             for c in contrasts))
    if len(untested) == len(contrasts) and untested:
        return (f"Not tested at {n}", f"No test: {untested.pop()}; run more seeds "
                f"(--seeds 3). Differences: {effects}.", "", f"{n}, no test")
    verdict = verdict_text(q, levels, contrasts, n)
    procedure = procedure_text(kind, q.margin, len(contrasts), model)
    return (verdict, f"{effects}. {procedure}", power_text(contrasts, n, q.margin),
            brief_text(contrasts))


def effect_text(name: str, c: Contrast) -> str:
    at = f" at {c.at}" if c.at else ""
    head = f"{name}={c.level} − {name}={c.reference}{at} {c.diff:+.2f} points"
    if c.untested:
        return f"{head} (no test: {c.untested})"
    if c.low is None:
        return head
    p = f"p = {p_text(c.p_adjusted)}" if c.p_adjusted is not None else f"p = {p_text(c.p)}"
    return f"{head} ({interval_text(c)}, {p})"


def procedure_text(kind: str, margin: float | None, m: int, model: bool) -> str:
    what = ("the model's t-tests" if model else
            "Welch's t-tests" if m > 1 else "Welch's t-test")
    if kind == "enough" and margin is not None:
        return (f"Non-inferiority within a margin of {margin:g} points ({what}, one-sided), "
                f"one level at a time from the nearest to the reference, each at 0.05 until "
                f"one is not shown (a fixed sequence), with 90% intervals.")
    if kind == "enough":
        return (f"No margin is set, so no level is called enough: each interval's low end is "
                f"the largest loss the runs leave possible ({what}, one-sided 95% bounds"
                f"{', adjusted over ' + str(m) + ' levels' if m > 1 else ''}).")
    adjusted = (f", Bonferroni-adjusted over {m} comparisons, intervals at "
                f"{100 * (1 - ALPHA / m):.1f}%" if m > 1 else ", 95% interval")
    equivalence = (f" A difference not shown is tested for equivalence within ±{margin:g} "
                   f"points." if margin is not None else "")
    return f"{what[0].upper()}{what[1:]}{adjusted}.{equivalence}"


def power_text(contrasts: Sequence[Contrast], n: str, margin: float | None) -> str:
    open_ = [c for c in contrasts if c.open and c.detectable is not None]
    if not open_:
        return ""
    smallest = min(c.detectable for c in open_)
    largest = max(c.detectable for c in open_)
    below = (f"{smallest:.2f}" if math.isclose(smallest, largest, rel_tol=0.05)
             else f"{smallest:.2f}–{largest:.2f}")
    needed = seeds_needed(open_)
    practical = [c for c in open_ if c.seeds]
    text = (f" At {n}, a difference below {below} points goes undetected (80% power, at the "
            f"spread these runs show over seeds).")
    if needed:
        text += (f" {needed} seeds per arm would detect the observed "
                 f"{'difference' if len(practical) == 1 else 'differences'}"
                 + (f" ({', '.join(f'{c.level} − {c.reference}' for c in practical)})"
                    if len(open_) > 1 else "") + ".")
    beyond = [c for c in open_ if not c.seeds and margin is not None and c.test ==
              "non-inferiority" and c.diff <= -margin]
    if beyond:
        text += (f" More seeds would not show {joined([c.level for c in beyond], 'or')} enough: "
                 f"the observed loss is larger than the margin.")
    if len(practical) + len(beyond) < len(open_):
        text += (f" {'No' if not practical else 'For the rest, no'} practical number of seeds "
                 f"(up to {MAX_SEEDS} per arm) would: the observed difference is too small.")
    return text


def brief_text(contrasts: Sequence[Contrast]) -> str:
    parts = []
    for c in contrasts:
        at = f" at {c.at}" if c.at else ""
        p = p_text(c.p_adjusted if c.p_adjusted is not None else c.p)
        parts.append(f"{c.level} − {c.reference}{at} {c.diff:+.2f} {interval_text(c)}"
                     + (f" p = {p}" if p and c.test != "ruled-out loss" else ""))
    needed = seeds_needed(contrasts)
    return "; ".join(parts) + (f"; {needed} seeds per arm would decide it" if needed else "")


def verdict_text(q: Question, levels: Sequence[str], contrasts: Sequence[Contrast],
                 n: str) -> str:
    """The verdict from the contrasts' decisions, levels written name=level."""
    name = short_key(q.factor)
    levels = [f"{name}={lv}" for lv in levels]
    contrasts = [Contrast(f"{name}={c.level}", f"{name}={c.reference}", c.diff, c.test, c.low,
                          c.high, decision=c.decision, untested=c.untested)
                 for c in contrasts]
    kind, margin = q.procedure, q.margin
    if kind == "best":
        return best_verdict(levels, contrasts, n, margin)
    if kind == "enough":
        return enough_verdict(contrasts, margin, n)
    ref = contrasts[0].reference
    said = {"better": f"better than {ref}", "worse": f"worse than {ref}",
            "equivalent": f"within ±{margin:g} points of {ref}" if margin else "",
            "open": f"not shown at {n}", "": "not tested"}
    if len(contrasts) == 1:
        decision = contrasts[0].decision
        return {"better": f"Yes: {said['better']}", "worse": f"No: {said['worse']}",
                "equivalent": f"No difference larger than ±{margin or 0:g} points"
                }.get(decision, f"Not shown at {n}")
    groups: dict[str, list[str]] = {}
    for c in contrasts:
        groups.setdefault(c.decision, []).append(c.level)
    return sentence_case("; ".join(f"{said[d]}: {joined(lvs)}" for d, lvs in groups.items()))


def best_verdict(levels: Sequence[str], contrasts: Sequence[Contrast], n: str,
                 margin: float | None) -> str:
    """The levels that could be best: none of the others is shown higher."""
    beaten = {c.reference for c in contrasts if c.decision == "better"}
    could = [lv for lv in levels if lv not in beaten]
    if len(could) == 1:
        return (f"{could[0]} is better than {levels[1 - levels.index(could[0])]}"
                if len(levels) == 2 else f"{could[0]} is best")
    if len(levels) == 2 and contrasts[0].decision == "equivalent":
        return f"No difference larger than ±{margin:g} points"
    if len(could) == len(levels):
        return f"Not shown at {n}: {joined(levels)} cannot be separated"
    return (f"{joined(could, 'or')} (cannot be separated); not "
            f"{joined([lv for lv in levels if lv not in could], 'or')}")


def enough_verdict(contrasts: Sequence[Contrast], margin: float | None, n: str) -> str:
    ref = contrasts[0].reference
    if margin is None:
        return "No margin set: " + ", ".join(
            f"{c.level} is within {max(0.0, -c.low):.2f} points of {ref}"
            if c.low is not None else f"{c.level} untested" for c in contrasts)
    enough = [c.level for c in contrasts if c.decision == "enough"]
    too_low = [c.level for c in contrasts if c.decision == "too-low"]
    open_ = [c.level for c in contrasts if c.decision in ("open", "unreached") or c.untested]
    parts = [f"{enough[-1]} is enough (within {margin:g} points of {ref})"] if enough else []
    if open_:
        parts.append(f"not shown at {n} that {joined(open_, 'or')} is enough")
    if too_low:
        parts.append(f"{joined(too_low)} {'loses' if len(too_low) == 1 else 'lose'} more than "
                     f"{margin:g} points")
    return sentence_case("; ".join(parts))


def sentence_case(text: str) -> str:
    """A capital first letter, unless the text starts with a level (pool=max ...)."""
    first = text.split(" ", 1)[0]
    return text if "=" in first else text[0].upper() + text[1:]


def joined(items: Sequence[str], word: str = "and") -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


def mean_std_text(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def interval_text(c: Contrast) -> str:
    if c.low is None:
        return ""
    return f"[{c.low:+.2f}, {c.high:+.2f}]"


def p_text(p: float | None) -> str:
    return "" if p is None or math.isnan(p) else f"{p:.2g}"


# ----------------------------------------------------------------------------- two factors
def two_factors(question: Question, runs: Sequence[Run], others: Sequence[str]) -> Answer:
    """The factor crossed with the rest of the study's grid (its other columns taken
    together as one factor), on one model of cell means with a pooled variance."""
    name = short_key(question.factor)
    other = ", ".join(short_key(k) for k in others)
    g_values = [[show_value(r.config.get(k)) for k in others] for r in runs]
    g_labels = [", ".join(f"{short_key(k)}={v}" for k, v in zip(others, values, strict=True))
                for values in g_values]
    f_order = list(samples_by_level(runs, question.factor, question.levels))
    f_labels = [named(level_of(r, question.factor), f_order) for r in runs]
    frame = pd.DataFrame({"y": [100 * r.summary["test/acc"] for r in runs], "f": f_labels,
                          "g": g_labels})
    g_rank = {label: tuple(map(level_key, values))
              for label, values in zip(g_labels, g_values, strict=True)}
    g_all = sorted(g_rank, key=g_rank.get)
    # Average only over the other factor's levels where every level of this one ran, so
    # that the printed means and the contrasts are over the same cells.
    cells = set(zip(frame.f, frame.g, strict=True))
    g_levels = [g for g in g_all if all((f, g) in cells for f in f_order)]
    dropped = [g for g in g_all if g not in g_levels]
    frame = frame[frame.g.isin(g_levels)]
    counts = frame.groupby(["f", "g"]).y.size()
    means = {lv: statistics.fmean(frame.y[frame.f == lv]) for lv in f_order
             if (frame.f == lv).any()}
    early = missing_level(question, list(means), means)
    if early or len(g_levels) < 1:
        return early or Answer(question, "Nothing to compare",
                               f"No level of {other} ran every level of {name}.",
                               "nothing to compare")
    if len(g_levels) == 1:  # one level of the other factor left: a one-factor question
        result = one_factor(question, [r for r, g in zip(runs, g_labels, strict=True)
                                       if g in g_levels])
        result.sentence += (f" Only {g_levels[0]} ran every level of {name}; left out: "
                            f"{'; '.join(dropped)}.")
        result.numbers["dropped"] = dropped
        return result
    model = CellModel(frame, f_order, g_levels)
    anova, model_note = two_way_anova(frame, counts, len(f_order) * len(g_levels))
    marginal = {lv: model.mean(lv) for lv in f_order}
    tasks = different_tasks(runs, question.factor)
    kind = "describe" if tasks else question.procedure
    q = Question(question.ask, question.factor, named(question.baseline, f_order), None, kind,
                 question.margin)
    n_cell = int(counts.min())
    pairs = pairs_of(q, f_order, marginal, lambda a, b: model.difference(a, b, n_cell))
    contrasts = judge(kind, q.margin, pairs)
    interaction = (anova or {}).get("f × g")
    at_each: list[Contrast] = []
    if interaction is not None and interaction < ALPHA and kind != "describe":
        per_g = [pairs_of(q, f_order, {lv: model.cell(lv, g) for lv in f_order},
                          lambda a, b, g=g: model.difference(a, b, n_cell, at=g))
                 for g in g_levels]
        family = sum(len(p) for p in per_g)
        for g, pairs_g in zip(g_levels, per_g, strict=True):
            at_each += judge(kind, q.margin, pairs_g, at=g, family=family)
    n = sample_size(list(counts), "cell")
    verdict, body, power, brief = words(q, name, f_order, contrasts, n, tasks or
                                        "the study file asks for a description", model=True)
    sentence = f"Averaged over {other} (a model of cell means with one pooled variance): {body}"
    if at_each:
        by_g = {g: [c for c in at_each if c.at == g] for g in g_levels}
        verdict = f"Depends on {other}: " + "; ".join(
            f"at {g}, {lower_first(verdict_text(q, f_order, cs, n))}" for g, cs in by_g.items())
        sentence += (f" The interaction is significant, so at each level of {other} (the same "
                     f"model, adjusted over all {len(at_each)} comparisons): "
                     + "; ".join(effect_text(name, c) for c in at_each) + ".")
        power, brief = power_text(at_each, n, q.margin), brief_text(at_each)
    sentence += " " + anova_text(anova, model_note, name, other, n)
    if dropped:
        sentence += (f" Left out of the averages, since not every level of {name} ran there: "
                     f"{'; '.join(dropped)}.")
    sentence += power
    result = Answer(question, verdict, sentence, brief)
    result.tables = [("Averaged over " + other, marginal_table(name, marginal)),
                     ("", contrast_table(name, contrasts + at_each, q.margin)),
                     (f"At each level of {other}", cell_table(name, f_order, g_levels, frame))]
    if anova is not None:
        result.tables.insert(0, (f"Two-way ANOVA, type {roman(ANOVA_TYPE)}",
                                 anova_table(anova, name, other)))
    result.contrasts = at_each or contrasts
    result.seeds_needed = seeds_needed(result.contrasts)
    result.numbers = {"test": "two-way", "marginal": marginal, "model": model.kind,
                      "anova_p": {k: v for k, v in (anova or {}).items()
                                  if not k.startswith("_")},
                      "cell_n": {f"{f}|{g}": int(v) for (f, g), v in counts.items()},
                      "contrasts": [vars(c) for c in contrasts],
                      "at_each": [vars(c) for c in at_each], "dropped": dropped}
    return result


def lower_first(text: str) -> str:
    return text[0].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


class CellModel:
    """y on one indicator per cell (the cell means), or, with one run per cell, the additive
    model y ~ f + g (an interaction would leave no residual): statsmodels OLS either way."""

    def __init__(self, frame: pd.DataFrame, f_levels: Sequence[str], g_levels: Sequence[str]):
        self.f_levels, self.g_levels = list(f_levels), list(g_levels)
        cells = len(f_levels) * len(g_levels)
        self.kind = "cell means" if len(frame) > cells else "additive"
        design = np.array([self.row(f, g) for f, g in zip(frame.f, frame.g, strict=True)])
        self.fit = sm.OLS(frame.y.to_numpy(), design).fit()

    def row(self, f: str, g: str) -> np.ndarray:
        """The design row of cell (f, g): its mean is row @ params."""
        fi, gi = self.f_levels.index(f), self.g_levels.index(g)
        if self.kind == "cell means":
            x = np.zeros(len(self.f_levels) * len(self.g_levels))
            x[fi * len(self.g_levels) + gi] = 1.0
            return x
        x = np.zeros(1 + len(self.f_levels) - 1 + len(self.g_levels) - 1)
        x[0] = 1.0
        if fi:
            x[fi] = 1.0
        if gi:
            x[len(self.f_levels) - 1 + gi] = 1.0
        return x

    def cell(self, f: str, g: str) -> float:
        return float(self.row(f, g) @ self.fit.params)

    def mean(self, f: str) -> float:
        """The level's mean of cell means over the other factor's levels."""
        return statistics.fmean(self.cell(f, g) for g in self.g_levels)

    def difference(self, a: str, b: str, n: int, at: str = "") -> ModelDifference:
        gs = [at] if at else self.g_levels
        weights = sum(self.row(a, g) - self.row(b, g) for g in gs) / len(gs)
        return ModelDifference(self.fit, weights, cells=len(gs), n=n)


def roman(n: int) -> str:
    return {1: "I", 2: "II", 3: "III"}[n]


def two_way_anova(frame: pd.DataFrame, counts: pd.Series, grid_cells: int
                  ) -> tuple[dict | None, str]:
    """({term: p, '_table': rows}, note) of `y ~ f * g` by statsmodels' anova_lm; the
    additive model `y ~ f + g` when one run per cell leaves the interaction no residual;
    (None, why) when even that cannot be fitted."""
    full = len(counts) == grid_cells and len(frame) > grid_cells
    formula = "y ~ C(f) * C(g)" if full else "y ~ C(f) + C(g)"
    n_params = grid_cells if full else frame.f.nunique() + frame.g.nunique() - 1
    if len(frame) <= n_params:
        return None, f"{len(frame)} runs leave no residual to test with"
    note = "" if full else "interaction not testable with one run per cell (additive model)"
    table = anova_lm(smf.ols(formula, data=frame).fit(), typ=ANOVA_TYPE)
    return {"_table": table, **{TERM_NAMES[t]: float(table.loc[t, "PR(>F)"])
                               for t in table.index if t in TERM_NAMES}}, note


TERM_NAMES = {"C(f)": "f", "C(g)": "g", "C(f):C(g)": "f × g"}


def anova_text(anova: dict | None, note: str, name: str, other: str, n: str) -> str:
    if anova is None:
        return f"No ANOVA: {note}."
    text = f"Two-way ANOVA (type {roman(ANOVA_TYPE)}, {n}): {name} p = {p_text(anova.get('f'))}"
    if anova.get("f × g") is not None:
        return text + f", interaction {name} × {other} p = {p_text(anova['f × g'])}."
    return text + f"; {note}."


def anova_table(anova: dict, name: str, other: str) -> Table:
    table = anova["_table"]
    shown = {"f": name, "g": other, "f × g": f"{name} × {other}"}
    rows = [[shown.get(TERM_NAMES.get(t, ""), "residual"), f"{table.loc[t, 'df']:.0f}",
             "" if math.isnan(table.loc[t, "F"]) else f"{table.loc[t, 'F']:.2f}",
             p_text(table.loc[t, "PR(>F)"])] for t in table.index]
    return ["term", "df", "F", "p"], rows


def marginal_table(name: str, marginal: dict[str, float]) -> Table:
    return (["level", "mean of cell means (%)"],
            [[f"{name}={lv}", f"{mean:.2f}"] for lv, mean in marginal.items()])


def cell_table(name: str, f_levels: Sequence[str], g_levels: Sequence[str],
               frame: pd.DataFrame) -> Table:
    """Other levels as rows, the factor's levels as columns: mean ± std (n)."""
    header = ["", *(f"{name}={lv}" for lv in f_levels)]
    body = []
    for g in g_levels:
        values = [frame.y[(frame.f == lv) & (frame.g == g)].tolist() for lv in f_levels]
        body.append([g, *(f"{mean_std_text(v)} (n = {len(v)})" if v else "—" for v in values)])
    return header, body
