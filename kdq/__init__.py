"""kdq: distil, quantize, measure and export LLM arena classifiers for offline Kaggle notebooks.

One verb per stage, each taking a frozen config object::

    kdq.distill(student, train, eval_data=..., teacher=..., config=DistillConfig(...))
    kdq.quantize(model, QuantConfig(method="gptq", bits=8), calibration=rows, out_dir=...)
    kdq.evaluate(model, rows, EvalConfig(...)) / kdq.compare(variants, rows, ...)
    kdq.export(model, out_dir, ExportConfig(...)) / kdq.verify(folder)

Names load on first use (PEP 562), so ``import kdq`` and ``kdq --help`` do not import torch.
Four verbs share their names with their subpackages (``kdq.distill`` the function,
``kdq.distill`` the package); importing the subpackage would make the attribute the package,
so :class:`_Package` keeps the verb bound instead.
"""
import importlib
import sys
import types

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
_VERBS = ("distill", "quantize", "evaluate", "export")

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system binds a loaded subpackage on its parent: keep the verb instead
        if name in _VERBS and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
