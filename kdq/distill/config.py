"""Frozen, validated configuration for :func:`kdq.distill`."""
from __future__ import annotations

from dataclasses import dataclass, field

from .._config import Config
from .._validate import check_choice, check_range
from ..template import TemplateConfig
from .losses import DIVERGENCES

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings(Config):
    """LoRA for the student through peft. The ``score`` head is always trained in full."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple = LLAMA_LINEAR

    def __post_init__(self):
        self._accept_dicts()
        check_range("LoraSettings", "r", self.r, 1, kind=int)
        check_range("LoraSettings", "alpha", self.alpha, 0, lo_open=True)
        check_range("LoraSettings", "dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if not self.target_modules:
            raise ValueError("LoraSettings.target_modules must name at least one module, e.g. ('q_proj', 'v_proj')")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass(frozen=True)
class DistillConfig(Config):
    """Everything :func:`kdq.distill` needs besides the models and the data.

    Loss: ``α·CE + (1−α)·divergence(student, teacher)`` at temperature ``T`` (see
    :mod:`kdq.distill.losses`). With ``teacher=None`` the loss is plain CE.
    """

    output_dir: str = "runs/distill"
    template: TemplateConfig = field(default_factory=TemplateConfig)
    # distillation loss
    divergence: str = "forward_kl"
    temperature: float = 2.0
    alpha: float = 0.5
    jsd_beta: float = 0.5
    # teacher pass
    teacher_tta: bool = False
    teacher_batch_size: int = 16
    cache_dir: str | None = None  # None: the shared user cache, kdq.cachedir.default_cache_dir()
    # data
    swap_augment: bool = False
    # optimisation (forwarded to transformers.TrainingArguments)
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    eval_batch_size: int = 16
    lora: LoraSettings | None = None
    precision: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 10
    save_total_limit: int = 2
    # run management
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self):
        cls = "DistillConfig"
        self._accept_dicts()
        if not isinstance(self.template, TemplateConfig):
            raise ValueError(f"{cls}.template must be a TemplateConfig, got {type(self.template).__name__}")
        check_choice(cls, "divergence", self.divergence, DIVERGENCES)
        check_choice(cls, "precision", self.precision, PRECISIONS)
        check_range(cls, "temperature", self.temperature, 0.0, lo_open=True)
        check_range(cls, "alpha", self.alpha, 0.0, 1.0)
        check_range(cls, "jsd_beta", self.jsd_beta, 0.0, 1.0)
        check_range(cls, "epochs", self.epochs, 0.0, lo_open=True)
        check_range(cls, "learning_rate", self.learning_rate, 0.0, lo_open=True)
        check_range(cls, "weight_decay", self.weight_decay, 0.0)
        check_range(cls, "warmup_ratio", self.warmup_ratio, 0.0, 1.0, hi_open=True)  # transformers reads >= 1 as steps
        for name in ("batch_size", "grad_accum", "eval_batch_size", "teacher_batch_size", "logging_steps",
                     "save_total_limit"):
            check_range(cls, name, getattr(self, name), 1, kind=int)
        check_range(cls, "max_steps", self.max_steps, -1, kind=int)
        if self.max_steps == 0:
            raise ValueError(f"{cls}.max_steps must be -1 (use epochs) or a positive int, got 0")
        if self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise ValueError(f"{cls}.lora must be a LoraSettings or None, got {type(self.lora).__name__}")
        if self.resume and self.overwrite:
            raise ValueError(f"{cls}: resume=True and overwrite=True contradict each other; pick one")
