"""Frozen, validated configuration for :func:`kdq.distill`: :class:`DistillConfig` in sections
(:class:`LossSettings`, :class:`TeacherPassSettings`, :class:`TrainingSettings`, :class:`LoraSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType

from ..config.base import Config
from ..config.validate import check_choice, check_range
from ..costs.modelspec import LLAMA_LINEAR
from ..runtime.constants import DEFAULT_BUDGET_NAME, GPU_CHECK_FILE
from ..runtime.template import TemplateConfig
from .needs import teacher_needs

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
SWAP_AUGMENT = (False, True, "paired")
TEACHER_LOGITS = ("cache", "live")
HIDDEN_PROJECTIONS = ("auto", "linear")
TEACHER_QUANTIZE = ("none", "int8", "nf4")
BASE_DTYPES = PRECISIONS
LORA_QUANTIZE = ("none", "nf4")
SAVE_DTYPES = ("auto", "fp32", "fp16", "bf16")


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
    save_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the merged student's weights: auto (the base's own dtype when the merge stays within "
            "merge_atol of the trained adapters, else fp32), fp32 (keeps every update, which fp16/bf16 round "
            "away where it is small beside the base weight; twice the bytes), fp16 or bf16 (checked)"
        },
    )
    merge_atol: float = field(
        default=2e-3,
        metadata={
            "help": "largest allowed max |Δp| of the merged student (save_dtype) against the trained adapters "
            "on probe rows; above it the save is refused"
        },
    )

    def __post_init__(self):
        self._accept_dicts()
        check_choice("LoraSettings", "base_dtype", self.base_dtype, BASE_DTYPES)
        check_choice("LoraSettings", "quantize", self.quantize, LORA_QUANTIZE)
        check_choice("LoraSettings", "save_dtype", self.save_dtype, SAVE_DTYPES)
        check_range("LoraSettings", "merge_atol", self.merge_atol, 0.0, 1.0, lo_open=True)
        check_range("LoraSettings", "r", self.r, 1, kind=int)
        check_range("LoraSettings", "alpha", self.alpha, 0, lo_open=True)
        check_range("LoraSettings", "dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if not self.target_modules:
            raise ValueError("LoraSettings.target_modules must name at least one module, e.g. ('q_proj', 'v_proj')")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass(frozen=True)
class LossSettings(Config):
    """What the student minimises against its teacher (:mod:`kdq.distill.losses`, :mod:`kdq.distill.objective`).

    Per row: ``α·CE + (1−α)·divergence(student, teacher) + γ·(1 − cos(p_S, p_T))`` at temperature ``T``
    (``γ = cosine_weight``); transfer rows (no label) drop the CE term. ``hidden_weight > 0`` adds
    ``hidden_weight ·`` :func:`~kdq.distill.losses.hidden_state_loss` between each student layer and its
    teacher layer (``hidden_layer_map``), through a learned projection where the widths differ; any
    student that shares the teacher's tokenizer can use it. ``feature_weight > 0`` adds
    ``feature_weight ·`` :func:`~kdq.distill.losses.feature_loss` between the student's pooled final
    hidden state (projected) and the teacher's, cached or live (:func:`kdq.distill.needs.teacher_needs`).
    With ``teacher=None`` only the CE term is left (the two term weights > 0 are refused).
    """

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
        metadata={"help": "weight of the hidden-state loss (the student needs the teacher's tokenizer)"},
    )
    hidden_loss: str = field(
        default="cosine", metadata={"help": "hidden-state loss per layer: cosine (1 - cos) or mse"}
    )
    hidden_layer_map: object = field(
        default="auto",
        metadata={
            "help": "teacher layer (or null) per student layer; auto: kdq.shrink's record, else proportional by depth"
        },
    )
    hidden_projection: str = field(
        default="auto",
        metadata={"help": "student→teacher hidden projection: auto (learned where widths differ), linear (always)"},
    )
    feature_weight: float = field(
        default=0.0,
        metadata={"help": "weight of the pooled-feature loss (cached with teacher_pass.logits=cache, else live)"},
    )
    feature_loss: str = field(
        default="cosine",
        metadata={"help": "pooled-feature loss: cosine (1 - cos), centered-cosine (batch means removed) or mse"},
    )

    def __post_init__(self):
        cls = "LossSettings"
        self._accept_dicts()
        # the registry (torch): imported only when a config is built
        from .losses import DIVERGENCES, FEATURE_LOSSES, HIDDEN_LOSSES

        check_choice(cls, "divergence", self.divergence, DIVERGENCES)
        check_range(cls, "temperature", self.temperature, 0.0, lo_open=True)
        check_range(cls, "alpha", self.alpha, 0.0, 1.0)
        check_range(cls, "jsd_beta", self.jsd_beta, 0.0, 1.0)
        check_range(cls, "cosine_weight", self.cosine_weight, 0.0)
        check_range(cls, "hidden_weight", self.hidden_weight, 0.0)
        check_choice(cls, "hidden_loss", self.hidden_loss, HIDDEN_LOSSES)
        check_range(cls, "feature_weight", self.feature_weight, 0.0)
        check_choice(cls, "feature_loss", self.feature_loss, FEATURE_LOSSES)
        check_choice(cls, "hidden_projection", self.hidden_projection, HIDDEN_PROJECTIONS)
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

    def hard_labels_only(self) -> LossSettings:
        """These settings with every teacher term off (``cosine_weight``, ``hidden_weight``, ``feature_weight``)."""
        return self.replace(cosine_weight=0.0, hidden_weight=0.0, feature_weight=0.0)


@dataclass(frozen=True)
class TeacherPassSettings(Config):
    """How the teacher is run: scored once over the rows into the shared cache before training
    (:mod:`kdq.distill.teacher_pass`), or live in every training step (``logits="live"``), and in what
    weights the live teacher is held.

    ``logits="live"`` runs the frozen teacher in every training step on exactly the batch the student sees
    (swapped copies included: a consistent teacher, Beyer et al. 2022), with no cache pass and no TTA; the
    hidden-state term runs the teacher live anyway, so ``"live"`` saves the cache pass there.
    """

    quantize: str = field(
        default="none",
        metadata={"help": "the live teacher's weights: none (fp16 on CUDA, fp32 on CPU), int8 or nf4 (bitsandbytes)"},
    )
    logits: str = field(
        default="cache",
        metadata={"help": "cache: score the teacher once before training (optional TTA); live: in every step"},
    )
    tta: bool = field(
        default=False, metadata={"help": "cache the teacher's swap-TTA probabilities (each row scored A/B swapped too)"}
    )
    batch_size: int = field(default=16, metadata={"help": "rows per forward pass of the teacher pass"})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "teacher-logit cache root; null: the shared user cache ($KDQ_CACHE, ~/.cache/kdq)"},
    )
    budget: str | None = field(
        default=DEFAULT_BUDGET_NAME,
        metadata={
            "help": "budget profile (shipped name or JSON path) the teacher pass's time projection assumes: its "
            "compute efficiency, and its GPUs on a machine without one"
        },
    )
    gpu_check: str | None = field(
        default=None,
        metadata={
            "help": "bench/gpu_check.py's JSON: its measured efficiency replaces the profile's in the projection; "
            f"null: <kdq cache>/{GPU_CHECK_FILE} when it exists"
        },
    )

    def __post_init__(self):
        cls = "TeacherPassSettings"
        self._accept_dicts()
        check_choice(cls, "quantize", self.quantize, TEACHER_QUANTIZE)
        check_choice(cls, "logits", self.logits, TEACHER_LOGITS)
        if not isinstance(self.tta, bool):
            raise ValueError(f"{cls}.tta must be true or false, got {self.tta!r}")
        if self.logits == "live" and self.tta:
            raise ValueError(
                f"{cls}: logits='live' scores each row as the student sees it, so there is no swap TTA; "
                "set tta=False, or logits='cache' for TTA targets (--set teacher_pass.tta=false)."
            )
        check_range(cls, "batch_size", self.batch_size, 1, kind=int)


#: ``TrainingSettings.report_to`` -> the modules any one of which Trainer logs through (transformers' own check:
#: ``tensorboard`` or ``tensorboardX``); the kdq extra that installs them has the same name as the key.
REPORTERS = {"none": (), "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


@dataclass(frozen=True)
class TrainingSettings(Config):
    """How the student is trained: data order and augmentation, the optimizer and its schedule, precision,
    checkpoints and logging (forwarded to ``transformers.TrainingArguments`` by
    :func:`kdq.distill.trainer.training_arguments`)."""

    epochs: float = field(default=1.0, metadata={"help": "training epochs (may be fractional)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; -1: as many as epochs give"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate of AdamW, e.g. 2e-5"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of the steps spent warming up, in [0, 1)"})
    batch_size: int = field(default=8, metadata={"help": "training rows per device and step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps per optimizer step"})
    eval_batch_size: int = field(default=16, metadata={"help": "rows per forward pass when evaluating"})
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
    swap_augment: bool | str = field(
        default=False,
        metadata={
            "help": "add each row's A/B-swapped copy: false, true (shuffled apart) or paired (same batch; "
            "batch_size even)"
        },
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "where Trainer also logs: none, tensorboard (<output_dir>/checkpoints/runs; pip install "
            "'kdq[tensorboard]') or wandb (pip install 'kdq[wandb]')"
        },
    )

    def __post_init__(self):
        cls = "TrainingSettings"
        self._accept_dicts()
        check_choice(cls, "precision", self.precision, PRECISIONS)
        check_choice(cls, "report_to", self.report_to, REPORTERS)
        if not any(self.swap_augment is v or (isinstance(v, str) and self.swap_augment == v) for v in SWAP_AUGMENT):
            raise ValueError(f"{cls}.swap_augment must be False, True or 'paired', got {self.swap_augment!r}")
        check_range(cls, "epochs", self.epochs, 0.0, lo_open=True)
        check_range(cls, "learning_rate", self.learning_rate, 0.0, lo_open=True)
        check_range(cls, "weight_decay", self.weight_decay, 0.0)
        check_range(cls, "warmup_ratio", self.warmup_ratio, 0.0, 1.0, hi_open=True)  # transformers reads >= 1 as steps
        for name in ("batch_size", "grad_accum", "eval_batch_size", "logging_steps", "save_total_limit"):
            check_range(cls, name, getattr(self, name), 1, kind=int)
        if self.swap_augment == "paired" and self.batch_size % 2:
            raise ValueError(
                f"{cls}.batch_size must be even with swap_augment='paired' (each pair fills two rows), "
                f"got {self.batch_size}"
            )
        check_range(cls, "max_steps", self.max_steps, -1, kind=int)
        if self.max_steps == 0:
            raise ValueError(f"{cls}.max_steps must be -1 (use epochs) or a positive int, got 0")
        if self.gradient_checkpointing is not None and not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(
                f"{cls}.gradient_checkpointing must be true, false or null (decide from the memory "
                f"projection), got {self.gradient_checkpointing!r}"
            )


#: The sections of :class:`DistillConfig`, by field name (``lora`` may be ``None``).
SECTIONS = {
    "loss": LossSettings,
    "teacher_pass": TeacherPassSettings,
    "training": TrainingSettings,
    "lora": LoraSettings,
}

#: The :class:`DistillConfig` fields (dotted) only a run with a teacher reads: the ``loss`` and
#: ``teacher_pass`` sections, every field of both. With ``teacher=None`` they do nothing (the two term
#: weights > 0 are refused). A hard-label baseline trained like a distillation run shares every other field
#: with it (``bench/bench_kd_recipes.py``'s ``--set``).
TEACHER_FIELDS = frozenset(
    f"{section}.{f.name}" for section in ("loss", "teacher_pass") for f in fields(SECTIONS[section])
)

#: The :class:`DistillConfig` fields (dotted) a run resumed with ``resume=True`` may change: where the run
#: lives and what it prints or logs, how long it runs (``training.epochs``, ``training.max_steps``: continuing
#: a run for longer is what resuming is for; the learning-rate schedule follows the new length from the
#: checkpoint's step), the memory and throughput settings, and how the merged student is saved. Every other
#: field changes what a training step computes, and a checkpoint resumes only under the values it was trained
#: with (:mod:`kdq.distill.trainer`'s run record).
RESUMABLE_FIELDS = frozenset(
    {
        "output_dir",
        "overwrite",
        "resume",
        "strict_overlap",
        "training.logging_steps",
        "training.save_total_limit",
        "training.report_to",
        "training.epochs",
        "training.max_steps",
        "training.eval_batch_size",
        "training.gradient_checkpointing",
        "teacher_pass.batch_size",
        "teacher_pass.cache_dir",
        "teacher_pass.budget",
        "teacher_pass.gpu_check",
        "lora.save_dtype",
        "lora.merge_atol",
    }
)

#: The flat names :class:`DistillConfig` had before it had sections -> where each lives now (dotted). The one
#: table of them: an old name given in Python, ``--set`` or a config file is an error naming the new one
#: (:class:`kdq.config.base.Config` ``MOVED``), and docs/distill.md lists it.
MOVED_FIELDS = MappingProxyType(
    {
        "divergence": "loss.divergence",
        "temperature": "loss.temperature",
        "alpha": "loss.alpha",
        "jsd_beta": "loss.jsd_beta",
        "cosine_weight": "loss.cosine_weight",
        "hidden_weight": "loss.hidden_weight",
        "hidden_loss": "loss.hidden_loss",
        "hidden_layer_map": "loss.hidden_layer_map",
        "hidden_projection": "loss.hidden_projection",
        "feature_weight": "loss.feature_weight",
        "feature_loss": "loss.feature_loss",
        "teacher_quantize": "teacher_pass.quantize",
        "teacher_logits": "teacher_pass.logits",
        "teacher_tta": "teacher_pass.tta",
        "teacher_batch_size": "teacher_pass.batch_size",
        "cache_dir": "teacher_pass.cache_dir",
        "budget": "teacher_pass.budget",
        "gpu_check": "teacher_pass.gpu_check",
        "epochs": "training.epochs",
        "max_steps": "training.max_steps",
        "learning_rate": "training.learning_rate",
        "weight_decay": "training.weight_decay",
        "warmup_ratio": "training.warmup_ratio",
        "batch_size": "training.batch_size",
        "grad_accum": "training.grad_accum",
        "eval_batch_size": "training.eval_batch_size",
        "precision": "training.precision",
        "gradient_checkpointing": "training.gradient_checkpointing",
        "seed": "training.seed",
        "deterministic": "training.deterministic",
        "logging_steps": "training.logging_steps",
        "save_total_limit": "training.save_total_limit",
        "swap_augment": "training.swap_augment",
    }
)


@dataclass(frozen=True)
class DistillConfig(Config):
    """Everything :func:`kdq.distill` needs besides the models and the data, in sections:

    * ``loss`` (:class:`LossSettings`): the distillation loss and its terms;
    * ``teacher_pass`` (:class:`TeacherPassSettings`): the teacher's cache pass, or its live forward;
    * ``training`` (:class:`TrainingSettings`): the optimizer, schedule, precision, logging;
    * ``lora`` (:class:`LoraSettings` or ``None``): LoRA / QLoRA, or full fine-tuning.

    Each section accepts a dict (``training={"epochs": 2}``) and checks its own fields; this class checks
    what spans sections. On the command line, ``--set loss.temperature=1``; in a config file, nested
    mappings (``loss: {temperature: 1}``). The names from before the sections are refused with their new
    spelling (:data:`MOVED_FIELDS`). Each field's help is in its metadata (``kdq distill --help`` lists them).
    """

    MOVED = MOVED_FIELDS  # a class attribute, not a field

    output_dir: str = field(
        default="runs/distill", metadata={"help": "run folder; the student is saved in <output_dir>/student"}
    )
    template: TemplateConfig = field(
        default_factory=TemplateConfig, metadata={"help": "how rows become tokens (recorded in the student)"}
    )
    loss: LossSettings = field(default_factory=LossSettings, metadata={"help": "the distillation loss and its terms"})
    teacher_pass: TeacherPassSettings = field(
        default_factory=TeacherPassSettings,
        metadata={"help": "the teacher's cache pass (or its live forward) and the live teacher's weights"},
    )
    training: TrainingSettings = field(
        default_factory=TrainingSettings,
        metadata={"help": "optimizer, schedule, batches, precision, checkpoints and logging"},
    )
    lora: LoraSettings | None = field(default=None, metadata={"help": "LoRA / QLoRA settings; null: full fine-tuning"})
    resume: bool = field(default=False, metadata={"help": "resume from the last checkpoint in output_dir"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output_dir"})
    strict_overlap: bool = field(
        default=False,
        metadata={
            "help": "refuse (true) rather than warn (false) when eval rows share a prompt or response pair with "
            "the training or transfer rows (kdq.data.check_overlap)"
        },
    )

    def hard_labels_only(self, **changes) -> DistillConfig:
        """This config with every teacher term off (:meth:`LossSettings.hard_labels_only`): the no-distillation
        baseline trained like this run, on hard labels alone. ``changes`` as :meth:`replace`."""
        return self.replace(loss=self.loss.hard_labels_only(), **changes)

    def __post_init__(self):
        cls = "DistillConfig"
        self._accept_dicts()
        if not isinstance(self.template, TemplateConfig):
            raise ValueError(f"{cls}.template must be a TemplateConfig, got {type(self.template).__name__}")
        for name, section in SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, section) and not (name == "lora" and value is None):
                raise ValueError(
                    f"{cls}.{name} must be a {section.__name__}{' or None' if name == 'lora' else ''} (or a dict of "
                    f"its fields), got {type(value).__name__}"
                )
        if (
            teacher_needs(self, has_teacher=True).cached_features
            and self.training.swap_augment
            and not self.teacher_pass.tta
        ):
            raise ValueError(
                f"{cls}: loss.feature_weight > 0 with training.swap_augment trains on swapped rows, whose teacher "
                "features only a cache pass with teacher_pass.tta=True scores. Set teacher_pass.tta=True, "
                "training.swap_augment=False, or teacher_pass.logits='live'."
            )
        if not isinstance(self.strict_overlap, bool):
            raise ValueError(f"{cls}.strict_overlap must be True or False, got {self.strict_overlap!r}")
        if self.resume and self.overwrite:
            raise ValueError(f"{cls}: resume=True and overwrite=True contradict each other; pick one")
