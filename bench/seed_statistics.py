"""Statistics over seeds: mean and std of a row's values, and the paired comparison of two rows.

``seed_summary``: n, mean and std (ddof=1, NaN for n < 2) over the seeds with a finite value.
``paired_comparison``: over the seeds both rows have, the std of the paired differences, the two-sided paired
t-test's p-value and the minimal detectable difference (``minimal_detectable_difference``) of that test.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def finite_values(values: Mapping) -> dict:
    """The entries of ``values`` (seed -> value) whose value is a finite number, as floats."""
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))}


def minimal_detectable_difference(diff_std: float, n: int, alpha: float = 0.05, power: float = 0.5) -> float:
    """Smallest mean difference a two-sided paired t-test at ``alpha`` detects over ``n`` paired seeds.

    MDD = (t_{1-alpha/2, n-1} + t_{power, n-1}) * s_d / sqrt(n), with s_d = ``diff_std`` the standard
    deviation (ddof=1) of the paired differences. At ``power`` 0.5 (t = 0) this is the half-width of the
    (1 - alpha) confidence interval of the mean difference: an observed |delta| below it cannot reach
    p < alpha. NaN for n < 2 or a non-finite s_d; 0 when the differences are constant.
    """
    if n < 2 or not math.isfinite(diff_std):
        return math.nan
    from scipy.special import stdtrit  # Student t quantiles; scipy.stats costs a second more to import

    t = stdtrit(n - 1, 1.0 - alpha / 2.0) + stdtrit(n - 1, power)
    return float(t * diff_std / math.sqrt(n))


def paired_t_test(diff: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test on the differences ``diff`` (``scipy.stats.ttest_rel``'s,
    from the Student t distribution of ``scipy.special``: importing scipy.stats costs a cached re-run
    about a second)."""
    from scipy.special import stdtr

    n = len(diff)
    # ttest_rel's own order of operations (mean of squared deviations times n / (n - 1)), so the p-values
    # match it to the last bit and a table's CSV did not change with the switch.
    mean = np.mean(diff)
    variance = np.mean((diff - mean) ** 2) * (float(n) / (n - 1))
    t = mean / np.sqrt(variance / n)
    return float(2.0 * stdtr(float(n - 1), -abs(t)))


def paired_comparison(values: dict, base: dict, alpha: float, power: float) -> dict[str, float]:
    """Paired comparison over the seeds both rows have: std of the differences, t-test p-value, MDD."""
    seeds = sorted(set(values) & set(base), key=str)
    out = {"n_paired": len(seeds), "delta_std": math.nan, "p_value": math.nan, "mdd": math.nan}
    if len(seeds) < 2:
        return out
    a = np.array([values[s] for s in seeds])
    b = np.array([base[s] for s in seeds])
    diff = a - b
    out["delta_std"] = float(np.std(diff, ddof=1))
    out["mdd"] = minimal_detectable_difference(out["delta_std"], len(seeds), alpha, power)
    # Constant differences: ttest_rel answers p=0 (or NaN); the variance estimate is zero, so no test.
    if out["delta_std"] > 1e-12 * max(1.0, float(np.abs(diff).max())):
        out["p_value"] = paired_t_test(diff)
    return out


def seed_summary(values: dict) -> tuple[int, float, float]:
    """(n, mean, std with ddof=1) of ``values`` (seed -> finite value); NaN mean for none, NaN std for one."""
    n = len(values)
    arr = np.array(list(values.values()), dtype=float)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    return n, mean, std
