"""Arena row → token ids. The code lives in :mod:`kdq.runtime.template` (copied whole into every
exported folder); this module keeps the ``kdq.template`` names working."""
from __future__ import annotations

from .runtime.template import LABELS, PARTS, SWAP_PERMUTATION, TemplateConfig, encode_row, parse_turns, water_fill

__all__ = ["LABELS", "PARTS", "SWAP_PERMUTATION", "TemplateConfig", "encode_row", "parse_turns", "water_fill"]
