"""QuantConfig: what to quantize, how, and how strictly to verify the result."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    ``double_quant`` is on by default: without it, bitsandbytes 0.50 saves a wrong layout after
    a CPU forward pass on AVX512-BF16 machines (kdq saves before any forward pass and verifies
    either way). GPTQ's default backend repacks weights on the first CPU forward pass into a
    layout that does not reload, hence ``backend=None`` = ``"torch"`` on CPU. Each field's help
    is in its metadata (``kdq quantize --help`` lists them).
    """

    method: str = field(
        metadata={"help": "a registered method: gptq, bnb-int8, bnb-nf4, bnb-fp4 (kdq.quantize.registered_methods)"}
    )
    bits: int | None = field(
        default=None, metadata={"help": "GPTQ: 4 or 8 (required); bitsandbytes: implied by the method, leave null"}
    )
    group_size: int = field(default=128, metadata={"help": "GPTQ columns sharing one scale; -1: one group per row"})
    desc_act: bool = field(
        default=False, metadata={"help": "GPTQ act-order: quantize columns by decreasing activation"}
    )
    num_samples: int = field(
        default=128, metadata={"help": "GPTQ calibration rows drawn from calibration (all when fewer)"}
    )
    double_quant: bool = field(
        default=True, metadata={"help": "bitsandbytes 4-bit: also quantize the per-block scales"}
    )
    template: TemplateConfig | None = field(
        default=None,
        metadata={"help": "how rows are rendered; null: the model's recorded kdq_template, else the default"},
    )
    probe_rows: int = field(default=8, metadata={"help": "rows in the fixed probe batch used for verification"})
    reload_tolerance: float = field(
        default=5e-3,
        metadata={"help": "largest allowed max |Δlogit| between the reloaded folder and the model in memory"},
    )
    max_kl: float | None = field(
        default=None,
        metadata={"help": "optional ceiling on the mean KL(source || quantized) over the probe rows (nats)"},
    )
    backend: str | None = field(
        default=None, metadata={"help": "GPTQ kernel backend; null: torch on CPU, auto on CUDA (saved in config.json)"}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda or cuda:N; null: CUDA when available"})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the layers left unquantized (float16, bfloat16, float32); null: fp16 on CUDA, fp32 on CPU"
        },
    )
    seed: int = field(
        default=0,
        metadata={"help": "seeds which calibration rows calibrate and which probe (the synthetic probe is fixed)"},
    )

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
