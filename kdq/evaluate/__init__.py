"""Evaluate stage: score variants on held-out rows, measure their cost, check them against a budget.

    kdq.evaluate(model, rows, EvalConfig(...)) -> Metrics
    kdq.compare({"teacher-fp16": path, ...}, rows, out_dir=..., teacher=..., baseline=..., student=...)
    kdq.sweep_lengths({"student": path, ...}, rows, lengths=(512, 1024, 2048), out_dir=...) -> LengthSweep

Light on import: torch, transformers and matplotlib load only when a verb runs.
"""

from ..costs.budget import BudgetProfile, available_budgets, load_budget, project
from ..costs.modelspec import ModelSpec, WeightFormat, flops_per_token, param_counts, weight_bytes, weight_format_of
from .config import EvalConfig, Metrics
from .evaluate import evaluate
from .lengths import LengthSweep, sweep_lengths
from .metrics import accuracy, ece, log_loss
from .report import CompareResult, compare, gap_closed

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
