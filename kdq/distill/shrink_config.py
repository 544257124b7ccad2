"""Frozen, validated configuration for :func:`kdq.shrink` (no torch at import: ``kdq shrink --help`` stays fast)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

from ..config.base import Config
from ..config.validate import check_choice, check_range
from ..runtime.template import TemplateConfig

#: how :func:`kdq.shrink` picks the layers to keep when ``keep`` is not given
STRATEGIES = ("uniform", "block-influence")
#: the width fields, in the order :mod:`kdq.distill.width` narrows them (``None``: keep the source's size)
WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


@dataclass(frozen=True)
class ShrinkConfig(Config):
    """How :func:`kdq.shrink` cuts a student from a model: which decoder layers it keeps (depth), how
    narrow it makes them (width, Minitron importance) and how it checks the saved folder.

    Depth: ``keep`` lists the layers explicitly; otherwise ``strategy`` picks ``num_layers`` of them
    (default: as many as ``every`` gives). Width: each of ``hidden_size``, ``intermediate_size``,
    ``num_attention_heads``, ``num_key_value_heads`` narrows that dimension (``None`` keeps it); whether a
    size fits the source model (GQA groups, head_dim) is checked against the model, before the
    calibration pass. Each field's help is in its metadata (``kdq shrink --help`` lists them).

    Raises:
        ValueError: naming the field, for an unknown strategy, a non-positive size or count, or a
        ``keep`` entry that is not a layer index.
    """

    keep: tuple | None = field(
        default=None,
        metadata={"help": "explicit layer indices to keep, e.g. [0, 4, 8, 11] or 0,4,8,11 (overrides strategy)"},
    )
    every: int = field(
        default=3,
        metadata={
            "help": "uniform keeps every N-th layer plus the last; it also sets the default depth of "
            "block-influence; 1 keeps every layer (width pruning alone)"
        },
    )
    strategy: str = field(
        default="uniform",
        metadata={
            "help": "how layers are picked: uniform (every N-th) or block-influence (ShortGPT, Men et al. 2024: "
            "the layers that turn the hidden state most; needs calibration rows)"
        },
    )
    num_layers: int | None = field(
        default=None, metadata={"help": "layers to keep; null: as many as every gives (ignored with keep)"}
    )
    hidden_size: int | None = field(
        default=None, metadata={"help": "narrow the embedding channels to this many (Minitron); null: keep"}
    )
    intermediate_size: int | None = field(
        default=None, metadata={"help": "narrow each MLP to this many neurons (Minitron); null: keep"}
    )
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "keep this many query heads per layer, in whole GQA groups; null: keep"}
    )
    num_key_value_heads: int | None = field(
        default=None,
        metadata={"help": "keep this many KV heads per layer; null: the source's when the query heads divide"},
    )
    calibration_rows: int | None = field(
        default=None,
        metadata={"help": "use the first N calibration rows for block influence and width importance; null: all"},
    )
    calibration_batch_size: int = field(
        default=8, metadata={"help": "rows per calibration forward pass (also capped at 4096 tokens a batch)"}
    )
    template: TemplateConfig | None = field(
        default=None,
        metadata={
            "help": "how calibration rows are rendered for the block-influence and width-importance pass "
            "(null: the model's recorded kdq_template, else the default); the reload check does not use it "
            "(its probe rows follow the model's recorded template)"
        },
    )
    reload_tolerance: float = field(
        default=1e-4,
        metadata={
            "help": "largest allowed max |Δlogit| between the saved student, reloaded with stock transformers, "
            "and the student in memory"
        },
    )

    def __post_init__(self):
        cls = "ShrinkConfig"
        self._accept_dicts()
        object.__setattr__(self, "keep", _layer_indices(self.keep))
        check_range(cls, "every", self.every, 1, kind=int)
        check_choice(cls, "strategy", self.strategy, STRATEGIES)
        for name in ("num_layers", *WIDTH_FIELDS, "calibration_rows"):
            if getattr(self, name) is not None:
                check_range(cls, name, getattr(self, name), 1, kind=int)
        check_range(cls, "calibration_batch_size", self.calibration_batch_size, 1, kind=int)
        check_range(cls, "reload_tolerance", self.reload_tolerance, 0.0, None, kind=(int, float))
        if self.template is not None and not isinstance(self.template, TemplateConfig):
            raise ValueError(f"{cls}.template must be a kdq.TemplateConfig or None, got {type(self.template).__name__}")

    @property
    def widths(self) -> dict:
        """``{width field: size or None}``, what :func:`kdq.distill.width.check_width` takes."""
        return {name: getattr(self, name) for name in WIDTH_FIELDS}

    @property
    def narrows(self) -> bool:
        """Whether any width field is set (width pruning, which needs calibration rows)."""
        return any(v is not None for v in self.widths.values())


def _layer_indices(value) -> tuple | None:
    """``keep`` as a tuple of ints, from ints, a ``range`` or text (``"0,4,8"``; ``--set keep=[0, 4]`` gives
    ``("0", "4")``); ``ValueError`` names the field otherwise."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value) if hasattr(value, "__iter__") else [value]
    parts = [p for item in items for p in (item.replace(" ", "").split(",") if isinstance(item, str) else [item])]
    out = []
    for part in parts:
        if isinstance(part, str) and part.lstrip("-").isdigit():
            out.append(int(part))
        elif hasattr(part, "__index__") and not isinstance(part, bool):
            out.append(operator.index(part))
        else:
            raise ValueError(
                f"ShrinkConfig.keep must list layer indices, e.g. keep=[0, 4, 8] or --set keep=0,4,8; got {value!r}"
            )
    if not out:
        raise ValueError("ShrinkConfig.keep lists no layer: give the layer indices to keep, or null to use strategy.")
    return tuple(out)
