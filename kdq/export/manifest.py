"""The ``kdq-manifest.json`` record: where the model came from, how it was made, what it weighs."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from ..utils.jsonable import jsonable

# The manifest's format version (MANIFEST_FORMAT, under FORMAT_KEY) lives in kdq/runtime/constants.py, beside
# its reader kdq.runtime.checksums.read_manifest: the notebook reads the manifest and cannot import kdq.


def metrics_record(metrics) -> tuple:
    """``(metrics dict or None, budget verdict or None)`` from a Metrics object or a dict."""
    if metrics is None:
        return None, None
    record = jsonable(metrics)
    if not isinstance(record, dict):
        raise ValueError(f"metrics must be a kdq Metrics object or a dict, got {type(metrics).__name__}")
    budget = record.get("budget")
    return record, budget


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def write_json(path, data) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
