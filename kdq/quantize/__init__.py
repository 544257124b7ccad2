"""Quantize stage: every registered method (GPTQ 8/4-bit, bitsandbytes int8/nf4/fp4, torchao int8...), each
saved folder verified by reload.

``kdq.quantize(model, QuantConfig.from_name("gptq-4"), calibration=rows, out_dir=...)``.
Methods live in a registry keyed by name (:mod:`kdq.quant_methods`, re-exported here); the
backends (gptqmodel, bitsandbytes, torchao, transformers) are imported only when a method runs.

* ``api``: :func:`quantize`, the run in named steps (load, render, probe, quantize, save, verify);
* ``config``: :class:`QuantConfig` (no torch at import);
* ``calibration``: calibration and probe rows, rendered as training renders them;
* ``verify``: the reload check, the report (``kdq-quantize.json``) and :func:`recheck`.

Names load on first use (:mod:`kdq.utils.lazy`). See docs/quantize.md.
"""

from ..utils.lazy import lazy_package

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

lazy_package(
    __name__,
    {
        "quantize": ".api",
        "QuantConfig": ".config",
        "QuantReport": ".verify",
        "QuantizationError": ".verify",
        "ReloadMismatchError": ".verify",
        "read_report": ".verify",
        "recheck": ".verify",
        **dict.fromkeys(
            (
                "variants",
                "variant_names",
                "QuantMethod",
                "MethodSettings",
                "register_quantizer",
                "get_quantizer",
                "registered_methods",
                "HEAD_MODULES",
            ),
            "..quant_methods",
        ),
    },
)
