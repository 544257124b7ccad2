"""Two diagnostics beside the headline metric: what the length budget cut, and how much the order of A and B matters.

**Truncation** (:func:`truncation_summary`): each row is rendered under the template's ``max_length``
(:func:`kdq.runtime.template.assemble`), which may cut text from the prompt and the two responses and drop the
oldest turns. The summary counts what was lost and scores the headline metric on the rows that were cut and on
those that were not, each with a bootstrap interval, and their difference.

**Position bias** (:func:`swap_disagreement`, :func:`position_bias`): a row scored in the A/B order and again with
A and B exchanged (swap TTA) should get the same answer once the swapped probabilities are mapped back to the
original classes. The *flip rate* is the share of such rows whose arg-max class changes; the *mean disagreement*
is the mean absolute difference of the two orders' probability that A wins (class 0 in every label scheme).

Pure numpy; the bootstrap draws come from :func:`kdq.evaluate.stats.bootstrap_means` (seeded, reproducible).
"""

from __future__ import annotations

import numpy as np

from ..runtime.template import PARTS
from .metrics import Headline
from .stats import Interval, bootstrap_means

FLIP_RATE_WARN = 0.2  # a swap flip rate above this is worth a sentence in the recommendation


# --------------------------------------------------------------------------- bootstrap of a subset mean
def mean_interval(values, *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95, groups=None) -> tuple:
    """The mean of ``values`` ``(n,)`` and its bootstrap percentile interval: ``(Interval, draws)``.

    The rows of ``values`` alone are resampled with replacement ``n_resamples`` times, whole ``groups`` at a time
    when given (``(n,)`` group ids: :func:`~kdq.evaluate.stats.bootstrap_means`, ``seed``); ``draws``
    ``(n_resamples,)`` are the resampled means. ``ValueError`` on an empty ``values``.
    """
    values = np.asarray(values, dtype=np.float64)
    draws = bootstrap_means({"mean": values}, n_resamples, seed, groups=groups)["mean"]
    return _percentile(float(values.mean()), draws, level), draws


def _percentile(point: float, draws: np.ndarray, level: float) -> Interval:
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return Interval(point, float(lo), float(hi), level)


def in_headline(iv: Interval | None, headline: Headline, *, difference: bool = False) -> Interval | None:
    """An interval of mean per-row **cost** (lower is better, :meth:`Headline.row_costs`) said in the
    ``headline`` metric: unchanged for log loss; for accuracy ``1 − cost``, or for a ``difference`` of costs
    its negative (a lower error is a higher accuracy)."""
    if iv is None or not headline.higher_is_better:
        return iv
    base = 0.0 if difference else 1.0  # 0.0 - x: never a negative zero
    return Interval(base - iv.value, base - iv.high, base - iv.low, iv.level)


def subset_comparison(
    costs, mask, headline: Headline, *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95, groups=None
) -> dict:
    """The ``headline`` metric on the rows where ``mask`` holds and on the others, and the difference.

    Args:
        costs: ``(N,)`` per-row costs of the headline (``headline.row_costs(probs, labels)``).
        mask: ``(N,)`` booleans: the subset (e.g. the rows that were cut).
        groups: ``None`` or ``(N,)`` group ids (:func:`kdq.data.group_ids`): each side resamples its rows' groups
            whole, as the paired intervals do.
    Returns:
        ``{"in": {...} | None, "out": {...} | None, "difference": {...} | None}``: each group as
        ``{"rows", "value", "low", "high", "level"}`` in the headline metric with its ``level`` interval
        (``None`` when the group is empty), and ``in − out`` in the headline metric with its interval
        (``None`` unless both groups have rows).
        The two groups are disjoint, so each is resampled on its own (seeds ``seed`` and ``seed + 1``) and
        the interval of the difference is that of the difference of their resampled means.
    """
    costs = np.asarray(costs, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    out, draws = {}, {}
    for k, (name, sel) in enumerate((("in", mask), ("out", ~mask))):
        if not sel.any():
            out[name] = None
            continue
        part = None if groups is None else np.asarray(groups)[sel]
        iv, draws[name] = mean_interval(costs[sel], n_resamples=n_resamples, seed=seed + k, level=level, groups=part)
        out[name] = {"rows": int(sel.sum()), **in_headline(iv, headline).to_dict()}
    out["difference"] = None
    if len(draws) == 2:
        point = float(costs[mask].mean() - costs[~mask].mean())
        iv = _percentile(point, draws["in"] - draws["out"], level)
        out["difference"] = in_headline(iv, headline, difference=True).to_dict()
    return out


# --------------------------------------------------------------------------- truncation
def cut_rows(lost, dropped_turns) -> np.ndarray:
    """``(N,)`` booleans: rows that lost any text (``lost`` ``(N, 3)``, tokens per part) or a turn."""
    return (np.asarray(lost).sum(axis=1) > 0) | (np.asarray(dropped_turns) > 0)


def truncation_summary(
    lost,
    dropped_turns,
    costs,
    headline: Headline,
    *,
    max_length: int,
    n_resamples: int = 2000,
    seed: int = 0,
    groups=None,
) -> dict:
    """What rendering under ``max_length`` cut from the rows, and the headline metric on cut vs uncut rows.

    Args:
        lost: ``(N, 3)`` text tokens each row lost per part, in :data:`kdq.runtime.template.PARTS` order
            (prompt, response_a, response_b), dropped turns included (:class:`kdq.runtime.template.Truncation`).
        dropped_turns: ``(N,)`` oldest turns each row lost whole.
        costs: ``(N,)`` per-row costs of the ``headline`` (log loss, or 1 − correct).
        groups: ``None`` or ``(N,)`` group ids: the intervals resample groups (:func:`subset_comparison`).
    Returns:
        A JSON-able dict: ``rows``, ``max_length``, ``rows_cut``, ``cut_share``, ``rows_with_dropped_turns``,
        ``dropped_turns``; ``parts``: per part ``rows_cut`` (rows that lost tokens of it), ``tokens_lost``
        (total), ``mean_tokens_lost`` (over every row) and ``mean_tokens_lost_when_cut`` (over its
        ``rows_cut``; ``None`` when none); ``headline``; and :func:`subset_comparison`'s groups as ``cut``,
        ``uncut`` and ``difference`` (cut − uncut, in the headline metric).
    """
    lost = np.asarray(lost, dtype=np.int64).reshape(-1, len(PARTS))
    dropped = np.asarray(dropped_turns, dtype=np.int64)
    cut = cut_rows(lost, dropped)
    parts = {}
    for j, part in enumerate(PARTS):
        hit = lost[:, j] > 0
        parts[part] = {
            "rows_cut": int(hit.sum()),
            "tokens_lost": int(lost[:, j].sum()),
            "mean_tokens_lost": float(lost[:, j].mean()),
            "mean_tokens_lost_when_cut": float(lost[hit, j].mean()) if hit.any() else None,
        }
    sides = subset_comparison(costs, cut, headline, n_resamples=n_resamples, seed=seed, groups=groups)
    return {
        "rows": int(len(cut)),
        "max_length": int(max_length),
        "rows_cut": int(cut.sum()),
        "cut_share": float(cut.mean()),
        "rows_with_dropped_turns": int((dropped > 0).sum()),
        "dropped_turns": int(dropped.sum()),
        "parts": parts,
        "headline": headline.key,
        "cut": sides["in"],
        "uncut": sides["out"],
        "difference": sides["difference"],
    }


# --------------------------------------------------------------------------- position bias
def swap_disagreement(probs, probs_swap) -> dict:
    """Flip rate and mean disagreement of a row's two orders.

    Args:
        probs: ``(M, C)`` probabilities of the rows in the A/B order.
        probs_swap: ``(M, C)`` the same rows scored with A and B exchanged, already mapped back to the original
            classes (``q[:, scheme.swap]``: its column 0 is "A wins" again).
    Returns:
        ``{"rows": M, "flips": k, "flip_rate": k / M, "mean_disagreement": mean |probs[:, 0] − probs_swap[:, 0]|}``
        (``flip_rate``: the share of rows whose arg-max class differs; ties go to the lower class, as
        :func:`kdq.evaluate.metrics.accuracy`). ``ValueError`` on shapes that differ or no rows.
    """
    p = np.asarray(probs, dtype=np.float64)
    q = np.asarray(probs_swap, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"swap_disagreement needs two (M, C) arrays of one shape with M > 0, got {p.shape}, {q.shape}")
    flips = int((p.argmax(axis=1) != q.argmax(axis=1)).sum())
    return {
        "rows": int(p.shape[0]),
        "flips": flips,
        "flip_rate": flips / p.shape[0],
        "mean_disagreement": float(np.abs(p[:, 0] - q[:, 0]).mean()),
    }


def position_bias(probs, probs_swap, tta_mode: str) -> dict | None:
    """:func:`swap_disagreement` over the rows scored both ways, with what they were.

    Args:
        probs: ``(N, C)`` the A/B-order probabilities of every row.
        probs_swap: ``(N, C)`` the B/A-order probabilities mapped back to the original classes, NaN on the rows
            not scored swapped (gated TTA scores only the least confident ones), or ``None``.
        tta_mode: ``"full"`` or ``"gated"`` (how the swapped rows were chosen).
    Returns:
        ``None`` when no row was scored both ways; else :func:`swap_disagreement`'s dict plus ``tta_mode`` and
        ``over``: ``"all rows"`` (full) or ``"the gated rows"`` (gated: the least confident rows only, so the
        rate is not that of every row).
    """
    if probs_swap is None:
        return None
    q = np.asarray(probs_swap, dtype=np.float64)
    both = np.isfinite(q).all(axis=1)
    if not both.any():
        return None
    out = swap_disagreement(np.asarray(probs)[both], q[both])
    out["tta_mode"] = tta_mode
    out["over"] = "all rows" if both.all() else "the gated rows"
    return out


# --------------------------------------------------------------------------- sentences for reports
def _group(g: dict | None, spec: str) -> str:
    return "–" if g is None else f"{format(g['value'], spec)} [{format(g['low'], spec)}, {format(g['high'], spec)}]"


def describe_truncation(summary: dict, headline: Headline) -> str:
    """One sentence of :func:`truncation_summary`: what was cut, and the headline on cut vs uncut rows."""
    n, k = summary["rows"], summary["rows_cut"]
    if k == 0:
        return f"no row cut at max_length {summary['max_length']}"
    parts = summary["parts"]
    lost = sum(p["tokens_lost"] for p in parts.values())
    who = ", ".join(f"{_PART_NAMES[p]} {parts[p]['rows_cut']}" for p in PARTS)
    out = (
        f"{k} of {n} rows cut ({summary['cut_share']:.0%}) at max_length {summary['max_length']} "
        f"(rows losing text: {who}; {lost} tokens lost; {_count(summary['dropped_turns'], 'turn')} dropped)"
    )
    cut, uncut = (_group(summary[k], headline.fmt) for k in ("cut", "uncut"))
    out += f"; {headline.title} on cut rows {cut}, on uncut rows {uncut}"
    if summary["difference"] is not None:
        out += f", cut − uncut {_group(summary['difference'], '+' + headline.fmt)}"
    return out


_PART_NAMES = {"prompt": "prompt", "response_a": "response A", "response_b": "response B"}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def describe_position_bias(bias: dict | None) -> str:
    """One sentence of :func:`position_bias` (``"not scored in both orders"`` for ``None``)."""
    if bias is None:
        return "not scored in both orders"
    over = "" if bias["over"] == "all rows" else "; gated TTA: the least confident rows only, not every row"
    return (
        f"swapping A and B flips {bias['flips']} of {bias['rows']} rows (flip rate {bias['flip_rate']:.2f}{over}), "
        f"mean |Δ P(A wins)| {bias['mean_disagreement']:.3f}"
    )
