"""questions.py: every statistic against scipy and statsmodels on synthetic runs (one seed per
arm, a failed run, an unbalanced grid, an empty cell), and the sentences that carry them."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from mnistcnn.compare import Run
from mnistcnn.questions import Question, answer, questions_of


def run(acc: float | None, seed: int = 0, **config) -> Run:
    """A run as compare.load_run makes it: flattened config, summary (acc None: failed)."""
    summary = ({"status": "completed", "test/acc": acc} if acc is not None
               else {"status": "failed", "error": "boom"})
    return Run(Path(f"run{seed}"), {"model.name": "classic", "seed": seed, **config}, summary, [])


def arm(accs, **config) -> list[Run]:
    return [run(a, seed=i, **config) for i, a in enumerate(accs)]


POOL_MAX = [0.990, 0.9915, 0.992]
POOL_AVG = [0.980, 0.982, 0.9805]


def points(values):
    return [100 * v for v in values]


# ----------------------------------------------------------------------------- one factor
def test_two_levels_is_welchs_test_as_scipy_computes_it():
    runs = arm(POOL_MAX, **{"model.pool": "max"}) + arm(POOL_AVG, **{"model.pool": "avg"})
    a = answer(Question("Max or avg?", "model.pool"), runs)
    expected = stats.ttest_ind(points(POOL_MAX), points(POOL_AVG), equal_var=False)
    ci = expected.confidence_interval(0.95)
    (c,) = a.numbers["contrasts"]
    assert (c["level"], c["reference"]) == ("max", "avg")
    assert c["diff"] == pytest.approx(statistics.fmean(points(POOL_MAX))
                                      - statistics.fmean(points(POOL_AVG)))
    assert c["p"] == pytest.approx(expected.pvalue)
    assert (c["low"], c["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert c["p_holm"] is None  # one comparison: nothing to correct
    assert a.sentence.startswith("pool=max is 1.03 points above pool=avg (99.12% vs 98.08%, "
                                 "n = 3 per arm); Welch p = ")
    assert "beyond the seed spread" in a.sentence
    assert a.tables[0][1][0] == ["level", "n", "test acc (%)", "vs pool=avg (points)",
                                 "95% interval", "p (Welch)"]


def test_a_gap_within_the_seed_spread_says_so():
    runs = arm([0.99, 0.97, 0.98], **{"model.pool": "max"}) + arm(
        [0.985, 0.975, 0.978], **{"model.pool": "avg"})
    assert "within the seed spread" in answer(Question("?", "model.pool"), runs).sentence


def test_more_levels_are_holm_corrected_against_the_best():
    relu, tanh, sigmoid = [0.990, 0.991, 0.989], [0.985, 0.987, 0.986], [0.970, 0.975, 0.972]
    runs = (arm(relu, **{"model.activation": "relu"}) + arm(tanh, **{"model.activation": "tanh"})
            + arm(sigmoid, **{"model.activation": "sigmoid"}))
    a = answer(Question("Which?", "model.activation"), runs)
    assert a.numbers["reference"] == "relu"
    raw = [stats.ttest_ind(points(x), points(relu), equal_var=False).pvalue
           for x in (sigmoid, tanh)]  # the levels in sorted order
    holm = multipletests(raw, alpha=0.05, method="holm")[1]
    got = {c["level"]: c for c in a.numbers["contrasts"]}
    assert [got["sigmoid"]["p"], got["tanh"]["p"]] == pytest.approx(raw)
    assert [got["sigmoid"]["p_holm"], got["tanh"]["p_holm"]] == pytest.approx(list(holm))
    assert a.sentence.startswith("Against the best, activation=relu (99.00%, n = 3 per arm): ")
    assert "Holm-corrected over 2 comparisons" in a.sentence
    assert f"Holm p = {holm[1]:.2g}" in a.sentence


def test_a_baseline_is_the_reference_even_when_it_is_not_the_best():
    runs = (arm([0.98, 0.981, 0.982], **{"model.dropout": 0.0})
            + arm([0.985, 0.986, 0.987], **{"model.dropout": 0.25})
            + arm([0.983, 0.984, 0.982], **{"model.dropout": 0.5}))
    a = answer(Question("Does dropout help?", "model.dropout", baseline="0.0"), runs)
    assert a.numbers["reference"] == "0.0"
    assert all(c["diff"] > 0 for c in a.numbers["contrasts"])
    assert a.sentence.startswith("Against the baseline dropout=0.0 (98.10%, n = 3 per arm): "
                                 "dropout=0.25 +0.50 points")
    assert a.numbers["smallest_not_worse"] is None  # a "does it help" question


def test_a_numeric_factor_gets_the_smallest_level_not_significantly_worse():
    runs = (arm([0.95, 0.952, 0.951], **{"model.features": 2})
            + arm([0.988, 0.99, 0.985], **{"model.features": 8})
            + arm([0.989, 0.99, 0.991], **{"model.features": 32}))
    a = answer(Question("How wide?", "model.features"), runs)
    assert a.numbers["reference"] == "32"
    holm = {c["level"]: c["p_holm"] for c in a.numbers["contrasts"]}
    assert holm["2"] < 0.05 <= holm["8"]
    assert a.numbers["smallest_not_worse"] == "8"
    assert "The smallest features not significantly worse than the best (features=32) is 8" \
        in a.sentence


def test_one_seed_per_arm_has_no_test_and_says_why():
    runs = [run(0.99, **{"model.pool": "max"}), run(0.98, **{"model.pool": "avg"})]
    a = answer(Question("?", "model.pool"), runs)
    (c,) = a.numbers["contrasts"]
    assert c["p"] is None and c["low"] is None
    assert "Welch's t-test needs two seeds per arm (n = 1 and 1), so the seed spread is " \
           "unknown" in a.sentence
    assert a.numbers["smallest_not_worse"] is None
    three = runs + [run(0.97, **{"model.pool": "none"})]
    b = answer(Question("?", "model.pool", baseline="avg"), three)
    assert b.sentence == ("Against the baseline pool=avg (98.00%, n = 1 per arm): pool=max "
                          "+1.00 points; pool=none -1.00 points. No test: Welch's t-test needs "
                          "two seeds per arm (n = 1 and 1), so the seed spread is unknown.")


def test_arms_that_do_not_vary_cannot_be_tested():
    runs = arm([0.9, 0.9], **{"model.pool": "max"}) + arm([0.8, 0.8], **{"model.pool": "avg"})
    assert "neither arm varies over its seeds" in answer(Question("?", "model.pool"), runs).sentence


def test_a_failed_run_is_left_out_and_counted():
    runs = arm(POOL_MAX, **{"model.pool": "max"}) + arm([0.980, 0.982, None],
                                                        **{"model.pool": "avg"})
    a = answer(Question("?", "model.pool"), runs)
    (c,) = a.numbers["contrasts"]
    expected = stats.ttest_ind(points(POOL_MAX), points([0.980, 0.982]), equal_var=False)
    assert c["p"] == pytest.approx(expected.pvalue)
    assert "n = 2–3 per arm" in a.sentence and a.sentence.endswith(
        "1 run(s) did not complete and are left out.")
    assert a.numbers["failed"] == 1


def test_nothing_to_compare_and_levels_a_question_leaves_out():
    runs = arm(POOL_MAX, **{"model.pool": "max"}) + arm([None, None], **{"model.pool": "avg"})
    assert answer(Question("?", "model.pool"), runs).sentence.startswith(
        "Only pool=max completed: nothing to compare.")
    tiny = (arm([0.98, 0.981], variant="tiny_10classes") + arm([0.99, 0.991], variant="tiny_4")
            + arm([0.95, 0.96], variant="tiny_4_augment"))
    a = answer(Question("10 vs 4?", "variant", levels=("tiny_10classes", "tiny_4")), tiny)
    assert set(a.numbers["means"]) == {"tiny_10classes", "tiny_4"}


def test_a_group_choice_is_a_factor_by_its_name():
    runs = arm(POOL_MAX, **{"optim.name": "sgd", "optim.lr": 0.01}) + arm(
        POOL_AVG, **{"optim.name": "adam", "optim.lr": 0.001})
    a = answer(Question("SGD or Adam?", "optim"), runs)
    assert a.sentence.startswith("optim=sgd is 1.03 points above optim=adam")


def test_short_runs_are_not_findings():
    runs = arm(POOL_MAX, **{"model.pool": "max"}) + arm(POOL_AVG, **{"model.pool": "avg"})
    a = answer(Question("?", "model.pool"), runs, provisional=True)
    assert a.sentence.startswith("Smoke runs, shorter than the protocol: not a finding. ")


def test_questions_of_a_study_block():
    block = {"title": "t", "questions": [
        {"factor": "model.batchnorm", "baseline": False, "ask": "Does BN help?"},
        {"factor": "variant", "levels": ["a", "b"]}]}
    assert questions_of(block) == [Question("Does BN help?", "model.batchnorm", "false"),
                                   Question("What does variant change?", "variant", None,
                                            ("a", "b"))]
    assert questions_of(None) == []


# ----------------------------------------------------------------------------- two factors
CELLS = {  # (features, epochs): test accuracies over seeds
    (4, 10): [0.982, 0.984, 0.983], (4, 20): [0.985, 0.986, 0.984],
    (8, 10): [0.989, 0.99, 0.988], (8, 20): [0.988, 0.989, 0.99],
    (32, 10): [0.987, 0.988, 0.986], (32, 20): [0.99, 0.989, 0.991]}


def grid(cells) -> list[Run]:
    return [r for (f, e), accs in cells.items()
            for r in arm(accs, **{"model.features": f, "trainer.epochs": e})]


def frame_of(cells) -> pd.DataFrame:
    rows = [(100 * a, str(f), f"epochs={e}") for (f, e), accs in cells.items() for a in accs
            if a is not None]
    return pd.DataFrame(rows, columns=["y", "f", "g"])


def test_two_factors_anova_is_statsmodels_type_2():
    a = answer(Question("Do 20 epochs beat 10?", "trainer.epochs", baseline="10"), grid(CELLS))
    frame = frame_of(CELLS).rename(columns={"f": "g", "g": "f"})  # the factor is epochs
    table = anova_lm(smf.ols("y ~ C(f) * C(g)", data=frame).fit(), typ=2)
    assert a.numbers["anova_p"]["f"] == pytest.approx(table.loc["C(f)", "PR(>F)"])
    assert a.numbers["anova_p"]["g"] == pytest.approx(table.loc["C(g)", "PR(>F)"])
    assert a.numbers["anova_p"]["f × g"] == pytest.approx(table.loc["C(f):C(g)", "PR(>F)"])
    assert "Two-way ANOVA (type II, n = 3 per cell): epochs p = " in a.sentence
    assert a.sentence.startswith("Averaged over features (t-tests of cell-mean contrasts, "
                                 "pooled variance), against the baseline epochs=10")
    assert "At each level of features: features=4: +" in a.sentence  # answered at each width too
    assert [t for t, _ in a.tables] == ["Two-way ANOVA, type II", "Averaged over features",
                                        "At each level of features"]


def test_the_main_effect_is_a_contrast_of_cell_means_with_pooled_variance():
    a = answer(Question("?", "trainer.epochs", baseline="10"), grid(CELLS))
    (c,) = a.numbers["contrasts"]
    cells = list(CELLS)
    design = np.zeros((18, 6))
    y = []
    for i, accs in enumerate(CELLS.values()):
        for j, acc in enumerate(accs):
            design[3 * i + j, i] = 1
            y.append(100 * acc)
    weights = np.array([(1 if e == 20 else -1) / 3 for _, e in cells])
    test = sm.OLS(np.array(y), design).fit().t_test(weights[None, :])
    assert c["diff"] == pytest.approx(float(np.squeeze(test.effect)))
    assert c["p"] == pytest.approx(float(np.squeeze(test.pvalue)))
    low, high = np.squeeze(test.conf_int(alpha=0.05))
    assert (c["low"], c["high"]) == (pytest.approx(low), pytest.approx(high))
    # At each width: Welch's test of 20 vs 10, Holm-corrected over the three widths.
    raw = [stats.ttest_ind(points(CELLS[(f, 20)]), points(CELLS[(f, 10)]),
                           equal_var=False).pvalue for f in (4, 8, 32)]
    got = {c["at"]: c for c in a.numbers["at_each"]}
    assert [got[f"features={f}"]["p"] for f in (4, 8, 32)] == pytest.approx(raw)
    assert [got[f"features={f}"]["p_holm"] for f in (4, 8, 32)] == pytest.approx(
        list(multipletests(raw, method="holm")[1]))


def test_an_unbalanced_grid_averages_cell_means_and_uses_type_2():
    cells = {**CELLS, (4, 20): [0.985, None, None], (8, 10): [0.989, 0.99, None]}
    a = answer(Question("How wide?", "model.features"), grid(cells))
    frame = frame_of(cells)
    table = anova_lm(smf.ols("y ~ C(f) * C(g)", data=frame).fit(), typ=2)
    assert a.numbers["anova_p"]["f"] == pytest.approx(table.loc["C(f)", "PR(>F)"])
    assert a.numbers["anova_p"]["f × g"] == pytest.approx(table.loc["C(f):C(g)", "PR(>F)"])
    assert a.numbers["cell_n"]["4|epochs=20"] == 1
    assert a.numbers["marginal"]["4"] == pytest.approx(
        (statistics.fmean(points(cells[(4, 10)])) + 98.5) / 2)  # not the mean of 4 runs
    assert "n = 1–3 per cell" in a.sentence and "3 run(s) did not complete" in a.sentence


def test_an_empty_cell_or_one_seed_per_cell_drops_the_interaction():
    cells = {**CELLS, (4, 20): [None, None, None]}
    a = answer(Question("?", "trainer.epochs", baseline="10"), grid(cells))
    frame = frame_of(cells).rename(columns={"f": "g", "g": "f"})
    table = anova_lm(smf.ols("y ~ C(f) + C(g)", data=frame).fit(), typ=2)
    assert a.numbers["anova_p"]["f"] == pytest.approx(table.loc["C(f)", "PR(>F)"])
    assert "f × g" not in a.numbers["anova_p"]
    assert "interaction not testable: a cell has no completed run" in a.sentence
    (c,) = a.numbers["contrasts"]  # averaged over the widths where both epochs ran
    assert c["diff"] == pytest.approx(statistics.fmean(
        [statistics.fmean(points(CELLS[(f, 20)])) - statistics.fmean(points(CELLS[(f, 10)]))
         for f in (8, 32)]))
    single = {k: v[:1] for k, v in CELLS.items()}
    b = answer(Question("?", "trainer.epochs", baseline="10"), grid(single))
    assert "interaction not testable: one run per cell" in b.sentence
    assert b.numbers["contrasts"][0]["p"] is None
    assert "one run per cell leaves no residual to test with" in b.sentence
    tiny = {(4, 10): [0.98], (4, 20): [0.99]}  # one width: the epochs are the only factor
    assert answer(Question("?", "trainer.epochs"), grid(tiny)).numbers["test"] == "welch"


def test_too_few_runs_for_any_anova():
    cells = {(4, 10): [0.98], (4, 20): [0.99], (8, 10): [0.985]}
    a = answer(Question("?", "trainer.epochs", baseline="10"), grid(cells))
    assert "No ANOVA: 3 runs leave no residual to test with." in a.sentence
    assert not math.isnan(a.numbers["marginal"]["20"])
