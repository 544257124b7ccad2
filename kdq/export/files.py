"""Which files an exported folder holds, what each is for, and their checksums."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

from ..runtime.checksums import sha256_file  # one implementation, also copied into the export
from ..runtime.constants import (
    KAGGLE_METADATA_FILE,
    MANIFEST_FILE,
    RUNTIME_DIR,
    SETTINGS_FILE,
    WEIGHT_INDEX_FILE,
    WHEELS_DIR,
)

CARD_FILE = "README.md"

# The model files the notebook needs, by role. Everything else in a model folder (optimizer
# state, training args, checkpoints, logs, kdq-quantize.json) stays behind.
MODEL_FILE_ROLES = {
    "*.safetensors": "weights",
    WEIGHT_INDEX_FILE: "weights",
    "config.json": "config",
    "generation_config.json": "config",
    "tokenizer.json": "tokenizer",
    "tokenizer_config.json": "tokenizer",
    "special_tokens_map.json": "tokenizer",
    "added_tokens.json": "tokenizer",
    "tokenizer.model": "tokenizer",
    "vocab.json": "tokenizer",
    "merges.txt": "tokenizer",
    "chat_template.jinja": "tokenizer",
    "quantize_config.json": "quantization",
    "quantization_config.json": "quantization",
}
# Files kdq writes itself, by role.
GENERATED_ROLES = {
    "predict.py": "script",
    SETTINGS_FILE: "settings",
    CARD_FILE: "card",
    KAGGLE_METADATA_FILE: "kaggle-metadata",
}
# Roles a Kaggle download may legitimately lack: the Kaggle CLI reads dataset-metadata.json
# but never uploads it.
OPTIONAL_ROLES = ("kaggle-metadata",)


def model_role(name: str) -> str | None:
    """The role of a top-level model file name, or ``None`` when the notebook does not need it."""
    for pattern, role in MODEL_FILE_ROLES.items():
        if fnmatch.fnmatch(name, pattern):
            return role
    return None


def role_of(rel: str) -> str:
    """The role of a file in an exported folder, from its relative path."""
    if rel.startswith(WHEELS_DIR + "/"):
        return "wheel"
    if rel.startswith(RUNTIME_DIR + "/"):
        return "runtime"
    return GENERATED_ROLES.get(rel) or model_role(rel) or "other"


def model_files(src_dir) -> list:
    """The top-level files of a model folder that the notebook needs (sorted ``Path`` list)."""
    return sorted(p for p in Path(src_dir).iterdir() if p.is_file() and model_role(p.name))


def copy_model_files(src_dir, dst_dir, *, skip_roles=()) -> list:
    """Copy :func:`model_files` of ``src_dir`` (except ``skip_roles``) into ``dst_dir``; returns the names."""
    names = []
    for p in model_files(src_dir):
        if model_role(p.name) in skip_roles:
            continue
        shutil.copy2(p, Path(dst_dir) / p.name)
        names.append(p.name)
    return names


def list_files(folder, *, exclude=(MANIFEST_FILE,)) -> dict:
    """Every file under ``folder`` as ``{relative posix path: {"sha256", "size", "role"}}``, sorted."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size, "role": role_of(rel)}
    return out
