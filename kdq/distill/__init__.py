"""Stage 1-2: cache the teacher's logits, then distil them into a student.

Public API: :func:`distill`, :class:`DistillConfig`, :class:`LoraSettings`,
:class:`DistillResult`, :func:`shrink`, :class:`ShrinkConfig`. Losses live in :mod:`kdq.distill.losses`, the
teacher cache in :mod:`kdq.distill.cache`, the Trainer subclass in :mod:`kdq.distill.trainer`
(imported lazily: it pulls in transformers' Trainer). Names load on first use
(:mod:`kdq.utils.lazy`): ``import kdq.distill.config`` loads no torch (building a config does: it
checks the loss registry).
"""

from ..utils.lazy import lazy_package

__all__ = [
    "distill",
    "DistillConfig",
    "DistillResult",
    "LoraSettings",
    "Teacher",
    "shrink",
    "ShrinkConfig",
    "teacher_pass",
]

lazy_package(
    __name__,
    {
        "distill": ".api",
        "DistillResult": ".api",
        "DistillConfig": ".config",
        "LoraSettings": ".config",
        "shrink": ".shrink",
        "ShrinkConfig": ".shrink_config",
        "Teacher": ".teachers",
        "teacher_pass": ".teacher_pass",
    },
)
