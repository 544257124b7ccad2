"""The distillation objective as one object: the logit terms, the hidden terms and the teacher.

:class:`KDTrainer` takes a :class:`DistillObjective` and nothing else of the loss: the
logit terms (:func:`~kdq.distill.losses.distillation_loss`: CE, a divergence, a cosine term),
the hidden-state term (student layer ``k`` against teacher layer ``layer_map[k]``, through a
learned projection where the widths differ), the pooled-feature term (the vector the
``score`` head reads, against the teacher's, cached or live) and the frozen teacher that
runs live when a term needs it. The names of the loss parts live in :data:`LOSS_PARTS`, once.

Where the student is narrower than the teacher, its hidden states are mapped into the
teacher's width by one ``nn.Linear(H_s, H_t, bias=False)`` per mapped layer (TinyBERT, Jiao et
al. 2020, §3.1, ``W_h``; DistillKit's hidden-state alignment). The projections train with the
student: :class:`StudentWithProjections` holds both, so they are in the optimizer, synchronised
under DDP, saved in every checkpoint and restored by ``resume=True``, while the saved student
folder holds the student alone. A projection starts at

* the identity when the widths are equal;
* the kept-channel scatter of a width-pruned student (:mod:`kdq.distill.width`): student
  channel ``j`` is teacher channel ``kept_channels[j]``, so at step 0 the projected student is
  exactly where pruning left it;
* ``nn.Linear``'s default initialisation otherwise (seeded by ``TrainingSettings.seed``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .losses import distillation_loss, feature_loss, hidden_state_loss

LOSS_PARTS = ("ce", "kd", "cos", "hidden", "feature")  # what KDTrainer logs, in this order


# --------------------------------------------------------------------------- layer maps
def proportional_layer_map(student_layers: int, teacher_layers: int) -> list:
    """Student layer ``k`` → teacher layer ``(k+1)·N_t // N_s − 1``: uniform by depth, last on last (TinyBERT's map)."""
    return [(k + 1) * teacher_layers // student_layers - 1 for k in range(student_layers)]


def resolve_layer_map(setting, student_config, teacher_config) -> tuple:
    """``(layer_map, how)``: a teacher layer (or ``None``: not matched) per student layer, and where it came from.

    ``setting``: ``"auto"`` (the ``kdq_shrink`` record when the student was shrunk from a model
    of the teacher's depth, else :func:`proportional_layer_map`) or an explicit list.
    Raises ``ValueError`` naming the bad entry.
    """
    n_s, n_t = int(student_config.num_hidden_layers), int(teacher_config.num_hidden_layers)
    if setting == "auto":
        record = getattr(student_config, "kdq_shrink", None) or {}
        kept = record.get("kept_layers")
        if kept and record.get("source_layers") == n_t and len(kept) == n_s:
            return list(kept), "kdq_shrink record"
        return proportional_layer_map(n_s, n_t), f"proportional ({n_s} student → {n_t} teacher layers)"
    layer_map = list(setting)
    if len(layer_map) != n_s:
        raise ValueError(
            f"DistillConfig.loss.hidden_layer_map has {len(layer_map)} entries but the student has {n_s} layers: "
            f"give one teacher layer (0..{n_t - 1}, or null for no match) per student layer, or 'auto'."
        )
    for k, t in enumerate(layer_map):
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < n_t):
            raise ValueError(
                f"DistillConfig.loss.hidden_layer_map[{k}] = {t!r}: must be a teacher layer in [0, {n_t - 1}] or null."
            )
    if all(t is None for t in layer_map):
        raise ValueError(
            "DistillConfig.loss.hidden_layer_map matches no layer; map at least one, or set loss.hidden_weight=0."
        )
    return layer_map, "explicit"


# --------------------------------------------------------------------------- projections
def projection(student_width: int, teacher_width: int, kept_channels=None) -> nn.Module:
    """``nn.Linear(H_s, H_t, bias=False)`` in fp32, initialised as the module doc says."""
    proj = nn.Linear(student_width, teacher_width, bias=False)
    with torch.no_grad():
        if kept_channels is not None and len(kept_channels) == student_width:
            proj.weight.zero_()
            proj.weight[torch.as_tensor(kept_channels), torch.arange(student_width)] = 1.0
        elif student_width == teacher_width:
            proj.weight.copy_(torch.eye(student_width))
    return proj


def _kept_channels(student_config, teacher_width: int):
    width = (getattr(student_config, "kdq_shrink", None) or {}).get("width") or {}
    if (width.get("source") or {}).get("hidden_size") == teacher_width:
        return width.get("kept_channels")
    return None


def pooled_index(input_ids: torch.Tensor, pad_token_id) -> torch.Tensor:
    """``(B,)`` position the ``score`` head reads: the rightmost token that is not padding
    (transformers' ``*ForSequenceClassification`` rule)."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (positions * (input_ids != pad_token_id).int()).argmax(-1)


def pooled(states: torch.Tensor, input_ids: torch.Tensor, pad_token_id) -> torch.Tensor:
    """``(B, H)``: the final hidden state at :func:`pooled_index` (the vector the ``score`` head reads)."""
    return states[torch.arange(states.shape[0], device=states.device), pooled_index(input_ids, pad_token_id)]


class StudentWithProjections(nn.Module):
    """What the Trainer trains when the objective uses the student's hidden states.

    ``forward`` runs the student; in training it returns a dict of ``logits``, ``kdq_hidden``: the
    mapped layers' hidden states projected into the teacher's width (a list, one ``(B, L, H_t)``
    per matched student layer), and ``kdq_feature``: the projected pooled feature ``(B, H_t)``. Everything
    differentiable happens inside ``forward``, which DDP needs. :attr:`student` is what is saved.
    """

    def __init__(
        self,
        student,
        hidden_projections: nn.ModuleList | None,
        feature_projection: nn.Module | None,
        layer_map: list | None,
    ):
        super().__init__()
        self.student = student
        self.hidden_projections = hidden_projections
        self.feature_projection = feature_projection
        self.layer_map = layer_map

    # the Trainer reads these from the model it trains
    @property
    def config(self):
        return self.student.config

    def activation_checkpointing_enable(self, **kwargs):
        return self.student.activation_checkpointing_enable(**kwargs)

    @property
    def is_activation_checkpointing(self):
        return self.student.is_activation_checkpointing

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if not self.training:
            return self.student(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        out = self.student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
        states = out.hidden_states[1:]  # states[k]: the output of student layer k (the last one after the final norm)
        # a plain dict: DDP rebuilds a ModelOutput from its fields, and these are not fields of it
        result = {"logits": out.logits}
        if self.hidden_projections is not None:
            matched = [k for k, t in enumerate(self.layer_map) if t is not None]
            result["kdq_hidden"] = [proj(states[k].float()) for proj, k in zip(self.hidden_projections, matched)]
        if self.feature_projection is not None:
            feature = pooled(states[-1], input_ids, self.student.config.pad_token_id)
            result["kdq_feature"] = self.feature_projection(feature.float())
        return result


# --------------------------------------------------------------------------- the objective
@dataclass
class DistillObjective:
    """Everything :class:`KDTrainer` minimises besides the model it trains.

    Args:
        divergence, alpha, temperature, beta, cosine_weight: the logit terms
            (:func:`~kdq.distill.losses.distillation_loss`).
        teacher: the frozen teacher, run live under ``torch.no_grad()`` in every training step
            (:attr:`TeacherNeeds.live <kdq.distill.needs.TeacherNeeds.live>`), or ``None``.
        live_logits: take the KD targets from the live teacher's forward on exactly this batch.
        teacher_states: the live forward returns hidden states (:attr:`TeacherNeeds.hidden_states
            <kdq.distill.needs.TeacherNeeds.hidden_states>`: the hidden term, or live features).
        hidden_weight, hidden_loss, layer_map: the hidden-state term; ``layer_map[k]`` is the
            teacher layer of student layer ``k`` (``None``: not matched).
        feature_weight, feature_loss: the pooled-feature term, against cached teacher
            features when the batch carries them, else the live teacher's.
    """

    divergence: str = "forward_kl"
    alpha: float = 0.5
    temperature: float = 1.0
    beta: float = 0.5
    cosine_weight: float = 0.0
    teacher: object = None
    live_logits: bool = False
    teacher_states: bool = False
    hidden_weight: float = 0.0
    hidden_loss: str = "cosine"
    layer_map: list | None = None
    feature_weight: float = 0.0
    feature_loss: str = "cosine"

    @property
    def uses_student_states(self) -> bool:
        return self.hidden_weight > 0 or self.feature_weight > 0

    def __call__(self, outputs, batch: dict, labels: torch.Tensor, training: bool) -> tuple:
        """``(loss, {part: scalar or None})`` for one batch.

        Args:
            outputs: the student's forward output, or in training with the hidden / feature terms
                the dict of :class:`StudentWithProjections` (``logits``, ``kdq_hidden``, ``kdq_feature``).
            batch: the collated inputs: ``input_ids``, ``attention_mask`` and, when cached,
                ``teacher_logits`` ``(B, C)`` and ``teacher_features`` ``(B, H_t)``.
            labels: ``(B,)`` class ids, ``-1`` for transfer rows.
            training: only training batches run the live teacher and get the terms that need hidden states.
        """
        teacher_logits = batch.get("teacher_logits")
        teacher_features = batch.get("teacher_features")
        t_out = None
        if training and self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    output_hidden_states=self.teacher_states,
                    use_cache=False,
                )
            if teacher_logits is None or self.live_logits:
                teacher_logits = t_out.logits.float()
        terms = distillation_loss(
            outputs["logits"],
            teacher_logits,
            labels,
            divergence=self.divergence,
            alpha=self.alpha,
            temperature=self.temperature,
            beta=self.beta,
            cosine_weight=self.cosine_weight,
        )
        loss = terms.loss
        parts = {"ce": terms.ce, "kd": terms.kd, "cos": terms.cos, "hidden": None, "feature": None}
        if training and self.hidden_weight > 0:
            teacher_states = t_out.hidden_states[1:]
            targets = [teacher_states[t] for t in self.layer_map if t is not None]
            h = hidden_state_loss(outputs["kdq_hidden"], targets, batch["attention_mask"], kind=self.hidden_loss)
            loss = loss + self.hidden_weight * h
            parts["hidden"] = h
        if training and self.feature_weight > 0:
            if teacher_features is None:
                teacher_features = pooled(t_out.hidden_states[-1], batch["input_ids"], self.teacher.config.pad_token_id)
            f = feature_loss(outputs["kdq_feature"], teacher_features, kind=self.feature_loss)
            loss = loss + self.feature_weight * f
            parts["feature"] = f
        return loss, parts


def build_objective(
    loss, needs, student_model, *, teacher_model=None, teacher_width: int | None = None, seed: int = 0, log=print
):
    """The run's :class:`DistillObjective`, and the model the Trainer trains.

    Args:
        loss: the run's :class:`~kdq.distill.config.LossSettings`.
        needs: the run's :class:`~kdq.distill.needs.TeacherNeeds` (live logits, which terms have a teacher).
        student_model: the student (LoRA-wrapped already, when LoRA is on).
        teacher_model: the frozen live teacher (``needs.live``), or ``None`` (hard labels, or cached
            targets only).
        teacher_width: the teacher's hidden size for the feature term (the cached features' width
            when there is no live teacher).
        seed: the run's seed (``TrainingSettings.seed``): projections are created under
            ``torch.manual_seed(seed)``.
    Returns:
        ``(objective, model)``: ``model`` is ``student_model``, or a :class:`StudentWithProjections`
        around it when a term reads the student's hidden states.
    """
    objective = DistillObjective(
        divergence=loss.divergence,
        alpha=loss.alpha,
        temperature=loss.temperature,
        beta=loss.jsd_beta,
        cosine_weight=loss.cosine_weight,
        teacher=teacher_model,
        live_logits=needs.live_logits and teacher_model is not None,
        teacher_states=needs.hidden_states and teacher_model is not None,
        hidden_weight=loss.hidden_weight if teacher_model is not None else 0.0,
        hidden_loss=loss.hidden_loss,
        feature_weight=loss.feature_weight if (teacher_model is not None or teacher_width) else 0.0,
        feature_loss=loss.feature_loss,
    )
    if not objective.uses_student_states:
        return objective, student_model
    s_cfg = student_model.config
    h_s = int(s_cfg.hidden_size)

    def make(h_t):
        if h_s == h_t and loss.hidden_projection == "auto":
            return nn.Identity()
        return projection(h_s, h_t, _kept_channels(s_cfg, h_t))

    torch.manual_seed(seed)
    hidden, feature = None, None
    if objective.hidden_weight > 0:
        t_cfg = teacher_model.config
        objective.layer_map, how = resolve_layer_map(loss.hidden_layer_map, s_cfg, t_cfg)
        matched = [(k, t) for k, t in enumerate(objective.layer_map) if t is not None]
        hidden = nn.ModuleList([make(int(t_cfg.hidden_size)) for _ in matched])
        learned = sum(p.numel() for p in hidden.parameters())
        log(
            f"kdq: hidden-state term: {len(matched)} student layers → teacher layers "
            f"{[t for _, t in matched]} ({how}); projections {h_s}→{t_cfg.hidden_size}: "
            + (f"{learned:,} learned parameters" if learned else "identity")
        )
    if objective.feature_weight > 0:
        h_t = int(teacher_width or teacher_model.config.hidden_size)
        feature = make(h_t)
    model = StudentWithProjections(student_model, hidden, feature, objective.layer_map)
    return objective, model


def projection_summary(model) -> dict | None:
    """``{"params": n, "checksum": sha256[:16]}`` of the learned projections of a :class:`StudentWithProjections`
    (``None`` for a plain student): a cheap identity of their values, equal on every DDP process."""
    import hashlib

    if not isinstance(model, StudentWithProjections):
        return None
    h, n = hashlib.sha256(), 0
    for name, p in sorted((k, v) for k, v in model.named_parameters() if not k.startswith("student.")):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        n += p.numel()
    return {"params": n, "checksum": h.hexdigest()[:16]}
