"""Does CPU bf16 autocast speed up training on this machine? fp32 against ``precision="bf16"``, side by side.

The issue asked whether bf16 autocast (this project's CPUs report AVX512-BF16) could bring ``make demo`` under
20 minutes. Measure it, don't assume it: the demo's teacher run (SmolLM2-135M classifier, VADER pairs,
max_length 96, batch 16, swap copies) for the same ``--steps`` optimizer steps in fp32 and in bf16, each in
the same process one after the other, from the same weights and seed. Reports seconds per optimizer step (the
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


def _inputs(quick: bool, cache: Path, work: Path):
    if quick:
        from kdq.testing import make_arena_rows, make_tiny_classifier, make_tokenizer

        base = work / "tiny"
        make_tiny_classifier(base, make_tokenizer(), seed=0, num_layers=2, hidden_size=64, intermediate_size=128)
        return base, make_arena_rows(64, seed=1, max_words=40), make_arena_rows(32, seed=2, max_words=40), 64
    sys.path.insert(0, str(ROOT / "examples"))
    from demo_assets.datasets import arena_data
    from demo_assets.smollm2 import smollm2_classifier

    train, ev, _, _, _ = arena_data("vader", cache, n_train=800, n_eval=400, n_test=400, n_transfer=8, seed=0)
    return smollm2_classifier(cache / "smollm2-135m-cls"), train, ev, 96


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny random model (a smoke run)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per precision (default 20; quick 4)")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "kdq"), help="downloads and the base model")
    args = ap.parse_args(argv)
    steps = args.steps or (4 if args.quick else 20)
    results = {"cpu": _cpu_flags(), "steps": steps, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base, train, ev, max_length = _inputs(args.quick, Path(args.cache), Path(tmp))
        for precision in ("fp32", "bf16"):
            cfg = kdq.recipe("teacher").config(
                output_dir=str(Path(tmp) / precision),
                template=kdq.TemplateConfig(max_length=max_length),
                max_steps=steps,
                batch_size=16,
                eval_batch_size=32,
                logging_steps=max(1, steps // 4),
                precision=precision,
                overwrite=True,
            )
            r = kdq.distill(str(base), train, None, teacher=None, config=cfg)
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
        f"\n| precision | s/step | eval log loss after {steps} steps |\n|---|---:|---:|\n"
        + "\n".join(f"| {p} | {v['s_per_step']:.2f} | {v['eval_log_loss']:.4f} |" for p, v in runs.items())
        + f"\n\nbf16 speed-up: {results['speedup_bf16']:.2f}x (CPU flags {results['cpu']})"
    )
    return results


if __name__ == "__main__":
    main()
