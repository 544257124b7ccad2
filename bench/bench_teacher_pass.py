"""The teacher pass on one process against two, and its peak memory as the rows grow.

1. **Speed and identity**: the same rows through :func:`kdq.distill.teacher_pass` in one process and in two
   (``torchrun --nproc_per_node 2``, a gloo process group, one torch thread each): rows/s of the whole pass
   (rendering, hashing, loading the teacher, scoring, writing shards, waiting on the other rank, reading the
   merged cache) and the largest difference between the two caches' logits. Target: >= 1.7x, <= 1e-6.
2. **Flat memory**: peak RSS of a teacher pass plus the training-table build (``kdq.distill``'s
   ``_training_table``, swap copies included) over short rows read from parquet, at two row counts (20k and
   200k), against the Arrow tables the run wrote on disk (the datasets cache and the teacher cache, which are
   memory-mapped). The growth of the peak should stay within the growth of those tables.

Each measurement runs in a fresh process. Run on a quiet machine (``uptime`` load below 0.5):

    python bench/bench_teacher_pass.py            # the figures for BENCHMARKS.md (~10 min on 2 cores)
    python bench/bench_teacher_pass.py --quick    # small sizes, a smoke run (bench/run_all.py, the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    # rows, max words, teacher hidden / layers, batch for the speed run; row counts of the memory run
    "full": {"rows": 768, "max_words": 160, "hidden": 256, "layers": 4, "batch": 8, "memory": (20_000, 200_000)},
    "quick": {"rows": 96, "max_words": 60, "hidden": 64, "layers": 2, "batch": 8, "memory": (1_000, 4_000)},
}
TEMPLATE_MAX = 256
MEMORY_MAX_WORDS = 6  # short rows: ~20-30 tokens each


def _env(work: Path, root: Path = ROOT) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(work / "hf-datasets"),
        "KDQ_CACHE": str(work / "kdq-cache"),
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


def _rss() -> dict:
    """``VmRSS``, ``VmHWM`` (peak), ``RssAnon`` (heap: Python objects, in-memory Arrow) and ``RssFile``
    (file-backed: memory-mapped Arrow, libraries), in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class _AnonPeak:
    """The peak of ``RssAnon`` while the block runs (sampled every 5 ms: the kernel keeps no peak of it)."""

    def __enter__(self):
        import threading

        self.peak, self._stop = _rss()["RssAnon"], threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, _rss()["RssAnon"])

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss()["RssAnon"])
        return False


def _disk_bytes(*folders) -> int:
    return sum(p.stat().st_size for f in folders if Path(f).exists() for p in Path(f).rglob("*") if p.is_file())


# --------------------------------------------------------------------------- workers (fresh processes)
def worker_setup(work: Path, size: dict, n_rows: int, max_words: int) -> None:
    """The teacher folder and the rows as parquet (written here, so no worker holds them as Python lists)."""
    import pandas as pd

    from kdq.testing import make_arena_rows, make_tiny_classifier, make_tokenizer

    tok = make_tokenizer()
    make_tiny_classifier(
        work / "teacher",
        tok,
        seed=1,
        hidden_size=size["hidden"],
        intermediate_size=size["hidden"] * 3,
        num_layers=size["layers"],
        num_heads=4,
        num_kv_heads=2,
    )
    pd.DataFrame(make_arena_rows(n_rows, seed=0, max_words=max_words)).to_parquet(work / "rows.parquet")


def worker_pass(work: Path, out: Path, batch: int) -> None:
    """One process's teacher pass (under torchrun: its share), timed from a common start."""
    import numpy as np
    import torch
    import torch.distributed as dist

    import kdq
    from kdq.distill.teacher_pass import teacher_pass

    torch.set_num_threads(1)
    _warm_imports()  # a process pays its imports once, whatever it scores: they are not the pass's rows/s
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")  # as under accelerate launch: the group exists, the pass never uses it
        dist.barrier()  # a common start
    settings = kdq.TeacherPassSettings(tta=True, batch_size=batch, cache_dir=str(work / "teacher-cache"))
    start = time.perf_counter()
    template = kdq.TemplateConfig(max_length=TEMPLATE_MAX)
    cache = teacher_pass(str(work / "teacher"), str(work / "rows.parquet"), settings, template=template)
    seconds = time.perf_counter() - start
    rank = int(os.environ.get("RANK", "0"))
    np.save(out.with_suffix(f".rank{rank}.npy"), cache.logits)
    record = {"seconds": seconds, "rows": len(cache.ids), "computed": cache.computed, "stats": cache.stats}
    out.with_suffix(f".rank{rank}.json").write_text(json.dumps(record))
    if world > 1:
        dist.barrier()  # after every rank finished its share, as kdq.distill's wait_for_everyone
        dist.destroy_process_group()


def _warm_imports() -> None:
    """Import what the pass imports lazily (tokenizers, the Llama modelling code, the quantization registry)."""
    import importlib

    for name in ("transformers.models.llama.modeling_llama", "transformers.models.auto", "kdq.quant_methods"):
        importlib.import_module(name)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification, AutoTokenizer


def worker_memory(work: Path, out: Path) -> None:
    """Peak RSS of a teacher pass plus the training-table build over the parquet rows."""
    import datasets

    import kdq
    from kdq.data import load_arena
    from kdq.distill.api import _training_table
    from kdq.distill.teacher_pass import teacher_pass
    from kdq.models import load_tokenizer

    datasets.disable_progress_bars()
    import torch

    torch.set_num_threads(1)
    tok = load_tokenizer(work / "teacher")
    settings = kdq.TeacherPassSettings(batch_size=64, cache_dir=str(work / "teacher-cache"))
    template = kdq.TemplateConfig(max_length=64)
    before = _rss()
    start = time.perf_counter()
    with _AnonPeak() as anon:
        rows = load_arena(str(work / "rows.parquet"), require_labels=True)  # as kdq.distill reads its rows
        cache = teacher_pass(str(work / "teacher"), rows, settings, template=template)
        table = _training_table(rows, tok, template, True, cache)  # swap_augment=True: the swapped copies too
    seconds = time.perf_counter() - start
    after = _rss()
    in_memory = sum(
        t.data.nbytes for t in (rows, table, cache.table) if not t.cache_files
    )  # Arrow tables held in memory (not memory-mapped)
    record = {
        "rows": len(rows),
        "table_rows": len(table),
        "seconds": seconds,
        "baseline_rss": before["VmRSS"],
        "peak_rss": after["VmHWM"],
        "baseline_anon": before["RssAnon"],
        "peak_anon": anon.peak,
        "arrow_disk": _disk_bytes(work / "hf-datasets", work / "teacher-cache"),
        "arrow_memory": in_memory,
    }
    out.write_text(json.dumps(record))


# --------------------------------------------------------------------------- the driver
def _run(args, env, timeout=3600):
    args = [str(a) for a in args]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"bench worker failed: {' '.join(map(str, args))}")
    return proc


def speed(size: dict, tmp: Path) -> dict:
    import numpy as np

    me = [sys.executable, str(Path(__file__).resolve())]
    results = {}
    for procs in (1, 2):
        work = tmp / f"speed-{procs}"
        work.mkdir()
        env = _env(work)
        _run(
            [*me, "--worker", "setup", "--work", work, "--n", size["rows"], "--words", size["max_words"], *_size(size)],
            env,
        )
        out = work / "pass.json"
        cmd = [*me, "--worker", "pass", "--work", work, "--out", out, "--batch", size["batch"]]
        if procs == 2:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd[1:]]
        _run(cmd, env)
        ranks = [json.loads(out.with_suffix(f".rank{r}.json").read_text()) for r in range(procs)]
        logits = [np.load(out.with_suffix(f".rank{r}.npy")) for r in range(procs)]
        seconds = max(r["seconds"] for r in ranks)  # the pass ends when its slowest rank has read the merged cache
        results[procs] = {"seconds": seconds, "rows": ranks[0]["rows"], "logits": logits, "ranks": ranks}
    one, two = results[1], results[2]
    diff = max(float(np.abs(lg - one["logits"][0]).max()) for lg in two["logits"])
    return {
        "rows": one["rows"],
        "one_s": one["seconds"],
        "two_s": two["seconds"],
        "one_rows_s": one["rows"] / one["seconds"],
        "two_rows_s": two["rows"] / two["seconds"],
        "speedup": one["seconds"] / two["seconds"],
        "max_abs_diff": diff,
        "shares": [r["stats"]["rows"] for r in two["ranks"]],
        "breakdown": {
            procs: [
                {k: round(r["stats"].get(k, 0.0), 2) for k in ("render_seconds", "seconds", "wait_seconds")}
                | {"pass": round(r["seconds"], 2)}
                for r in results[procs]["ranks"]
            ]
            for procs in (1, 2)
        },
    }


def _size(size: dict) -> list:
    return ["--hidden", size["hidden"], "--layers", size["layers"]]


def memory(size: dict, tmp: Path, root: Path = ROOT) -> list:
    """The memory worker at each row count, importing kdq from ``root`` (another checkout: a before/after)."""
    me = [sys.executable, str(Path(__file__).resolve())]
    out = []
    for n in size["memory"]:
        work = tmp / f"memory-{n}"
        work.mkdir()
        env = _env(work, root)
        tiny = {**size, "hidden": 64, "layers": 2}
        _run(
            list(
                map(
                    str, [*me, "--worker", "setup", "--work", work, "--n", n, "--words", MEMORY_MAX_WORDS, *_size(tiny)]
                )
            ),
            env,
        )
        _run(list(map(str, [*me, "--worker", "memory", "--work", work, "--out", work / "memory.json"])), env)
        out.append(json.loads((work / "memory.json").read_text()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument(
        "--kdq-root",
        type=Path,
        default=ROOT,
        help="measure the memory of the kdq package under this folder instead (e.g. `git archive` of an older "
        "commit, for a before/after); the speed run always uses this checkout",
    )
    ap.add_argument("--memory-only", action="store_true", help="skip the speed run")
    ap.add_argument("--worker", choices=("setup", "pass", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--words", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "setup":
        worker_setup(args.work, {"hidden": args.hidden, "layers": args.layers}, args.n, args.words)
        return 0
    if args.worker == "pass":
        worker_pass(args.work, args.out, args.batch)
        return 0
    if args.worker == "memory":
        worker_memory(args.work, args.out)
        return 0

    size = SIZES["quick" if args.quick else "full"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="kdq-bench-pass-") as tmp:
        tmp = Path(tmp)
        sp = None if args.memory_only else speed(size, tmp)
        mem = memory(size, tmp, args.kdq_root.resolve())
    print(f"{os.cpu_count()} cores, load average {load:.2f} at the start ({'quick' if args.quick else 'full'} sizes)")
    if sp is not None:
        _print_speed(sp, size)
    _print_memory(mem, args.kdq_root)
    return 0


def _print_speed(sp: dict, size: dict) -> None:
    print("\n## Teacher pass: 1 process vs 2 processes (gloo, 1 torch thread each)")
    print(
        f"{sp['rows']} rows (up to {size['max_words']} words), teacher hidden {size['hidden']} x {size['layers']} "
        f"layers, swap TTA, batch {size['batch']}; the whole pass, rendering and cache reads included"
    )
    print("| processes | seconds | rows/s | speedup | max abs Δ logits vs 1 process |\n|---:|---:|---:|---:|---:|")
    print(f"| 1 | {sp['one_s']:.1f} | {sp['one_rows_s']:.1f} | 1.00x | – |")
    print(f"| 2 | {sp['two_s']:.1f} | {sp['two_rows_s']:.1f} | {sp['speedup']:.2f}x | {sp['max_abs_diff']:.1e} |")
    print(f"shares (sequences per rank, TTA counts 2 per row): {sp['shares']}")
    print(
        f"target >= 1.7x: {'met' if sp['speedup'] >= 1.7 else 'NOT met'}; "
        f"logits <= 1e-6: {'met' if sp['max_abs_diff'] <= 1e-6 else 'NOT met'}"
    )


def _print_memory(mem: list, root: Path) -> None:
    print(
        "\n## Peak memory of a teacher pass + training-table build (short rows, 1 process)"
        + ("" if root.resolve() == ROOT else f"; kdq from {root}")
    )
    print(
        "| rows | seconds | peak RSS MB | peak − baseline MB | peak anonymous − baseline MB | Arrow on disk MB "
        "| Arrow in memory MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    mb = 1e6
    for m in mem:
        print(
            f"| {m['rows']:,} | {m['seconds']:.1f} | {m['peak_rss'] / mb:.0f} | "
            f"{(m['peak_rss'] - m['baseline_rss']) / mb:.0f} | {(m['peak_anon'] - m['baseline_anon']) / mb:.0f} | "
            f"{m['arrow_disk'] / mb:.0f} | {m['arrow_memory'] / mb:.1f} |"
        )
    small, big = mem
    grow = (big["peak_rss"] - small["peak_rss"]) / mb
    arrow = (big["arrow_disk"] + big["arrow_memory"] - small["arrow_disk"] - small["arrow_memory"]) / mb
    ratio = big["rows"] / small["rows"]
    anon = (big["peak_anon"] - small["peak_anon"]) / mb
    print(
        f"{ratio:g}x the rows: peak RSS +{grow:.0f} MB (anonymous +{anon:.0f} MB), Arrow tables +{arrow:.0f} MB: "
        + ("flat beyond the Arrow tables" if grow <= arrow + 32 else "GROWS beyond the Arrow tables")
    )


if __name__ == "__main__":
    sys.exit(main())
