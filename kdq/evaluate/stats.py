"""Paired bootstrap intervals for log-loss differences between variants scored on the same rows.

Every variant is scored on the same held-out rows, so the honest question is about the
*paired* difference: resample the rows (with replacement) once per bootstrap draw, and
recompute every variant's mean log loss on that same resample. The 2.5 and 97.5
percentiles of a difference over the draws are its 95% interval (Efron & Tibshirani 1993,
the percentile interval). A difference whose interval contains 0 is "no measurable
difference" at these rows. Pure numpy; ``seed`` makes the intervals reproducible.

Rows that repeat a prompt or a response pair (:func:`kdq.data.group_ids`) are not independent: resampling
them one by one treats copies as fresh evidence and gives intervals too narrow. With ``groups``, whole
groups are resampled instead (the cluster bootstrap: draw ``G`` groups with replacement, the mean over
every row of the drawn groups; Davison & Hinkley 1997, section 3.8; Field & Welsh 2007).
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


def bootstrap_means(row_losses: dict, n_resamples: int = 2000, seed: int = 0, groups=None) -> dict:
    """name -> ``(n_resamples,)`` mean log loss on shared resamples.

    Args:
        row_losses: name -> ``(N,)`` per-row log losses, all on the same ``N`` rows in the same order.
        groups: ``None``, or ``(N,)`` group ids (any sortable values, e.g. :func:`kdq.data.group_ids`): each
            draw takes ``G`` groups with replacement and averages every row of the drawn groups (a group
            weighs by its rows). When every group has one row the rows are resampled exactly as with
            ``None`` (the same draws for the same ``seed``).
    Raises:
        ValueError: variants on different row counts, no rows or resamples, ``groups`` of another length.
    """
    n, codes = _units(row_losses, n_resamples, groups)
    rng = np.random.default_rng(seed)
    if codes is None:
        idx = rng.integers(0, n, size=(n_resamples, n))
        return {k: np.asarray(v, dtype=np.float64)[idx].mean(axis=1) for k, v in row_losses.items()}
    n_groups = int(codes.max()) + 1
    draw = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    rows_drawn = np.bincount(codes, minlength=n_groups).astype(np.float64)[draw].sum(axis=1)
    return {
        k: np.bincount(codes, weights=np.asarray(v, dtype=np.float64), minlength=n_groups)[draw].sum(axis=1)
        / rows_drawn
        for k, v in row_losses.items()
    }


def _units(row_losses: dict, n_resamples: int, groups) -> tuple:
    """``(N, codes)``: the row count, and ``groups`` as ``0..G-1`` codes, or ``None`` for the row bootstrap
    (no groups, or every group one row)."""
    lengths = {k: len(v) for k, v in row_losses.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"paired bootstrap needs every variant scored on the same rows; row counts differ: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0 or n_resamples < 1:
        raise ValueError(f"paired bootstrap needs rows and resamples, got {n} rows and {n_resamples} resamples")
    if groups is None:
        return n, None
    if len(groups) != n:
        raise ValueError(
            f"paired bootstrap: groups has {len(groups)} ids for {n} rows; give one group id per row "
            "(kdq.data.group_ids(rows))."
        )
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes = codes.reshape(-1)
    return n, (None if int(codes.max()) + 1 == n else codes)


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
    groups=None,
) -> dict:
    """95% paired-bootstrap intervals for each variant's Δ log loss vs ``reference`` and for "gap closed".

    ``groups``: ``None`` or one group id per row (:func:`bootstrap_means`): whole groups are resampled.

    Returns ``{"delta": {name: Interval}, "gap_closed": Interval | None,
    "student_vs_baseline": Interval | None, "gap_undefined_draws": int, "n_resamples": int, "seed": int,
    "unit": "rows" | "groups", "n_units": int}``: ``unit`` is what was resampled (``"rows"`` also when every
    group has one row), ``n_units`` how many there are.
    """
    n, codes = _units(row_losses, n_resamples, groups)
    means = bootstrap_means(row_losses, n_resamples, seed, groups)
    obs = {k: float(np.mean(v)) for k, v in row_losses.items()}
    out = {
        "delta": {k: _interval(obs[k] - obs[reference], means[k] - means[reference], level) for k in row_losses},
        "gap_closed": None,
        "student_vs_baseline": None,
        "gap_undefined_draws": 0,
        "n_resamples": n_resamples,
        "seed": seed,
        "unit": "rows" if codes is None else "groups",
        "n_units": n if codes is None else int(codes.max()) + 1,
    }
    if baseline and student:
        point = gap_closed_value(obs[reference], obs[baseline], obs[student])
        draws = gap_closed_value(means[reference], means[baseline], means[student])
        out["gap_closed"] = _interval(point, draws, level)
        out["gap_undefined_draws"] = int(np.isnan(draws).sum())
        out["student_vs_baseline"] = _interval(obs[student] - obs[baseline], means[student] - means[baseline], level)
    return out
