"""QuantConfig: what to quantize, how, and how strictly to verify the result."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.base import Config
from ..config.validate import check_choice, check_device, check_range
from ..runtime.template import TemplateConfig

DTYPES = ("float16", "bfloat16", "float32")

# Short variant names used by the CLI, the demo and reports.
VARIANTS = {
    "gptq-8": {"method": "gptq", "bits": 8},
    "gptq-4": {"method": "gptq", "bits": 4},
    "bnb-int8": {"method": "bnb-int8"},
    "bnb-nf4": {"method": "bnb-nf4"},
    "bnb-fp4": {"method": "bnb-fp4"},
}


@dataclass(frozen=True)
class QuantConfig(Config):
    """How :func:`kdq.quantize` quantizes a classifier and verifies the saved folder.

    Args:
        method: a registered method: ``"gptq"``, ``"bnb-int8"``, ``"bnb-nf4"``, ``"bnb-fp4"``
            (see :func:`kdq.quantize.registered_methods`).
        bits: GPTQ: 4 or 8 (required). bitsandbytes: implied by the method (8 or 4); leave ``None``.
        group_size: GPTQ columns sharing one scale; ``-1`` = one group per row.
        desc_act: GPTQ act-order (quantize columns by decreasing activation).
        num_samples: GPTQ calibration rows drawn from ``calibration`` (all rows when fewer).
        double_quant: bitsandbytes 4-bit: also quantize the per-block scales. On by default:
            without it, bitsandbytes 0.50 saves a wrong layout after a CPU forward pass on
            AVX512-BF16 machines (kdq saves before any forward pass and verifies either way).
        template: how rows are rendered; ``None`` uses the one recorded in the model's
            ``config.json`` (``kdq_template``), else ``TemplateConfig()``.
        probe_rows: rows in the fixed probe batch used for verification.
        reload_tolerance: largest allowed ``max |Δlogit|`` between the reloaded folder and the
            quantized model in memory (same machine, same kernels: normally exactly 0).
        max_kl: optional ceiling on the mean KL(source || quantized) over the probe rows (nats);
            ``None`` only reports it.
        backend: GPTQ kernel backend passed to ``GPTQConfig``; ``None`` = ``"torch"`` on CPU
            (the default backend repacks weights on the first CPU forward pass into a layout
            that does not reload) and ``"auto"`` on CUDA. Saved into ``config.json``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``None`` = CUDA when available.
        dtype: dtype of the layers left unquantized (embeddings, norms, the ``score`` head):
            ``None`` = float16 on CUDA, float32 on CPU.
        seed: seeds the choice of calibration and probe rows.
    """

    method: str
    bits: int | None = None
    group_size: int = 128
    desc_act: bool = False
    num_samples: int = 128
    double_quant: bool = True
    template: TemplateConfig | None = None
    probe_rows: int = 8
    reload_tolerance: float = 5e-3
    max_kl: float | None = None
    backend: str | None = None
    device: str | None = None
    dtype: str | None = None
    seed: int = 0

    def __post_init__(self):
        from ..quant_methods import get_quantizer  # the registry validates method-specific fields

        cls = "QuantConfig"
        self._accept_dicts()
        method = get_quantizer(self.method)
        check_range(cls, "num_samples", self.num_samples, 1, 100_000, kind=int)
        check_range(cls, "probe_rows", self.probe_rows, 1, 1024, kind=int)
        check_range(cls, "reload_tolerance", self.reload_tolerance, 0.0, None, kind=(int, float))
        if self.max_kl is not None:
            check_range(cls, "max_kl", self.max_kl, 0.0, None, kind=(int, float))
        check_range(cls, "seed", self.seed, 0, None, kind=int)
        if not isinstance(self.desc_act, bool):
            raise ValueError(f"{cls}.desc_act must be True or False, got {self.desc_act!r}")
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"{cls}.double_quant must be True or False, got {self.double_quant!r}")
        if self.template is not None and not isinstance(self.template, TemplateConfig):
            raise ValueError(f"{cls}.template must be a kdq.TemplateConfig or None, got {type(self.template).__name__}")
        if self.dtype is not None:
            check_choice(cls, "dtype", self.dtype, DTYPES + (None,))
        check_device(cls, "device", self.device)
        bits = method.validate(self)
        object.__setattr__(self, "bits", bits)

    @classmethod
    def from_name(cls, name: str, **overrides) -> QuantConfig:
        """The config for a short variant name (``"gptq-8"``, ``"gptq-4"``, ``"bnb-int8"``,
        ``"bnb-nf4"``, ``"bnb-fp4"``), with field overrides, e.g. ``from_name("gptq-4", num_samples=64)``."""
        if name not in VARIANTS:
            raise ValueError(
                f"unknown quantization variant {name!r}; choose one of {sorted(VARIANTS)} "
                "or build QuantConfig(method=..., bits=...) directly."
            )
        return cls(**{**VARIANTS[name], **overrides})

    @property
    def name(self) -> str:
        """Short variant name, e.g. ``"gptq-4"`` or ``"bnb-nf4-nodq"`` (used in reports)."""
        from ..quant_methods import get_quantizer

        return get_quantizer(self.method).variant_name(self)
