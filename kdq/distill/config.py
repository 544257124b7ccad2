"""Frozen, validated configuration for :func:`kdq.distill`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.base import Config
from ..config.validate import check_choice, check_range
from ..runtime.template import TemplateConfig

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
SWAP_AUGMENT = (False, True, "paired")
TEACHER_LOGITS = ("cache", "live")
BASE_DTYPES = PRECISIONS
LORA_QUANTIZE = ("none", "nf4")
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings(Config):
    """LoRA for the student through peft. The ``score`` head is always trained in full (fp32).

    ``quantize="nf4"`` is QLoRA: the saved student is merged onto the dequantized base,
    unquantized (see :mod:`kdq.distill.lora`). Each field's help is in its metadata.
    """

    r: int = field(default=16, metadata={"help": "LoRA rank of each adapted matrix"})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator: the update is B·A·alpha/r"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapters' input, in [0, 1)"})
    target_modules: tuple = field(
        default=LLAMA_LINEAR, metadata={"help": "the linear layers that get adapters (Llama names)"}
    )
    base_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype the frozen base is held in: auto (bf16 on GPUs that have it, fp16 on the others, "
            "fp32 on CPU), fp16, bf16 or fp32"
        },
    )
    quantize: str = field(
        default="none",
        metadata={
            "help": "none, or nf4 for QLoRA: the base in 4-bit nf4 with double quantization (bitsandbytes); "
            "the score head is never quantized"
        },
    )

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
    ``hidden_weight > 0`` (students made by :func:`kdq.shrink` from the same teacher) the batch
    loss adds ``hidden_weight ·`` :func:`~kdq.distill.losses.hidden_state_loss` between each
    student layer and the teacher layer it was copied from.

    ``teacher_logits="live"`` runs the frozen teacher in every training step on exactly the batch
    the student sees (swapped copies included: a consistent teacher, Beyer et al. 2022), with no
    cache pass and no TTA; the hidden-state term runs the teacher live anyway, so ``"live"`` saves
    the cache pass there. Each field's help is in its metadata (``kdq distill --help`` lists them).
    """

    output_dir: str = field(
        default="runs/distill", metadata={"help": "run folder; the student is saved in <output_dir>/student"}
    )
    template: TemplateConfig = field(
        default_factory=TemplateConfig, metadata={"help": "how rows become tokens (recorded in the student)"}
    )
    # distillation loss
    divergence: str = field(
        default="forward_kl",
        metadata={"help": "teacher-student divergence: forward_kl, reverse_kl, jsd, prob_cosine (or registered)"},
    )
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature T of the divergence (> 0)"})
    alpha: float = field(
        default=0.5, metadata={"help": "weight of the hard-label CE; the divergence gets 1 - alpha (0 to 1)"}
    )
    jsd_beta: float = field(
        default=0.5, metadata={"help": "jsd only: mixture weight beta (0 = forward KL, 1 = reverse KL)"}
    )
    cosine_weight: float = field(
        default=0.0, metadata={"help": "weight of the extra 1 - cos(p_S, p_T) term on the probabilities"}
    )
    hidden_weight: float = field(
        default=0.0,
        metadata={"help": "weight of the hidden-state loss (> 0 needs a student made by kdq.shrink from the teacher)"},
    )
    hidden_loss: str = field(
        default="cosine", metadata={"help": "hidden-state loss per layer: cosine (1 - cos) or mse"}
    )
    # teacher pass
    teacher_logits: str = field(
        default="cache",
        metadata={"help": "cache: score the teacher once before training (optional TTA); live: in every step"},
    )
    teacher_tta: bool = field(
        default=False, metadata={"help": "cache the teacher's swap-TTA probabilities (each row scored A/B swapped too)"}
    )
    teacher_batch_size: int = field(default=16, metadata={"help": "rows per forward pass of the teacher pass"})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "teacher-logit cache root; null: the shared user cache ($KDQ_CACHE, ~/.cache/kdq)"},
    )
    # data
    swap_augment: bool | str = field(
        default=False,
        metadata={
            "help": "add each row's A/B-swapped copy: false, true (shuffled apart) or paired (same batch; "
            "batch_size even)"
        },
    )
    # optimisation (forwarded to transformers.TrainingArguments)
    epochs: float = field(default=1.0, metadata={"help": "training epochs (may be fractional)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; -1: as many as epochs give"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate of AdamW, e.g. 2e-5"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of the steps spent warming up, in [0, 1)"})
    batch_size: int = field(default=8, metadata={"help": "training rows per device and step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps per optimizer step"})
    eval_batch_size: int = field(default=16, metadata={"help": "rows per forward pass when evaluating"})
    lora: LoraSettings | None = field(default=None, metadata={"help": "LoRA / QLoRA settings; null: full fine-tuning"})
    precision: str = field(
        default="auto",
        metadata={"help": "compute precision: auto (bf16 or fp16 AMP on CUDA, fp32 on CPU), fp32, fp16, bf16"},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "true, false, or null: on when the memory projection says it must be"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the run (data order, initialisation)"})
    deterministic: bool = field(
        default=True,
        metadata={
            "help": "Trainer's full_determinism (same seed, same machine, same figures); off on GPUs "
            "whose kernels lack a deterministic variant"
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "log the loss parts every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept in the run folder"})
    # run management
    resume: bool = field(default=False, metadata={"help": "resume from the last checkpoint in output_dir"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output_dir"})

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
        check_choice(cls, "teacher_logits", self.teacher_logits, TEACHER_LOGITS)
        if self.teacher_logits == "live" and self.teacher_tta:
            raise ValueError(
                f"{cls}: teacher_logits='live' scores each row as the student sees it, so there is no "
                "swap TTA; set teacher_tta=False, or teacher_logits='cache' for TTA targets."
            )
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
