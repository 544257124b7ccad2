"""Run by tests/test_distill.py under `accelerate launch --num_processes 2 --cpu` (gloo DDP)."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

import kdq
from kdq.testing import make_arena_rows

work = Path(sys.argv[1])
cfg = kdq.DistillConfig(
    output_dir=str(work / "run"),
    template=kdq.TemplateConfig(max_length=64),
    training=kdq.TrainingSettings(epochs=1, batch_size=8, logging_steps=1),
    loss=kdq.LossSettings(alpha=0.5),
)
result = kdq.distill(
    str(work / "student"),
    make_arena_rows(64, seed=3, max_words=40),
    eval_data=make_arena_rows(16, seed=4, max_words=40, id_offset=1000),
    teacher=str(work / "teacher"),
    config=cfg,
)
info = {
    "world_size": dist.get_world_size() if dist.is_initialized() else 1,
    "backend": dist.get_backend() if dist.is_initialized() else None,
    "student_dir": str(result.student_dir),
    "metrics": result.metrics,
}
rank = dist.get_rank() if dist.is_initialized() else 0
(work / f"rank{rank}.json").write_text(json.dumps(info, default=str))
