"""The one rule for reading a CSV file, shared by kdq (:mod:`kdq.data.tables`) and every exported ``predict.py``.

Standard library only. A CSV file is

* UTF-8 text, with or without a byte-order mark (Excel's "CSV UTF-8" writes one; it is dropped);
* lines ending in LF, CRLF or CR; a quoted cell may hold line breaks, kept as written;
* a header line naming the columns: each name's surrounding whitespace (and a stray BOM) is dropped, so
  ``" id"`` and ``"\\ufeffid"`` are ``"id"``; blank lines are skipped.

Whatever breaks the rule is a ``ValueError`` naming the file, the line and the fix: an empty file, text that
is not UTF-8, two columns with one name, a row with another number of cells than the header. A wrong header
(a column missing) names the columns found as Python writes them (``repr``), so an invisible character shows.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator

ENCODING = "utf-8-sig"  # UTF-8; a leading byte-order mark is dropped
_STRIP = " \t\r\n\f\v\ufeff\u00a0"  # what a header name loses at both ends


def raise_field_limit() -> None:
    """Lift the ``csv`` module's 128 KiB cell limit (arena responses can be far longer)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def normalise_header(names, path) -> list:
    """The column names of a header line, each without surrounding whitespace or BOM.

    Raises ``ValueError`` when two names become one (``"id"`` and ``" id "``), naming both as written."""
    out, seen = [], {}
    for i, raw in enumerate(names):
        name = raw.strip(_STRIP)
        if name in seen:
            first = names[seen[name]]
            raise ValueError(
                f"{path}: columns {seen[name] + 1} ({first!r}) and {i + 1} ({raw!r}) are both named {name!r} once "
                "surrounding spaces are dropped; rename one of them in the file's first line."
            )
        seen[name] = i
        out.append(name)
    return out


def _not_utf8(path) -> ValueError:
    """The error for a file that is not UTF-8, naming its first such line (read again, in bytes: a text
    stream fails a whole chunk at a time, which has no line)."""
    where = "it"
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                where = f"line {n} (byte {line[err.start : err.start + 1]!r} at column {err.start + 1})"
                break
    return ValueError(
        f"{path}: {where} is not UTF-8 text; save the file as UTF-8 (Excel: 'CSV UTF-8'; pandas: "
        "to_csv(path, index=False), whose default is UTF-8)."
    )


def _empty(path) -> ValueError:
    return ValueError(
        f"{path} is empty: a CSV file needs a header line naming its columns, then one line per row. "
        "Check that the file was written completely."
    )


def read_header(path, *, raw: bool = False) -> list:
    """The file's column names (``list[str]``), normalised (:func:`normalise_header`); ``raw=True``: as
    written, less the file's BOM (what another CSV parser reads there).

    Raises ``ValueError`` for an empty file (no header line), a header that is not UTF-8 text, and (unless
    ``raw``) two columns with one name."""
    raise_field_limit()
    with open(path, newline="", encoding=ENCODING) as fh:
        reader = csv.reader(fh)
        try:
            header = next((row for row in reader if row), None)
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
    if header is None:
        raise _empty(path)
    return header if raw else normalise_header(header, path)


def iter_rows(path) -> Iterator[tuple]:
    """``(line, cells)`` for every data row of the CSV, in order: ``line`` the 1-based line the row starts
    on, ``cells`` its values (``list[str]``) in the header's order. The first item is ``(1, header)``, the
    header normalised (:func:`normalise_header`).

    Raises ``ValueError`` naming the line for an empty file, text that is not UTF-8 and a row whose number
    of cells differs from the header's (the usual cause: an unquoted comma or quote in a cell)."""
    raise_field_limit()
    with open(path, newline="", encoding=ENCODING) as fh:
        reader = csv.reader(fh)
        header, line = None, 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError:
                raise _not_utf8(path) from None
            start, line = line, reader.line_num + 1
            if not cells:
                continue  # a blank line
            if header is None:
                header = normalise_header(cells, path)
                yield start, header
            elif len(cells) != len(header):
                raise ValueError(
                    f"{path}: line {start} has {len(cells)} cells but the header has {len(header)} columns "
                    f"({header}); quote any cell that holds a comma, a quote or a line break (csv.writer and "
                    "pandas' to_csv do), or fix the line."
                )
            else:
                yield start, cells
    if header is None:
        raise _empty(path)


def first_problem(path) -> ValueError | None:
    """The ``ValueError`` :func:`iter_rows` raises on the file (the first line that breaks the rule), or
    ``None`` when every line follows it. For a faster reader that failed: it says what the rule says."""
    try:
        for _ in iter_rows(path):
            pass
    except ValueError as err:
        return err
    return None


def missing_columns(path, found, required, *, expected: str, fix: str) -> ValueError | None:
    """The error for a header that lacks some of ``required``, or ``None``.

    ``found``: the header's names; ``expected``: what the file should hold (``"columns id, prompt, ..."``);
    ``fix``: what to do. The message names the columns found as ``repr`` shows them."""
    missing = [c for c in required if c not in found]
    if not missing:
        return None
    return ValueError(f"{path}: missing column(s) {missing}; {expected}. Found {list(found)}; {fix}")
