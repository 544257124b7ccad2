"""Run by tests/test_seeds.py in a fresh process: one short kdq.distill, then print the sha256 of the weights."""

import hashlib
import sys
from pathlib import Path

import kdq
from kdq.testing import make_arena_rows

kind, base, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
cfg = kdq.DistillConfig(
    output_dir=str(out),
    template=kdq.TemplateConfig(max_length=64),
    training=kdq.TrainingSettings(max_steps=2, batch_size=8, learning_rate=1e-3, seed=7),
    lora=kdq.LoraSettings(r=4) if kind == "lora" else None,
)
result = kdq.distill(str(base), make_arena_rows(32, seed=3, max_words=30), teacher=None, config=cfg)
print(hashlib.sha256((result.student_dir / "model.safetensors").read_bytes()).hexdigest())
