"""Paired bootstrap intervals for log-loss differences between variants scored on the same rows.

Every variant is scored on the same held-out rows, so the honest question is about the
*paired* difference: resample the rows (with replacement) once per bootstrap draw, and
recompute every variant's mean log loss on that same resample. The 2.5 and 97.5
percentiles of a difference over the draws are its 95% interval (Efron & Tibshirani 1993,
the percentile interval). A difference whose interval contains 0 is "no measurable
difference" at these rows. Pure numpy; ``seed`` makes the intervals reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAP_EPS = 1e-6  # a teacher-vs-baseline gap below this is noise: "gap closed" is undefined


@dataclass(frozen=True)
class Interval:
    """A point estimate on the observed rows and its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def fmt(self, spec: str = "+.4f") -> str:
        return f"{format(self.value, spec)} [{format(self.low, spec)}, {format(self.high, spec)}]"

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level}


def gap_closed_value(ll_teacher, ll_baseline, ll_student):
    """``(LL_baseline − LL_student) / (LL_baseline − LL_teacher)``; NaN where the gap is ≤ :data:`GAP_EPS`.

    Works elementwise on arrays (one value per bootstrap draw) and on floats.
    """
    t, b, s = (np.asarray(x, dtype=np.float64) for x in (ll_teacher, ll_baseline, ll_student))
    gap = b - t
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(gap > GAP_EPS, (b - s) / np.where(gap > GAP_EPS, gap, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def bootstrap_means(row_losses: dict, n_resamples: int = 2000, seed: int = 0) -> dict:
    """name -> ``(n_resamples,)`` mean log loss on shared row resamples.

    Args:
        row_losses: name -> ``(N,)`` per-row log losses, all on the same ``N`` rows in the same order.
    """
    lengths = {k: len(v) for k, v in row_losses.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"paired bootstrap needs every variant scored on the same rows; row counts differ: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0 or n_resamples < 1:
        raise ValueError(f"paired bootstrap needs rows and resamples, got {n} rows and {n_resamples} resamples")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    return {k: np.asarray(v, dtype=np.float64)[idx].mean(axis=1) for k, v in row_losses.items()}


def _interval(point: float, draws: np.ndarray, level: float = 0.95) -> Interval:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0 or not np.isfinite(point):
        return Interval(float(point), float("nan"), float("nan"), level)
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(point), float(lo), float(hi), level)


def paired_intervals(
    row_losses: dict,
    reference: str,
    *,
    baseline: str | None = None,
    student: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """95% paired-bootstrap intervals for each variant's Δ log loss vs ``reference`` and for "gap closed".

    Returns ``{"delta": {name: Interval}, "gap_closed": Interval | None,
    "student_vs_baseline": Interval | None, "gap_undefined_draws": int}``.
    """
    means = bootstrap_means(row_losses, n_resamples, seed)
    obs = {k: float(np.mean(v)) for k, v in row_losses.items()}
    out = {
        "delta": {k: _interval(obs[k] - obs[reference], means[k] - means[reference], level) for k in row_losses},
        "gap_closed": None,
        "student_vs_baseline": None,
        "gap_undefined_draws": 0,
        "n_resamples": n_resamples,
        "seed": seed,
    }
    if baseline and student:
        point = gap_closed_value(obs[reference], obs[baseline], obs[student])
        draws = gap_closed_value(means[reference], means[baseline], means[student])
        out["gap_closed"] = _interval(point, draws, level)
        out["gap_undefined_draws"] = int(np.isnan(draws).sum())
        out["student_vs_baseline"] = _interval(obs[student] - obs[baseline], means[student] - means[baseline], level)
    return out
