"""Child processes for the tests: this Python on a script or ``-c`` code (:func:`run_python`), and two-process
DDP on CPU (:func:`launch_two_processes`: `accelerate launch --multi_gpu --num_processes 2` with gloo).

(`accelerate launch --cpu` only ever starts one process, so the tests use --multi_gpu without GPUs.)
"""

import os
import subprocess
import sys
from pathlib import Path


def run_python(*args, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run this Python with ``args`` (``"-c", code`` or a script and its arguments); fail with the end of
    stderr when it fails. ``env``: variables added to this process's environment."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def launch_two_processes(script: str, *args, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``tests/<script> *args`` on 2 processes; fail with the end of stderr when it fails (unless not
    ``check``: a test that kills a process expects the launch to fail)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(Path(__file__).with_name(script)),
        *map(str, args),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, proc.stderr[-3000:]
    return proc
