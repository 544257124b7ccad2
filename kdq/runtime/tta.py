"""Swap test-time augmentation: full, gated or none, on any scoring function.

Full TTA scores the original and the A/B-swapped rows in **one** call of ``score``, so with
length-sorted batching an original row and a swapped row can share a batch. kdq's evaluation,
its teacher cache, the export probe and ``predict.py`` all go through :func:`score_tta`, so
the batches they build are identical for the same batch size. That matters for bitsandbytes
LLM.int8, which picks its outlier columns over the whole batch (padding included): two calls
with different batch compositions give different probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .batching import combine_swap_tta
from .constants import DEFAULT_TTA_FRACTION, tta_mode


def gated_count(n: int, fraction: float) -> int:
    """How many of ``n`` rows gated TTA swap-scores: ``ceil(fraction * n)``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"tta_fraction must be in [0, 1], got {fraction!r}")
    return min(n, math.ceil(fraction * n - 1e-9))


def gate_rows(logits, fraction: float) -> list:
    """Indices (ascending) of the :func:`gated_count` rows whose top probability is lowest.

    Ties break by row index, so the choice is deterministic.
    """
    n = int(logits.shape[0])
    k = gated_count(n, fraction)
    conf = torch.softmax(logits.double(), -1).max(-1).values.tolist()
    return sorted(sorted(range(n), key=lambda i: (conf[i], i))[:k])


@dataclass
class TTAResult:
    """``log_probs`` ``(N, C)``: the prediction (log of the averaged probabilities where a row was
    swap-scored, log-softmax elsewhere); ``logits`` ``(N, C)``: the plain, un-swapped pass;
    ``swapped_rows``: the rows that were also scored swapped; ``sequences_scored``: forward rows."""

    log_probs: torch.Tensor
    logits: torch.Tensor
    swapped_rows: list
    sequences_scored: int


def score_tta(score, sequences, swapped, *, mode="full", fraction: float = DEFAULT_TTA_FRACTION) -> TTAResult:
    """Score ``sequences`` with swap TTA.

    Args:
        score: ``score(list_of_token_lists) -> (M, C) fp32 logits`` in the given order, e.g.
            ``lambda s: predict_logits(model, s, pad_id, batch_size)``.
        sequences: the rows' token ids.
        swapped: the A/B-swapped rows' token ids (a list), or a function ``f(indices) -> list``
            that renders only the rows asked for (gated TTA needs a few).
        mode: ``"none"``, ``"full"`` (original and swapped rows in one call of ``score``) or
            ``"gated"`` (one pass, then only the ``fraction`` least confident rows swapped).
    """
    mode = tta_mode(mode)
    n = len(sequences)

    def swapped_of(idx):
        return swapped(idx) if callable(swapped) else [swapped[i] for i in idx]

    if mode == "full":
        both = score(list(sequences) + list(swapped_of(list(range(n)))))
        logits, sw = both[:n], both[n:]
        return TTAResult(combine_swap_tta(logits, sw), logits, list(range(n)), 2 * n)
    logits = score(list(sequences))
    out = torch.log_softmax(logits.float(), -1)
    if mode == "none" or n == 0:
        return TTAResult(out, logits, [], n)
    idx = gate_rows(logits, fraction)
    if idx:
        sw = score(swapped_of(idx))
        out = out.clone()
        out[idx] = combine_swap_tta(logits[idx], sw)
    return TTAResult(out, logits, idx, n + len(idx))
