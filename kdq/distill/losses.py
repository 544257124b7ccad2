"""Distillation losses as pure fp32 functions of ``(batch, num_labels)`` logits.

Every divergence returns a per-row tensor of shape ``(B,)``, computed in fp32 whatever
the input dtype (fp16 logits from a T4 would otherwise underflow in ``log_softmax``), and
is scaled by ``T²`` (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
§2): softening by ``T`` shrinks gradients by ``1/T²``, and the factor keeps the soft and
hard terms on the same scale when ``T`` changes.

Divergences are registered by name (:func:`register_divergence`), so a new one plugs
into :class:`~kdq.distill.DistillConfig` without touching the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DIVERGENCES: dict[str, Callable] = {}


def register_divergence(name: str):
    """Register ``fn(student_logits, teacher_logits, *, temperature, beta) -> (B,)`` under ``name``."""

    def deco(fn):
        if name in DIVERGENCES:
            raise ValueError(f"divergence {name!r} is already registered")
        DIVERGENCES[name] = fn
        return fn

    return deco


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities: ``Σ_c p_c (log p_c − log q_c)``, shape ``(B,)``."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


@register_divergence("forward_kl")
def forward_kl(student_logits, teacher_logits, *, temperature: float = 1.0, beta: float = 0.5):
    """``T² · KL(p_T ‖ p_S)`` with ``p = softmax(z / T)``; mode-covering (Hinton et al. 2015). ``(B,)``."""
    s, t = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    return temperature**2 * _kl(t, s)


@register_divergence("reverse_kl")
def reverse_kl(student_logits, teacher_logits, *, temperature: float = 1.0, beta: float = 0.5):
    """``T² · KL(p_S ‖ p_T)``; mode-seeking (Gu et al. 2024, MiniLLM). ``(B,)``."""
    s, t = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    return temperature**2 * _kl(s, t)


@register_divergence("jsd")
def generalized_jsd(student_logits, teacher_logits, *, temperature: float = 1.0, beta: float = 0.5):
    """Generalised Jensen-Shannon divergence of Agarwal et al. 2024 (GKD), as in trl's GKDTrainer.

    ``M = β·p_T + (1−β)·p_S``;  ``JSD(β) = T² · [β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M)]``.

    ``β = 0.5`` is the symmetric JSD, bounded by ``T²·ln 2``. Following trl, the endpoints
    are defined as the KLs the family interpolates between: ``β = 0`` is forward KL
    ``KL(p_T ‖ p_S)`` and ``β = 1`` is reverse KL ``KL(p_S ‖ p_T)``. Shape ``(B,)``.
    """
    s, t = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    if beta == 0.0:
        return temperature**2 * _kl(t, s)
    if beta == 1.0:
        return temperature**2 * _kl(s, t)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1.0 - beta)]), dim=0)
    return temperature**2 * (beta * _kl(t, m) + (1.0 - beta) * _kl(s, m))


@register_divergence("prob_cosine")
def prob_cosine(student_logits, teacher_logits, *, temperature: float = 1.0, beta: float = 0.5):
    """``T² · (1 − cos(p_S, p_T))`` on the probability vectors; bounded by ``T²``. ``(B,)``.

    The third term of the LMSYS 1st-place loss (CE + KL + cosine at T=1). Usable alone as a
    divergence or, more usually, beside one through ``DistillConfig.loss.cosine_weight``.
    """
    s = F.softmax(student_logits.float() / temperature, dim=-1)
    t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * (1.0 - F.cosine_similarity(s, t, dim=-1))


IGNORE_LABEL = -1  # a row without a human label (a transfer-set row; kdq.data's "unknown"): no CE term


@dataclass
class LossParts:
    """The combined loss and its parts, each a scalar fp32 tensor.

    ``ce`` is the mean over labelled rows (``None`` when the batch has none); ``kd`` and
    ``cos`` are means over all rows (``None`` when unused).
    """

    loss: torch.Tensor
    ce: torch.Tensor | None
    kd: torch.Tensor | None
    cos: torch.Tensor | None = None


def distillation_loss(
    student_logits,
    teacher_logits,
    labels,
    *,
    divergence: str = "forward_kl",
    alpha: float = 0.5,
    temperature: float = 1.0,
    beta: float = 0.5,
    cosine_weight: float = 0.0,
) -> LossParts:
    """Per row ``ℓ_i = α · m_i · CE(z_S, y)_i + (1 − α) · D(z_S, z_T)_i + γ · COS_i``; the loss is the batch
    mean of ``ℓ``.

    ``m_i`` is 1 for a labelled row and 0 for a transfer row (label :data:`IGNORE_LABEL`):
    transfer rows contribute the teacher terms only, with the same per-row weight as
    labelled rows, so a batch without transfer rows gives ``α·CE + (1−α)·D + γ·COS``.
    ``γ`` is ``cosine_weight`` (:func:`prob_cosine` at the same temperature).

    Args:
        student_logits: ``(B, C)`` any float dtype.
        teacher_logits: ``(B, C)`` or ``None`` (hard labels only: ``L = CE``; every row needs a label).
        labels: ``(B,)`` int64 class ids, or :data:`IGNORE_LABEL` (any negative id) for rows without one.
        divergence: a key of :data:`DIVERGENCES`.
    """
    z = student_logits.float()
    labelled = labels >= 0
    ce_rows = F.cross_entropy(z, labels.clamp(min=0), reduction="none") * labelled
    n_lab = int(labelled.sum())
    ce = ce_rows.sum() / n_lab if n_lab else None
    if teacher_logits is None:
        if n_lab != len(labels):
            raise ValueError("rows without labels (transfer rows) need teacher logits; pass a teacher")
        return LossParts(loss=ce, ce=ce, kd=None)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; registered: {sorted(DIVERGENCES)}")
    kd_rows = DIVERGENCES[divergence](student_logits, teacher_logits, temperature=temperature, beta=beta)
    rows = alpha * ce_rows + (1.0 - alpha) * kd_rows
    cos = None
    if cosine_weight:
        cos_rows = prob_cosine(student_logits, teacher_logits, temperature=temperature)
        rows = rows + cosine_weight * cos_rows
        cos = cos_rows.mean()
    return LossParts(loss=rows.mean(), ce=ce, kd=kd_rows.mean(), cos=cos)


HIDDEN_LOSSES = ("cosine", "mse")


def hidden_state_loss(student_states, teacher_states, mask: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean over layer pairs of a per-token distance between hidden states, over real tokens only.

    Args:
        student_states, teacher_states: sequences of ``(B, L, H)`` tensors, paired by position
            (student layer ``k`` with the teacher layer it was copied from).
        mask: ``(B, L)`` attention mask; padded positions do not count.
        kind: ``"cosine"`` (``1 − cos`` per token; scale-free, DistilBERT's choice) or ``"mse"``
            (mean squared difference over the hidden size).
    Returns a scalar fp32 tensor.
    """
    if kind not in HIDDEN_LOSSES:
        raise ValueError(f"unknown hidden-state loss {kind!r}; choose from {HIDDEN_LOSSES}")
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(
            f"need the same, non-zero number of student and teacher states, got "
            f"{len(student_states)} and {len(teacher_states)}"
        )
    m = mask.float()
    per_layer = []
    for s, t in zip(student_states, teacher_states):
        s, t = s.float(), t.float()
        if kind == "cosine":
            d = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-6)
        else:
            d = (s - t).pow(2).mean(-1)
        per_layer.append((d * m).sum() / m.sum().clamp(min=1.0))
    return torch.stack(per_layer).mean()


FEATURE_LOSSES = HIDDEN_LOSSES + ("centered-cosine",)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean over rows of a distance between pooled features, ``(B, H)`` each (any float dtype).

    ``"cosine"``: ``1 − cos`` per row (scale-free); ``"mse"``: mean squared difference over the
    hidden size (matches the scale too, which is what the teacher's ``score`` head reads:
    SimKD, Chen et al. 2022, trains the student's projected feature with this L2 loss);
    ``"centered-cosine"``: ``1 − cos`` after subtracting each side's batch mean, so a vector that every
    row shares counts for nothing (a pooled feature that is mostly the same template token's state
    otherwise lets ``1 − cos`` fall to ~0.2 with no row told apart); a batch of one row gives 0. Scalar fp32.
    Raises ``ValueError`` for another ``kind`` or unequal shapes.
    """
    if kind not in FEATURE_LOSSES:
        raise ValueError(f"unknown feature loss {kind!r}; choose from {FEATURE_LOSSES}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher features must have the same shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}; project the student's feature into the teacher's width first"
        )
    s, t = student.float(), teacher.float()
    if kind == "centered-cosine":
        if s.shape[0] < 2:  # one row has no batch to be told apart from (a last, short batch): no signal
            return (s * 0.0).sum()
        s, t = s - s.mean(0, keepdim=True), t - t.mean(0, keepdim=True)
    if kind in ("cosine", "centered-cosine"):
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-6)).mean()
    return (s - t).pow(2).mean()
