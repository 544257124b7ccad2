"""Quantize stage: GPTQ 8/4-bit and bitsandbytes int8/nf4/fp4, each saved folder verified by reload.

``kdq.quantize(model, QuantConfig.from_name("gptq-4"), calibration=rows, out_dir=...)``.
Methods live in a registry keyed by name (:func:`register_quantizer`); the backends
(gptqmodel, bitsandbytes, transformers) are imported only when a method runs.
See docs/quantize.md.
"""
from . import bnb as _bnb  # noqa: F401  (registers bnb-int8 / bnb-nf4 / bnb-fp4)
from . import gptq as _gptq  # noqa: F401  (registers gptq)
from .api import quantize
from .config import VARIANTS, QuantConfig
from .registry import HEAD_MODULES, QuantMethod, get_quantizer, register_quantizer, registered_methods
from .verify import QuantizationError, QuantReport, ReloadMismatchError, read_report, recheck

__all__ = [
    "quantize", "QuantConfig", "VARIANTS", "QuantReport", "QuantizationError", "ReloadMismatchError",
    "read_report", "recheck", "QuantMethod", "register_quantizer", "get_quantizer", "registered_methods",
    "HEAD_MODULES",
]
