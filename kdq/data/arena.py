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

import datasets

from ..runtime.constants import LMSYS, SCHEMES, LabelScheme, label_scheme, scheme_with_labels
from ..runtime.template import PARTS, TemplateConfig, encode_row, parse_cell
from .tables import read_table

TEXT_COLUMNS = PARTS
REQUIRED = ("id",) + TEXT_COLUMNS
METADATA_COLUMNS = ("language",)  # kept in the canonical rows when present; nothing else reads them
# read as text from a CSV whatever they look like (a WSDM prompt may be "42"; an empty winner is "")
_TEXT_CSV_COLUMNS = (
    REQUIRED + tuple(sorted({s.winner_column for s in SCHEMES.values() if s.winner_column})) + METADATA_COLUMNS
)


def _read_table(source, blank=frozenset()) -> datasets.Dataset:
    """``source`` as a ``datasets.Dataset`` (:func:`kdq.data.tables.read_table`, plus row dicts and dicts of
    columns); the in-memory sources' columns named in ``blank`` are read as all-null columns (their names
    stay: they still tell the layout), whatever values they hold."""
    if isinstance(source, dict):  # columns → lists, as kdq.data.probe.make_arena_rows returns
        return datasets.Dataset.from_dict(_blanked(source, blank))
    if isinstance(source, (list, tuple)):  # row dicts, e.g. [{"id": "1", "prompt": ..., ...}, ...]
        return datasets.Dataset.from_dict(_blanked(_columns_of(source), blank))
    return read_table(
        source,
        what="arena data",
        expects="a CSV or parquet path, a pandas DataFrame, a list of row dicts, a dict of columns or a "
        "datasets.Dataset",
        text_columns=_TEXT_CSV_COLUMNS,
        blank=blank,
    )


def _blanked(columns: dict, blank) -> dict:
    return {k: ([None] * len(v) if k in blank else v) for k, v in columns.items()}


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


def load_arena(source, *, require_labels: bool = False, scheme=None, unlabelled: bool = False) -> datasets.Dataset:
    """Load and validate arena rows from CSV, parquet, a DataFrame, a list of row dicts, a dict
    of columns or a ``datasets.Dataset``, in the LMSYS or the WSDM layout (module doc).

    ``scheme`` (``"lmsys"``, ``"wsdm"`` or a :class:`~kdq.runtime.constants.LabelScheme`): the layout
    to read. ``None`` reads it from the columns: a ``winner`` column is WSDM, one-hot winner columns
    LMSYS; without labels, a ``language`` column is WSDM and anything else LMSYS (pass
    ``scheme="wsdm"`` for unlabelled WSDM rows without ``language``).

    ``unlabelled=True``: the rows are unlabelled by their role (a transfer set, the rows the teacher
    caches, calibration rows): the winner columns (LMSYS one-hot, WSDM ``winner``) and a ``label``
    column still tell the layout, then are dropped before validation, so blank, soft (0.6/0.1/0.3) or
    partial labels never fail, and every row's label is ``-1`` (no CE term ever reads it).

    Raises ``ValueError`` naming the row or column, with the fix, for: a missing column,
    an empty table, duplicate ids, unparseable JSON, labels that are not one-hot, a ``winner``
    that names no class, and a table that mixes the two layouts.
    Rows already in canonical form (list columns, ``label``) pass through validated.

    The rows are converted in Arrow, a batch at a time (``datasets.Dataset.map``): no Python list of
    every row is built, and a file-backed source (parquet) gives a file-backed, memory-mapped result.
    """
    if require_labels and unlabelled:
        raise ValueError(
            "load_arena: require_labels=True and unlabelled=True contradict each other; unlabelled=True is for "
            "rows whose labels are never read (transfer rows, rows to score)."
        )
    table = _read_table(source, _LABEL_COLUMNS if unlabelled else frozenset())
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
    if unlabelled:  # the layout is known: the labels go before anything reads them
        table = table.remove_columns([c for c in table.column_names if c in _LABEL_COLUMNS])
        cols = set(table.column_names)
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

    _check_unique_ids(table)
    labels = "onehot" if has_onehot else "winner" if has_winner else "label" if "label" in cols else None
    metadata = [c for c in METADATA_COLUMNS if c in cols]
    features = {
        "id": datasets.Value("string"),
        **{c: datasets.List(datasets.Value("string")) for c in TEXT_COLUMNS},
        "label": datasets.ClassLabel(names=list(scheme.labels)),
    }
    features.update(dict.fromkeys(metadata, datasets.Value("string")))
    convert = _Converter(scheme, labels, metadata)
    try:
        return table.map(
            convert,
            batched=True,
            batch_size=1000,
            remove_columns=table.column_names,
            features=datasets.Features(features),
            desc="validate rows",
        )
    except ValueError as err:
        # One batch at a time finds the first bad batch's error; report the error the column-by-column
        # order gives (every text column in turn, then the labels), which does not depend on batching.
        first = convert.first_error(table)
        raise (first or err) from None


_LABEL_COLUMNS = frozenset({"label", *LMSYS.labels, *(s.winner_column for s in SCHEMES.values() if s.winner_column)})


def _id_strings(values) -> list:
    return [str(i) for i in values]


def _check_unique_ids(table: datasets.Dataset) -> None:
    """Raise naming the first id that repeats an earlier one and both rows; computed in Arrow."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.select_columns(["id"]).with_format("arrow")[:]["id"]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        ids = column
    elif pa.types.is_integer(column.type):
        ids = pc.cast(column, pa.string())
    else:  # str() of each value, as the rows' ids are written
        ids = pa.chunked_array([pa.array(_id_strings(chunk.to_pylist()), pa.string()) for chunk in column.chunks])
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    unique = pc.unique(ids)
    if len(unique) == len(ids):
        return
    which = np.asarray(pc.index_in(ids, value_set=unique).fill_null(-1), dtype=np.int64)
    _, first = np.unique(which, return_index=True)
    r = int(np.flatnonzero(first[which] != np.arange(len(ids)))[0])
    raise ValueError(
        f"column 'id': duplicate id {ids[r].as_py()!r} at rows {int(first[which[r]])} and {r}; ids must be unique "
        "(drop the duplicate or give it a new id)."
    )


class _Converter:
    """The batched function :func:`load_arena` maps over the source rows: ids as text, cells as turn lists,
    the label, metadata as text. Picklable (``datasets`` fingerprints it)."""

    def __init__(self, scheme: LabelScheme, labels: str | None, metadata: list):
        self.scheme, self.labels, self.metadata = scheme, labels, list(metadata)

    def _text(self, values, ids: list, column: str) -> list:
        scheme = self.scheme
        try:
            return [parse_cell(v, scheme, row=ids[r], column=column) for r, v in enumerate(values)]
        except ValueError as err:
            if scheme.plain_turns or self.labels or "JSON" not in str(err):
                raise
            raise ValueError(
                f"{err} If these are WSDM Cup rows (plain-string turns), load them with scheme='wsdm' "
                "or keep their winner or language column."
            ) from None

    def _label(self, batch, ids: list) -> list:
        scheme = self.scheme
        if self.labels == "onehot":
            return _onehot_labels(batch, ids, scheme)
        if self.labels == "winner":
            return _winner_labels(batch[scheme.winner_column], ids, scheme)
        if self.labels == "label":
            values = [int(v) for v in batch["label"]]
            bad = next((r for r, v in enumerate(values) if not -1 <= v < scheme.num_labels), None)
            if bad is not None:
                names = ", ".join(f"{k} ({n})" for k, n in scheme.id2label.items())
                raise ValueError(f"row {ids[bad]!r}: label {values[bad]} is not one of -1 (unknown), {names}.")
            return values
        return [-1] * len(ids)

    def __call__(self, batch) -> dict:
        ids = _id_strings(batch["id"])
        out = {"id": ids, **{c: self._text(batch[c], ids, c) for c in TEXT_COLUMNS}, "label": self._label(batch, ids)}
        for col in self.metadata:
            out[col] = ["" if v is None else str(v) for v in batch[col]]
        return out

    def first_error(self, table: datasets.Dataset, batch_size: int = 1000):
        """The error of the first bad cell, column by column (each text column over every row, then the
        labels), or ``None``."""
        columns = [[c] for c in TEXT_COLUMNS] + [[c for c in table.column_names if c in _LABEL_COLUMNS]]
        for names in columns:
            part = table.select_columns(["id", *[n for n in names if n != "id"]])
            for start in range(0, len(part), batch_size):
                batch = part[start : start + batch_size]
                ids = _id_strings(batch["id"])
                try:
                    if names and names[0] in TEXT_COLUMNS:
                        self._text(batch[names[0]], ids, names[0])
                    else:
                        self._label(batch, ids)
                except ValueError as err:
                    return err
        return None


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


def _onehot_labels(batch, ids: list, scheme: LabelScheme) -> list:
    labels = []
    for r, vec in enumerate(zip(*(batch[c] for c in scheme.labels))):
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
