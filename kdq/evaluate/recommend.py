"""Which variant to ship: rank variants on the eval rows, ties to the faster and smaller one."""

from __future__ import annotations

from .diagnostics import FLIP_RATE_WARN, describe_position_bias
from .metrics import headline_of, row_log_losses
from .stats import paired_intervals


def recommend(metrics: dict, rows, tta_mode: str, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Rank variants for export on ``rows`` (the eval rows) with ``tta_mode``'s probabilities.

    Variants rank by the rows' label scheme's headline metric (``metric``: log loss for LMSYS,
    accuracy for WSDM). Only variants that fit the budget compete (all of them when none fits).
    A variant whose Δ headline to the best one has a 95% paired-bootstrap interval (rows sharing a prompt or a
    response pair drawn together) that reaches 0
    (:func:`kdq.evaluate.stats.paired_intervals`, the same intervals as the report) is tied
    with it; tied variants go first, faster (projected T4 hours, else measured rows/s) then
    smaller, and the rest follow by the headline.
    Returns ``{"ranking": [...], "tied": [...], "best": name, "tta": mode, "rows": N, "metric": key,
    "log_loss": {...}, "notes": [...]}`` (and ``"accuracy": {...}`` when accuracy ranks). ``notes``: a sentence
    for each ranked variant whose swap flip rate is above :data:`~kdq.evaluate.diagnostics.FLIP_RATE_WARN`
    (0.2); it never changes the ranking.
    """
    from ..data import group_ids, labels_of, load_arena, scheme_of_rows

    rows = load_arena(rows)
    labels = labels_of(rows)
    headline = headline_of(scheme_of_rows(rows))
    probs = {
        n: (m.probs_tta if tta_mode != "none" and m.probs_tta is not None else m.probs) for n, m in metrics.items()
    }
    losses = {n: headline.row_costs(p, labels) for n, p in probs.items()}  # lower is better
    fits = [n for n, m in metrics.items() if (m.budget or {}).get("fits")]
    pool = fits or list(metrics)
    best = min(pool, key=lambda n: losses[n].mean())
    deltas = paired_intervals(
        {n: losses[n] for n in pool}, best, n_resamples=n_resamples, seed=seed, groups=group_ids(rows)
    )["delta"]
    tied = [n for n in pool if n == best or deltas[n].low <= 0]

    def cost(n):
        m = metrics[n]
        hours = (m.budget or {}).get("projected_hours")
        return (hours if hours is not None else 1.0 / max(m.rows_per_s, 1e-9), m.size_bytes)

    tied.sort(key=cost)
    rest = sorted((n for n in pool if n not in tied), key=lambda n: losses[n].mean())
    out = {
        "ranking": tied + rest,
        "tied": tied,
        "best": best,
        "tta": tta_mode,
        "rows": int(len(labels)),
        "fits_budget": bool(fits),
        "metric": headline.key,
        "log_loss": {n: float(row_log_losses(probs[n], labels).mean()) for n in pool},
    }
    if headline.key != "log_loss":
        out[headline.key] = {n: headline.cost(float(losses[n].mean())) for n in pool}  # cost is its own inverse
    out["notes"] = position_notes({n: metrics[n] for n in out["ranking"]})
    return out


def position_notes(metrics: dict) -> list:
    """A sentence for each variant whose swap flip rate (``Metrics.position_bias``) over every row is above
    :data:`~kdq.evaluate.diagnostics.FLIP_RATE_WARN`: its answer depends on the order of A and B. A rate over the
    gated rows only (the least confident ones, where flips are likeliest) is not held to that bar."""
    notes = []
    for name, m in metrics.items():
        bias = m.position_bias
        if bias is not None and bias["over"] == "all rows" and bias["flip_rate"] > FLIP_RATE_WARN:
            notes.append(
                f"{name}: {describe_position_bias(bias)}, above {FLIP_RATE_WARN:g}: its answer depends on which "
                "response comes first; keep swap TTA (tta=full) in predict.py, or train with A/B-swap augmentation "
                "(training.swap_augment)."
            )
    return notes
