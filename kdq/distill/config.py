"""Frozen, validated configuration for :func:`kdq.distill`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.base import Config
from ..config.validate import check_choice, check_range
from ..runtime.template import TemplateConfig

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
SWAP_AUGMENT = (False, True, "paired")
TEACHER_LOGITS = ("cache", "live")
HIDDEN_PROJECTIONS = ("auto", "linear")
TEACHER_QUANTIZE = ("none", "int8", "nf4")
BASE_DTYPES = PRECISIONS
LORA_QUANTIZE = ("none", "nf4")
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings(Config):
    """LoRA for the student through peft. The ``score`` head is always trained in full (fp32).

    ``base_dtype``: the dtype the frozen base is held in; ``"auto"`` is bf16 on CUDA GPUs that
    have it, fp16 on the others (T4), fp32 on CPU (see :mod:`kdq.distill.lora`).
    ``quantize="nf4"``: QLoRA — the base loads in 4-bit nf4 with double quantization through
    bitsandbytes (computing in ``base_dtype``); the ``score`` head is never quantized, and the
    saved student is merged onto the dequantized base, unquantized.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple = LLAMA_LINEAR
    base_dtype: str = "auto"
    quantize: str = "none"

    def __post_init__(self):
        self._accept_dicts()
        check_choice("LoraSettings", "base_dtype", self.base_dtype, BASE_DTYPES)
        check_choice("LoraSettings", "quantize", self.quantize, LORA_QUANTIZE)
        check_range("LoraSettings", "r", self.r, 1, kind=int)
        check_range("LoraSettings", "alpha", self.alpha, 0, lo_open=True)
        check_range("LoraSettings", "dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if not self.target_modules:
            raise ValueError("LoraSettings.target_modules must name at least one module, e.g. ('q_proj', 'v_proj')")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass(frozen=True)
class DistillConfig(Config):
    """Everything :func:`kdq.distill` needs besides the models and the data.

    Loss per row: ``α·CE + (1−α)·divergence(student, teacher) + γ·(1 − cos(p_S, p_T))`` at
    temperature ``T`` (``γ = cosine_weight``; see :mod:`kdq.distill.losses`); transfer rows
    (no label) drop the CE term. With ``teacher=None`` the loss is plain CE. With
    ``hidden_weight > 0`` the batch loss adds ``hidden_weight ·``
    :func:`~kdq.distill.losses.hidden_state_loss` between each student layer and its teacher
    layer (``hidden_layer_map``), through a learned projection where the widths differ
    (:mod:`kdq.distill.objective`); any student that shares the teacher's tokenizer can use
    it. With ``feature_weight > 0`` it adds ``feature_weight ·``
    :func:`~kdq.distill.losses.feature_loss` between the student's pooled final hidden state
    (projected) and the teacher's: from the teacher cache when ``teacher_logits="cache"``
    (no live teacher in memory, no teacher forward per step), else live.

    ``swap_augment``: ``False``; ``True`` adds every row's A/B-swapped copy to the table
    (shuffled independently); ``"paired"`` puts each row and its swapped copy in the same
    batch (``batch_size`` rows = ``batch_size / 2`` pairs; it must be even).
    ``teacher_logits``: ``"cache"`` scores the teacher once over all rows (fingerprinted Arrow
    cache, optional swap TTA) before training; ``"live"`` runs the frozen teacher in every
    training step on exactly the batch the student sees (swapped copies included: a
    consistent teacher, Beyer et al. 2022), with no cache pass and no TTA. The hidden-state
    term runs the teacher live anyway, so ``"live"`` saves the cache pass there.
    ``deterministic``: ``Trainer``'s ``full_determinism`` (the same seed on the same machine
    gives the same figures); turn it off on a GPU whose kernels lack a deterministic variant.
    """

    output_dir: str = "runs/distill"
    template: TemplateConfig = field(default_factory=TemplateConfig)
    # distillation loss
    divergence: str = "forward_kl"
    temperature: float = 2.0
    alpha: float = 0.5
    jsd_beta: float = 0.5
    cosine_weight: float = 0.0
    hidden_weight: float = 0.0
    hidden_loss: str = "cosine"
    hidden_layer_map: object = "auto"  # "auto" or a teacher layer (or None) per student layer
    hidden_projection: str = "auto"  # "auto": learned where the widths differ, identity otherwise; "linear": always
    feature_weight: float = 0.0
    feature_loss: str = "cosine"
    teacher_quantize: str = "none"  # the live teacher's weights: "none" (fp16 on CUDA, fp32 on CPU), "int8", "nf4"
    # teacher pass
    teacher_logits: str = "cache"
    teacher_tta: bool = False
    teacher_batch_size: int = 16
    cache_dir: str | None = None  # None: the shared user cache, kdq.utils.cachedir.default_cache_dir()
    # data
    swap_augment: bool | str = False
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
    gradient_checkpointing: bool | None = None  # None: on when the memory projection says it must be
    seed: int = 0
    deterministic: bool = True
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
        from .losses import DIVERGENCES, HIDDEN_LOSSES  # the registry (torch): only when a config is built

        check_choice(cls, "divergence", self.divergence, DIVERGENCES)
        check_choice(cls, "precision", self.precision, PRECISIONS)
        check_range(cls, "temperature", self.temperature, 0.0, lo_open=True)
        check_range(cls, "alpha", self.alpha, 0.0, 1.0)
        check_range(cls, "jsd_beta", self.jsd_beta, 0.0, 1.0)
        check_range(cls, "cosine_weight", self.cosine_weight, 0.0)
        check_range(cls, "hidden_weight", self.hidden_weight, 0.0)
        check_choice(cls, "hidden_loss", self.hidden_loss, HIDDEN_LOSSES)
        check_range(cls, "feature_weight", self.feature_weight, 0.0)
        check_choice(cls, "feature_loss", self.feature_loss, HIDDEN_LOSSES)
        check_choice(cls, "hidden_projection", self.hidden_projection, HIDDEN_PROJECTIONS)
        check_choice(cls, "teacher_quantize", self.teacher_quantize, TEACHER_QUANTIZE)
        if isinstance(self.hidden_layer_map, (list, tuple)):
            object.__setattr__(self, "hidden_layer_map", tuple(self.hidden_layer_map))
            bad = [
                t for t in self.hidden_layer_map if t is not None and (not isinstance(t, int) or isinstance(t, bool))
            ]
            if bad or not self.hidden_layer_map:
                raise ValueError(
                    f"{cls}.hidden_layer_map must be 'auto' or a list with a teacher layer index (or null) per "
                    f"student layer, e.g. [1, 3, 5, 23], got {self.hidden_layer_map!r}"
                )
        elif self.hidden_layer_map != "auto":
            raise ValueError(
                f"{cls}.hidden_layer_map must be 'auto' or a list of teacher layers, got {self.hidden_layer_map!r}"
            )
        if self.feature_weight > 0 and self.swap_augment and self.teacher_logits == "cache" and not self.teacher_tta:
            raise ValueError(
                f"{cls}: feature_weight > 0 with swap_augment trains on swapped rows, whose teacher features only a "
                "cache pass with teacher_tta=True scores. Set teacher_tta=True, swap_augment=False, or "
                "teacher_logits='live'."
            )
        check_choice(cls, "teacher_logits", self.teacher_logits, TEACHER_LOGITS)
        if self.teacher_logits == "live" and self.teacher_tta:
            raise ValueError(
                f"{cls}: teacher_logits='live' scores each row as the student sees it, so there is no "
                "swap TTA; set teacher_tta=False, or teacher_logits='cache' for TTA targets."
            )
        if isinstance(self.swap_augment, str) and self.swap_augment.lower() in ("true", "false"):  # --set from the CLI
            object.__setattr__(self, "swap_augment", self.swap_augment.lower() == "true")
        if not any(self.swap_augment is v or (isinstance(v, str) and self.swap_augment == v) for v in SWAP_AUGMENT):
            raise ValueError(f"{cls}.swap_augment must be False, True or 'paired', got {self.swap_augment!r}")
        if self.swap_augment == "paired" and self.batch_size % 2:
            raise ValueError(
                f"{cls}.batch_size must be even with swap_augment='paired' (each pair fills two rows), "
                f"got {self.batch_size}"
            )
        check_range(cls, "epochs", self.epochs, 0.0, lo_open=True)
        check_range(cls, "learning_rate", self.learning_rate, 0.0, lo_open=True)
        check_range(cls, "weight_decay", self.weight_decay, 0.0)
        check_range(cls, "warmup_ratio", self.warmup_ratio, 0.0, 1.0, hi_open=True)  # transformers reads >= 1 as steps
        for name in (
            "batch_size",
            "grad_accum",
            "eval_batch_size",
            "teacher_batch_size",
            "logging_steps",
            "save_total_limit",
        ):
            check_range(cls, name, getattr(self, name), 1, kind=int)
        check_range(cls, "max_steps", self.max_steps, -1, kind=int)
        if self.max_steps == 0:
            raise ValueError(f"{cls}.max_steps must be -1 (use epochs) or a positive int, got 0")
        if self.gradient_checkpointing is not None and not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(
                f"{cls}.gradient_checkpointing must be true, false or null (decide from the memory "
                f"projection), got {self.gradient_checkpointing!r}"
            )
        if self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise ValueError(f"{cls}.lora must be a LoraSettings or None, got {type(self.lora).__name__}")
        if self.resume and self.overwrite:
            raise ValueError(f"{cls}: resume=True and overwrite=True contradict each other; pick one")
