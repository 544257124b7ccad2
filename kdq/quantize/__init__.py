"""Quantize stage: every registered method (GPTQ 8/4-bit, bitsandbytes int8/nf4/fp4...), each saved
folder verified by reload.

``kdq.quantize(model, QuantConfig.from_name("gptq-4"), calibration=rows, out_dir=...)``.
Methods live in a registry keyed by name (:mod:`kdq.quant_methods`, re-exported here); the
backends (gptqmodel, bitsandbytes, transformers) are imported only when a method runs.
See docs/quantize.md.
"""

from ..quant_methods import (
    HEAD_MODULES,
    MethodSettings,
    QuantMethod,
    get_quantizer,
    register_quantizer,
    registered_methods,
    variant_names,
    variants,
)
from .api import quantize
from .config import QuantConfig
from .verify import QuantizationError, QuantReport, ReloadMismatchError, read_report, recheck

__all__ = [
    "quantize",
    "QuantConfig",
    "variants",
    "variant_names",
    "QuantReport",
    "QuantizationError",
    "ReloadMismatchError",
    "read_report",
    "recheck",
    "QuantMethod",
    "MethodSettings",
    "register_quantizer",
    "get_quantizer",
    "registered_methods",
    "HEAD_MODULES",
]
