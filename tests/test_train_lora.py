"""LoRA on a half-precision base and QLoRA (real bitsandbytes nf4 on CPU): dtypes, training, merge on save."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import bitsandbytes as bnb
import pytest
import torch

import kdq
from kdq.distill.lora import base_dtype, load_student, merge_for_save, wrap_lora
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = kdq.TemplateConfig(max_length=64)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("qlora") / "base"
    make_tiny_classifier(d, tiny_tokenizer, seed=3, num_layers=2)
    return d


def _batch(n=8, length=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, -6:] = 0
    return ids, mask, torch.randint(0, 3, (n,), generator=g)


def test_dtype_rule_on_cpu():
    assert base_dtype(None, "cpu") == torch.float32  # full fine-tuning: fp32 master weights
    assert base_dtype(kdq.LoraSettings(), "cpu") == torch.float32  # CPU default
    assert base_dtype(kdq.LoraSettings(base_dtype="fp16"), "cpu") == torch.float16
    assert base_dtype(kdq.LoraSettings(quantize="nf4", base_dtype="bf16"), "cuda") == torch.bfloat16
    with pytest.raises(ValueError, match="LoraSettings.quantize"):
        kdq.LoraSettings(quantize="int3")
    with pytest.raises(ValueError, match="LoraSettings.base_dtype"):
        kdq.LoraSettings(base_dtype="fp8")
    with pytest.raises(ValueError, match="TrainingSettings.gradient_checkpointing must be true, false or null"):
        kdq.DistillConfig(training={"gradient_checkpointing": "sometimes"})


def test_half_precision_base_freezes_in_bf16_and_trains_fp32(base_dir, one_torch_thread):
    cfg = kdq.DistillConfig(lora=kdq.LoraSettings(r=4, base_dtype="bf16"))
    model = wrap_lora(load_student(str(base_dir), cfg.lora, device="cpu").model, cfg.lora)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}
    assert set(frozen.values()) == {torch.bfloat16}
    numel = {flag: sum(p.numel() for p in model.parameters() if p.requires_grad is flag) for flag in (True, False)}
    assert numel[False] > 5 * numel[True]  # the base is frozen, and it is most of the model
    ids, mask, labels = _batch()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def _nf4_model(base_dir, r=4):
    cfg = kdq.DistillConfig(lora=kdq.LoraSettings(r=r, quantize="nf4", dropout=0.0))
    return wrap_lora(load_student(str(base_dir), cfg.lora, device="cpu").model, cfg.lora)


def test_qlora_quantizes_the_body_never_the_head(base_dir, one_torch_thread):
    model = _nf4_model(base_dir)
    body = model.get_base_model().model.layers[0]
    assert isinstance(body.self_attn.q_proj.get_base_layer(), bnb.nn.Linear4bit)
    assert body.self_attn.q_proj.get_base_layer().weight.quant_state.quant_type == "nf4"
    assert body.mlp.down_proj.get_base_layer().weight.quant_state.nested  # double quantization
    heads = [m for n, m in model.named_modules() if n.endswith("score.modules_to_save.default")]
    assert len(heads) == 1 and type(heads[0]) is torch.nn.Linear and heads[0].weight.dtype == torch.float32
    assert heads[0].weight.requires_grad
    assert not any(isinstance(m, bnb.nn.Linear4bit) for n, m in model.named_modules() if "score" in n)


def test_qlora_merge_onto_the_dequantized_base_reloads_with_stock_transformers(base_dir, tmp_path, one_torch_thread):
    model = _nf4_model(base_dir)
    ids, mask, labels = _batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(5):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()  # kdq keeps bitsandbytes off its bf16 CPU inference kernel: eval computes what training did
    with torch.no_grad():
        trained = model(input_ids=ids, attention_mask=mask).logits.softmax(-1)
    merged = merge_for_save(model)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    merged.save_pretrained(tmp_path / "merged")
    torch.save({"ids": ids, "mask": mask}, tmp_path / "batch.pt")
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModelForSequenceClassification
        m = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "merged")!r}).eval()
        b = torch.load({str(tmp_path / "batch.pt")!r})
        with torch.no_grad():
            p = m(input_ids=b["ids"], attention_mask=b["mask"]).logits.softmax(-1)
        print(json.dumps({{"probs": p.tolist(), "kdq": "kdq" in sys.modules,
                          "quantized": getattr(m.config, "quantization_config", None) is not None}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert not got["kdq"] and not got["quantized"]
    err = (torch.tensor(got["probs"]) - trained).abs().max().item()
    # For scale: the same head and adapters merged onto the original (never quantized) weights.
    original = kdq.models.load_classifier(str(base_dir)).model
    quantized = {k: v for k, v in merged.state_dict().items() if k.endswith("proj.weight")}
    with torch.no_grad():
        for k, v in original.state_dict().items():
            if k.endswith("proj.weight"):  # original + (merged - dequantized original) = original + delta
                v.add_(quantized[k] - _dequantized_base(base_dir)[k])
            elif "score" in k:
                v.copy_(merged.state_dict()[k])
        onto_original = original(input_ids=ids, attention_mask=mask).logits.softmax(-1)
    print(
        f"QLoRA merge onto the dequantized base: max |dp| {err:.1e}; "
        f"onto the original weights: {(onto_original - trained).abs().max().item():.1e}"
    )
    assert err < 1e-5
    assert (trained - torch.full_like(trained, 1 / 3)).abs().max() > 1e-3  # it did train something


def test_qlora_loads_through_load_classifier_and_refuses_what_it_cannot_load(base_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    nf4 = kdq.LoraSettings(quantize="nf4")
    loaded = load_student(str(base_dir), nf4, device="cpu")
    assert loaded.model.is_loaded_in_4bit and loaded.fingerprint == kdq.models.source_fingerprint(base_dir)
    assert loaded.model.config.quantization_config.bnb_4bit_use_double_quant  # the registry's nf4 config
    with pytest.raises(ValueError, match=r"loads the student in 4-bit from a model folder.*save_pretrained first"):
        load_student(kdq.models.load_classifier(str(base_dir)).model, nf4, device="cpu")
    adapter = get_peft_model(
        kdq.models.load_classifier(str(base_dir)).model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj"])
    )
    adapter.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"PEFT adapter folder; QLoRA needs a full model folder"):
        load_student(str(tmp_path / "adapter"), nf4, device="cpu")


def _dequantized_base(base_dir):
    model = load_student(str(base_dir), kdq.LoraSettings(quantize="nf4"), device="cpu").model
    return {
        f"{n}.weight": bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
        for n, m in model.named_modules()
        if isinstance(m, bnb.nn.Linear4bit)
    }


def test_qlora_distill_trains_and_saves_a_plain_folder(base_dir, tmp_path, one_torch_thread):
    rows = make_arena_rows(48, seed=5, max_words=30)
    metric = kdq.EvalConfig(template=TEMPLATE, tta=False, device="cpu", budget=None, progress=False)
    start = kdq.evaluate(str(base_dir), rows, metric).log_loss
    cfg = kdq.DistillConfig(
        output_dir=str(tmp_path / "run"),
        template=TEMPLATE,
        training=kdq.TrainingSettings(epochs=3, batch_size=8, learning_rate=3e-3, logging_steps=2),
        lora=kdq.LoraSettings(r=8, quantize="nf4"),
    )
    res = kdq.distill(
        str(base_dir), rows, eval_data=make_arena_rows(16, seed=9, max_words=30), teacher=None, config=cfg
    )  # eval between epochs
    assert res.metrics["train_memory"]["setup"]["method"] == "qlora"
    saved = json.loads((res.student_dir / "config.json").read_text())
    assert "quantization_config" not in saved
    end = kdq.evaluate(str(res.student_dir), rows, metric).log_loss
    print(f"QLoRA on CPU: training-row log loss {start:.4f} -> {end:.4f}")
    assert end < start - 0.02
