"""Multi-process helpers: the launcher's rank and world size, file-based coordination, and DDP-safe
single-process stages.

Under ``accelerate launch`` / ``torchrun`` every process runs the same script. Work shared between the
processes (the teacher pass, evaluation) is coordinated through files on a shared filesystem, never
at a collective: each process does its own share, writes what it did, and reads the others' files, so
no process-group timeout can fire however long a share takes. Stages that must run once (quantize /
compare / export after training) run on rank 0 inside :func:`single_process` while the other ranks
return or wait on a marker file (:func:`run_on_rank0`). Standard library at import time.

Processes agree on the names of those files through :func:`launch_id`, an id that every process of
one launch shares and that no earlier launch had, and a count of the calls made so far (every
process makes the same calls in the same order: they run the same script).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import threading
import time
import uuid
from pathlib import Path

from .atomic import atomic_write

_SOLO = threading.local()


def rank() -> int:
    """This process's global rank under a launcher (0 without one, and inside :func:`single_process`)."""
    return 0 if getattr(_SOLO, "on", False) else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes the launcher started (1 without one, and inside :func:`single_process`)."""
    return 1 if getattr(_SOLO, "on", False) else int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def single_process():
    """Run a block as if this process were alone (rank 0 of 1): kdq's shared work (teacher pass, evaluation)
    inside it neither splits rows with nor waits for the other processes. For stages one process runs while
    the others have returned (the pipeline's quantize / compare / export on rank 0)."""
    before = getattr(_SOLO, "on", False)
    _SOLO.on = True
    try:
        yield
    finally:
        _SOLO.on = before


_LAUNCH_ID = None
_CALLS: dict = {}


def launch_id() -> str:
    """An id every process of this launch shares and no earlier launch had.

    ``$KDQ_RUN_ID`` when set (set it, unique per launch, for a multi-node launcher without torchelastic);
    else, under torchelastic (``torchrun``, ``accelerate launch``), the first process to ask writes a random
    id into the launcher's own key-value store and every process reads the same one (nobody waits: the
    first writer wins); else the launcher's process id (one node). A restart of the workers
    (``TORCHELASTIC_RESTART_COUNT``) is another launch.
    """
    global _LAUNCH_ID
    if _LAUNCH_ID is None:
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if os.environ.get("KDQ_RUN_ID"):
            _LAUNCH_ID = f"{os.environ['KDQ_RUN_ID']}-{restart}"
        elif int(os.environ.get("WORLD_SIZE", "1")) == 1:
            _LAUNCH_ID = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        else:
            shared = _agent_store_id()
            run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
            _LAUNCH_ID = f"{shared}-{restart}" if shared else f"{run}-{socket.gethostname()}-{os.getppid()}-{restart}"
    return _LAUNCH_ID


def _agent_store_id() -> str | None:
    """A random id agreed through torchelastic's agent store (``None`` where there is none)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not os.environ.get("MASTER_ADDR"):
        return None
    try:
        from datetime import timedelta

        from torch.distributed import TCPStore

        store = TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=60)
        )
        return store.compare_set("kdq/launch-id", "", uuid.uuid4().hex).decode()
    except (ImportError, OSError, RuntimeError, ValueError):  # no store to reach: the one-node id instead
        return None


def call_key(name: str) -> str:
    """``<launch id>-<name>-<n>``: the n-th call of ``name`` in this launch, the same on every process."""
    n = _CALLS.get(name, 0) + 1
    _CALLS[name] = n
    return f"{launch_id()}-{name}-{n}"


def post(folder, who: int, record) -> None:
    """Publish ``record`` (picklable) as process ``who``'s file in ``folder``, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank-{who:05d}.pkl"
    atomic_write(path, pickle.dumps(record))  # the others see the whole file or none


def posted(folder, world: int) -> list:
    """The records of processes ``0..world-1`` in ``folder`` (``None`` for one not posted yet)."""
    out = []
    for who in range(world):
        path = Path(folder) / f"rank-{who:05d}.pkl"
        try:
            with open(path, "rb") as fh:
                out.append(pickle.load(fh))
        except FileNotFoundError:
            out.append(None)
    return out


def wait_for_all(folder, world: int, *, poll_s: float = 0.2, done=None, check_every_s: float = 30.0) -> list:
    """Wait until every process has posted in ``folder`` (no collective, hence no timeout), or until
    ``done()`` (checked every ``check_every_s``) says the wait is moot; returns :func:`posted`'s list."""
    folder = Path(folder)
    last_check = time.monotonic()
    while True:
        if all((folder / f"rank-{who:05d}.pkl").is_file() for who in range(world)):
            return posted(folder, world)
        if done is not None and time.monotonic() - last_check >= check_every_s:
            last_check = time.monotonic()
            if done():
                return posted(folder, world)
        time.sleep(poll_s)


def exchange(folder, name: str, record) -> list:
    """Every process posts ``record`` under ``folder/<call key of name>`` and gets every process's record, in
    rank order (files on a filesystem all processes share; no collective). In a single process: ``[record]``."""
    if world_size() == 1:
        return [record]
    where = Path(folder) / call_key(name)
    if rank() == 0:
        _prune(Path(folder))
    post(where, rank(), record)
    return wait_for_all(where, world_size())


def _prune(folder: Path, older_than_s: float = 86400.0) -> None:
    """Remove exchange folders of launches older than a day (their processes have read them long ago)."""
    import shutil

    if not folder.is_dir():
        return
    now = time.time()
    for old in folder.iterdir():
        try:
            if old.is_dir() and now - old.stat().st_mtime > older_than_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue


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
