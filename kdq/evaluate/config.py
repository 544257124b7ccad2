"""The evaluate stage's config (:class:`EvalConfig`) and result (:class:`Metrics`)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields

import numpy as np

from ..config.base import Config
from ..config.validate import check_choice, check_device, check_range, check_tta
from ..runtime.constants import DEFAULT_BUDGET_NAME, DEFAULT_TTA_FRACTION, tta_mode
from ..runtime.template import TemplateConfig

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class EvalConfig(Config):
    """How to score a variant: batching, swap TTA, device, calibration bins, the budget verdict and
    :func:`kdq.compare`'s paired bootstrap (rows resampled jointly across variants). Each field's
    help is in its metadata (``kdq evaluate --help`` lists them).
    """

    batch_size: int = field(default=8, metadata={"help": "rows per forward pass (length-sorted, dynamically padded)"})
    max_batch_tokens: int | None = field(
        default=None, metadata={"help": "optional cap on rows x longest row per batch"}
    )
    tta: object = field(
        default=True,
        metadata={
            "help": "swap TTA behind the *_tta metrics: true/full (every row also A/B-swapped, one pass), gated "
            "(only the tta_fraction least confident rows), false/none"
        },
    )
    tta_fraction: float = field(
        default=DEFAULT_TTA_FRACTION,
        metadata={"help": "share of rows gated TTA swap-scores (0.33: about 1.33 passes per row)"},
    )
    template: TemplateConfig | None = field(
        default=None, metadata={"help": "row rendering; null: the model's recorded kdq_template, else the default"}
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "cpu, cuda, cuda:1, or a comma list (cuda:0,cuda:1: rows split over them, one thread each); "
            "null: every CUDA GPU (under a launcher: the process's own), else the CPU"
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "weights dtype of an unquantized folder: auto (fp16 on CUDA, fp32 on CPU), float32, "
            "float16, bfloat16"
        },
    )
    ece_bins: int = field(default=15, metadata={"help": "confidence bins of the expected calibration error"})
    budget: object = field(
        default=DEFAULT_BUDGET_NAME,
        metadata={
            "help": "budget profile to project onto (shipped name, JSON path or BudgetProfile); null: no verdict"
        },
    )
    progress: bool = field(default=True, metadata={"help": "show tqdm progress bars"})
    bootstrap_samples: int = field(
        default=2000,
        metadata={"help": "bootstrap resamples behind the 95% intervals (compare's paired ones; cut vs uncut rows)"},
    )
    bootstrap_seed: int = field(default=0, metadata={"help": "seed of the bootstrap (reruns give the same intervals)"})
    strict_overlap: bool = field(
        default=False,
        metadata={
            "help": "refuse (true) rather than warn (false) when held-out rows share a prompt or response pair "
            "with the rows the model was trained on (its kdq-train-groups.json, written by kdq.distill)"
        },
    )

    def __post_init__(self):
        c = "EvalConfig"
        self._accept_dicts()
        check_range(c, "batch_size", self.batch_size, 1, kind=int)
        if self.max_batch_tokens is not None:
            check_range(c, "max_batch_tokens", self.max_batch_tokens, 1, kind=int)
        for name in ("progress", "strict_overlap"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{c}.{name} must be True or False, got {getattr(self, name)!r}")
        check_tta(c, self.tta)
        check_range(c, "tta_fraction", self.tta_fraction, 0.0, 1.0)
        if self.template is not None and not isinstance(self.template, TemplateConfig):
            raise ValueError(f"{c}.template must be a kdq.TemplateConfig or None, got {type(self.template).__name__}")
        for part in self.device.split(",") if isinstance(self.device, str) and "," in self.device else [self.device]:
            check_device(c, "device", part.strip() if isinstance(part, str) else part)
        check_choice(c, "dtype", self.dtype, DTYPES)
        check_range(c, "ece_bins", self.ece_bins, 1, 1000, kind=int)
        check_range(c, "bootstrap_samples", self.bootstrap_samples, 1, kind=int)
        check_range(c, "bootstrap_seed", self.bootstrap_seed, 0, kind=int)
        from ..costs.budget import BudgetProfile

        if self.budget is not None and not isinstance(self.budget, (str, os.PathLike, BudgetProfile)):
            raise ValueError(
                f"{c}.budget must be None, a profile name, a JSON path or a BudgetProfile, "
                f"got {type(self.budget).__name__}"
            )

    @property
    def tta_mode(self) -> str:
        """``"none"``, ``"full"`` or ``"gated"`` (``tta`` may spell the first two as booleans)."""
        return tta_mode(self.tta)


# Arrays kept on Metrics but left out of to_dict() (JSON reports stay small).
ARRAY_FIELDS = ("probs", "probs_tta", "lengths", "lost", "dropped_turns", "probs_swap")


@dataclass(frozen=True)
class Metrics:
    """What one variant scored and cost on a set of held-out rows.

    Quality: ``log_loss`` (competition definition), ``accuracy``, ``ece``, and the same with
    swap TTA (``*_tta``; ``None`` when TTA was off), scored with ``tta_mode`` (``"none"``,
    ``"full"``, ``"gated"``) and ``tta_fraction`` (gated). Cost: ``size_bytes`` (weight files on
    disk, or parameter bytes in memory for a model object: see ``size_source``),
    ``peak_memory_bytes`` (``peak_memory_kind``: process RSS on CPU, max allocated on
    CUDA), ``rows_per_s`` / ``tokens_per_s`` over every scored sequence (a TTA row counts
    twice) on ``device``. ``budget``: the verdict dict of :func:`kdq.costs.budget.project`.

    ``scheme``: the label scheme's name (``"lmsys"``, ``"wsdm"``): the classes, and the headline
    metric reports rank by (:attr:`headline`: ``"log_loss"`` or ``"accuracy"``).

    Diagnostics (:mod:`kdq.evaluate.diagnostics`; ``None`` on Metrics made before them):
    ``truncation``: what rendering under ``max_length`` cut (rows cut, per part the rows and tokens lost,
    dropped turns) and the headline metric on cut vs uncut rows with bootstrap intervals
    (:func:`~kdq.evaluate.diagnostics.truncation_summary`); ``position_bias``: the swap flip rate and mean
    disagreement on P(A wins) over the rows scored in both orders
    (:func:`~kdq.evaluate.diagnostics.position_bias`; ``None`` without TTA).

    Arrays: ``probs`` / ``probs_tta`` ``(N, C)`` in row order (``C``: the scheme's classes); ``lengths``
    ``(N,)`` tokens per row; ``lost`` ``(N, 3)`` text tokens each row lost per part (prompt, response_a,
    response_b) and ``dropped_turns`` ``(N,)``; ``probs_swap`` ``(N, C)`` the B/A order's probabilities mapped
    back to the original classes (NaN on rows not scored swapped; ``None`` without TTA).
    """

    n_rows: int
    log_loss: float
    accuracy: float
    ece: float
    log_loss_tta: float | None
    accuracy_tta: float | None
    ece_tta: float | None
    tta_mode: str
    tta_fraction: float
    size_bytes: int
    size_source: str
    peak_memory_bytes: int
    peak_memory_kind: str
    rows_per_s: float
    tokens_per_s: float
    seconds: float
    device: str
    n_params: int
    weight_format: str
    weight_format_spec: dict
    mean_tokens: float
    padding_efficiency: float
    max_length: int
    rows_fingerprint: str
    model_fingerprint: str
    source: str | None
    spec: dict
    budget: dict | None
    probs: np.ndarray = field(repr=False)
    probs_tta: np.ndarray | None = field(repr=False)
    lengths: np.ndarray = field(repr=False)
    scheme: str = "lmsys"
    n_devices: int = 1  # devices the rows were split over (every GPU of every process): tokens_per_s is their sum
    truncation: dict | None = None
    position_bias: dict | None = None
    overlap: dict | None = None  # held-out rows shared with the model's training rows (kdq.data.check_overlap)
    lost: np.ndarray | None = field(default=None, repr=False)
    dropped_turns: np.ndarray | None = field(default=None, repr=False)
    probs_swap: np.ndarray | None = field(default=None, repr=False)

    @property
    def headline(self) -> str:
        """The field that ranks this variant: its label scheme's headline metric."""
        from ..runtime.constants import label_scheme

        return label_scheme(self.scheme).headline

    @property
    def cut(self) -> np.ndarray | None:
        """``(N,)`` booleans: the rows that lost text or a turn to ``max_length`` (``None`` when not recorded)."""
        from .diagnostics import cut_rows

        return None if self.lost is None else cut_rows(self.lost, self.dropped_turns)

    def to_dict(self) -> dict:
        """Every scalar field (JSON-able), without the arrays; plus ``headline``."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in ARRAY_FIELDS}
        out["headline"] = self.headline
        return out
