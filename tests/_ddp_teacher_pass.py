"""Run by tests/test_parallel_pass.py under `accelerate launch --multi_gpu --num_processes 2` on CPU.

Arguments: work folder, cache folder, rows, TTA (0/1), and optionally the rank to kill and after how many of
its scoring calls (SIGKILL: no cleanup, as an out-of-memory kill or a dead node would leave it). Each rank
writes rank<r>.json (what its pass reported) and rank<r>.npy (the logits it read back).
"""

import importlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

import kdq
from kdq.data import load_arena
from kdq.distill.teachers import ModelTeacher
from kdq.testing import make_arena_rows

cache = importlib.import_module("kdq.distill.cache")  # kdq.distill is the function
work, cache_dir, n, tta = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4]))
kill_rank, kill_after = (int(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 6 else (None, None)
rank = int(os.environ["RANK"])
torch.set_num_threads(1)

if rank == kill_rank:
    real, calls = cache.predict_logits, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) > kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-shard: its rows were scored but never written
        return real(*args, **kwargs)

    cache.predict_logits = dies

rows = load_arena(make_arena_rows(n, seed=11, max_words=60), unlabelled=True)
got = cache.cache_teacher_logits(
    ModelTeacher(str(work / "teacher")),
    rows,
    cache_dir=cache_dir,
    template=kdq.TemplateConfig(max_length=64),
    tta=tta,
    batch_size=4,
    chunk_rows=6,
)
np.save(work / f"rank{rank}.npy", got.logits)
(work / f"rank{rank}.json").write_text(
    json.dumps({"computed": got.computed, "reused": got.reused, "stats": got.stats, "path": str(got.path)})
)
