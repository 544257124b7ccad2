"""Length-sorted batch scoring. The code lives in :mod:`kdq.runtime.batching` (copied whole into
every exported folder); this module keeps the ``kdq.batching`` names working."""
from __future__ import annotations

from .runtime.batching import (SWAP_PERMUTATION, add_stats, combine_swap_tta, length_sorted_batches, pad_batch,
                               predict_logits)
from .runtime.tta import score_tta

__all__ = ["SWAP_PERMUTATION", "add_stats", "combine_swap_tta", "length_sorted_batches", "pad_batch", "predict_logits",
           "score_tta"]
