"""Does CPU bf16 autocast speed up training on this machine? fp32 against ``precision="bf16"``, side by side.

The issue asked whether bf16 autocast (this project's CPUs report AVX512-BF16) could bring ``make demo`` under
20 minutes. Measure it, don't assume it: the demo's teacher run (``examples/demo.py``'s ``train_teacher`` on its
data: SmolLM2-135M classifier, 800 VADER pairs, max_length 96, batch 16, swap copies) for the same ``--steps``
optimizer steps in fp32 and in bf16, each in the same process one after the other, from the same weights and
seed, scored on the demo's eval pairs. Reports seconds per optimizer step (the
Trainer's own train time over the steps), their ratio, and the eval log loss after those steps (indicative
only: a few steps say nothing about a full run's accuracy).

Usage::

    python bench/bench_cpu_bf16.py                # the figures in BENCHMARKS.md (~6 min on 2 cores)
    python bench/bench_cpu_bf16.py --quick        # a tiny random model: a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import kdq

ROOT = Path(__file__).resolve().parents[1]


def _cpu_flags() -> dict:
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "threads": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the demo's tiny random model and rows (a smoke run)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per precision (default 20; quick 4)")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "kdq"), help="downloads and the base model")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "examples"))
    import demo  # the demo's own data and teacher run, not a copy of them

    steps = args.steps or (4 if args.quick else 20)
    size = demo.SIZES["tiny" if args.quick else "default"]
    inputs = demo.tiny_inputs if args.quick else demo.real_inputs
    base, train, ev, _, _, _ = inputs(size, Path(args.cache), 0)
    results = {"cpu": _cpu_flags(), "steps": steps, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            r = demo.train_teacher(
                base, train, None, size, Path(tmp) / precision, 0, max_steps=steps, precision=precision
            )
            scored = kdq.evaluate(
                str(r.student_dir), ev, kdq.EvalConfig(batch_size=32, tta=False, budget=None, progress=False)
            )
            results["runs"][precision] = {
                "s_per_step": r.metrics["train_seconds"] / steps,
                "eval_log_loss": scored.log_loss,
            }
    runs = results["runs"]
    results["speedup_bf16"] = runs["fp32"]["s_per_step"] / runs["bf16"]["s_per_step"]
    print(json.dumps(results, indent=2))
    print(
        f"\n| precision | s/step | eval log loss after {steps} steps ({len(ev['id'])} eval pairs) |\n|---|---:|---:|\n"
        + "\n".join(f"| {p} | {v['s_per_step']:.2f} | {v['eval_log_loss']:.4f} |" for p, v in runs.items())
        + f"\n\nbf16 speed-up: {results['speedup_bf16']:.2f}x (CPU flags {results['cpu']})"
    )
    return results


if __name__ == "__main__":
    main()
