"""Run by tests/test_distill_recipes.py under `accelerate launch --multi_gpu --num_processes 2` (gloo DDP):
transfer set, paired swap and the hidden-state term (a live teacher on every process)."""

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
    training=kdq.TrainingSettings(epochs=1, batch_size=8, logging_steps=1, swap_augment="paired"),
    loss=kdq.LossSettings(alpha=0.5, hidden_weight=1.0),
    teacher_pass=kdq.TeacherPassSettings(cache_dir=str(work / "cache")),
)
result = kdq.distill(
    str(work / "student"),
    make_arena_rows(32, seed=3, max_words=40),
    transfer_data=make_arena_rows(32, seed=5, max_words=40, labelled=False, id_offset=5000),
    teacher=str(work / "teacher"),
    config=cfg,
)
rank = dist.get_rank() if dist.is_initialized() else 0
info = {"world_size": dist.get_world_size() if dist.is_initialized() else 1, "metrics": result.metrics}
(work / f"rank{rank}.json").write_text(json.dumps(info, default=str))
