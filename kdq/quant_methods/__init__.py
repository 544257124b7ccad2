"""The quantization-method registry: every fact about each method, in one class per method.

A low-level package (standard library at import time; backends load when a method runs), so
:mod:`kdq.models`, :mod:`kdq.export` and :mod:`kdq.evaluate` ask it without importing the
quantize stage; :mod:`kdq.quantize` re-exports it. Every module of this package is imported
here (``pkgutil``), so a method registers itself by existing: adding one is one module with a
:class:`QuantMethod` subclass, plus its budget entry (docs/quantize.md, "Adding a method").
Modules here must therefore import only the standard library at module level.
"""

import importlib
import pkgutil

from .registry import (
    ANY_CAPABILITY,
    BF16_CAPABILITY,
    FP16,
    FP16_KERNEL,
    HEAD_MODULES,
    CudaKernel,
    KernelChoice,
    MethodSettings,
    QuantMethod,
    WeightFormat,
    choose_cuda_kernel,
    cuda_kernel_reason,
    cuda_kernels_for,
    get_quantizer,
    has_cuda_kernel,
    load_time_config,
    method_field_help,
    method_fields,
    method_for,
    parse_capability,
    prepare_to_load,
    quantization_config_of,
    register_quantizer,
    registered_methods,
    runtime_modules_by_quant_method,
    runtime_settings,
    settings_fields,
    variant_fields,
    variant_names,
    variants,
    wheels_for,
)

METHOD_MODULES = tuple(
    info.name for info in pkgutil.iter_modules(__path__) if info.name != "registry" and not info.name.startswith("_")
)
for _module in METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "QuantMethod",
    "MethodSettings",
    "WeightFormat",
    "FP16",
    "HEAD_MODULES",
    "METHOD_MODULES",
    "register_quantizer",
    "get_quantizer",
    "load_time_config",
    "registered_methods",
    "variants",
    "variant_names",
    "variant_fields",
    "method_fields",
    "method_field_help",
    "settings_fields",
    "method_for",
    "prepare_to_load",
    "quantization_config_of",
    "runtime_settings",
    "runtime_modules_by_quant_method",
    "wheels_for",
    "CudaKernel",
    "KernelChoice",
    "ANY_CAPABILITY",
    "BF16_CAPABILITY",
    "FP16_KERNEL",
    "parse_capability",
    "cuda_kernels_for",
    "choose_cuda_kernel",
    "has_cuda_kernel",
    "cuda_kernel_reason",
]
