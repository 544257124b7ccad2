"""Render evaluation rows once, keeping what the length budget cut from each (and, for swap TTA, the B/A order).

Each row is tokenized once (:func:`kdq.runtime.template.tokenize_row`) and assembled under the template's
``max_length`` (:func:`~kdq.runtime.template.assemble`) in the A/B order, and, when swap TTA will score it, in the
B/A order from the same tokens. The ids are those :func:`kdq.data.encode` gives (``swap=True`` for the B/A order),
the same rule the exported ``predict.py`` renders by.
"""

from __future__ import annotations

import dataclasses

from ..runtime.template import PARTS, RowTokens, TemplateConfig, assemble, tokenize_row

LOST_COLUMNS = tuple(f"lost_{p}" for p in PARTS)  # text tokens each part lost: lost_prompt, lost_response_a, ...
SWAP_COLUMN = "input_ids_swap"


def swapped_tokens(tokens: RowTokens) -> RowTokens:
    """The row with response A and B exchanged, from its tokens (no tokenizing): every turn's text segments
    ``(prompt, a, b)`` become ``(prompt, b, a)``; markers stay in place. Equal to
    ``tokenize_row(tokenizer, prompt, response_b, response_a)``."""
    return dataclasses.replace(tokens, segments=tuple((p, b, a) for p, a, b in tokens.segments))


def render_rows(rows, tokenizer, template: TemplateConfig, *, both_orders: bool, desc: str = "render rows"):
    """Add to canonical arena ``rows`` (a ``datasets.Dataset``) the columns

    * ``input_ids`` (``list[int]``, at most ``template.max_length``) and ``length``: the A/B order;
    * :data:`LOST_COLUMNS` (``lost_prompt``, ``lost_response_a``, ``lost_response_b``: text tokens of that part
      the A/B order lost, dropped turns included) and ``dropped_turns`` (oldest turns left out):
      :class:`kdq.runtime.template.Truncation` of the A/B order;
    * with ``both_orders``: :data:`SWAP_COLUMN` (``input_ids_swap``), the B/A order's ids.

    The B/A order's cut is not recorded: it drops the same turns and loses the same number of tokens in all,
    but the water-fill hands a remainder token to the first part in line, so each response's loss may differ
    from the A/B order's by one token (``tests/test_evaluate_diagnostics.py`` checks this).
    """

    def _render(batch):
        out = {"input_ids": [], "length": [], **{c: [] for c in LOST_COLUMNS}, "dropped_turns": []}
        if both_orders:
            out[SWAP_COLUMN] = []
        for p, a, b in zip(batch["prompt"], batch["response_a"], batch["response_b"]):
            tokens = tokenize_row(tokenizer, p, a, b, add_bos=template.add_bos)
            ids, cut = assemble(tokens, template)
            out["input_ids"].append(ids)
            out["length"].append(len(ids))
            for part, column in zip(PARTS, LOST_COLUMNS):
                out[column].append(cut.lost[part])
            out["dropped_turns"].append(cut.dropped_turns)
            if both_orders:
                out[SWAP_COLUMN].append(assemble(swapped_tokens(tokens), template)[0])
        return out

    return rows.map(_render, batched=True, batch_size=256, desc=desc)
