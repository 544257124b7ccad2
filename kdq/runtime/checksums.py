"""sha256 checks of an exported folder against its manifest (standard library only).

The one implementation: ``predict.py`` runs :func:`check_files` before a long run, and
``kdq.verify`` runs :func:`file_problems` on every listed file (kdq imports the runtime; the
runtime never imports kdq).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .constants import FORMAT_KEY, LEGACY_MANIFEST_FORMAT_KEY, MANIFEST_FILE, MANIFEST_FORMAT, check_format

# The files inference reads; predict.py checks these against the manifest before a long run.
MODEL_ROLES = ("weights", "config", "tokenizer", "quantization", "settings", "runtime")


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir) -> dict:
    """The folder's ``kdq-manifest.json``.

    Raises ``FileNotFoundError`` when it is missing, ``ValueError`` when it is not JSON or has a
    format newer than this code reads (saying what to do). Manifests written before the
    ``format`` key spelled it ``kdq_manifest_version``.
    """
    path = Path(model_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; the exported folder is incomplete.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-export the model.") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} holds a JSON {type(manifest).__name__}, not an object; re-export the model.")
    version = manifest.get(FORMAT_KEY, manifest.get(LEGACY_MANIFEST_FORMAT_KEY, 1))
    check_format(
        {FORMAT_KEY: version},
        MANIFEST_FORMAT,
        str(path),
        "it was written by a newer kdq; verify it with that version (pip install -U kdq) or re-export the model",
    )
    return manifest


def file_problems(model_dir, files: dict, roles=None, optional_roles=()) -> tuple:
    """Check the ``files`` a manifest lists (``{relative path: {"size", "sha256", "role"}}``).

    Only ``roles`` are checked when given. A missing file of ``optional_roles`` is a note, not a
    problem. Returns ``(problems, notes, n_checked, n_bytes)``: ``problems`` and ``notes`` are
    ``(file, what is wrong)`` pairs, in file order; ``n_bytes`` counts the files that matched.
    """
    model_dir = Path(model_dir)
    problems, notes, checked, n_bytes = [], [], 0, 0
    for rel, entry in sorted(files.items()):
        if roles is not None and entry.get("role") not in roles:
            continue
        checked += 1
        path = model_dir / rel
        if not path.is_file():
            if entry.get("role") in optional_roles:
                notes.append((rel, "missing (the Kaggle CLI does not upload it; fine on a downloaded copy)"))
            else:
                problems.append((rel, f"missing (expected {entry['size']} bytes)"))
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append((rel, f"size mismatch: {size} bytes, the manifest says {entry['size']} (truncated?)"))
            continue
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            problems.append(
                (rel, f"sha256 mismatch: {digest[:16]}…, the manifest says {entry['sha256'][:16]}… (altered?)")
            )
            continue
        n_bytes += size
    return problems, notes, checked, n_bytes


def check_files(model_dir, roles=MODEL_ROLES) -> int:
    """Check the files inference needs against the sizes and sha256 sums in the manifest.

    A truncated or altered upload then fails in seconds instead of after hours of inference.
    Returns the number of files checked; raises ``RuntimeError`` naming the first bad file.
    """
    problems, _, checked, _ = file_problems(model_dir, read_manifest(model_dir).get("files", {}), roles)
    if problems:
        rel, what = problems[0]
        raise RuntimeError(f"{rel}: {what}; re-upload the dataset (kdq verify checks it locally).")
    return checked
