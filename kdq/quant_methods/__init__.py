"""The quantization-method registry: every fact about each method, in one class per method.

A low-level package (standard library at import time; backends load when a method runs), so
:mod:`kdq.models`, :mod:`kdq.export` and :mod:`kdq.evaluate` ask it without importing the
quantize stage; :mod:`kdq.quantize` re-exports it. Every public name lives in
:mod:`~kdq.quant_methods.registry`. Every other module of this package is imported on the first
question asked of the registry (``pkgutil``, :data:`~kdq.quant_methods.registry.METHOD_MODULES`), so
a method registers itself by existing: adding one is one module with a :class:`QuantMethod`
subclass, plus its budget entry (docs/quantize.md, "Adding a method"). Modules here must
therefore import only the standard library at module level.
"""

from ..utils.lazy import lazy_package

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

lazy_package(__name__, dict.fromkeys(__all__, ".registry"))
