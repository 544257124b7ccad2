"""What a run needs from its teacher, derived once from its config: the one rule every step asks.

:func:`teacher_needs` reads :class:`~kdq.distill.config.DistillConfig`'s ``loss`` and ``teacher_pass``
sections and answers, as a frozen :class:`TeacherNeeds`, the questions the run's steps would otherwise
each answer on their own: does the teacher model run in every training step (``live``), must that forward
return hidden states (``hidden_states``), does a cache pass score the rows before training
(``cached_logits``), and does it also cache the pooled features (``cached_features``)? The training-memory
plan (:mod:`kdq.distill.planning`), the teacher pass and the live teacher (:mod:`kdq.distill.api`), the
teacher kinds (:mod:`kdq.distill.teachers`: only a model runs live) and the objective
(:mod:`kdq.distill.objective`) all ask it. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherNeeds:
    """What a run needs from its teacher.

    Attributes:
        live: the teacher model runs in every training step, on the batch the student sees (the
            hidden-state term, or ``teacher_pass.logits="live"``).
        hidden_states: that live forward returns the teacher's hidden states (the hidden-state term, or the
            pooled-feature term without cached features).
        cached_logits: a teacher pass scores the rows into the shared cache before training
            (``teacher_pass.logits="cache"``).
        cached_features: that cache also holds the teacher's pooled final hidden state (the feature term's
            target; ``loss.feature_weight > 0`` with cached logits).
        terms: the settings that need the teacher *model* (its forward or its hidden states), as the errors
            name them; a table or an ensemble of teachers cannot serve any of them. Listed whether or not the
            run has a teacher.
    """

    live: bool = False
    hidden_states: bool = False
    cached_logits: bool = False
    cached_features: bool = False
    terms: tuple = ()

    @property
    def live_logits(self) -> bool:
        """The KD targets come from the live forward on each batch (``teacher_pass.logits="live"``)."""
        return self.live and not self.cached_logits

    @property
    def reads_model(self) -> bool:
        """The teacher model itself is read (live, or its cached features): the memory plan counts its shape
        and the projections into its width."""
        return bool(self.terms) and (self.live or self.cached_logits)


def teacher_needs(cfg, has_teacher: bool) -> TeacherNeeds:
    """What a run of ``cfg`` (a :class:`~kdq.distill.config.DistillConfig`) needs from its teacher.

    Args:
        cfg: the run's config; only ``cfg.loss`` and ``cfg.teacher_pass`` are read.
        has_teacher: whether the run has a teacher (``teacher=None``: hard labels, nothing is needed).
    Returns:
        :class:`TeacherNeeds`; all false for ``has_teacher=False``.
    Raises:
        ValueError: ``loss.hidden_weight > 0`` or ``loss.feature_weight > 0`` without a teacher (both match
            the teacher's hidden states), naming the field and the fix.
    """
    loss, logits = cfg.loss, cfg.teacher_pass.logits
    terms = []
    if loss.hidden_weight > 0:
        terms.append("loss.hidden_weight > 0 (the hidden-state term)")
    if loss.feature_weight > 0:
        terms.append("loss.feature_weight > 0 (the pooled-feature term)")
    if logits == "live":
        terms.append("teacher_pass.logits='live'")
    if not has_teacher:
        for name in ("hidden_weight", "feature_weight"):
            if getattr(loss, name) > 0:
                raise ValueError(
                    f"DistillConfig.loss.{name} > 0 matches the teacher's hidden states and needs a teacher; "
                    f"pass teacher=... or set loss.{name}=0 (--set loss.{name}=0)."
                )
        return TeacherNeeds(terms=tuple(terms))
    live = loss.hidden_weight > 0 or logits == "live"
    return TeacherNeeds(
        live=live,
        hidden_states=loss.hidden_weight > 0 or (loss.feature_weight > 0 and logits == "live"),
        cached_logits=logits == "cache",
        cached_features=loss.feature_weight > 0 and logits == "cache",
        terms=tuple(terms),
    )
