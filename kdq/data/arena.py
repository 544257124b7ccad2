"""LMSYS arena data: load, validate, swap, encode.

The canonical in-memory form is a ``datasets.Dataset`` with columns

* ``id``: ``str`` (the competition's integer ids are kept as their decimal text);
* ``prompt``, ``response_a``, ``response_b``: ``list[str]``, one entry per turn;
* ``label``: ``int`` in {0: winner_model_a, 1: winner_model_b, 2: winner_tie}, or ``-1``
  when the winner columns are absent (test time).

:func:`encode` adds ``input_ids`` and ``length`` using :mod:`kdq.runtime.template`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

from ..runtime.constants import LABELS, SWAP_PERMUTATION
from ..runtime.template import PARTS, TemplateConfig, encode_row, parse_turns

TEXT_COLUMNS = PARTS
REQUIRED = ("id",) + TEXT_COLUMNS


def _read_table(source) -> datasets.Dataset:
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, dict):  # columns → lists, as kdq.data.probe.make_arena_rows returns
        return datasets.Dataset.from_dict(source)
    if isinstance(source, (list, tuple)):  # row dicts, e.g. [{"id": "1", "prompt": ..., ...}, ...]
        return datasets.Dataset.from_dict(_columns_of(source))
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas DataFrame
        return datasets.Dataset.from_pandas(source, preserve_index=False)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ValueError(
                f"arena data file {str(path)!r} does not exist; pass a CSV or parquet path, "
                "a pandas DataFrame or a datasets.Dataset."
            )
        suffix = path.suffix.lower()
        if suffix == ".csv":
            import pandas as pd  # datasets' CSV reader infers types per chunk; pandas keeps ids stable

            return datasets.Dataset.from_pandas(
                pd.read_csv(path, dtype={"id": str}, keep_default_na=False), preserve_index=False
            )
        if suffix in (".parquet", ".pq"):
            return datasets.Dataset.from_parquet(str(path))
        raise ValueError(f"arena data file {str(path)!r}: unsupported suffix {suffix!r}; use .csv or .parquet.")
    raise ValueError(
        f"arena data: cannot read a {type(source).__name__}; pass a CSV or parquet path, "
        "a pandas DataFrame, a list of row dicts, a dict of columns or a datasets.Dataset."
    )


def _columns_of(rows) -> dict:
    """A list of row dicts as a dict of columns; every row must have the same keys."""
    if not rows:
        raise ValueError(
            "arena data is an empty list; pass at least one row dict with id, prompt, response_a and response_b."
        )
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(
                f"arena data row {i}: expected a dict of column: value, got {type(row).__name__}; "
                "a list must hold one dict per row, e.g. {'id': '1', 'prompt': '[\"...\"]', ...}."
            )
    keys = list(dict.fromkeys(k for row in rows for k in row))
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(
                f"arena data row {i} (id {row.get('id')!r}) lacks {missing}, which other rows have; "
                "give every row the same keys."
            )
    columns = {k: [row[k] for row in rows] for k in keys}
    for k, values in columns.items():  # turns given as lists in some rows and JSON text in others
        if any(isinstance(v, str) for v in values) and any(isinstance(v, (list, tuple)) for v in values):
            columns[k] = [json.dumps(list(v)) if isinstance(v, (list, tuple)) else v for v in values]
    return columns


def load_arena(source, *, require_labels: bool = False) -> datasets.Dataset:
    """Load and validate arena rows from CSV, parquet, a DataFrame, a list of row dicts, a dict
    of columns or a ``datasets.Dataset``.

    Raises ``ValueError`` naming the row or column, with the fix, for: a missing column,
    an empty table, duplicate ids, unparseable JSON, and labels that are not one-hot.
    Rows already in canonical form (list columns, ``label``) pass through validated.
    """
    table = _read_table(source)
    if len(table) == 0:
        raise ValueError("arena data is empty: it has no rows. Check the file or the filter that produced it.")
    cols = set(table.column_names)
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ValueError(
            f"arena data is missing column(s) {missing}; the competition format has "
            f"{list(REQUIRED) + list(LABELS)} (winner columns only for training rows). "
            f"Found {sorted(cols)}."
        )
    has_onehot = [c for c in LABELS if c in cols]
    if has_onehot and len(has_onehot) != 3:
        raise ValueError(
            f"arena data has label column(s) {has_onehot} but not all of {list(LABELS)}; "
            "provide all three one-hot winner columns or none."
        )
    if require_labels and not has_onehot and "label" not in cols:
        raise ValueError(f"arena data has no labels: add the one-hot columns {list(LABELS)}.")

    ids = [str(i) for i in table["id"]]
    seen = {}
    for r, i in enumerate(ids):
        if i in seen:
            raise ValueError(
                f"column 'id': duplicate id {i!r} at rows {seen[i]} and {r}; ids must be unique "
                "(drop the duplicate or give it a new id)."
            )
        seen[i] = r

    out = {"id": ids}
    for col in TEXT_COLUMNS:
        out[col] = [parse_turns(v, row=ids[r], column=col) for r, v in enumerate(table[col])]
    if has_onehot:
        onehot = list(zip(*(table[c] for c in LABELS)))
        labels = []
        for r, vec in enumerate(onehot):
            try:
                vals = [float(v) for v in vec]
            except (TypeError, ValueError):
                vals = None
            if vals is None or sorted(vals) != [0.0, 0.0, 1.0]:
                raise ValueError(
                    f"row {ids[r]!r}: winner columns {dict(zip(LABELS, vec))} are not one-hot; "
                    "exactly one of winner_model_a / winner_model_b / winner_tie must be 1."
                )
            labels.append(vals.index(1.0))
        out["label"] = labels
    elif "label" in cols:
        labels = [int(v) for v in table["label"]]
        bad = next((r for r, v in enumerate(labels) if v not in (-1, 0, 1, 2)), None)
        if bad is not None:
            raise ValueError(
                f"row {ids[bad]!r}: label {labels[bad]} is not one of -1 (unknown), 0 (a), 1 (b), 2 (tie)."
            )
        out["label"] = labels
    else:
        out["label"] = [-1] * len(ids)
    return datasets.Dataset.from_dict(
        out,
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                **{c: datasets.List(datasets.Value("string")) for c in TEXT_COLUMNS},
                "label": datasets.Value("int64"),
            }
        ),
    )


def swap_ab(rows: datasets.Dataset, id_suffix: str | None = None) -> datasets.Dataset:
    """Exchange response A and B and swap the labels to match (tie stays tie).

    ``id_suffix`` (e.g. ``":swap"``) makes the ids distinct when the copy is concatenated
    to the original for augmentation.
    """

    def _swap(batch):
        labels = [SWAP_PERMUTATION[v] if v >= 0 else v for v in batch["label"]]
        ids = [i + id_suffix for i in batch["id"]] if id_suffix else batch["id"]
        return {"id": ids, "response_a": batch["response_b"], "response_b": batch["response_a"], "label": labels}

    return rows.map(_swap, batched=True, desc="swap A/B")


def encode(
    rows: datasets.Dataset, tokenizer, template: TemplateConfig, *, swap: bool = False, desc: str = "render rows"
) -> datasets.Dataset:
    """Add ``input_ids`` (the rendered row) and ``length`` columns. ``swap=True`` renders B before A."""
    a_col, b_col = ("response_b", "response_a") if swap else ("response_a", "response_b")

    def _enc(batch):
        ids = [encode_row(tokenizer, p, a, b, template) for p, a, b in zip(batch["prompt"], batch[a_col], batch[b_col])]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    return rows.map(_enc, batched=True, batch_size=256, desc=desc)


def labels_of(rows: datasets.Dataset):
    import numpy as np

    return np.asarray(rows["label"], dtype=np.int64)
