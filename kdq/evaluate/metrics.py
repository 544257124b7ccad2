"""Scoring functions on probability arrays (numpy only).

All take ``probs``: ``(N, C)`` float probabilities (rows need not sum to one) and
``labels``: ``(N,)`` ints in ``[0, C)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

COMPETITION_EPS = 1e-15


def _check(probs, labels):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (N, C) array, got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape ({probs.shape[0]},) to match probs, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= probs.shape[1]))
    if bad.size:
        raise ValueError(
            f"label {labels[bad[0]]} at row {bad[0]} is outside [0, {probs.shape[1]}); "
            "unlabelled rows (-1) cannot be scored."
        )
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1))
    if bad.size:
        raise ValueError(f"probs row {bad[0]} is {probs[bad[0]].tolist()}: probabilities must be finite and >= 0.")
    return probs, labels.astype(np.int64)


def row_log_losses(probs, labels, eps: float = COMPETITION_EPS) -> np.ndarray:
    """``-log p[label]`` per row, ``(N,)``, clipped and renormalized as the competition does (see :func:`log_loss`)."""
    probs, labels = _check(probs, labels)
    p = np.clip(probs, eps, 1 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(labels)), labels])


def log_loss(probs, labels, eps: float = COMPETITION_EPS) -> float:
    """Multiclass log loss as the competition computes it.

    Each probability is clipped to ``[eps, 1 - eps]`` and every row is renormalized to sum
    to one before taking ``-mean(log p[label])``. Clipping bounds the cost of one confident
    mistake at ``-log(1e-15) ~ 34.5``.
    """
    return float(np.mean(row_log_losses(probs, labels, eps)))


def accuracy(probs, labels) -> float:
    """Fraction of rows whose arg-max class is the label (ties go to the lowest index)."""
    probs, labels = _check(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error of the top class, ``n_bins`` equal-width confidence bins.

    ``sum_b |B|/N * |accuracy(B) - mean confidence(B)|``, with bin ``b`` holding confidences
    in ``[b/n, (b+1)/n)`` (the last bin includes 1.0). Rows are renormalized first.
    """
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"ece n_bins must be an int >= 1, got {n_bins!r}")
    probs, labels = _check(probs, labels)
    p = probs / np.maximum(probs.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    idx = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in np.unique(idx):
        sel = idx == b
        total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total / len(labels))


def softmax(logits) -> np.ndarray:
    """Row softmax of ``(N, C)`` logits (or log-probabilities), in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def row_errors(probs, labels) -> np.ndarray:
    """``1.0`` where the arg-max class is not the label, else ``0.0``, per row ``(N,)``: the mean is
    ``1 − accuracy`` (ties go to the lowest index, as in :func:`accuracy`)."""
    probs, labels = _check(probs, labels)
    return (probs.argmax(axis=1) != labels).astype(np.float64)


@dataclass(frozen=True)
class Headline:
    """A label scheme's headline metric (:attr:`kdq.runtime.constants.LabelScheme.headline`): what a
    report ranks variants by.

    ``key``: the :class:`~kdq.evaluate.Metrics` field (``key + "_tta"``: with swap TTA). Ranking and the
    paired bootstrap work on per-row **costs**, lower is better (:meth:`row_costs`: log loss per row,
    or 1 − correct per row), whose mean is :meth:`cost` of the metric's value.
    """

    key: str
    title: str
    higher_is_better: bool
    fmt: str
    row_cost: Callable = field(repr=False, compare=False)

    def row_costs(self, probs, labels) -> np.ndarray:
        return self.row_cost(probs, labels)

    def cost(self, value: float) -> float:
        """The metric's value as a lower-is-better cost (the mean of :meth:`row_costs`)."""
        return 1.0 - value if self.higher_is_better else value


HEADLINES = {
    "log_loss": Headline("log_loss", "log loss", False, ".4f", row_log_losses),
    "accuracy": Headline("accuracy", "accuracy", True, ".3f", row_errors),
}


def headline_of(scheme) -> Headline:
    """The :class:`Headline` of a label scheme (a ``LabelScheme`` or its name)."""
    from ..runtime.constants import label_scheme

    return HEADLINES[label_scheme(scheme).headline]
