"""Reading a table a user hands kdq: a CSV or parquet path, a pandas DataFrame, a ``pyarrow.Table`` or a
``datasets.Dataset``, as one ``datasets.Dataset``, with one set of path checks and one suffix rule.

Arena rows (:func:`kdq.data.load_arena`) and teacher prediction tables (:mod:`kdq.distill.teachers`) both
read through :func:`read_table`; each names what it reads and what a user should pass instead, so an
error says the fix in that caller's terms.
"""

from __future__ import annotations

import os
from pathlib import Path

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES  # what a path to a table ends with (importing this loads no datasets)


def read_table(source, *, what: str, expects: str, text_columns=(), blank=frozenset()):
    """``source`` as a ``datasets.Dataset``.

    Args:
        source: a path (``.csv``, ``.parquet`` / ``.pq``), a pandas DataFrame, a ``pyarrow.Table`` or a
            ``datasets.Dataset`` (returned as it is).
        what: what the table is, for errors (``"arena data"``, ``"teacher table"``).
        expects: what to pass instead, for errors (``"a CSV or parquet path, ..."``).
        text_columns: CSV columns read as text whatever they look like (:func:`read_csv`).
        blank: columns of a DataFrame read as all-null (their names stay).
    Raises:
        ValueError: a path that does not exist or has another suffix, or a source of another type;
        the message names ``what`` and says ``expects``.
    """
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas DataFrame
        drop = {c: None for c in source.columns if c in blank}
        return datasets.Dataset.from_pandas(source.assign(**drop) if drop else source, preserve_index=False)
    if _is_arrow_table(source):
        return datasets.Dataset(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{what} file {str(path)!r} does not exist; pass {expects}.")
        suffix = path.suffix.lower()
        if suffix in CSV_SUFFIXES:
            return datasets.Dataset(read_csv(path, text_columns))
        if suffix in PARQUET_SUFFIXES:
            return datasets.Dataset.from_parquet(str(path))
        raise ValueError(f"{what} file {str(path)!r}: unsupported suffix {suffix!r}; use .csv or .parquet.")
    raise ValueError(f"{what}: cannot read a {type(source).__name__}; pass {expects}.")


def read_csv(path: Path, text_columns=()):
    """A CSV as an Arrow table (no Python object per cell), typed as pandas' ``read_csv(dtype=str for
    text_columns, keep_default_na=False)`` would: ``text_columns`` stay text whatever they look like (ids
    stay ``"007"``, an empty winner ``""``), and every other column is int64 when all its cells are
    integers, else float64 when all are numbers (``1e-3`` included), else text (an empty cell is text,
    never a missing value).

    The file is read by the runtime's CSV rule (:mod:`kdq.runtime.csvfile`), as the exported ``predict.py``
    reads it: a BOM, CRLF line ends and quoted line breaks are read alike, header names lose surrounding
    spaces, and an empty file, text that is not UTF-8 or a row of another width than the header is a
    ``ValueError`` naming the line. Arrow parses the cells (no Python object per cell); when it fails, the
    rule's reader finds the line and says the fix."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from ..runtime.csvfile import first_problem, normalise_header, read_header

    header = read_header(path, raw=True)
    names = normalise_header(header, path)
    try:
        table = pacsv.read_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=64 << 20),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        raise first_problem(path) or ValueError(f"{path}: {err}") from None
    if table.column_names != header:  # Arrow read the header line otherwise than the rule: say so, never guess
        raise ValueError(f"{path}: the header line reads as {header} but Arrow read {table.column_names}.")
    table = table.rename_columns(names)
    for i, name in enumerate(table.column_names):
        if name in text_columns:
            continue
        for kind in (pa.int64(), pa.float64()):
            try:
                table = table.set_column(i, name, pc.cast(table.column(i), kind))
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    return table


def _is_arrow_table(source) -> bool:
    import pyarrow as pa

    return isinstance(source, pa.Table)
