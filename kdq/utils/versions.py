"""Installed versions of the libraries that decide whether a saved model loads and predicts the same."""

from __future__ import annotations

import platform

from ..runtime.versions import installed_version

# The libraries every model depends on. The quantization backends' packages are added by the
# method registry (kdq.quant_methods) as each method registers: see track_versions.
VERSIONED = (
    "kdq",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "huggingface-hub",
    "peft",
    "numpy",
)

_TRACKED: dict = {}  # insertion-ordered set of the registered backends' pip packages


def track_versions(*packages: str) -> None:
    """Record these pip packages' versions too (a quantization method's ``wheels``, at registration)."""
    _TRACKED.update(dict.fromkeys(packages))


def versioned() -> tuple:
    """:data:`VERSIONED` plus the registered quantization backends' packages."""
    return tuple(dict.fromkeys(VERSIONED + tuple(_TRACKED)))


def library_versions() -> dict:
    """Installed versions of :func:`versioned` packages (absent ones left out) plus Python's and the platform."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    out.update({name: v for name in versioned() if (v := installed_version(name)) is not None})
    return out
