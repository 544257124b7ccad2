"""Multi-process helpers: the launcher's rank and world size, and DDP-safe single-process stages.

Under ``accelerate launch`` / ``torchrun`` every process runs the same script. Stages that must
run once (a teacher pass before training, quantize/compare/export after it) run on rank 0 while
the other ranks wait on a marker file, not at a collective, so no process-group timeout can
fire however long the stage takes. Standard library at import time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def rank() -> int:
    """This process's global rank under a launcher (0 without one)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def training_device():
    """The ``torch.device`` this process trains on: its local CUDA GPU (``LOCAL_RANK``), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def run_on_rank0(out: Path, name: str, fn, *, poll_s: float = 1.0):
    """Run ``fn`` on rank 0 only, before any process group exists; other ranks wait for a marker
    file (no collective, hence no timeout) and get the result rank 0 wrote (JSON-able).

    The marker's name includes the launcher's process id (the parent of every rank on this
    machine), so a marker left by an earlier run is never taken for this run's.
    """
    if world_size() == 1:
        return fn()
    marker = out / ".kdq-sync" / f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}-{os.getppid()}-{name}.json"
    if rank() == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = fn()
        except BaseException as err:
            _write_marker(marker, {"ok": False, "error": f"{type(err).__name__}: {err}"})
            raise
        _write_marker(marker, {"ok": True, "result": result})
        return result
    while not marker.is_file():
        time.sleep(poll_s)
    record = json.loads(marker.read_text())
    if not record["ok"]:
        raise RuntimeError(f"rank 0 failed in the {name} stage ({record['error']}); see its log.")
    return record["result"]


def _write_marker(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)  # other ranks see the whole file or none


def process_group(timeout_s: int):
    """The accelerate state, creating the process group (under ``accelerate launch``) with
    ``timeout_s`` before TrainingArguments would create it with its 30-minute default."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    if world_size() == 1:
        return PartialState()
    cuda = torch.cuda.is_available()
    return PartialState(cpu=not cuda, backend=None if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
