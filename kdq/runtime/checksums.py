"""sha256 checks of an exported folder against its manifest (standard library only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .constants import MANIFEST_FILE

# The files inference reads; predict.py checks these against the manifest before a long run.
MODEL_ROLES = ("weights", "config", "tokenizer", "quantization", "settings", "runtime")


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_files(model_dir, roles=MODEL_ROLES) -> int:
    """Check the files inference needs against the sizes and sha256 sums in the manifest.

    A truncated or altered upload then fails in seconds instead of after hours of inference.
    Returns the number of files checked; raises ``RuntimeError`` naming the first bad file.
    """
    model_dir = Path(model_dir)
    try:
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_dir / MANIFEST_FILE} is missing; the exported folder is incomplete.") from None
    checked = 0
    for rel, entry in sorted(manifest.get("files", {}).items()):
        if entry.get("role") not in roles:
            continue
        path = model_dir / rel
        if not path.is_file():
            raise RuntimeError(
                f"{rel}: missing from {model_dir}; re-upload the dataset (kdq verify checks it locally)."
            )
        if path.stat().st_size != entry["size"]:
            raise RuntimeError(
                f"{rel}: {path.stat().st_size} bytes, the manifest says {entry['size']}; "
                "the file is truncated or altered."
            )
        if sha256_file(path) != entry["sha256"]:
            raise RuntimeError(f"{rel}: sha256 differs from the manifest; the file is altered or corrupt.")
        checked += 1
    return checked
