"""Benchmarks for the distill stage, each measured side by side in one run.

1. Teacher pass: kdq's length-sorted, dynamically padded scoring vs a transformers
   ``text-classification`` pipeline over the same rows at the same batch size. Rows follow
   the arena's long tail (log-normal lengths, a few near max_length).
2. Distillation overhead: a training step with cached teacher logits (KD + CE loss) vs a
   hard-label step with the same student, through the same ``kdq.distill`` Trainer path.

Usage: python bench/bench_distill.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import kdq
from kdq.data import encode, load_arena
from kdq.runtime.batching import length_sorted_batches, predict_logits
from kdq.testing import make_arena_rows, make_tiny_classifier, make_tokenizer


def padding_efficiency(lengths, batches):
    return sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches)


def bench_teacher_pass(n_rows, max_length, batch_size, hidden, layers, repeats):
    from transformers import pipeline

    tok = make_tokenizer()
    model = make_tiny_classifier(
        tokenizer=tok, hidden_size=hidden, intermediate_size=hidden * 3, num_layers=layers, num_heads=4, num_kv_heads=2
    )
    template = kdq.TemplateConfig(max_length=max_length)
    rows = load_arena(make_arena_rows(n_rows, seed=0, max_words=max_length))
    enc = encode(rows, tok, template)
    seqs, lengths = enc["input_ids"], enc["length"]
    texts = [tok.decode(s[1:]) for s in seqs]  # the pipeline re-tokenises text (and adds nothing: no BOS rule)
    pipe = pipeline("text-classification", model=model, tokenizer=tok, device=-1, top_k=None)

    kdq_times, pipe_times = [], []
    for _ in range(repeats):  # interleave the two so machine noise hits both alike
        t0 = time.perf_counter()
        ours = predict_logits(model, seqs, tok.pad_token_id, batch_size=batch_size)
        kdq_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = pipe(texts, batch_size=batch_size, truncation=True, max_length=max_length, function_to_apply="none")
        pipe_times.append(time.perf_counter() - t0)
    pipe_lengths = [len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    in_order = [list(range(i, min(i + batch_size, n_rows))) for i in range(0, n_rows, batch_size)]
    pipe_eff = padding_efficiency(pipe_lengths, in_order)
    ours_eff = padding_efficiency(lengths, length_sorted_batches(lengths, batch_size))
    # same predictions (up to the re-tokenisation of the decoded text)
    label_order = [model.config.id2label[i] for i in range(3)]
    theirs_t = torch.tensor(
        [[next(d["score"] for d in row if d["label"] == lab) for lab in label_order] for row in theirs]
    )
    agree = float((theirs_t.argmax(-1) == ours.argmax(-1)).float().mean())
    k, p = statistics.median(kdq_times), statistics.median(pipe_times)
    return {
        "rows": n_rows,
        "max_length": max_length,
        "batch_size": batch_size,
        "len_p50": int(statistics.median(lengths)),
        "len_max": max(lengths),
        "kdq_rows_s": n_rows / k,
        "pipeline_rows_s": n_rows / p,
        "speedup": p / k,
        "kdq_pad_eff": ours_eff,
        "pipeline_pad_eff": pipe_eff,
        "argmax_agreement": agree,
    }


def bench_distill_step(n_rows, max_length, batch_size, hidden, layers, steps, repeats):
    tok = make_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tiny_classifier(
            tmp / "teacher", tok, seed=1, hidden_size=hidden, intermediate_size=hidden * 3, num_layers=layers
        )
        make_tiny_classifier(
            tmp / "student",
            tok,
            seed=2,
            hidden_size=hidden,
            intermediate_size=hidden * 3,
            num_layers=max(1, layers // 2),
        )
        rows = make_arena_rows(n_rows, seed=3, max_words=max_length)
        training = kdq.TrainingSettings(batch_size=batch_size, max_steps=steps, logging_steps=steps)
        base = dict(
            template=kdq.TemplateConfig(max_length=max_length),
            training=training,
            teacher_pass=kdq.TeacherPassSettings(cache_dir=str(tmp / "cache")),
            overwrite=True,
        )
        # Warm the cache once so the timed KD runs only read it.
        kdq.distill(
            str(tmp / "student"),
            rows,
            teacher=str(tmp / "teacher"),
            config=kdq.DistillConfig(
                output_dir=str(tmp / "warm"), **{**base, "training": training.replace(max_steps=1)}
            ),
        )
        kd_t, hard_t = [], []
        for r in range(repeats):
            kd = kdq.distill(
                str(tmp / "student"),
                rows,
                teacher=str(tmp / "teacher"),
                config=kdq.DistillConfig(output_dir=str(tmp / f"kd{r}"), **base),
            )
            hard = kdq.distill(
                str(tmp / "student"),
                rows,
                teacher=None,
                config=kdq.DistillConfig(output_dir=str(tmp / f"hard{r}"), **base),
            )
            assert kd.metrics["teacher_pass"]["computed"] == 0
            kd_t.append(kd.metrics["train"]["train_runtime"] / steps)
            hard_t.append(hard.metrics["train"]["train_runtime"] / steps)
    k, h = statistics.median(kd_t), statistics.median(hard_t)
    return {"steps": steps, "batch_size": batch_size, "kd_step_s": k, "hard_step_s": h, "overhead": k / h - 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.quick:
        tp = bench_teacher_pass(96, 256, 16, 64, 2, 1)
        ds = bench_distill_step(64, 64, 8, 64, 2, 8, 1)
    else:
        tp = bench_teacher_pass(512, 1024, 16, 256, 4, 3)
        ds = bench_distill_step(256, 256, 16, 256, 4, 24, 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print("\n## Teacher pass: kdq length-sorted batching vs transformers pipeline")
    print(
        f"{tp['rows']} rows, max_length {tp['max_length']}, batch {tp['batch_size']}, "
        f"token length p50 {tp['len_p50']} / max {tp['len_max']}"
    )
    print("| scorer | rows/s | padding efficiency |\n|---|---:|---:|")
    print(f"| kdq (length-sorted) | {tp['kdq_rows_s']:.1f} | {tp['kdq_pad_eff']:.1%} |")
    print(f"| transformers pipeline | {tp['pipeline_rows_s']:.1f} | {tp['pipeline_pad_eff']:.1%} |")
    print(f"speedup: {tp['speedup']:.2f}x (argmax agreement {tp['argmax_agreement']:.1%})")
    print("\n## Distillation step overhead (cached teacher logits vs hard labels)")
    print("| step | seconds/step |\n|---|---:|")
    print(f"| KD (cached logits) | {ds['kd_step_s']:.4f} |\n| hard labels | {ds['hard_step_s']:.4f} |")
    print(f"overhead: {ds['overhead']:+.1%} over {ds['steps']} steps x batch {ds['batch_size']}")


if __name__ == "__main__":
    main()
