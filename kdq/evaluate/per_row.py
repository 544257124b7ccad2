"""The per-row table of an evaluation: each variant's probabilities and what its rendering cut, row by row.

:func:`kdq.compare` writes it as ``rows.csv`` (:data:`kdq.runtime.constants.EVAL_ROWS_FILE`) beside its report;
:func:`write_row_table` writes it for any :class:`~kdq.evaluate.Metrics` on their rows.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..runtime.constants import label_scheme
from ..utils.atomic import atomic_write
from .render import LOST_COLUMNS


def row_table_header(scheme) -> list:
    """The columns of :func:`write_row_table` for a label scheme (its name or ``LabelScheme``)."""
    labels = label_scheme(scheme).labels
    probs = [f"{kind}_{c}" for kind in ("p", "p_tta", "p_swap") for c in labels]
    return ["variant", "id", "label", *probs, "length", "cut", *LOST_COLUMNS, "dropped_turns"]


def _cell(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(float(x)) if isinstance(x, float) else str(x)


def _variant_lines(name: str, m, ids: list, labels: list, names: tuple) -> list:
    """One list of cells per row of one variant's :class:`~kdq.evaluate.Metrics`."""
    n_classes = len(names)
    empty = [None] * n_classes
    cut = m.cut
    lines = []
    for i, row_id in enumerate(ids):
        probs = [float(p) for p in m.probs[i]]
        tta = [float(p) for p in m.probs_tta[i]] if m.probs_tta is not None else empty
        swap = [float(p) for p in m.probs_swap[i]] if m.probs_swap is not None else empty
        lost = [int(v) for v in m.lost[i]] if m.lost is not None else [None] * len(LOST_COLUMNS)
        dropped = int(m.dropped_turns[i]) if m.dropped_turns is not None else None
        cut_cell = int(bool(cut[i])) if cut is not None else None
        cells = [name, row_id, names[labels[i]], *probs, *tta, *swap, int(m.lengths[i]), cut_cell, *lost, dropped]
        lines.append([_cell(c) for c in cells])
    return lines


def write_row_table(path, metrics: dict, rows) -> Path:
    """Write one CSV line per (variant, row), variants in ``metrics`` order, rows in row order.

    Columns (:func:`row_table_header`): ``variant``, ``id``, ``label`` (the class name); ``p_<class>`` the A/B
    order's probabilities, ``p_tta_<class>`` the swap-TTA prediction (empty without TTA), ``p_swap_<class>`` the
    B/A order mapped back to the original classes (empty on rows not scored swapped); ``length`` (tokens);
    ``cut`` (1 when the row lost text or a turn to ``max_length``, else 0), ``lost_prompt``,
    ``lost_response_a``, ``lost_response_b`` (text tokens lost), ``dropped_turns`` (empty on Metrics that
    did not record them). Probabilities are written in full (``repr``).

    Args:
        path: the CSV file (written whole or not at all: :func:`kdq.utils.atomic.atomic_write`).
        metrics: name -> :class:`~kdq.evaluate.Metrics`, all scored on ``rows`` (checked by row count).
        rows: the canonical rows (:func:`kdq.load_arena`) they were scored on.
    Returns:
        ``path``. ``ValueError`` naming the variant whose row count differs from the rows'.
    """
    ids, labels = list(rows["id"]), list(rows["label"])
    schemes = {m.scheme for m in metrics.values()}
    if len(schemes) != 1:
        raise ValueError(f"write_row_table: the variants are of different label schemes {sorted(schemes)}")
    names = label_scheme(next(iter(schemes))).labels
    for name, m in metrics.items():
        if m.n_rows != len(ids):
            raise ValueError(
                f"write_row_table: variant {name!r} was scored on {m.n_rows} rows, these are {len(ids)}; "
                "pass the rows it was scored on."
            )
    text = io.StringIO(newline="")
    out = csv.writer(text)
    out.writerow(row_table_header(next(iter(schemes))))
    for name, m in metrics.items():
        out.writerows(_variant_lines(name, m, ids, labels, names))
    return atomic_write(path, text.getvalue())
