"""Stage 1-2: cache the teacher's logits, then distil them into a student.

Public API: :func:`distill`, :class:`DistillConfig` and its sections (:class:`LossSettings`,
:class:`TeacherPassSettings`, :class:`TrainingSettings`, :class:`LoraSettings`), :class:`DistillResult`,
:func:`shrink` with :class:`ShrinkConfig`, :func:`teacher_pass`, and what a run needs from its teacher
(:func:`teacher_needs`, :class:`TeacherNeeds`). Losses live in :mod:`kdq.distill.losses`, the
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
    "LossSettings",
    "TeacherPassSettings",
    "TrainingSettings",
    "LoraSettings",
    "Teacher",
    "TeacherNeeds",
    "teacher_needs",
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
        "LossSettings": ".config",
        "TeacherPassSettings": ".config",
        "TrainingSettings": ".config",
        "LoraSettings": ".config",
        "TeacherNeeds": ".needs",
        "teacher_needs": ".needs",
        "shrink": ".shrink",
        "ShrinkConfig": ".shrink_config",
        "Teacher": ".teachers",
        "teacher_pass": ".teacher_pass",
    },
)
