"""Will a training run fit? The training-memory plan of :func:`kdq.distill`, before any weights load.

:func:`plan_training` projects the peak memory (:mod:`kdq.costs.train_memory`) of the
student's config under the run's settings, decides gradient checkpointing and refuses what
cannot fit, naming settings that would.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..costs.modelspec import LLAMA_LINEAR, ModelSpec
from ..costs.train_memory import (
    GB,
    TrainDevice,
    TrainSetup,
    alternatives,
    cuda_train_device,
    fits,
    format_projection,
    peak_fits,
    project_training,
)
from ..utils.distributed import is_main_process, training_device
from .config import DistillConfig
from .needs import teacher_needs


class TrainingMemoryError(ValueError):
    """The projected peak training memory exceeds the device; the message names settings that fit."""


def student_spec(student) -> ModelSpec | None:
    """The student's shape from its config (folder, adapter folder, model object or Hub id), or ``None``."""
    from ..models import is_hub_id, model_source, source_config

    try:
        if not isinstance(student, torch.nn.Module) and is_hub_id(model_source(student)):
            from ..costs.train_memory import known_models, model_spec

            hub_id = model_source(student)
            if any(e["hub_id"] == hub_id for e in known_models().values()):  # no Hub needed
                return model_spec(hub_id)
        return ModelSpec.from_config(source_config(student))
    except (OSError, ValueError, TypeError):
        return None


def training_setup(cfg: DistillConfig, device, *, checkpointing: bool, student=None, teacher=None) -> TrainSetup:
    """The :class:`TrainSetup` a :class:`DistillConfig` trains with on ``device``.

    With ``student`` and ``teacher`` :class:`ModelSpec` s it also counts what distillation adds
    (:func:`~kdq.distill.needs.teacher_needs`): the live teacher (in ``cfg.teacher_pass.quantize``, half
    precision on CUDA, fp32 on CPU) when a term runs it, its hidden states when a term keeps them, and the
    learned projections.
    """
    device = torch.device(device)
    lora, training = cfg.lora, cfg.training
    if lora is not None and lora.base_dtype != "auto":
        half_base = lora.base_dtype != "fp32"
    else:  # the rule of base_dtype(), without asking a GPU we may be planning for from a CPU machine
        half_base = lora is not None and device.type == "cuda"
    half = half_base or (device.type == "cuda" and training.precision != "fp32")
    method = "full" if lora is None else ("qlora" if lora.quantize == "nf4" else "lora")
    extra = (
        {}
        if lora is None
        else dict(
            lora_r=lora.r,
            lora_dropout=lora.dropout,
            lora_targets=tuple(m for m in lora.target_modules if m in LLAMA_LINEAR) or ("q_proj",),
        )
    )
    if student is not None and teacher is not None:
        extra.update(_distillation_setup(cfg, device, student, teacher))
    return TrainSetup(
        method=method,
        batch_size=training.batch_size,
        seq_len=cfg.template.max_length,
        checkpointing=checkpointing,
        half=half,
        **extra,
    )


def _distillation_setup(cfg: DistillConfig, device, student: ModelSpec, teacher: ModelSpec) -> dict:
    needs, loss = teacher_needs(cfg, has_teacher=True), cfg.loss
    learned = student.hidden_size != teacher.hidden_size or loss.hidden_projection == "linear"
    out = {"projection_width": teacher.hidden_size}
    if needs.live:
        quantize = cfg.teacher_pass.quantize
        out.update(
            teacher=teacher,
            teacher_weights=quantize if quantize != "none" else ("half" if device.type == "cuda" else "full"),
            teacher_states=needs.hidden_states,
        )
    if loss.hidden_weight > 0 and learned:
        layers = loss.hidden_layer_map
        out["projections"] = student.num_layers if layers == "auto" else sum(x is not None for x in layers)
    out["feature_projection"] = loss.feature_weight > 0 and learned
    return out


def plan_training(student, cfg: DistillConfig, *, teacher=None, device: TrainDevice | None = None, log=print):
    """Project peak training memory, decide gradient checkpointing, refuse what cannot fit.

    Args:
        student: what :func:`kdq.distill` will train (its config is read, never its weights).
        teacher: the run's teacher (a folder, adapter folder, Hub id or model; its config is read):
            the live teacher and the projections count too.
        cfg: the run's config; ``cfg.training.gradient_checkpointing=None`` lets the projection decide.
        device: the GPU to plan for; default: this process's CUDA GPU, or none on CPU (the
            projection is printed, nothing is refused).
    Returns:
        ``(cfg, projection)``: ``cfg`` with ``training.gradient_checkpointing`` resolved to a bool;
        ``projection`` the :func:`~kdq.costs.train_memory.project_training` dict (or ``None``
        when the student's config is not Llama-like).
    Raises:
        TrainingMemoryError: on a device the projected peak does not fit, naming settings that do.
    """
    torch_device = training_device()
    if device is None and torch_device.type == "cuda":
        device = cuda_train_device(torch_device.index or 0)
    plan_device = "cuda" if device is not None else torch_device
    say = log if is_main_process() else (lambda *_: None)
    spec = student_spec(student)
    user = cfg.training.gradient_checkpointing
    if spec is None:
        ckpt = bool(user)
        say(
            f"kdq: no training-memory projection (the student's config is not a Llama-like decoder); "
            f"gradient checkpointing {'on' if ckpt else 'off'}"
        )
        return _with_checkpointing(cfg, ckpt), None
    teacher_spec = student_spec(teacher) if teacher is not None else None
    setup = training_setup(cfg, plan_device, checkpointing=bool(user), student=spec, teacher=teacher_spec)
    why = "set by you"
    if user is None:
        need = device is not None and not fits(spec, setup, device)
        setup = replace(setup, checkpointing=need)
        why = (
            "auto: the projection without it exceeds the device"
            if need
            else "auto: fits without it"
            if device is not None
            else "auto: off on CPU"
        )
    proj = project_training(spec, setup)
    name = getattr(getattr(student, "config", None), "_name_or_path", None) or str(student)
    say("kdq: " + format_projection(Path(name).name or name, proj, device))
    say(f"kdq: gradient checkpointing {'on' if setup.checkpointing else 'off'} ({why})")
    if device is not None and not peak_fits(proj, device):
        options = alternatives(spec, setup, device)
        hint = "; ".join(_as_settings(o, setup) for o in options) or (
            "nothing close fits: use a GPU with more memory or a smaller model"
        )
        raise TrainingMemoryError(
            f"training would need {proj['peak'] / GB:.1f} GB on {device.name}, which has {device.usable_gb:.1f} GB "
            f"usable ({setup.describe()}). Settings that fit: {hint}."
        )
    return _with_checkpointing(cfg, setup.checkpointing), proj


def _as_settings(option: TrainSetup, current: TrainSetup) -> str:
    """A :class:`TrainSetup` as the DistillConfig fields (``--set`` names) that would change."""
    out = []
    if option.method != current.method:
        out.append(
            "lora=LoraSettings(quantize='nf4') (--set lora.quantize=nf4)"
            if option.method == "qlora"
            else "lora=LoraSettings() (--set lora.r=16)"
        )
    if option.checkpointing != current.checkpointing:
        out.append("training.gradient_checkpointing=True")
    if option.batch_size != current.batch_size:
        factor = current.batch_size // option.batch_size
        out.append(f"training.batch_size={option.batch_size} (training.grad_accum x{factor} keeps the effective batch)")
    if option.seq_len != current.seq_len:
        out.append(f"template.max_length={option.seq_len}")
    if option.teacher_weights != current.teacher_weights:
        weights = option.teacher_weights
        out.append(f"teacher_pass.quantize='{weights}' (--set teacher_pass.quantize={weights})")
    return ", ".join(out)


def _with_checkpointing(cfg: DistillConfig, on: bool) -> DistillConfig:
    return cfg.replace(training=cfg.training.replace(gradient_checkpointing=on))
