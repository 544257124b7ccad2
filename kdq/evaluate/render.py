"""Render evaluation rows once, keeping what the length budget cut from each (and, for swap TTA, the B/A order).

Each row is tokenized once (:func:`kdq.runtime.template.tokenize_row`) and assembled under the template's
``max_length`` (:func:`~kdq.runtime.template.assemble`) in the A/B order, and, when swap TTA will score it, in the
B/A order from the same tokens. The ids are those :func:`kdq.data.encode` gives (``swap=True`` for the B/A order),
the same rule the exported ``predict.py`` renders by.
"""

from __future__ import annotations

from ..runtime.template import PARTS, TemplateConfig, assemble, tokenize_row

LOST_COLUMNS = tuple(f"lost_{p}" for p in PARTS)  # text tokens each part lost: lost_prompt, lost_response_a, ...
SWAP_COLUMN = "input_ids_swap"


def tokenize_rows(rows, tokenizer, template: TemplateConfig, *, progress: bool = False, desc: str = "tokenize rows"):
    """One :class:`~kdq.runtime.template.RowTokens` per row of canonical arena ``rows`` (a ``datasets.Dataset``),
    tokenized once with no length budget (``template.add_bos`` decides the BOS)."""
    from tqdm.auto import tqdm

    parts = zip(rows["prompt"], rows["response_a"], rows["response_b"])
    return [
        tokenize_row(tokenizer, p, a, b, add_bos=template.add_bos)
        for p, a, b in tqdm(parts, total=len(rows), desc=desc, unit="row", disable=not progress, leave=False)
    ]


def assemble_rows(rows, tokens, template: TemplateConfig, *, both_orders: bool):
    """Add to canonical arena ``rows`` (a ``datasets.Dataset``) the columns of its tokenized rows ``tokens``
    (:func:`tokenize_rows`, one per row) rendered under ``template.max_length``:

    * ``input_ids`` (``list[int]``, at most ``template.max_length``) and ``length``: the A/B order;
    * :data:`LOST_COLUMNS` (``lost_prompt``, ``lost_response_a``, ``lost_response_b``: text tokens of that part
      the A/B order lost, dropped turns included) and ``dropped_turns`` (oldest turns left out):
      :class:`kdq.runtime.template.Truncation` of the A/B order;
    * with ``both_orders``: :data:`SWAP_COLUMN` (``input_ids_swap``), the B/A order's ids
      (:meth:`~kdq.runtime.template.RowTokens.swapped`, no second tokenizing).

    The B/A order's cut is not recorded: it drops the same turns and loses the same number of tokens in all,
    but the water-fill hands a remainder token to the first part in line, so each response's loss may differ
    from the A/B order's by one token (``tests/test_evaluate_diagnostics.py`` checks this). ``ValueError``
    naming the row's id when ``max_length`` leaves it no room for text.
    """
    if len(tokens) != len(rows):
        raise ValueError(f"assemble_rows: {len(tokens)} tokenized rows for {len(rows)} rows")
    out = {"input_ids": [], "length": [], **{c: [] for c in LOST_COLUMNS}, "dropped_turns": []}
    if both_orders:
        out[SWAP_COLUMN] = []
    for row_id, t in zip(rows["id"], tokens):
        try:
            ids, cut = assemble(t, template)
            if both_orders:
                out[SWAP_COLUMN].append(assemble(t.swapped(), template)[0])
        except ValueError as err:
            raise ValueError(f"row {row_id!r}: {err}") from None
        out["input_ids"].append(ids)
        out["length"].append(len(ids))
        for part, column in zip(PARTS, LOST_COLUMNS):
            out[column].append(cut.lost[part])
        out["dropped_turns"].append(cut.dropped_turns)
    keep = [c for c in rows.column_names if c not in out]
    rendered = rows.select_columns(keep)
    for column, values in out.items():
        rendered = rendered.add_column(column, values)
    return rendered


def render_rows(rows, tokenizer, template: TemplateConfig, *, both_orders: bool, progress: bool = False):
    """:func:`tokenize_rows` then :func:`assemble_rows`: the ids kdq.data.encode gives (``swap=True`` for the
    B/A order) and what the length budget cut, the rule the exported ``predict.py`` renders by."""
    tokens = tokenize_rows(rows, tokenizer, template, progress=progress)
    return assemble_rows(rows, tokens, template, both_orders=both_orders)
