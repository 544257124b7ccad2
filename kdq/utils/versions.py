"""Installed versions of the libraries that decide whether a saved model loads and predicts the same."""

from __future__ import annotations

import platform

from ..runtime.versions import installed_version

VERSIONED = (
    "kdq",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "huggingface-hub",
    "peft",
    "optimum",
    "gptqmodel",
    "bitsandbytes",
    "numpy",
)


def library_versions() -> dict:
    """Installed versions of :data:`VERSIONED` (absent packages left out) plus Python's and the platform."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    out.update({name: v for name in VERSIONED if (v := installed_version(name)) is not None})
    return out
