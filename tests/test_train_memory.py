"""Training-memory projection: arithmetic by hand, against tensors measured on CPU, and the refusal."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

import kdq
from kdq.costs.modelspec import ModelSpec, param_counts
from kdq.costs.train_memory import (
    GB,
    NF4_DQ_BYTES,
    LiveTensorBytes,
    TrainSetup,
    alternatives,
    model_spec,
    project_training,
    table_markdown,
    train_device,
    train_devices,
    trainable_params,
)
from kdq.distill.lora import load_student, wrap_lora
from kdq.distill.planning import TrainingMemoryError, plan_training

# A Llama shaped so that weights, Adam states and activations all weigh in (vocab 8000 x 128).
SHAPE = dict(
    vocab_size=8000,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_labels=3,
    pad_token_id=0,
    tie_word_embeddings=False,
)
BATCH, LENGTH = 4, 128
TOLERANCE = 0.20  # projection within ±20% of the measured peak of live tensor bytes


def test_shipped_specs_and_devices():
    spec = model_spec("danube3-4b")
    assert model_spec("h2oai/h2o-danube3-4b-base") == spec
    assert param_counts(spec)["total"] == 3_838_970_880  # as tests/test_evaluate_budget.py counts by hand
    assert param_counts(model_spec("danube3-500m"))["total"] == 464_443_392  # "500m" counts what the LM head adds
    devices = train_devices()
    assert set(devices) == {"t4-16gb", "a100-40gb", "a100-80gb", "h100-80gb"}
    assert not devices["t4-16gb"].bf16 and devices["h100-80gb"].bf16
    with pytest.raises(ValueError, match="unknown training device 'v100'"):
        train_device("v100")
    with pytest.raises(ValueError, match="TrainSetup.method"):
        TrainSetup(method="dora")


def test_danube3_4b_terms_by_hand():
    spec = model_spec("danube3-4b")
    # LoRA r=16 on all seven matrices: r * (in + out) per matrix, 24 layers, + the score head 3840 x 3
    per_layer = 16 * ((3840 + 3840) + 2 * (3840 + 960) + (3840 + 3840) + 2 * (3840 + 10240) + (10240 + 3840))
    assert trainable_params(spec, TrainSetup(method="lora", lora_r=16)) == 24 * per_layer + 3840 * 3
    total, linear = param_counts(spec)["total"], param_counts(spec)["decoder_linear"]
    lora = project_training(spec, TrainSetup(method="lora", batch_size=1, seq_len=1024))
    p = lora["trainable_params"]
    assert lora["weights"] == total * 2 + p * 4  # half-precision base + fp32 adapters and head copy
    assert lora["optimizer_states"] == p * 8
    q = project_training(spec, TrainSetup(method="qlora", batch_size=1, seq_len=1024))
    assert q["weights"] == pytest.approx(linear * NF4_DQ_BYTES + (total - linear) * 4 + p * 4)
    full = project_training(spec, TrainSetup(method="full", batch_size=1, seq_len=1024))
    assert full["weights"] == total * 4 + linear * 2 and full["optimizer_states"] == total * 8
    # checkpointing keeps one hidden state per layer instead of all the layer's tensors
    ck = project_training(spec, TrainSetup(method="lora", batch_size=1, seq_len=1024, checkpointing=True))
    assert ck["activations"] < lora["activations"] / 5
    # the docs table comes from the same numbers
    table = table_markdown()
    assert "| danube3-4b | qlora | on |" in table and "| danube3-500m | full | off |" in table


def _train_two_steps(model):
    torch.manual_seed(0)
    ids = torch.randint(1, SHAPE["vocab_size"], (BATCH, LENGTH))
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[0, -LENGTH // 4 :] = 0  # padded like real batches: the 4-D mask path
    labels = torch.randint(0, 3, (BATCH,))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(2):  # the second step runs with Adam's states allocated
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize(
    "method,checkpointing,dropout",
    [("full", False, 0.0), ("full", True, 0.0), ("lora", False, 0.05), ("lora", True, 0.0), ("qlora", False, 0.0)],
)
def test_projection_matches_tensors_measured_on_cpu(tmp_path, method, checkpointing, dropout, one_torch_thread):
    config = LlamaConfig(**SHAPE)
    torch.manual_seed(0)
    if method == "qlora":
        LlamaForSequenceClassification(config).save_pretrained(tmp_path / "m")
    lora = (
        None
        if method == "full"
        else kdq.LoraSettings(r=8, dropout=dropout, quantize="nf4" if method == "qlora" else "none")
    )
    with LiveTensorBytes() as live:
        if method == "qlora":
            from kdq.testing import make_tokenizer

            model = load_student(str(tmp_path / "m"), lora, tokenizer=make_tokenizer(), device="cpu").model
        else:
            model = LlamaForSequenceClassification(config)
        if lora is not None:
            model = wrap_lora(model, lora)
        if checkpointing:
            model.activation_checkpointing_enable()
        _train_two_steps(model)
    setup = TrainSetup(
        method=method,
        batch_size=BATCH,
        seq_len=LENGTH,
        checkpointing=checkpointing,
        half=False,
        lora_r=8,
        lora_dropout=dropout,
    )
    projected = project_training(ModelSpec.from_config(config), setup)["peak"]
    print(f"{setup.describe()}: projected {projected / 1e6:.1f} MB, measured {live.peak / 1e6:.1f} MB")
    assert abs(projected - live.peak) <= TOLERANCE * live.peak, (projected, live.peak)


def _danube_folder(tmp_path):
    """A Danube3-4B config.json and nothing else: planning reads the config, never weights."""
    from kdq.costs.train_memory import known_models

    LlamaConfig(**known_models()["danube3-4b"]["config"]).save_pretrained(tmp_path / "danube3-4b")
    return str(tmp_path / "danube3-4b")


def test_plan_refuses_what_cannot_fit_and_names_what_would(tmp_path):
    folder, t4 = _danube_folder(tmp_path), train_device("t4-16gb")
    cfg = kdq.DistillConfig(
        training=kdq.TrainingSettings(batch_size=4, gradient_checkpointing=False),
        template=kdq.TemplateConfig(max_length=1024),
    )
    with pytest.raises(
        TrainingMemoryError, match=r"training would need \d+\.\d GB on t4-16gb.*Settings that fit:"
    ) as e:
        plan_training(folder, cfg, device=t4, log=lambda *_: None)
    assert "lora.quantize=nf4" in str(e.value) or "training.gradient_checkpointing=True" in str(e.value)
    # every alternative offered does fit
    spec = model_spec("danube3-4b")
    for alt in alternatives(spec, TrainSetup(method="full", batch_size=4, seq_len=1024), t4):
        assert project_training(spec, alt)["peak"] <= t4.usable_gb * GB


def test_plan_turns_checkpointing_on_when_short_and_prints_it(tmp_path):
    folder, lines = _danube_folder(tmp_path), []
    cfg = kdq.DistillConfig(
        training=kdq.TrainingSettings(batch_size=4),
        template=kdq.TemplateConfig(max_length=1024),
        lora=kdq.LoraSettings(r=16),
    )
    out, proj = plan_training(folder, cfg, device=train_device("t4-16gb"), log=lines.append)
    assert out.training.gradient_checkpointing is True and proj["setup"]["checkpointing"] is True
    assert "gradient checkpointing on (auto" in lines[-1] and "fits" in lines[0] and "t4-16gb" in lines[0]
    # on an 80 GB card it fits without; a setting the user made is kept
    out, _ = plan_training(folder, cfg, device=train_device("h100-80gb"), log=lines.append)
    assert out.training.gradient_checkpointing is False and "auto: fits without it" in lines[-1]
    on = cfg.replace(training=cfg.training.replace(gradient_checkpointing=True))
    out, _ = plan_training(folder, on, device=train_device("h100-80gb"), log=lines.append)
    assert out.training.gradient_checkpointing is True and "set by you" in lines[-1]
    # on CPU (no device): printed, never refused, checkpointing stays off
    out, proj = plan_training(folder, cfg.replace(training={"batch_size": 64}), log=lines.append)
    assert out.training.gradient_checkpointing is False and proj["peak"] > 16 * GB and "does NOT fit" not in lines[-2]
