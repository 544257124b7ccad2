"""kdq: distil, quantize, measure and export LLM arena classifiers for offline Kaggle notebooks.

One verb per stage, each taking a frozen config object::

    kdq.distill(student, train, eval_data=..., teacher=..., config=DistillConfig(...))
    kdq.quantize(model, QuantConfig(method="gptq", bits=8), calibration=rows, out_dir=...)
    kdq.evaluate(model, rows, EvalConfig(...)) / kdq.compare(variants, rows, ...)
    kdq.export(model, out_dir, ExportConfig(...)) / kdq.verify(folder)

The stage verbs are bound here eagerly: each shares its name with its subpackage, and
binding the function after the subpackage import keeps ``kdq.distill`` the function.
Heavy libraries (transformers' Trainer, gptqmodel, bitsandbytes) load only when a stage runs.
"""
__version__ = "0.1.0"

from .data import load_arena
from .template import TemplateConfig
from .distill import DistillConfig, DistillResult, LoraSettings, distill, shrink
from .quantize import QuantConfig, quantize
from .evaluate import EvalConfig, Metrics, compare, evaluate
from .export import ExportConfig, export, verify

__all__ = [
    "__version__", "load_arena", "TemplateConfig",
    "distill", "DistillConfig", "DistillResult", "LoraSettings", "shrink",
    "quantize", "QuantConfig",
    "evaluate", "compare", "EvalConfig", "Metrics",
    "export", "verify", "ExportConfig",
]
