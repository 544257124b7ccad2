"""Arena data: load, validate, swap, encode.

Two layouts are read, one per label scheme (:mod:`kdq.runtime.constants`):

* **LMSYS** Chatbot Arena: ``prompt``, ``response_a``, ``response_b`` are JSON lists of turns, the
  winner is one-hot in ``winner_model_a / winner_model_b / winner_tie``;
* **WSDM** Cup 2025 Multilingual Chatbot Arena: the three text columns are plain strings (a single
  turn each), the winner is named in ``winner`` (``model_a`` or ``model_b``: no tie), and a
  ``language`` column describes the row.

The canonical in-memory form is a ``datasets.Dataset`` with columns

* ``id``: ``str`` (the competition's integer ids are kept as their decimal text);
* ``prompt``, ``response_a``, ``response_b``: ``list[str]``, one entry per turn;
* ``label``: a ``datasets.ClassLabel`` whose names are the scheme's classes (LMSYS: 0
  winner_model_a, 1 winner_model_b, 2 winner_tie; WSDM: 0 model_a, 1 model_b), ``-1`` when the
  winner is absent (test time). The names are how the rows carry their scheme
  (:func:`scheme_of_rows`);
* ``language`` (only when the source has one): ``str``, metadata that nothing else reads.

:func:`encode` adds ``input_ids`` and ``length`` using :mod:`kdq.runtime.template`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

from ..runtime.constants import LMSYS, SCHEMES, LabelScheme, label_scheme, scheme_with_labels
from ..runtime.template import PARTS, TemplateConfig, encode_row, parse_cell

TEXT_COLUMNS = PARTS
REQUIRED = ("id",) + TEXT_COLUMNS
METADATA_COLUMNS = ("language",)  # kept in the canonical rows when present; nothing else reads them
# read as text from a CSV whatever they look like (a WSDM prompt may be "42"; an empty winner is "")
_TEXT_CSV_COLUMNS = (
    REQUIRED + tuple(sorted({s.winner_column for s in SCHEMES.values() if s.winner_column})) + METADATA_COLUMNS
)


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
                pd.read_csv(path, dtype=dict.fromkeys(_TEXT_CSV_COLUMNS, str), keep_default_na=False),
                preserve_index=False,
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


def load_arena(source, *, require_labels: bool = False, scheme=None) -> datasets.Dataset:
    """Load and validate arena rows from CSV, parquet, a DataFrame, a list of row dicts, a dict
    of columns or a ``datasets.Dataset``, in the LMSYS or the WSDM layout (module doc).

    ``scheme`` (``"lmsys"``, ``"wsdm"`` or a :class:`~kdq.runtime.constants.LabelScheme`): the layout
    to read. ``None`` reads it from the columns: a ``winner`` column is WSDM, one-hot winner columns
    LMSYS; without labels, a ``language`` column is WSDM and anything else LMSYS (pass
    ``scheme="wsdm"`` for unlabelled WSDM rows without ``language``).

    Raises ``ValueError`` naming the row or column, with the fix, for: a missing column,
    an empty table, duplicate ids, unparseable JSON, labels that are not one-hot, a ``winner``
    that names no class, and a table that mixes the two layouts.
    Rows already in canonical form (list columns, ``label``) pass through validated.
    """
    table = _read_table(source)
    if len(table) == 0:
        raise ValueError("arena data is empty: it has no rows. Check the file or the filter that produced it.")
    cols = set(table.column_names)
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ValueError(
            f"arena data is missing column(s) {missing}; the LMSYS format has "
            f"{list(REQUIRED) + list(LMSYS.labels)}, the WSDM format {list(REQUIRED) + ['winner', 'language']} "
            f"(winner columns only for training rows). Found {sorted(cols)}."
        )
    scheme = _layout(table, cols, scheme)
    has_onehot = [c for c in LMSYS.labels if c in cols] if scheme.winner_column is None else []
    if has_onehot and len(has_onehot) != len(scheme.labels):
        raise ValueError(
            f"arena data has label column(s) {has_onehot} but not all of {list(scheme.labels)}; "
            "provide all three one-hot winner columns or none."
        )
    has_winner = scheme.winner_column is not None and scheme.winner_column in cols
    if require_labels and not has_onehot and not has_winner and "label" not in cols:
        need = (
            f"the {scheme.winner_column!r} column"
            if scheme.winner_column
            else f"the one-hot columns {list(scheme.labels)}"
        )
        raise ValueError(f"arena data has no labels: add {need}.")

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
    labelled = has_onehot or has_winner or "label" in cols
    for col in TEXT_COLUMNS:
        try:
            out[col] = [parse_cell(v, scheme, row=ids[r], column=col) for r, v in enumerate(table[col])]
        except ValueError as err:
            if scheme.plain_turns or labelled or "JSON" not in str(err):
                raise
            raise ValueError(
                f"{err} If these are WSDM Cup rows (plain-string turns), load them with scheme='wsdm' "
                "or keep their winner or language column."
            ) from None
    if has_onehot:
        out["label"] = _onehot_labels(table, ids, scheme)
    elif has_winner:
        out["label"] = _winner_labels(table[scheme.winner_column], ids, scheme)
    elif "label" in cols:
        labels = [int(v) for v in table["label"]]
        bad = next((r for r, v in enumerate(labels) if not -1 <= v < scheme.num_labels), None)
        if bad is not None:
            names = ", ".join(f"{k} ({n})" for k, n in scheme.id2label.items())
            raise ValueError(f"row {ids[bad]!r}: label {labels[bad]} is not one of -1 (unknown), {names}.")
        out["label"] = labels
    else:
        out["label"] = [-1] * len(ids)
    features = {
        "id": datasets.Value("string"),
        **{c: datasets.List(datasets.Value("string")) for c in TEXT_COLUMNS},
        "label": datasets.ClassLabel(names=list(scheme.labels)),
    }
    for col in METADATA_COLUMNS:
        if col in cols:
            out[col] = ["" if v is None else str(v) for v in table[col]]
            features[col] = datasets.Value("string")
    return datasets.Dataset.from_dict(out, features=datasets.Features(features))


def _layout(table: datasets.Dataset, cols: set, scheme) -> LabelScheme:
    """The label scheme whose layout ``table`` is in (see :func:`load_arena`); mixed layouts are an error."""
    winners = sorted({s.winner_column for s in SCHEMES.values() if s.winner_column} & cols)
    onehot = [c for c in LMSYS.labels if c in cols]
    if winners and onehot:
        raise ValueError(
            f"arena data mixes two layouts: the LMSYS one-hot winner column(s) {onehot} and the WSDM "
            f"{winners[0]!r} column. Found columns {sorted(cols)}; keep the columns of one layout "
            f"(LMSYS: {list(LMSYS.labels)}; WSDM: 'winner' with model_a / model_b)."
        )
    found = "winner" if winners else "one-hot" if onehot else None
    canonical = table.features.get("label")
    recorded = scheme_with_labels(canonical.names) if isinstance(canonical, datasets.ClassLabel) else None
    if scheme is not None:
        scheme = label_scheme(scheme)
        layout = "winner" if scheme.winner_column else "one-hot"
        if (found and found != layout) or (recorded and recorded != scheme):
            what = f"the columns {winners or onehot}" if found else f"its label classes {list(recorded.labels)}"
            raise ValueError(
                f"arena data was loaded as {scheme.describe()}, but {what} are the other layout's. "
                f"Found columns {sorted(cols)}; drop scheme= to read the layout from the columns."
            )
        return scheme
    if winners:
        return SCHEMES["wsdm"]
    if onehot:
        return LMSYS
    if recorded is not None:
        return recorded
    return SCHEMES["wsdm"] if "language" in cols else LMSYS


def _onehot_labels(table: datasets.Dataset, ids: list, scheme: LabelScheme) -> list:
    labels = []
    for r, vec in enumerate(zip(*(table[c] for c in scheme.labels))):
        try:
            vals = [float(v) for v in vec]
        except (TypeError, ValueError):
            vals = None
        if vals is None or sorted(vals) != [0.0] * (len(vals) - 1) + [1.0]:
            raise ValueError(
                f"row {ids[r]!r}: winner columns {dict(zip(scheme.labels, vec))} are not one-hot; "
                f"exactly one of {' / '.join(scheme.labels)} must be 1."
            )
        labels.append(vals.index(1.0))
    return labels


def _winner_labels(values, ids: list, scheme: LabelScheme) -> list:
    """Class ids of a winner column; a value that names no class (an empty one too) is an error naming the row."""
    index, labels = scheme.label2id, []
    for r, v in enumerate(values):
        if v not in index:
            tie = " (this layout has no tie: drop tied rows)" if "tie" in str(v).lower() else ""
            raise ValueError(
                f"row {ids[r]!r}: {scheme.winner_column} {v!r} is not one of {list(scheme.labels)}{tie}; "
                f"set it to the winning response's column name ({' or '.join(map(repr, scheme.labels))}), "
                "or drop the row."
            )
        labels.append(index[v])
    return labels


def scheme_of_rows(rows: datasets.Dataset) -> LabelScheme:
    """The label scheme of canonical rows (:func:`load_arena`'s): the names of their ``label`` (or, after
    renaming, ``labels``) ``ClassLabel``; LMSYS for rows whose label is a plain integer column."""
    feature = rows.features.get("label", rows.features.get("labels"))
    return scheme_with_labels(feature.names) if isinstance(feature, datasets.ClassLabel) else LMSYS


def core_columns(rows: datasets.Dataset) -> datasets.Dataset:
    """``rows`` without metadata columns (``language``): what rows of any source have in common."""
    extra = [c for c in rows.column_names if c in METADATA_COLUMNS]
    return rows.remove_columns(extra) if extra else rows


def swap_ab(rows: datasets.Dataset, id_suffix: str | None = None) -> datasets.Dataset:
    """Exchange response A and B and swap the labels to match (the scheme's swap: a<->b, tie stays tie).

    ``id_suffix`` (e.g. ``":swap"``) makes the ids distinct when the copy is concatenated
    to the original for augmentation.
    """

    perm = scheme_of_rows(rows).swap

    def _swap(batch):
        labels = [perm[v] if v >= 0 else v for v in batch["label"]]
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
