"""kdq: distil, quantize, measure and export LLM arena classifiers for offline Kaggle notebooks.

One verb per stage, each taking a frozen config object::

    kdq.distill(student, train, eval_data=..., teacher=..., config=DistillConfig(...))
    kdq.shrink(teacher, out_dir, ShrinkConfig(num_layers=..., hidden_size=...), calibration=rows)
    kdq.quantize(model, QuantConfig(method="gptq", bits=8), calibration=rows, out_dir=...)
    kdq.evaluate(model, rows, EvalConfig(...)) / kdq.compare(variants, rows, ...)
    kdq.export(model, out_dir, ExportConfig(...)) / kdq.verify(folder)

Names load on first use (:mod:`kdq.utils.lazy`), so ``import kdq`` and ``kdq --help`` do not import
torch. Four verbs share their names with their subpackages (``kdq.distill`` the function,
``kdq.distill`` the package); loading a subpackage leaves the verb in place.

The layers, bottom up. A package imports only from the layers above it in this list, never from
another package on its own line; ``tests/test_imports.py`` reads this list and enforces it:

* ``runtime``: the scoring code every exported ``predict.py`` runs (torch + transformers only);
* ``utils``: atomic folders, the user cache folder, errors, JSON conversion, versions, lazy names;
* ``config``: the frozen-config convention, validation helpers, config files and ``--set``;
* ``data``: arena rows (load, validate, swap, encode, group) and synthetic probe rows;
* ``quant_methods``: one file per quantization method, and the registry everything asks;
* ``costs``: the cost model (model specs, budget profiles, training memory) the stages share;
* ``models``: loading classifiers and fingerprinting them;
* ``distill``, ``quantize``, ``evaluate``, ``export``: the four stages, one verb each, independent;
* ``recipes``: named distillation recipes (library data);
* ``pipeline``: the stages wired together (``kdq run``);
* ``cli``: the ``kdq`` command;
* ``testing``: tiny offline models and rows for tests.

Package entry files follow one convention: a package's ``__init__.py`` holds its docstring (what each
module is for) and, when the package has public names, one :func:`~kdq.utils.lazy.lazy_package` table
from each name to the module that defines it; no other code and no eager imports.
"""

from .utils.lazy import lazy_package

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_arena": ".data",
    "TemplateConfig": ".runtime.template",
    "distill": ".distill",
    "DistillConfig": ".distill",
    "DistillResult": ".distill",
    "LossSettings": ".distill",
    "TeacherPassSettings": ".distill",
    "TrainingSettings": ".distill",
    "LoraSettings": ".distill",
    "Teacher": ".distill",
    "shrink": ".distill",
    "ShrinkConfig": ".distill",
    "quantize": ".quantize",
    "QuantConfig": ".quantize",
    "evaluate": ".evaluate",
    "compare": ".evaluate",
    "sweep_lengths": ".evaluate",
    "EvalConfig": ".evaluate",
    "recipe": ".recipes",
    "Metrics": ".evaluate",
    "export": ".export",
    "verify": ".export",
    "ExportConfig": ".export",
}

__all__ = ["__version__", *_EXPORTS]

lazy_package(__name__, _EXPORTS)
