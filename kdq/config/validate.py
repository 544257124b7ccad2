"""Small helpers for validating frozen config dataclasses with ValueError (never assert)."""

from __future__ import annotations

import re

from ..runtime.constants import TTA_MODES


def check_choice(cls: str, field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{cls}.{field} must be one of {sorted(map(str, allowed))}, got {value!r}")


def check_tta(cls: str, value) -> None:
    """A TTA setting: ``True``/``False`` (the older spelling) or a name in ``TTA_MODES``; ``None`` is refused."""
    if not isinstance(value, bool) and value not in TTA_MODES:
        raise ValueError(f"{cls}.tta must be True or False or one of {list(TTA_MODES)}, got {value!r}")


def check_device(cls: str, field: str, value) -> None:
    """``None``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (checked without importing torch)."""
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"cpu|cuda(:\d+)?", value)):
        raise ValueError(f"{cls}.{field} must be None, 'cpu', 'cuda' or 'cuda:N', got {value!r}")


def check_range(
    cls: str, field: str, value, lo=None, hi=None, *, lo_open=False, hi_open=False, kind=(int, float)
) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{cls}.{field} must be a {names} in {rng}, got {value!r}")
