"""One conversion of kdq's records (dataclasses, numpy, paths, dtypes) into JSON types."""

from __future__ import annotations

import dataclasses
import enum
import math
import os


def jsonable(value):
    """Best-effort conversion to JSON types: dataclasses, mappings, tuples, paths, dtypes, numpy."""
    # to_dict first: kdq's Metrics.to_dict() leaves out the per-row probability arrays.
    if hasattr(value, "to_dict") and callable(value.to_dict) and not isinstance(value, type):
        return jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN/inf: null, as report.json always had
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(value.tolist())
    return str(value)  # torch.dtype, devices, anything else: readable, not lossless
