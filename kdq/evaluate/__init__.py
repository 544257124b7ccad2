"""Evaluate stage: score variants on held-out rows, measure their cost, check them against a budget.

    kdq.evaluate(model, rows, EvalConfig(...)) -> Metrics
    kdq.compare({"teacher-fp16": path, ...}, rows, out_dir=..., teacher=..., baseline=..., student=...)
    kdq.sweep_lengths({"student": path, ...}, rows, lengths=(512, 1024, 2048), out_dir=...) -> LengthSweep

* ``evaluate``: :func:`evaluate` in named steps (load the variant, render, score, metrics, verdict);
* ``render``, ``diagnostics``, ``per_row``: rows rendered once with what ``max_length`` cut, the truncation and
  position-bias diagnostics, the per-row table;
* ``report``, ``recommend``, ``lengths``: :func:`compare`'s report, the pick to ship, :func:`sweep_lengths`;
* ``config``, ``metrics``, ``stats``: :class:`EvalConfig` and :class:`Metrics`, the metrics, the paired bootstrap.

The cost model (budget profiles, model specs, the projection) lives in :mod:`kdq.costs`; its public names are
re-exported here for the evaluate verbs' users. Names load on first use (:mod:`kdq.utils.lazy`): torch,
transformers and matplotlib load only when a verb runs.
"""

from ..utils.lazy import lazy_package

__all__ = [
    "EvalConfig",
    "Metrics",
    "evaluate",
    "compare",
    "CompareResult",
    "gap_closed",
    "sweep_lengths",
    "LengthSweep",
    "BudgetProfile",
    "load_budget",
    "available_budgets",
    "project",
    "ModelSpec",
    "WeightFormat",
    "param_counts",
    "flops_per_token",
    "weight_bytes",
    "weight_format_of",
    "log_loss",
    "accuracy",
    "ece",
]

lazy_package(
    __name__,
    {
        "EvalConfig": ".config",
        "Metrics": ".config",
        "evaluate": ".evaluate",
        "compare": ".report",
        "CompareResult": ".report",
        "gap_closed": ".report",
        "sweep_lengths": ".lengths",
        "LengthSweep": ".lengths",
        "log_loss": ".metrics",
        "accuracy": ".metrics",
        "ece": ".metrics",
        **dict.fromkeys(("BudgetProfile", "load_budget", "available_budgets", "project"), "..costs.budget"),
        **dict.fromkeys(
            ("ModelSpec", "WeightFormat", "param_counts", "flops_per_token", "weight_bytes", "weight_format_of"),
            "..costs.modelspec",
        ),
    },
)
