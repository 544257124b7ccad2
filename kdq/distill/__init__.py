"""Stage 1-2: cache the teacher's logits, then distil them into a student.

Public API: :func:`distill`, :class:`DistillConfig`, :class:`LoraSettings`,
:class:`DistillResult`, :func:`shrink`. Losses live in :mod:`kdq.distill.losses`, the
teacher cache in :mod:`kdq.distill.cache`, the Trainer subclass in :mod:`kdq.distill.trainer`
(imported lazily: it pulls in transformers' Trainer).
"""
from .api import DistillResult, distill
from .config import DistillConfig, LoraSettings
from .shrink import shrink

__all__ = ["distill", "DistillConfig", "DistillResult", "LoraSettings", "shrink"]
