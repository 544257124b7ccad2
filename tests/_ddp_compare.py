"""Run by tests/test_parallel_pass.py under `accelerate launch --multi_gpu --num_processes 2` on CPU: kdq.compare
on two processes (each scores its share of the rows, the shares exchanged through files). Each rank writes
rank<r>.json: its table rows and notes."""

import json
import os
import sys
from pathlib import Path

import torch

import kdq
from kdq.testing import make_arena_rows

work, tta = Path(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
result = kdq.compare(
    {"teacher": str(work / "teacher"), "student": str(work / "student")},
    make_arena_rows(40, seed=13, max_words=60),
    kdq.EvalConfig(tta=tta, batch_size=4, progress=False, bootstrap_samples=200),
    out_dir=work / "report",
    teacher="teacher",
    student="student",
    overwrite=True,
)
rank = int(os.environ["RANK"])
(work / f"rank{rank}.json").write_text(json.dumps({"rows": result.rows, "notes": result.notes}, default=str))
