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
from dataclasses import dataclass
from typing import Callable

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
    return temperature ** 2 * _kl(t, s)


@register_divergence("reverse_kl")
def reverse_kl(student_logits, teacher_logits, *, temperature: float = 1.0, beta: float = 0.5):
    """``T² · KL(p_S ‖ p_T)``; mode-seeking (Gu et al. 2024, MiniLLM). ``(B,)``."""
    s, t = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    return temperature ** 2 * _kl(s, t)


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
        return temperature ** 2 * _kl(t, s)
    if beta == 1.0:
        return temperature ** 2 * _kl(s, t)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1.0 - beta)]), dim=0)
    return temperature ** 2 * (beta * _kl(t, m) + (1.0 - beta) * _kl(s, m))


@dataclass
class LossParts:
    """The combined loss and its two parts, each a scalar fp32 tensor (batch means)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor | None


def distillation_loss(student_logits, teacher_logits, labels, *, divergence: str = "forward_kl",
                      alpha: float = 0.5, temperature: float = 1.0, beta: float = 0.5) -> LossParts:
    """``L = α · CE(z_S, y) + (1 − α) · D(z_S, z_T)``, averaged over the batch.

    Args:
        student_logits: ``(B, C)`` any float dtype.
        teacher_logits: ``(B, C)`` or ``None`` (hard labels only: ``L = CE``).
        labels: ``(B,)`` int64 class ids.
        divergence: a key of :data:`DIVERGENCES`.
    """
    ce = F.cross_entropy(student_logits.float(), labels)
    if teacher_logits is None:
        return LossParts(loss=ce, ce=ce, kd=None)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; registered: {sorted(DIVERGENCES)}")
    kd = DIVERGENCES[divergence](student_logits, teacher_logits, temperature=temperature, beta=beta).mean()
    return LossParts(loss=alpha * ce + (1.0 - alpha) * kd, ce=ce, kd=kd)
