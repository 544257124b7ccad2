"""Facts shared by kdq and every exported ``predict.py`` (standard library only)."""

from __future__ import annotations

LABELS = ("winner_model_a", "winner_model_b", "winner_tie")
# Exchanging response A and B maps class a<->b and leaves tie in place.
SWAP_PERMUTATION = (1, 0, 2)
# Swap test-time augmentation: "none" scores each row once; "full" also scores every row with
# A and B exchanged; "gated" scores every row once, then swap-scores only the least confident
# ``fraction`` of them (the WSDM Cup 2024 1st place did this).
TTA_MODES = ("none", "full", "gated")
DEFAULT_TTA_FRACTION = 0.33

# The exported folder.
RUNTIME_DIR = "kdq_runtime"  # this package, copied whole next to predict.py
SETTINGS_FILE = "kdq-predict.json"
MANIFEST_FILE = "kdq-manifest.json"
WHEELS_DIR = "wheels"
# Keys kdq adds to a model's config.json (stock transformers keeps and ignores them).
TEMPLATE_KEY = "kdq_template"  # the row template the model was trained with
SHRINK_KEY = "kdq_shrink"  # kdq.shrink's layer map: which teacher layer each student layer was copied from

# Every JSON record kdq writes carries its format version under FORMAT_KEY (a record without one is
# format 1). The two an exported folder holds are read by this runtime, so their versions live here;
# the others sit beside their writers (kdq-distill.json, kdq-quantize.json, report.json).
FORMAT_KEY = "format"
MANIFEST_FORMAT = 1  # kdq-manifest.json
LEGACY_MANIFEST_FORMAT_KEY = "kdq_manifest_version"  # the manifest's key before FORMAT_KEY
SETTINGS_FORMAT = 1  # kdq-predict.json


def check_format(record: dict, supported: int, what: str, fix: str) -> int:
    """The format version of a JSON ``record`` kdq wrote (1 when it has none).

    A version this code does not know (newer than ``supported``, or not a positive int) raises
    ``ValueError`` naming ``what`` (the file) and ``fix`` (what to do about it).
    """
    version = record.get(FORMAT_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= supported:
        raise ValueError(f"{what} has format {version!r}; this code reads format {supported} and older: {fix}.")
    return version


def tta_mode(value) -> str:
    """``True``/``False`` (the older spelling) or a name in :data:`TTA_MODES` → the name."""
    if value is True:
        return "full"
    if value is False or value is None:
        return "none"
    if value in TTA_MODES:
        return value
    raise ValueError(f"tta must be one of {list(TTA_MODES)} (or True/False), got {value!r}")
