"""Run by tests/test_pipeline.py under `accelerate launch --num_processes 2` on CPU (gloo).

The process group's timeout is deliberately short (PipelineConfig.ddp_timeout, yet above the
ranks' natural skew on a busy CPU); the teacher pass is made slower than it. It runs on rank 0
outside the group, the other rank waiting on a file, so no barrier times out and the job passes.
Rank 0's single-process stages (compare here) then run while rank 1 has already returned.
"""

import importlib
import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

import kdq
import kdq.pipeline as pipeline
from kdq.testing import make_arena_rows

cache = importlib.import_module("kdq.distill.cache")  # kdq.distill is the function
work, timeout, slow = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
real_predict = cache.predict_logits


def slow_teacher(*args, **kwargs):  # the teacher pass takes longer than the group's timeout
    time.sleep(slow)
    return real_predict(*args, **kwargs)


cache.predict_logits = slow_teacher
cfg = pipeline.PipelineConfig(
    out_dir=str(work / "run"),
    baseline=False,
    quant_methods=(),
    export_variants=(),
    ddp_timeout=timeout,
    distill=kdq.DistillConfig(
        template=kdq.TemplateConfig(max_length=64),
        training=kdq.TrainingSettings(epochs=1, batch_size=8),
        teacher_pass=kdq.TeacherPassSettings(tta=True),
    ),
    eval=kdq.EvalConfig(budget=None, progress=False, batch_size=8),
)
start = time.perf_counter()
result = pipeline.run_pipeline(
    str(work / "teacher"),
    str(work / "student"),
    make_arena_rows(64, seed=3, max_words=40),
    make_arena_rows(16, seed=4, max_words=40, id_offset=1000),
    make_arena_rows(16, seed=5, max_words=40, id_offset=2000),
    cfg,
)
info = {
    "world_size": dist.get_world_size() if dist.is_initialized() else 1,
    "backend": dist.get_backend() if dist.is_initialized() else None,
    "seconds": time.perf_counter() - start,
    "report": result.report is not None,
    "teacher_pass": result.distill_metrics["student-kd"].get("teacher_pass"),
}
rank = dist.get_rank() if dist.is_initialized() else 0
(work / f"rank{rank}.json").write_text(json.dumps(info, default=str))
