"""Which files of a model folder are its weights, and what they weigh on disk."""

from __future__ import annotations

from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def folder_weight_bytes(path) -> int:
    """Bytes of the weight files in a model folder (all files when none has a weight suffix)."""
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    weights = [p for p in files if p.name.endswith(WEIGHT_SUFFIXES)]
    return sum(p.stat().st_size for p in (weights or files))
