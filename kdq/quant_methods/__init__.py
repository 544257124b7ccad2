"""The quantization-method registry: every fact about each method, in one class per method.

A low-level package (standard library at import time; backends load when a method runs), so
:mod:`kdq.models`, :mod:`kdq.export` and :mod:`kdq.evaluate` ask it without importing the
quantize stage; :mod:`kdq.quantize` re-exports it. Adding a method: one module here with a
:class:`QuantMethod` subclass, and one import line below (docs/quantize.md, "Adding a method").
"""

from . import bnb as _bnb  # noqa: F401  (registers bnb-int8 / bnb-nf4 / bnb-fp4)
from . import gptq as _gptq  # noqa: F401  (registers gptq)
from .registry import (
    FP16,
    HEAD_MODULES,
    QuantMethod,
    WeightFormat,
    get_quantizer,
    method_for,
    prepare_to_load,
    quantization_config_of,
    register_quantizer,
    registered_methods,
    runtime_modules_by_quant_method,
    wheels_for,
)

__all__ = [
    "QuantMethod",
    "WeightFormat",
    "FP16",
    "HEAD_MODULES",
    "register_quantizer",
    "get_quantizer",
    "registered_methods",
    "method_for",
    "prepare_to_load",
    "quantization_config_of",
    "runtime_modules_by_quant_method",
    "wheels_for",
]
