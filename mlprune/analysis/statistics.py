"""How sure a number over seeds is: summaries with confidence intervals, paired and unpaired
comparisons of two branches, Holm-Bonferroni adjustment and the verdict a table prints.

Pure functions on plain numbers (sequences of floats, one per seed); scipy.stats gives the
distributions and the tests. Every result is a plain dict (JSON-ready); a number that cannot be
computed (an interval from one seed, a p-value of identical samples) is ``None``.

* ``summarize``: n, mean, sample std (ddof 1), standard error std / sqrt(n) and a 95 % interval of
  the mean: Student-t (``mean ± t(0.975, n - 1) · se``) or a seeded percentile bootstrap of the
  mean (``resamples`` resamples of the seeds with replacement; the 2.5th and 97.5th percentiles).
* ``paired``: the differences ``a - b`` of two branches measured on the same seeds (the same dense
  network per seed): their summary, the paired t-test and the Wilcoxon signed-rank test (two-sided;
  scipy's defaults: the exact distribution for small n, zero differences dropped).
* ``unpaired``: Welch's t-test and the Welch-Satterthwaite interval of ``mean(a) - mean(b)``.
* ``holm``: Holm-Bonferroni adjusted p-values of a family (the rounds of one comparison).
* ``verdict``: ``better`` / ``worse`` (adjusted p < alpha, by the sign of the difference),
  ``no difference``, or ``too few seeds (n < 3)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import SpecError, choice_error

CI_METHODS = ("t", "bootstrap")
CONFIDENCE = 0.95
ALPHA = 0.05
MIN_SEEDS = 3  # fewer seeds than this give no verdict
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
TOO_FEW = f"too few seeds (n < {MIN_SEEDS})"
ONE_SEED = "1 seed: no interval"
VERDICTS = ("better", "worse", "no difference", TOO_FEW)


def _values(values: Sequence[float], what: str = "values") -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise SpecError(f"{what} must be finite numbers, got {list(values)!r}")
    return arr


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def check_ci(ci: str) -> str:
    if ci not in CI_METHODS:
        raise choice_error("confidence interval", ci, CI_METHODS)
    return ci


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with df degrees of freedom: scipy.special's ``stdtrit``, the function
    ``scipy.stats.t.ppf`` computes it with (importing scipy.special takes a third of scipy.stats' time,
    which a sweep's summary pays)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """Student-t interval of the mean: mean ± t((1 + confidence) / 2, n - 1) · std / sqrt(n); (None, None)
    for fewer than 2 values."""
    arr = _values(values)
    if arr.size < 2:
        return None, None
    mean, se = float(arr.mean()), float(arr.std(ddof=1)) / math.sqrt(arr.size)
    half = t_quantile((1 + confidence) / 2, arr.size - 1) * se
    return mean - half, mean + half


def bootstrap_interval(
    values: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean: ``resamples`` means of n values drawn with replacement
    by ``numpy.random.default_rng(seed)`` (an index matrix of shape (resamples, n)), their
    (1 - confidence) / 2 and (1 + confidence) / 2 quantiles (numpy's linear interpolation);
    (None, None) for fewer than 2 values."""
    arr = _values(values)
    if arr.size < 2:
        return None, None
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise SpecError(f"bootstrap resamples must be an int >= 1, got {resamples!r}")
    index = np.random.default_rng(seed).integers(0, arr.size, size=(resamples, arr.size))
    means = arr[index].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def summarize(
    values: Sequence[float], ci: str = "t", *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict:
    """``{"n", "mean", "std", "se", "ci_low", "ci_high", "ci"}`` of the values (one per seed); ``ci`` says
    how the interval was made ("t", or "bootstrap, 10000 resamples, seed 0"); one value: std 0, se, the
    interval None and ``ci`` = "1 seed: no interval"."""
    check_ci(ci)
    arr = _values(values)
    if arr.size == 0:
        raise SpecError("summarize needs at least one value")
    n = int(arr.size)
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    if n < 2:
        low = high = None
        how = ONE_SEED
    elif ci == "t":
        low, high = t_interval(arr)
        how = "t"
    else:
        low, high = bootstrap_interval(arr, resamples, seed)
        how = f"bootstrap, {resamples} resamples, seed {seed}"
    return {
        "n": n,
        "mean": float(arr.mean()),
        "std": std,
        "se": std / math.sqrt(n) if n > 1 else None,
        "ci_low": low,
        "ci_high": high,
        "ci": how,
    }


def paired(
    a: Sequence[float],
    b: Sequence[float],
    ci: str = "t",
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Paired comparison of a and b (``a[i]`` and ``b[i]`` from the same seed): the summary of the
    differences a - b (``mean_difference``, ``std``, ``se``, ``ci_low``, ``ci_high``, ``ci``, ``n``),
    ``p_t`` (scipy.stats.ttest_rel) and ``p_wilcoxon`` (scipy.stats.wilcoxon), two-sided; a p-value is
    None for fewer than 2 pairs or when the test is undefined (every difference 0)."""
    from scipy import stats

    a, b = _values(a, "a"), _values(b, "b")
    if a.size != b.size or a.size == 0:
        raise SpecError(
            f"a paired comparison needs as many values on both sides (at least 1), got {a.size} and {b.size}"
        )
    summary = summarize(a - b, ci, resamples=resamples, seed=seed)
    out = {
        "paired": True,
        "n": summary["n"],
        "mean_difference": summary["mean"],
        **{k: summary[k] for k in ("std", "se", "ci_low", "ci_high", "ci")},
        "p_t": None,
        "p_wilcoxon": None,
    }
    if a.size >= 2:
        with np.errstate(all="ignore"):
            out["p_t"] = _number(stats.ttest_rel(a, b).pvalue)
        if np.any(a != b):
            out["p_wilcoxon"] = _number(stats.wilcoxon(a, b).pvalue)
    return out


def unpaired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Welch's comparison of a and b (different seeds or networks): ``mean_difference`` = mean(a) - mean(b),
    its Welch-Satterthwaite t interval, ``p_welch`` (scipy.stats.ttest_ind, equal_var=False); ``n`` is
    the smaller side. None where a side has fewer than 2 values or both have no spread."""
    from scipy import stats

    a, b = _values(a, "a"), _values(b, "b")
    if a.size == 0 or b.size == 0:
        raise SpecError(f"an unpaired comparison needs values on both sides, got {a.size} and {b.size}")
    out = {
        "paired": False,
        "n": int(min(a.size, b.size)),
        "n_a": int(a.size),
        "n_b": int(b.size),
        "mean_difference": float(a.mean() - b.mean()),
        "se": None,
        "ci_low": None,
        "ci_high": None,
        "ci": "welch",
        "p_welch": None,
    }
    if a.size < 2 or b.size < 2:
        return out
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    se = math.sqrt(va + vb)
    out["se"] = se
    if se > 0:
        df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
        half = t_quantile((1 + confidence) / 2, df) * se
        out["ci_low"], out["ci_high"] = out["mean_difference"] - half, out["mean_difference"] + half
        out["p_welch"] = _number(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the given order: with the m defined p-values sorted
    ascending, the k-th (from 0) becomes max over j <= k of min(1, (m - j) · p_(j)). None stays None
    and does not count in m."""
    defined = sorted((float(p), i) for i, p in enumerate(pvalues) if p is not None)
    m = len(defined)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


def verdict(n: int, mean_difference: float, p_adjusted: float | None, alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` when the adjusted p-value is below alpha (by the sign of the difference),
    ``no difference`` otherwise, ``too few seeds (n < 3)`` below 3 seeds."""
    if n < MIN_SEEDS:
        return TOO_FEW
    if p_adjusted is None or p_adjusted >= alpha or mean_difference == 0:
        return "no difference"
    return "better" if mean_difference > 0 else "worse"
