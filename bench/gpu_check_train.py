"""GPU check: one QLoRA and one half-precision-LoRA training step at Danube3-4B scale, against the projection.

The model is a ``LlamaForSequenceClassification`` with the published Danube3-4B shape
(``kdq/budgets/_models.json``), randomly initialised on the GPU (no Hub), saved once to a
temporary folder and loaded through kdq's own training path (:func:`kdq.distill.lora.load_student`
and :func:`~kdq.distill.lora.wrap_lora`: nf4 + double quant for QLoRA, bf16/fp16 base for LoRA).
Each setting runs two AdamW steps under autocast; the second is timed; peak memory is
``torch.cuda.max_memory_allocated`` over both, beside :func:`kdq.costs.train_memory.project_training`.

``--dry-run`` does the same on CPU with tiny shapes (peak = live tensor bytes), for CI and laptops.

Usage: python bench/gpu_check_train.py [--dry-run] [--out result.json]
``bench/gpu_check.py`` imports :func:`run`.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

import kdq
from kdq.costs.modelspec import ModelSpec
from kdq.costs.train_memory import GB, LiveTensorBytes, TrainSetup, known_models, project_training
from kdq.distill.lora import load_student, wrap_lora
from kdq.runtime.dtypes import compute_dtype
from kdq.testing import make_tokenizer

TINY = dict(
    model_type="llama",
    vocab_size=4000,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_labels=3,
    tie_word_embeddings=False,
)
# (method, checkpointing) per run; batch x length as the recipe trains the teacher
SETTINGS = (("qlora", True), ("lora", True), ("qlora", False), ("lora", False))


def _config(dry_run: bool):
    from transformers import AutoConfig

    raw = dict(TINY if dry_run else known_models()["danube3-4b"]["config"])
    return AutoConfig.for_model(raw.pop("model_type"), **raw)


def _save_random_model(config, folder: Path, device, dtype) -> None:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.save_pretrained(str(folder))
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _step_inputs(vocab: int, batch: int, length: int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -length // 4 :] = 0  # padded, as real arena batches are
    labels = torch.randint(0, 3, (batch,), generator=g)
    return ids.to(device), mask.to(device), labels.to(device)


def _one_setting(folder, spec, method, ckpt, *, batch, length, device, half, tokenizer) -> dict:
    lora = kdq.LoraSettings(
        r=16,
        dropout=0.05,
        quantize="nf4" if method == "qlora" else "none",
        base_dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(half, "fp32"),
    )
    cuda = device.type == "cuda"
    live = LiveTensorBytes() if not cuda else None
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        live.__enter__()
    try:
        model = wrap_lora(load_student(str(folder), lora, tokenizer=tokenizer, device=device).model, lora)
        model.to(device) if method != "qlora" else None
        if ckpt:
            model.activation_checkpointing_enable()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
        ids, mask, labels = _step_inputs(spec.vocab_size, batch, length, device)
        times = []
        for _ in range(2):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with torch.autocast(device_type=device.type, dtype=half, enabled=cuda and half != torch.float32):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated(device) - base) if cuda else None
    finally:
        if live is not None:
            live.__exit__(None, None, None)
    peak = peak if cuda else live.peak
    del model, opt, params
    gc.collect()
    setup = TrainSetup(
        method=method,
        batch_size=batch,
        seq_len=length,
        checkpointing=ckpt,
        half=half != torch.float32,
        lora_r=16,
        lora_dropout=0.05,
    )
    projected = project_training(spec, setup)["peak"]
    return {
        "method": method,
        "checkpointing": ckpt,
        "batch_size": batch,
        "seq_len": length,
        "base_dtype": str(half).replace("torch.", ""),
        "step_s": times[-1],
        "first_step_s": times[0],
        "peak_gb": peak / GB,
        "projected_gb": projected / GB,
        "projected_over_measured": projected / peak,
        "loss": float(loss.detach()),
    }


def run(dry_run: bool = False) -> dict:
    """Train one step per setting; return ``{"device", "model", "dry_run", "steps": [...]}``.

    Each step entry: method, checkpointing, batch_size, seq_len, base_dtype, step_s (second step),
    first_step_s, peak_gb (measured), projected_gb, projected_over_measured, loss.
    """
    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        half = compute_dtype(device, bf16=True)  # kdq's training rule: bf16 where the GPU has it, else fp16
        batch, length, name = 4, 1024, f"cuda:0 ({torch.cuda.get_device_name(0)})"
    else:
        half, batch, length, name = torch.bfloat16, 2, 64, "cpu"
    config = _config(dry_run or not cuda)
    spec = ModelSpec.from_config(config)
    tokenizer = make_tokenizer()
    steps = []
    with tempfile.TemporaryDirectory(prefix="kdq-gpu-check-train-") as tmp:
        folder = Path(tmp) / "model"
        _save_random_model(config, folder, device, half)
        for method, ckpt in SETTINGS if cuda else SETTINGS[:2]:
            steps.append(
                _one_setting(
                    folder,
                    spec,
                    method,
                    ckpt,
                    batch=batch,
                    length=length,
                    device=device,
                    half=half,
                    tokenizer=tokenizer,
                )
            )
    return {
        "device": name,
        "model": "danube3-4b shape, random init" if cuda else "tiny llama (dry run)",
        "dry_run": bool(dry_run or not cuda),
        "steps": steps,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Training steps on {result['device']} ({result['model']}):",
        "",
        "| method | checkpointing | batch x len | base | step s | peak GB | projected GB | proj/meas |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for s in result["steps"]:
        lines.append(
            f"| {s['method']} | {'on' if s['checkpointing'] else 'off'} | {s['batch_size']} x {s['seq_len']} | "
            f"{s['base_dtype']} | {s['step_s']:.3f} | {s['peak_gb']:.3f} | {s['projected_gb']:.3f} | "
            f"{s['projected_over_measured']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU")
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args()
    result = run(dry_run=args.dry_run)
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
