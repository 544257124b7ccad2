"""kdq: distil, quantize, measure and export LLM arena classifiers for offline Kaggle notebooks.

One verb per stage, each taking a frozen config object::

    kdq.distill(student, train, eval_data=..., teacher=..., config=DistillConfig(...))
    kdq.quantize(model, QuantConfig(method="gptq", bits=8), calibration=rows, out_dir=...)
    kdq.evaluate(model, rows, EvalConfig(...)) / kdq.compare(variants, rows, ...)
    kdq.export(model, out_dir, ExportConfig(...)) / kdq.verify(folder)

Names load on first use (:mod:`kdq._lazy`), so ``import kdq`` and ``kdq --help`` do not import
torch. Four verbs share their names with their subpackages (``kdq.distill`` the function,
``kdq.distill`` the package); loading a subpackage leaves the verb in place.
"""
from ._lazy import lazy_package

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_arena": ".data", "TemplateConfig": ".template",
    "distill": ".distill", "DistillConfig": ".distill", "DistillResult": ".distill", "LoraSettings": ".distill",
    "shrink": ".distill",
    "quantize": ".quantize", "QuantConfig": ".quantize",
    "evaluate": ".evaluate", "compare": ".evaluate", "EvalConfig": ".evaluate", "Metrics": ".evaluate",
    "export": ".export", "verify": ".export", "ExportConfig": ".export",
}

__all__ = ["__version__", *_EXPORTS]

lazy_package(__name__, _EXPORTS)
