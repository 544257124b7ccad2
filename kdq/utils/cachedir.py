"""Where kdq keeps what is worth sharing between runs: the user cache folder.

``$KDQ_CACHE`` when set, else ``$XDG_CACHE_HOME/kdq``, else ``~/.cache/kdq``. The teacher-logit
cache lives in its ``teacher-logits`` folder, one sub-folder per teacher fingerprint
(:mod:`kdq.distill.cache`), so every run with the same teacher, template and TTA reuses it
whatever its ``output_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """kdq's user cache folder (not created here)."""
    if os.environ.get("KDQ_CACHE"):
        return Path(os.environ["KDQ_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "kdq"


def default_cache_dir() -> Path:
    """The shared teacher-logit cache: ``DistillConfig.teacher_pass.cache_dir`` when ``None``."""
    return cache_root() / "teacher-logits"
