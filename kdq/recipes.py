"""Named distillation recipes: library data that the demo, ``examples/lmsys_danube3.py``, the
benches and the docs all read, so one place says what T, α and the loss terms are for each kind
of student.

A :class:`Recipe` holds the loss and optimisation choices of a run (``DistillConfig`` sections as
nested dicts: ``loss``, ``teacher_pass``, ``training``); the run's size (epochs, batch sizes,
``template``, ``output_dir``) is the caller's. Each recipe names the student it is for and where its
evidence is (BENCHMARKS.md)::

    cfg = kdq.recipes.recipe("cross-width").config(output_dir="runs/kd", training={"epochs": 1, "batch_size": 16},
                                                   template=kdq.TemplateConfig(max_length=96))

Kinds of student (``Recipe.student``):

* ``"teacher"``: fine-tuning the teacher itself on hard labels;
* ``"any"``: anything the teacher's logits can teach (any tokenizer);
* ``"layer-dropped"``: :func:`kdq.shrink` by depth (same width as the teacher);
* ``"width-pruned"``: :func:`kdq.shrink` with a narrower width, or a separately pretrained
  student that shares the teacher's tokenizer (Danube3-500M for Danube3-4B): narrower and shallower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .config.io import merge  # standard library only

STUDENT_KINDS = ("teacher", "any", "layer-dropped", "width-pruned")


@dataclass(frozen=True)
class Recipe:
    """One named recipe: ``settings`` are :class:`~kdq.distill.DistillConfig` fields, its sections as nested
    dicts (``{"loss": {"alpha": 0.5}, "training": {"learning_rate": 2e-4}}``)."""

    name: str
    student: str
    summary: str
    settings: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    teacher: bool = True  # distils from a teacher (False: trains on hard labels alone)
    transfer: bool = True  # uses a transfer set of unlabelled rows when one is given
    evidence: str = ""

    def __post_init__(self):
        if self.student not in STUDENT_KINDS:
            raise ValueError(f"Recipe.student must be one of {STUDENT_KINDS}, got {self.student!r}")
        frozen = {k: MappingProxyType(dict(v)) if isinstance(v, Mapping) else v for k, v in self.settings.items()}
        object.__setattr__(self, "settings", MappingProxyType(frozen))

    def config(self, **run):
        """A :class:`~kdq.distill.DistillConfig` of this recipe; ``run`` sets the run's own fields
        (``output_dir``, ``template``, ``training={"epochs": 1, "batch_size": 16}``...) and may override the
        recipe's. A section given as a dict is merged into the recipe's key by key; a section object
        (``training=TrainingSettings(...)``) is refused, since it would drop the recipe's own values of it."""
        from .distill.config import SECTIONS, DistillConfig

        objects = [k for k, v in run.items() if k in SECTIONS and k in self.settings and not isinstance(v, dict)]
        if objects:
            raise ValueError(
                f"recipe {self.name!r}.config({objects[0]}=...): give the section as a dict of the fields to change, "
                f"e.g. {objects[0]}={{...}}, so the recipe's own {objects[0]} settings "
                f"({dict(self.settings[objects[0]])}) stay."
            )
        own = {k: dict(v) if isinstance(v, Mapping) else v for k, v in self.settings.items()}
        return DistillConfig(**merge(own, run))


_COMMON = {
    "loss": {"alpha": 0.5, "temperature": 1.0},
    "teacher_pass": {"tta": True},
    "training": {"swap_augment": True, "warmup_ratio": 0.1},
}


RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "teacher",
            "teacher",
            "fine-tune the teacher on hard labels with swap copies (every pair also as B-vs-A)",
            {"training": {"learning_rate": 1e-4, "swap_augment": True, "warmup_ratio": 0.1}},
            teacher=False,
            transfer=False,
        ),
        Recipe(
            "hard-labels",
            "any",
            "the no-distillation baseline: the student's init and labelled rows, hard labels only",
            {"training": {"learning_rate": 2e-4, "swap_augment": True, "warmup_ratio": 0.1}},
            teacher=False,
            transfer=False,
        ),
        Recipe(
            "logit-kd",
            "any",
            "cached swap-TTA teacher logits (forward KL, T = 1, alpha = 0.5) on labelled + transfer rows",
            merge(_COMMON, {"training": {"learning_rate": 2e-4}}),
            evidence="BENCHMARKS.md#distillation-recipes-on-real-weights-benchbench_kd_recipespy",
        ),
        Recipe(
            "layer-dropped",
            "layer-dropped",
            "logit-kd plus the hidden-state term against the live teacher, layer by layer (identity map)",
            merge(_COMMON, {"training": {"learning_rate": 2e-4}, "loss": {"hidden_weight": 1.0}}),
            evidence="BENCHMARKS.md#distillation-recipes-on-real-weights-benchbench_kd_recipespy",
        ),
        Recipe(
            "cross-width",
            "width-pruned",
            "logit-kd plus the hidden-state term through learned projections into the teacher's width",
            merge(_COMMON, {"training": {"learning_rate": 2e-4}, "loss": {"hidden_weight": 1.0}}),
            evidence="BENCHMARKS.md#distillation-across-widths-benchbench_kd_recipespy",
        ),
        Recipe(
            "cross-width-cached",
            "width-pruned",
            "logit-kd plus the pooled-feature term (centered cosine, weight 4) from the teacher cache: no live "
            "teacher in memory",
            merge(
                _COMMON,
                {
                    "training": {"learning_rate": 2e-4},
                    "loss": {"feature_weight": 4.0, "feature_loss": "centered-cosine"},
                },
            ),
            evidence="BENCHMARKS.md#distillation-across-widths-benchbench_kd_recipespy",
        ),
    )
}


def recipe(name: str) -> Recipe:
    """The recipe called ``name``; ``ValueError`` lists the known ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]


def for_student(kind: str) -> Recipe:
    """The recommended recipe for a kind of student (:data:`STUDENT_KINDS`).

    For a width-pruned (or separately pretrained, narrower) student that is ``cross-width-cached``: on the
    SmolLM2 bench its centered-cosine feature term closed 70-84% of the gap on each of 3 seeds with no teacher
    in memory, where the plain cosine closed about 25% (BENCHMARKS.md, "Distillation across widths");
    ``cross-width`` (every layer, live teacher) remains for a GPU where the live teacher fits.
    """
    best = {
        "teacher": "teacher",
        "any": "logit-kd",
        "layer-dropped": "layer-dropped",
        "width-pruned": "cross-width-cached",
    }
    if kind not in best:
        raise ValueError(f"unknown kind of student {kind!r}; choose from {list(best)}")
    return RECIPES[best[kind]]
