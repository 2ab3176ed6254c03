"""analysis.statistics against scipy.stats and numpy computed here, independently (1e-9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mlprune.analysis import pareto_front, statistics
from mlprune.errors import SpecError

A = [0.912, 0.934, 0.905, 0.921, 0.899]
B = [0.881, 0.902, 0.899, 0.874, 0.893]


def close(x, y):
    return x == pytest.approx(y, abs=1e-9, rel=0)


def holm_by_hand(p):
    """Holm's step-down procedure, written out: sort ascending, multiply the k-th smallest by (m - k),
    cap at 1, make monotone, put back in the given order."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    previous = 0.0
    for rank, i in enumerate(order):
        value = min(1.0, (m - rank) * p[i])
        previous = max(previous, value)
        adjusted[i] = previous
    return adjusted


def test_summarize_t_interval_is_students():
    s = statistics.summarize(A)
    arr = np.array(A)
    se = arr.std(ddof=1) / math.sqrt(len(A))
    low, high = scipy_stats.t.interval(0.95, len(A) - 1, loc=arr.mean(), scale=se)
    assert s["n"] == 5 and s["ci"] == "t"
    assert close(s["mean"], arr.mean()) and close(s["std"], arr.std(ddof=1)) and close(s["se"], se)
    assert close(s["ci_low"], low) and close(s["ci_high"], high)


def test_t_quantile_is_scipy_stats_t_ppf():
    # the summary reads t's quantile from scipy.special (a faster import): the same numbers, to the bit
    for df in (*range(1, 60), 2.5, 37.3, 1e6):
        for q in (0.5, 0.9, 0.95, 0.975, 0.995):
            assert statistics.t_quantile(q, df) == float(scipy_stats.t.ppf(q, df))


def test_one_seed_has_no_interval_and_two_have_one():
    s = statistics.summarize([0.9])
    assert s["ci_low"] is None and s["ci_high"] is None and s["ci"] == "1 seed: no interval" and s["std"] == 0.0
    assert statistics.summarize([0.9, 0.8])["ci_low"] < 0.8


def test_bootstrap_is_the_seeded_percentile_bootstrap():
    s = statistics.summarize(A, "bootstrap", resamples=2000, seed=7)
    index = np.random.default_rng(7).integers(0, 5, size=(2000, 5))
    means = np.array(A)[index].mean(axis=1)
    assert close(s["ci_low"], np.percentile(means, 2.5)) and close(s["ci_high"], np.percentile(means, 97.5))
    assert s["ci"] == "bootstrap, 2000 resamples, seed 7"
    assert statistics.summarize(A, "bootstrap", resamples=2000, seed=7) == s  # seeded: the same again
    with pytest.raises(SpecError, match="'wild'"):
        statistics.summarize(A, "wild")


def test_paired_matches_ttest_rel_and_wilcoxon():
    result = statistics.paired(A, B)
    diff = np.array(A) - np.array(B)
    low, high = scipy_stats.t.interval(0.95, 4, loc=diff.mean(), scale=scipy_stats.sem(diff))
    assert result["paired"] and result["n"] == 5
    assert close(result["mean_difference"], diff.mean())
    assert close(result["ci_low"], low) and close(result["ci_high"], high)
    assert close(result["p_t"], scipy_stats.ttest_rel(A, B).pvalue)
    assert close(result["p_wilcoxon"], scipy_stats.wilcoxon(A, B).pvalue)
    same = statistics.paired(A, A)
    assert same["p_t"] is None and same["p_wilcoxon"] is None and same["mean_difference"] == 0


def test_unpaired_is_welch():
    a, b = A, B[:4]
    result = statistics.unpaired(a, b)
    welch = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert not result["paired"] and result["n"] == 4
    assert close(result["p_welch"], welch.pvalue)
    low, high = welch.confidence_interval(0.95)
    assert close(result["ci_low"], low) and close(result["ci_high"], high)


def test_holm_matches_the_procedure_written_out():
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    assert all(close(x, y) for x, y in zip(statistics.holm(p), holm_by_hand(p)))
    assert statistics.holm([0.02, None, 0.04]) == [pytest.approx(0.04), None, pytest.approx(0.04)]


def test_verdicts():
    assert statistics.verdict(2, 0.1, 0.001) == "too few seeds (n < 3)"
    assert statistics.verdict(5, 0.02, 0.01) == "better"
    assert statistics.verdict(5, -0.02, 0.01) == "worse"
    assert statistics.verdict(5, 0.02, 0.2) == "no difference"
    assert statistics.verdict(5, 0.02, None) == "no difference"


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [
        {"x": 2, "mean": 0.9, "m": "a"},
        {"x": 4, "mean": 0.95, "m": "b"},
        {"x": 8, "mean": 0.7, "m": "c"},
        {"x": 8, "mean": 0.6, "m": "d"},
        {"x": 16, "mean": 0.65, "m": "e"},
    ]
    assert [p["m"] for p in pareto_front(points, "x")] == ["b", "c", "e"]
