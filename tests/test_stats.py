"""Paired bootstrap intervals: closed-form checks and the pairing itself."""

import numpy as np
import pytest

from kdq.evaluate.metrics import log_loss, row_log_losses
from kdq.evaluate.stats import bootstrap_means, gap_closed_value, paired_intervals


def test_row_log_losses_average_to_the_competition_metric():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=50)
    y = rng.integers(0, 3, size=50)
    assert row_log_losses(p, y).mean() == pytest.approx(log_loss(p, y), abs=1e-12)


def test_gap_closed_value_by_hand_and_undefined():
    assert gap_closed_value(0.9, 1.1, 1.0) == pytest.approx(0.5)
    assert np.isnan(gap_closed_value(1.0, 1.0, 0.9))  # no gap: undefined, not a division by zero
    arr = gap_closed_value(np.array([0.9, 1.0]), np.array([1.1, 1.0]), np.array([0.95, 0.9]))
    assert arr[0] == pytest.approx(0.75) and np.isnan(arr[1])


def test_pairing_cancels_shared_row_difficulty():
    # variant b is exactly a + 0.01 on every row: paired, the difference has no spread at all,
    # although each mean alone varies a lot across resamples (hard and easy rows).
    rng = np.random.default_rng(1)
    a = rng.exponential(1.0, size=200)
    b = a + 0.01
    iv = paired_intervals({"a": a, "b": b}, "a", n_resamples=500, seed=0)
    d = iv["delta"]["b"]
    assert d.value == pytest.approx(0.01) and d.low == pytest.approx(0.01) and d.high == pytest.approx(0.01)
    assert d.excludes_zero
    means = bootstrap_means({"a": a, "b": b}, n_resamples=500, seed=0)
    assert means["a"].std() > 0.03  # unpaired, the same 0.01 would drown in this


def test_intervals_reproduce_with_the_seed_and_cover_noise():
    rng = np.random.default_rng(2)
    t = rng.exponential(0.9, size=300)
    base = t + rng.normal(0.2, 0.3, size=300)
    same = base + rng.normal(0.0, 0.3, size=300)  # a "student" no better than the baseline
    rows = {"teacher": t, "hard": base, "kd": same}
    one = paired_intervals(rows, "teacher", baseline="hard", student="kd", n_resamples=400, seed=7)
    two = paired_intervals(rows, "teacher", baseline="hard", student="kd", n_resamples=400, seed=7)
    assert one["gap_closed"] == two["gap_closed"]
    g = one["gap_closed"]
    assert g.low < 0 < g.high or abs(g.value) < 0.3  # no measurable effect is reported as such
    assert not one["student_vs_baseline"].excludes_zero or abs(one["student_vs_baseline"].value) > 0.05
    with pytest.raises(ValueError, match="same rows"):
        paired_intervals({"a": t, "b": t[:10]}, "a")


def test_group_bootstrap_on_copied_rows_is_as_wide_as_the_rows_once():
    # every row copied 4 times: as independent rows the copies halve the interval (sqrt(4)); resampling
    # the groups of copies gives back the interval of the rows taken once.
    rng = np.random.default_rng(3)
    a = rng.exponential(1.0, size=150)
    b = a + rng.normal(0.05, 0.4, size=150)
    once = paired_intervals({"a": a, "b": b}, "a", n_resamples=1000, seed=5)
    copied = {k: np.repeat(v, 4) for k, v in (("a", a), ("b", b))}
    groups = np.repeat(np.arange(150), 4)
    as_rows = paired_intervals(copied, "a", n_resamples=1000, seed=5)
    as_groups = paired_intervals(copied, "a", n_resamples=1000, seed=5, groups=groups.tolist())

    def width(iv):
        return iv["delta"]["b"].high - iv["delta"]["b"].low

    assert as_rows["delta"]["b"].value == pytest.approx(as_groups["delta"]["b"].value)
    assert width(as_rows) < 0.6 * width(as_groups)  # about half: copies counted as evidence
    assert width(as_groups) == pytest.approx(width(once), rel=1e-9)  # the same draws, group by group
    assert (as_rows["unit"], as_rows["n_units"]) == ("rows", 600)
    assert (as_groups["unit"], as_groups["n_units"]) == ("groups", 150)


def test_group_bootstrap_weighs_groups_by_their_rows():
    # one group of 3 rows (loss 1) and one of 1 row (loss 0): the draws are 0, 3/4 or 1.
    losses = {"x": np.array([1.0, 1.0, 1.0, 0.0])}
    draws = bootstrap_means(losses, n_resamples=400, seed=0, groups=["g", "g", "g", "h"])["x"]
    assert set(np.round(draws, 12)) == {0.0, 0.75, 1.0}
    assert np.mean(draws == 0.75) == pytest.approx(0.5, abs=0.08)


def test_singleton_groups_reproduce_the_row_bootstrap_exactly():
    rng = np.random.default_rng(4)
    rows = {"t": rng.exponential(0.9, size=80), "s": rng.exponential(1.0, size=80), "h": rng.exponential(1.1, size=80)}
    kw = dict(baseline="h", student="s", n_resamples=300, seed=11)
    plain = paired_intervals(rows, "t", **kw)
    single = paired_intervals(rows, "t", groups=[f"g{i}" for i in reversed(range(80))], **kw)
    assert plain == single and plain["unit"] == "rows" and plain["n_units"] == 80
    for k, v in bootstrap_means(rows, 300, 11).items():
        np.testing.assert_array_equal(v, bootstrap_means(rows, 300, 11, groups=list(range(80)))[k])
    with pytest.raises(ValueError, match="groups has 3 ids for 80 rows"):
        paired_intervals(rows, "t", groups=[0, 1, 2])
