"""QuantConfig: what to quantize, how, and how strictly to verify the result.

The fields every method shares are declared here. A method's own fields (GPTQ's ``group_size``,
bitsandbytes 4-bit's ``double_quant``...) are declared, with their defaults and validation, in
the method's file (a :class:`~kdq.quant_methods.MethodSettings` dataclass, see
:mod:`kdq.quant_methods`), and reach ``QuantConfig`` in either of two spellings:

* as keyword fields: this module adds every registered method's own fields to ``QuantConfig``
  (default ``None``, "not given"), so ``QuantConfig(method="gptq", bits=4, group_size=64)``,
  ``--set group_size=64`` and ``group_size: 64`` in a config file keep working;
* in ``options``: ``QuantConfig(method="gptq", bits=4, options={"group_size": 64})``, the only
  spelling for a method registered after this module was imported.

After validation the chosen method's fields hold their resolved values (``config.group_size``
is 128 for GPTQ by default), ``config.settings`` is the method's settings object, and the
fields of other methods stay ``None`` (setting one is an error that names the methods it
belongs to).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..config.base import Config
from ..config.fields import coerce_fields
from ..config.validate import check_choice, check_device, check_range
from ..quant_methods import (
    get_quantizer,
    method_field_help,
    method_fields,
    registered_methods,
    settings_fields,
    variant_fields,
    variant_names,
)
from ..runtime.template import TemplateConfig

DTYPES = ("float16", "bfloat16", "float32")


def method_help() -> str:
    """The help of ``QuantConfig.method``, read from the method registry (every registered method, every variant)."""
    return (
        f"a registered method: {', '.join(registered_methods())} (kdq.quantize.registered_methods); "
        f"--method and QuantConfig.from_name take a variant: {', '.join(variant_names())}"
    )


def bits_help() -> str:
    """The help of ``QuantConfig.bits``: each registered method's allowed bits, read from the registry."""
    allowed = []
    for name in registered_methods():
        method = get_quantizer(name)
        bits = " or ".join(map(str, method.allowed_bits))
        allowed.append(f"{name} {bits}" + (" (required)" if method.bits_required else ""))
    return f"bits per weight; null: the method's default. Allowed: {'; '.join(allowed)}"


def _with_method_fields(cls):
    """Add each registered method's own fields to ``cls`` as keyword fields (default ``None``:
    the method's default applies). Runs before ``@dataclass`` turns them into fields."""
    annotations = cls.__dict__["__annotations__"]
    added = []
    for name in method_fields():
        if name in annotations:
            raise TypeError(
                f"a quantization method declares its own field {name!r}, which is a common QuantConfig "
                f"field ({', '.join(annotations)}); rename the method's field."
            )
        annotations[name] = "object"
        setattr(cls, name, dataclasses.field(default=None, metadata={"help": method_field_help(name)}))
        added.append(name)
    cls.METHOD_FIELDS = tuple(added)
    return cls


@dataclass(frozen=True, repr=False)
@_with_method_fields
class QuantConfig(Config):
    """How :func:`kdq.quantize` quantizes a classifier and verifies the saved folder.

    Args:
        method: a registered method (:func:`kdq.quantize.registered_methods`: ``"gptq"``,
            ``"bnb-int8"``, ``"torchao-int8"``...; its field help lists them all, read from the
            registry). :meth:`from_name` takes a variant name instead.
        options: the method's own fields as a dict (or give them as keywords; see the module doc).
            Their meaning, defaults and checks are in the method's settings class, e.g. GPTQ:
            ``group_size`` (128), ``desc_act`` (False), ``backend`` (None: ``"torch"`` on CPU,
            ``"auto"`` on CUDA); bitsandbytes 4-bit: ``double_quant`` (True).

    Each field's help is in its metadata (``kdq quantize --help`` lists them).
    """

    method: str = field(metadata={"help": method_help()})
    bits: int | None = field(default=None, metadata={"help": bits_help()})
    num_samples: int = field(
        default=128, metadata={"help": "calibration rows drawn from calibration (all when fewer), for GPTQ"}
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
    options: dict | None = field(
        default=None, metadata={"help": "the method's own fields as a dict (or as keywords), e.g. {group_size: 64}"}
    )

    def __post_init__(self):
        cls = "QuantConfig"
        self._accept_dicts()
        method = get_quantizer(self.method)
        # the method's own fields take the types its settings declare (text from --set / files converts)
        settings = method.settings(**coerce_fields(method.settings, self._given_method_fields(method)))
        check_range(cls, "num_samples", self.num_samples, 1, 100_000, kind=int)
        check_range(cls, "probe_rows", self.probe_rows, 1, 1024, kind=int)
        check_range(cls, "reload_tolerance", self.reload_tolerance, 0.0, None, kind=(int, float))
        if self.max_kl is not None:
            check_range(cls, "max_kl", self.max_kl, 0.0, None, kind=(int, float))
        check_range(cls, "seed", self.seed, 0, None, kind=int)
        if self.template is not None and not isinstance(self.template, TemplateConfig):
            raise ValueError(f"{cls}.template must be a kdq.TemplateConfig or None, got {type(self.template).__name__}")
        if self.dtype is not None:
            check_choice(cls, "dtype", self.dtype, DTYPES + (None,))
        check_device(cls, "device", self.device)
        # One spelling after validation: the method's resolved fields as keyword fields (options
        # keeps only those QuantConfig has no keyword for), so replace() and to_dict() round-trip.
        resolved = settings.to_dict()
        for name, value in resolved.items():
            if name in self.METHOD_FIELDS:
                object.__setattr__(self, name, value)
        rest = {k: v for k, v in resolved.items() if k not in self.METHOD_FIELDS}
        object.__setattr__(self, "options", rest or None)
        object.__setattr__(self, "bits", method.validate(self))

    def _given_method_fields(self, method) -> dict:
        """The method's own fields given as keywords or in ``options``; a field of another method is an error."""
        own = settings_fields(method.settings)
        owners = method_fields()
        if self.options is not None and not isinstance(self.options, dict):
            raise ValueError(
                f"QuantConfig.options must be a dict of method {self.method!r}'s own fields "
                f"({sorted(own) or 'it has none'}), got {type(self.options).__name__}"
            )
        given: dict = {}
        keywords = [(n, getattr(self, n)) for n in self.METHOD_FIELDS if getattr(self, n) is not None]
        for source, items in (("", keywords), ("options", (self.options or {}).items())):
            for name, value in items:
                if name not in own:
                    where = " (in options)" if source else ""
                    if name in owners:
                        raise ValueError(
                            f"QuantConfig.{name}={value!r}{where} does not apply to method {self.method!r} "
                            f"(only to {owners[name]}); leave it unset."
                        )
                    raise ValueError(
                        f"QuantConfig.options: no quantization method has a field {name!r}; method "
                        f"{self.method!r} has {sorted(own) or 'no fields of its own'}."
                    )
                if name in given and given[name] != value:
                    raise ValueError(
                        f"QuantConfig.{name} is given twice ({given[name]!r}, and {value!r} in options); give it once."
                    )
                given[name] = value
        return given

    @property
    def settings(self):
        """The method's own fields, as its settings object (e.g. ``GPTQSettings(group_size=128, ...)``)."""
        method = get_quantizer(self.method)
        own = settings_fields(method.settings)
        values = {n: getattr(self, n) for n in self.METHOD_FIELDS if n in own}
        return method.settings(**values, **(self.options or {}))

    def to_dict(self) -> dict:
        """The common fields and this method's own fields (other methods' fields are left out)."""
        data = super().to_dict()
        own = settings_fields(get_quantizer(self.method).settings)
        return {
            k: v
            for k, v in data.items()
            if (k not in self.METHOD_FIELDS or k in own) and not (k == "options" and v is None)
        }

    def __repr__(self) -> str:
        return f"QuantConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    @classmethod
    def from_name(cls, name: str, **overrides) -> QuantConfig:
        """The config for a variant name (``"gptq-8"``, ``"gptq-4"``, ``"bnb-int8"``... see
        :func:`kdq.quantize.variant_names`), with field overrides, e.g.
        ``from_name("gptq-4", num_samples=64)``. A variant's own-field values that QuantConfig has
        no keyword for go into ``options``."""
        data = {**variant_fields(name), **overrides}
        keywords = {f.name for f in dataclasses.fields(cls)}
        own = settings_fields(get_quantizer(data["method"]).settings)
        options = {k: v for k, v in data.items() if k not in keywords and k in own}
        data = {k: v for k, v in data.items() if k not in options}
        if options:
            data["options"] = {**options, **(data.get("options") or {})}
        return cls(**data)

    @property
    def name(self) -> str:
        """Short variant name, e.g. ``"gptq-4"`` or ``"bnb-nf4-nodq"`` (used in reports)."""
        return get_quantizer(self.method).variant_name(self)
