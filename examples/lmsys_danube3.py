"""The real recipe: H2O Danube3-4B teacher → Danube3-500M student on the LMSYS arena data.

Run on a GPU machine with the Hub and the competition's ``train.csv``::

    python examples/lmsys_danube3.py --train /kaggle/input/lmsys-chatbot-arena/train.csv \\
        --teacher path/to/your-finetuned-danube3-4b (folder or QLoRA adapter folder) \\
        --out runs/lmsys

    # no fine-tuned teacher yet? fine-tune the base first (LoRA on a half-precision base, or
    # QLoRA when the training-memory projection says that does not fit the GPU), then distil:
    python examples/lmsys_danube3.py --train train.csv --fine-tune-teacher --out runs/lmsys

    # multi-GPU training: accelerate launch --num_processes 2 examples/lmsys_danube3.py ...

Every model argument takes a Hub id or a local folder; CI runs this exact script with tiny
local models (``--teacher DIR --student DIR --max-length 64 ...``). Steps: split off
held-out rows by id → (optionally) fine-tune the teacher → cache its logits with swap TTA →
distil the student and train the hard-label baseline → quantize both → compare on the
held-out rows against the LMSYS 2xT4 budget → export the recommended variant.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import kdq
from kdq.costs.train_memory import GB, cuda_train_device, fits, project_training, train_device
from kdq.data import grouped_split, load_arena
from kdq.distill.needs import teacher_needs
from kdq.distill.planning import student_spec, training_setup
from kdq.pipeline import PipelineConfig, run_pipeline
from kdq.recipes import for_student

TEACHER_BASE = "h2oai/h2o-danube3-4b-base"
STUDENT_BASE = "h2oai/h2o-danube3-500m-base"
# Danube3-500M is narrower (1536 vs 3840) and shallower (16 vs 24 layers) than Danube3-4B and shares its
# tokenizer: the recipe for such a student (kdq.recipes, BENCHMARKS.md "Distillation across widths")
STUDENT_RECIPE = for_student("width-pruned").name


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="the competition's train.csv (or parquet)")
    ap.add_argument(
        "--teacher",
        help="fine-tuned teacher: folder, PEFT adapter folder or Hub id (required unless "
        f"--fine-tune-teacher, which defaults it to {TEACHER_BASE})",
    )
    ap.add_argument(
        "--fine-tune-teacher",
        action="store_true",
        help="treat --teacher as a base model and fine-tune it (LoRA, or QLoRA where LoRA on a "
        "half-precision base does not fit the GPU) on the training rows first",
    )
    ap.add_argument(
        "--train-gpu",
        default=None,
        help="plan the training runs for this GPU (t4-16gb, a100-40gb, a100-80gb, h100-80gb) "
        "instead of the CUDA device found",
    )
    ap.add_argument("--student", default=STUDENT_BASE, help="student starting point: Hub id or folder")
    ap.add_argument(
        "--transfer",
        default=None,
        help="unlabelled arena rows (a transfer set: CSV/parquet; winner columns, if any, are ignored) "
        "that the teacher labels for the student; on the CPU bench 3x as many transfer rows as labelled ones "
        "measurably beat 1x (BENCHMARKS.md, 'More transfer rows')",
    )
    ap.add_argument(
        "--recipe",
        default=STUDENT_RECIPE,
        help=f"the student's recipe in kdq.recipes (default {STUDENT_RECIPE}: see BENCHMARKS.md for the evidence)",
    )
    ap.add_argument("--out", default="runs/lmsys-danube3")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=None, help="use only the first N rows (smoke runs)")
    ap.add_argument("--eval-frac", type=float, default=0.02)
    ap.add_argument("--test-frac", type=float, default=0.03)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank for the student (0 = full fine-tuning)")
    ap.add_argument("--no-tta", action="store_true", help="score the teacher without swap TTA")
    ap.add_argument("--quant", nargs="*", default=["gptq-8", "gptq-4", "bnb-int8", "bnb-nf4"])
    ap.add_argument("--calibration-samples", type=int, default=128)
    ap.add_argument("--dataset-owner", default="your-kaggle-name")
    ap.add_argument("--wheels", action="store_true", help="ship pip wheels in the export (needs network)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if args.teacher is None:
        if not args.fine_tune_teacher:
            ap.error(
                "--teacher is required: pass your fine-tuned teacher, or --fine-tune-teacher to train "
                f"one from {TEACHER_BASE} first (a base model's random head would distil noise)"
            )
        args.teacher = TEACHER_BASE
    return args


def teacher_lora(teacher, cfg: kdq.DistillConfig, device):
    """LoRA on a half-precision base where the projection says it fits ``device`` (with gradient
    checkpointing if need be), else QLoRA (nf4). Returns ``(LoraSettings, reason)``."""
    lora, spec = cfg.lora, student_spec(teacher)
    if lora is None:
        return None, "full fine-tuning (--lora-r 0)"
    if device is None or spec is None:
        return lora, "no GPU to plan for: LoRA as configured"
    for ckpt in (False, True):
        setup = training_setup(cfg, "cuda", checkpointing=ckpt)
        if fits(spec, setup, device):
            return lora, f"LoRA on a half-precision base fits {device.name} ({setup.describe()})"
    need = project_training(spec, setup)["peak"] / GB
    return (
        dataclasses.replace(lora, quantize="nf4"),
        f"LoRA on a half-precision base needs {need:.1f} GB even with gradient checkpointing, more than the "
        f"{device.usable_gb:.1f} GB usable on {device.name}: using QLoRA (nf4)",
    )


def student_config(recipe: str, run: dict, teacher, student, device):
    """The student's :class:`DistillConfig` from ``kdq.recipes``, fitted to ``device``.

    A recipe whose live teacher does not fit beside the student (a 4B teacher in fp16 next to a
    500M student on a 16 GB T4) loads the live teacher in int8, then nf4, where that fits;
    otherwise it falls back to the cached-feature recipe (no live teacher at all). Returns
    ``(config, reason)``.
    """
    cfg = kdq.recipe(recipe).config(**run)
    live = teacher_needs(cfg, has_teacher=True).live
    s_spec, t_spec = student_spec(student), student_spec(teacher)
    if device is None or not live or s_spec is None or t_spec is None:
        return cfg, f"recipe {recipe}" + ("" if device is not None else " (no GPU to plan for)")
    for quantize in ("none", "int8", "nf4"):
        trial = cfg.replace(teacher_pass=cfg.teacher_pass.replace(quantize=quantize))
        for ckpt in (False, True):
            setup = training_setup(trial, "cuda", checkpointing=ckpt, student=s_spec, teacher=t_spec)
            if fits(s_spec, setup, device):
                return trial, f"recipe {recipe}, live teacher in {quantize}: fits {device.name} ({setup.describe()})"
    cached = kdq.recipe("cross-width-cached").config(**run)
    return cached, (
        f"recipe {recipe} does not fit {device.name} even with the live teacher in nf4: using cross-width-cached "
        "(the teacher's pooled features from the cache, no live teacher)"
    )


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    rows = load_arena(args.train, require_labels=True)
    if args.rows:
        rows = rows.select(range(min(args.rows, len(rows))))
    # whole groups (rows sharing a prompt or a response pair) go to one side: arena data repeat both
    split = grouped_split(rows, eval_size=args.eval_frac, test_size=args.test_frac, seed=0)
    train, ev, test = split["train"], split["eval"], split.get("test", rows.select([]))
    print(f"rows: {len(train)} train / {len(ev)} eval / {len(test)} held-out test (grouped: kdq.data.grouped_split)")
    lora = kdq.LoraSettings(r=args.lora_r, alpha=2 * args.lora_r) if args.lora_r > 0 else None
    run = dict(  # the run's size; the loss and optimisation choices come from kdq.recipes
        template=kdq.TemplateConfig(max_length=args.max_length),
        training=dict(
            epochs=args.epochs,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            eval_batch_size=2 * args.batch_size,
            logging_steps=20,
            **({"learning_rate": args.lr} if args.lr is not None else {}),
        ),
        teacher_pass=dict(tta=not args.no_tta, batch_size=8),
        lora=lora,
        overwrite=args.overwrite,
    )
    import torch

    gpu = train_device(args.train_gpu) if args.train_gpu else None
    if gpu is None and torch.cuda.is_available():
        gpu = cuda_train_device()
    teacher = args.teacher
    if args.fine_tune_teacher:
        base = kdq.recipe("teacher").config(**run)
        lora, why = teacher_lora(teacher, base, gpu)
        print(f"teacher fine-tune: {why}")
        tuned = kdq.distill(
            teacher,
            train,
            ev,
            teacher=None,
            config=base.replace(
                output_dir=str(out / "teacher"), teacher_pass=base.teacher_pass.replace(tta=False), lora=lora
            ),
        )
        teacher = str(tuned.student_dir)
        print(f"teacher fine-tuned: eval log loss {tuned.metrics.get('best_eval_log_loss')}")

    student_cfg, why = student_config(args.recipe, run, teacher, args.student, gpu)
    print(f"student: {why}")
    cfg = PipelineConfig(
        out_dir=str(out),
        distill=student_cfg,
        quant_methods=tuple(args.quant),
        calibration_samples=args.calibration_samples,
        eval=kdq.EvalConfig(batch_size=8),
        dataset_owner=args.dataset_owner,
        wheels=args.wheels,
        overwrite=args.overwrite,
    )
    transfer = load_arena(args.transfer, unlabelled=True) if args.transfer else None
    result = run_pipeline(teacher, args.student, train, ev, test, cfg, transfer=transfer)
    print(result.summary())
    return result


if __name__ == "__main__":
    main()
