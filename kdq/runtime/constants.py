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
TEMPLATE_KEY = "kdq_template"
WHEELS_DIR = "wheels"


def tta_mode(value) -> str:
    """``True``/``False`` (the older spelling) or a name in :data:`TTA_MODES` → the name."""
    if value is True:
        return "full"
    if value is False or value is None:
        return "none"
    if value in TTA_MODES:
        return value
    raise ValueError(f"tta must be one of {list(TTA_MODES)} (or True/False), got {value!r}")
