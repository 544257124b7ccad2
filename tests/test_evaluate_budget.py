"""Parameter/FLOP arithmetic on the published Danube3 configs, weight formats, budget verdicts."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from kdq.costs.budget import GB, gpu_peak_tflops
from kdq.costs.modelspec import FP16, WeightFormat, activation_bytes, batch_flops
from kdq.evaluate import (
    BudgetProfile,
    ModelSpec,
    available_budgets,
    flops_per_token,
    load_budget,
    param_counts,
    project,
    weight_bytes,
    weight_format_of,
)
from kdq.quant_methods import get_quantizer, variant_names
from kdq.quantize import QuantConfig

# Published H2O Danube3 configs (tie_word_embeddings false), built in code: no Hub access.
DANUBE3_4B = dict(
    vocab_size=32000,
    hidden_size=3840,
    num_hidden_layers=24,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=10240,
    tie_word_embeddings=False,
    num_labels=3,
)
DANUBE3_500M = dict(
    vocab_size=32000,
    hidden_size=1536,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    intermediate_size=4096,
    tie_word_embeddings=False,
    num_labels=3,
)


def test_danube3_4b_params_by_hand():
    spec = ModelSpec.from_config(LlamaConfig(**DANUBE3_4B))
    assert spec.head_dim == 3840 // 32 == 120
    embed = 32000 * 3840  # 122,880,000
    attn = 3840 * 3840 + 2 * 3840 * (8 * 120) + 3840 * 3840  # q, k, v (8 KV heads of 120), o = 36,864,000
    mlp = 3 * 3840 * 10240  # gate, up, down = 117,964,800
    layer = attn + mlp + 2 * 3840  # + two RMSNorms = 154,836,480
    body = embed + 24 * layer + 3840  # + final norm = 3,838,955,520
    assert (attn, mlp, layer) == (36_864_000, 117_964_800, 154_836_480)
    clf = param_counts(spec)["total"]
    assert clf == body + 3840 * 3 == 3_838_970_880
    lm = param_counts(spec, head="lm")["total"]
    assert lm == body + 32000 * 3840 == 3_961_839_360  # the "3.96B" of the model card
    # and transformers agrees (instantiated on the meta device: no memory, no download)
    with torch.device("meta"):
        assert sum(p.numel() for p in LlamaForSequenceClassification(LlamaConfig(**DANUBE3_4B)).parameters()) == clf
        assert sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**DANUBE3_4B)).parameters()) == lm


def test_danube3_500m_params_by_hand():
    spec = ModelSpec.from_config(LlamaConfig(**DANUBE3_500M))
    assert spec.head_dim == 1536 // 16 == 96
    attn = 1536 * 1536 * 2 + 2 * 1536 * (8 * 96)  # 7,077,888
    mlp = 3 * 1536 * 4096  # 18,874,368
    body = 32000 * 1536 + 16 * (attn + mlp + 2 * 1536) + 1536
    assert param_counts(spec)["total"] == body + 1536 * 3 == 464_443_392
    assert param_counts(spec, head="lm")["total"] == body + 32000 * 1536 == 513_590_784  # "~500M"
    with torch.device("meta"):
        model = LlamaForSequenceClassification(LlamaConfig(**DANUBE3_500M))
        assert sum(p.numel() for p in model.parameters()) == 464_443_392


def test_flops_per_token_by_hand():
    s4 = ModelSpec.from_config(LlamaConfig(**DANUBE3_4B))
    linear4 = 24 * (36_864_000 + 117_964_800) + 3840 * 3  # matrices that multiply every token
    assert param_counts(s4)["linear"] == linear4 == 3_715_902_720
    # 2 FLOPs per weight + attention QK^T and AV: 4 * layers * heads * head_dim * L
    assert flops_per_token(s4, 1024) == 2 * linear4 + 4 * 24 * 32 * 120 * 1024 == 7_809_292_800
    s05 = ModelSpec.from_config(DANUBE3_500M | {"model_type": "llama"})
    linear05 = 16 * (7_077_888 + 18_874_368) + 1536 * 3
    assert flops_per_token(s05, 1024) == 2 * linear05 + 4 * 16 * 16 * 96 * 1024 == 931_144_704
    assert flops_per_token(s4, 512) < flops_per_token(s4, 1024)


def test_flop_formula_matches_torch_flop_counter(tiny_tokenizer):
    """The formula counts what the matmuls of a real forward pass do (eager attention, padded batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from kdq.testing import make_tiny_classifier

    model = make_tiny_classifier(tokenizer=tiny_tokenizer, num_layers=3, hidden_size=96, intermediate_size=160)
    model.set_attn_implementation("eager")
    ids = torch.randint(5, 300, (3, 41))
    mask = torch.ones_like(ids)
    mask[2, 30:] = 0
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    assert counter.get_total_flops() == batch_flops(ModelSpec.from_config(model.config), 3, 41)


def test_weight_bytes_per_format():
    spec = ModelSpec.from_config(LlamaConfig(**DANUBE3_4B))
    dec, total = 24 * (36_864_000 + 117_964_800), 3_838_970_880
    assert weight_bytes(spec, FP16) == total * 2  # ~7.68 GB
    g4 = weight_format_of({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}})
    assert g4.name == "gptq-4"
    assert weight_bytes(spec, g4) == pytest.approx(dec * (0.5 + 2.5 / 128) + (total - dec) * 2)
    g8 = weight_format_of({"quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": 128}})
    assert weight_bytes(spec, g8) == pytest.approx(dec * (1 + 3 / 128) + (total - dec) * 2)
    i8 = weight_format_of({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}})
    assert (i8.name, weight_bytes(spec, i8)) == ("bnb-int8", dec * 1 + (total - dec) * 2)
    nf4 = weight_format_of(
        {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}}
    )
    nf4_dq = weight_format_of(
        {
            "quantization_config": {
                "quant_method": "bitsandbytes",
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": True,
            }
        }
    )
    assert nf4.name == nf4_dq.name == "bnb-nf4"
    assert nf4.bytes_per_weight == pytest.approx(0.5 + 4 / 64)
    assert nf4_dq.bytes_per_weight < nf4.bytes_per_weight  # double quantization shrinks the scales
    assert weight_bytes(spec, FP16) > weight_bytes(spec, g8) > weight_bytes(spec, g4) > 0
    assert weight_format_of({}) is FP16
    with pytest.raises(ValueError, match="awq"):
        weight_format_of({"quantization_config": {"quant_method": "awq", "bits": 4}})


@pytest.mark.parametrize("variant", variant_names())
def test_every_shipped_profile_knows_every_registered_format(variant):
    """A new method's weight format needs a compute_slowdown entry in every shipped profile."""
    cfg = QuantConfig.from_name(variant)
    method = get_quantizer(cfg.method)
    fmt = weight_format_of({"quantization_config": method.quantization_config_for(cfg)})
    assert fmt.bits == cfg.bits and fmt.needs in method.wheels
    spec = ModelSpec.from_config(LlamaConfig(**DANUBE3_500M))
    for name in available_budgets():
        profile = load_budget(name)
        assert fmt.name in profile.compute_slowdown, f"kdq/budgets/{name}.json lacks compute_slowdown[{fmt.name!r}]"
        verdict = project(spec, fmt, [512] * 8, profile)
        assert verdict["compute_slowdown"] == profile.compute_slowdown[fmt.name] >= 1.0
        assert verdict["weight_format"] == fmt.name and verdict["weights_gb"] < weight_bytes(spec, FP16) / GB


def test_a_format_the_profile_does_not_know_is_an_error_not_fp16_speed():
    """A weight format missing from compute_slowdown once counted as fp16 speed (1.0): an unknown
    method got an optimistic verdict. Now the error names the format, the profile's file and the fix."""
    spec = ModelSpec.from_config(LlamaConfig(**DANUBE3_500M))
    mystery = WeightFormat("mystery-3", 3, 64, 2.0)
    p = load_budget("lmsys-2xt4")
    with pytest.raises(ValueError) as err:
        project(spec, mystery, [512] * 8, p)
    msg = str(err.value)
    assert "'mystery-3'" in msg and "lmsys-2xt4.json" in msg and "compute_slowdown" in msg
    assert '"mystery-3": <factor >= 1' in msg  # the fix: the entry to add
    with pytest.raises(ValueError, match=r"the JSON file it was loaded from"):  # a user's own profile
        dataclasses.replace(p, name="my-gpu").slowdown(mystery)
    # fp16 is the reference: 1.0 even where a profile does not list it
    assert dataclasses.replace(p, compute_slowdown={}).slowdown(FP16) == 1.0


def test_shipped_lmsys_profile_states_the_notebook():
    assert "lmsys-2xt4" in available_budgets()
    p = load_budget("lmsys-2xt4")
    assert (p.gpus, p.gpu_memory_gb, p.peak_tflops, p.bandwidth_gbs) == (2, 16.0, 65.0, 320.0)
    assert (p.time_limit_hours, p.rows, p.ram_gb, p.compute_capability, p.bf16, p.offline) == (
        9.0,
        25000,
        29.0,
        "7.5",
        False,
        True,
    )
    assert 0 < p.compute_efficiency <= 1 and p.tta_factor == 2.0


def test_profiles_are_user_data(tmp_path):
    data = load_budget("lmsys-2xt4").to_dict() | {"name": "my-a100", "gpus": 1, "peak_tflops": 312.0}
    path = tmp_path / "my-a100.json"
    path.write_text(json.dumps(data))
    assert load_budget(path).peak_tflops == 312.0
    with pytest.raises(ValueError, match="lmsys-2xt4"):  # unknown names list the shipped ones
        load_budget("no-such-profile")
    path.write_text(json.dumps(data | {"gpu_count": 2}))
    with pytest.raises(ValueError, match="gpu_count"):
        load_budget(path)
    with pytest.raises(ValueError, match="compute_efficiency"):
        BudgetProfile.from_dict(data | {"compute_efficiency": 1.5})
    with pytest.raises(ValueError, match="bnb-int8"):
        BudgetProfile.from_dict(data | {"compute_slowdown": {"bnb-int8": 0.5}})


def test_gpu_peak_lookup():
    assert gpu_peak_tflops("Tesla T4") == ("T4", 65.0)
    assert gpu_peak_tflops("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB")[0] == "A100"
    assert gpu_peak_tflops("NVIDIA L40S") == (None, None)  # "L4" is a word, not a prefix


def test_projection_by_hand():
    spec = ModelSpec.from_config(LlamaConfig(**DANUBE3_4B))
    p = load_budget("lmsys-2xt4")
    lengths = [1024] * 8  # one full batch of max-length rows, standing for 25k such rows
    v = project(spec, FP16, lengths, p, tta=True)
    compute = 8 * 1024 * 7_809_292_800 / (65e12 * p.compute_efficiency)
    stream = weight_bytes(spec, FP16) / (320e9 * p.bandwidth_efficiency)
    batches = 25000 / 8
    hours = max(compute, stream) * batches * 2 / 2 / 3600 + p.overhead_hours  # x2 TTA, /2 GPUs
    assert v["basis"] == "flops-estimate" and v["bound"] == "compute"
    assert v["projected_hours"] == pytest.approx(hours)
    assert v["margin_hours"] == pytest.approx(9.0 - hours)
    act = activation_bytes(spec, 8, 1024)
    assert act["kv_cache"] == 2 * 24 * 8 * 1024 * 8 * 120 * 2  # use_cache=True keeps K and V
    need = weight_bytes(spec, FP16) + act["total"] + p.reserved_gb_per_gpu * GB
    assert v["gpu_memory_gb"] == pytest.approx(need / GB)
    assert v["margin_gb"] == pytest.approx(16.0 - need / GB)
    assert v["fits"] is True and v["fits_gpu_memory"] and v["fits_time"]
    no_tta = project(spec, FP16, lengths, p, tta=False)
    assert no_tta["projected_hours"] - p.overhead_hours == pytest.approx((hours - p.overhead_hours) / 2)


def test_projection_says_does_not_fit():
    p = load_budget("lmsys-2xt4")
    big = ModelSpec.from_config(
        LlamaConfig(
            **DANUBE3_4B
            | {"num_hidden_layers": 60, "hidden_size": 5120, "num_attention_heads": 40, "intermediate_size": 13824}
        )
    )
    v = project(big, FP16, [1024] * 8, p)  # ~13B parameters in fp16 do not fit a 16 GB T4
    assert v["fits"] is False and v["fits_gpu_memory"] is False and v["margin_gb"] < 0
    slow = dataclasses.replace(p, time_limit_hours=0.5)
    v = project(ModelSpec.from_config(LlamaConfig(**DANUBE3_4B)), FP16, [1024] * 8, slow)
    assert v["fits"] is False and v["fits_time"] is False and v["margin_hours"] < 0


def test_measured_cuda_throughput_replaces_the_estimate():
    spec = ModelSpec.from_config(LlamaConfig(**DANUBE3_500M))
    p = load_budget("lmsys-2xt4")
    lengths = [300, 500, 700, 1024]
    v = project(spec, FP16, lengths, p, measured={"device": "cuda:0 (NVIDIA H100 80GB HBM3)", "tokens_per_s": 2e5})
    t4_tokens_per_s = 2e5 * 65 / 989
    hours = sum(lengths) * (25000 / 4) * 2 / (t4_tokens_per_s * 2) / 3600 + p.overhead_hours
    assert v["basis"] == "measured-cuda" and v["projected_hours"] == pytest.approx(hours)
    assert v["estimate_hours"] != pytest.approx(hours)  # the FLOP estimate is kept for reference
    unknown = project(spec, FP16, lengths, p, measured={"device": "cuda:0 (Mystery GPU)", "tokens_per_s": 2e5})
    assert unknown["basis"] == "flops-estimate" and "_gpu_peaks.json" in unknown["notes"][0]
    cpu = project(spec, FP16, lengths, p, measured={"device": "cpu (x86, 2 threads)", "tokens_per_s": 2e5})
    assert cpu["basis"] == "flops-estimate"


def test_the_verdict_covers_kernels_host_ram_and_disk():
    """Issue 30: a format with no kernel on the profile's card does not fit (whatever its speed); host RAM is
    the weights times the measured load factor plus the overhead; the export must fit the dataset limit."""
    spec = ModelSpec.from_config(LlamaConfig(**DANUBE3_500M))
    p = load_budget("lmsys-2xt4")
    ok = project(spec, FP16, [512] * 8, p)
    assert ok["has_kernel"] and ok["kernel"] == "torch-fp16" and ok["fits_dataset"] and ok["fits_working_disk"]
    assert ok["ram_gb"] == pytest.approx(ok["weights_gb"] * p.host_load_factor + p.host_overhead_gb)
    # the same format on a card below bitsandbytes' int8 floor (sm_75): flagged, not projected
    old_card = dataclasses.replace(p, compute_capability="7.0")
    int8 = WeightFormat("bnb-int8", 8)
    flagged = project(spec, int8, [512] * 8, old_card)
    assert not flagged["has_kernel"] and not flagged["fits"] and not flagged["fits_time"]
    assert any("no CUDA kernel on sm_70" in n for n in flagged["notes"])
    assert project(spec, int8, [512] * 8, p)["has_kernel"]  # the T4 itself has igemmlt
    # host RAM: a notebook with 4 GB of RAM cannot load a 1 GB model with 4 GB of overhead
    small = project(spec, FP16, [512] * 8, dataclasses.replace(p, ram_gb=4.0))
    assert not small["fits_ram"] and not small["fits"]
    # disk: an export over the dataset limit does not fit; over the working disk it is only noted
    tiny_disk = project(spec, FP16, [512] * 8, dataclasses.replace(p, dataset_limit_gb=0.5, working_disk_gb=0.5))
    assert not tiny_disk["fits_dataset"] and not tiny_disk["fits_working_disk"] and not tiny_disk["fits"]
    assert any("working disk" in n for n in tiny_disk["notes"])
