"""The known traps, on real libraries, and kdq's process-environment hygiene for gptqmodel.

1. bitsandbytes 0.50, 4-bit without double quant, CPU with AVX512-BF16: the first forward pass
   repacks the weights in place; ``save_pretrained`` afterwards writes a half-restored layout
   that reloads *silently* wrong. kdq avoids it (saves before any forward pass) and its
   reload check catches it when it happens.
2. gptqmodel 7.6 on CPU with the default backend: the 4-bit kernel converts its weights to
   aten's int4pack layout on the first eval forward pass; a folder saved afterwards does not
   reload. kdq uses ``backend="torch"`` on CPU and its reload check catches the failure.
3. gptqmodel 7.6 packs a layer's input columns in blocks of 32: a width-pruned student whose hidden
   size is not a multiple of 32 fails mid-quantization; kdq refuses it before calibration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kdq
from kdq.quant_methods.gptq import default_backend
from kdq.quantize import QuantConfig, QuantizationError, ReloadMismatchError, read_report
from kdq.quantize.verify import compare_reload, cpu_has_avx512_bf16
from kdq.runtime.batching import predict_logits
from kdq.runtime.template import TemplateConfig

TEMPLATE = TemplateConfig(max_length=96)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def probe(arena_csv, tiny_tokenizer):
    from kdq.quantize.calibration import prepare_calibration

    return prepare_calibration(
        arena_csv, tiny_tokenizer, TEMPLATE, num_samples=16, probe_rows=6, seed=0, needs_calibration=True
    )


def test_bnb_nf4_without_double_quant_forward_then_save_is_caught(tiny_model_dir, tiny_tokenizer, probe, tmp_path):
    """Plain transformers: quantize, run forward, save. On AVX512-BF16 CPUs the folder reloads
    to different logits, and kdq's reload check raises; elsewhere it reloads identically."""
    import bitsandbytes.functional as bnbf
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    cfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=False,
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["score"],
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), quantization_config=cfg, device_map={"": "cpu"}
    ).eval()
    pad = tiny_tokenizer.pad_token_id
    before_save = predict_logits(model, probe.probe, pad, batch_size=len(probe.probe))
    model.save_pretrained(str(tmp_path / "nf4"))
    repacks = bnbf.has_avx512bf16()
    assert repacks == cpu_has_avx512_bf16()  # bitsandbytes and /proc/cpuinfo agree about this CPU
    kwargs = dict(
        probe=probe.probe,
        pad_id=pad,
        memory_logits=before_save,
        tolerance=5e-3,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    if repacks:
        with pytest.raises(ReloadMismatchError, match=r"bnb-nf4-nodq: the reloaded folder does not reproduce"):
            compare_reload("bnb-nf4-nodq", tmp_path / "nf4", **kwargs)
    else:
        compare_reload("bnb-nf4-nodq", tmp_path / "nf4", **kwargs)


def test_kdq_avoids_the_nf4_trap(tiny_model_dir, arena_csv, tmp_path):
    """kdq saves before the first forward pass, so nf4 without double quant reloads exactly,
    and it matches the model's first in-memory forward pass (not a repacked copy)."""
    cfg = QuantConfig.from_name("bnb-nf4", double_quant=False, template=TEMPLATE, device="cpu", probe_rows=6)
    out = kdq.quantize(tiny_model_dir, cfg, calibration=arena_csv, out_dir=tmp_path / "nf4")
    report = read_report(out)
    assert report.reload_max_abs_delta == 0.0
    assert report.cpu_avx512_bf16 == cpu_has_avx512_bf16()
    assert report.kl_to_source < 0.05


def test_gptq_default_backend_on_cpu_is_caught_and_kdq_uses_torch(tiny_model_dir, tiny_tokenizer, probe, tmp_path):
    from kdq.quant_methods.gptq_env import prepare_gptq

    prepare_gptq("cpu")
    from transformers import AutoModelForSequenceClassification, GPTQConfig

    assert default_backend("cpu") == "torch" and default_backend("cuda:0") == "auto"
    data = [{"input_ids": [ids], "attention_mask": [[1] * len(ids)]} for ids in probe.calibration]
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), device_map={"": "cpu"}, quantization_config=GPTQConfig(bits=4, dataset=data, group_size=32)
    )  # backend left to gptqmodel
    model.eval()
    pad = tiny_tokenizer.pad_token_id
    before_save = predict_logits(model, probe.probe, pad, batch_size=len(probe.probe))
    q = model.model.layers[0].self_attn.q_proj
    repacked = q.qweight.dtype != torch.int32  # int4pack layout replaced the GPTQ int32 words
    model.config.quantization_config.dataset = None
    model.save_pretrained(str(tmp_path / "gptq"))
    kwargs = dict(
        probe=probe.probe,
        pad_id=pad,
        memory_logits=before_save,
        tolerance=5e-3,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    if repacked:
        with pytest.raises(QuantizationError, match="gptq-4: the saved folder does not reload"):
            compare_reload("gptq-4", tmp_path / "gptq", **kwargs)
    else:
        compare_reload("gptq-4", tmp_path / "gptq", **kwargs)
    assert type(q).__name__ == "TorchAtenLinear" and repacked  # what this trap looks like with gptqmodel 7.6


def test_gptq_env_defaults_respect_user_and_leave_hf_home(tmp_path):
    """In a fresh process: importing kdq loads no backend; prepare_gptq sets the CPU defaults
    only where the user did not, and importing gptqmodel leaves HF_HOME alone."""
    script = tmp_path / "env_check.py"
    script.write_text(
        textwrap.dedent("""
        import json, os, sys
        import kdq
        from kdq.quant_methods.gptq_env import prepare_gptq
        lazy = [m for m in ("gptqmodel", "bitsandbytes", "optimum.gptq") if m in sys.modules]
        before = dict(os.environ)
        prepare_gptq("cpu")
        import torch._dynamo.config as dynamo_config
        changed = sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k))
        print("RESULT" + json.dumps({"lazy": lazy, "changed": changed, "hf_home": os.environ.get("HF_HOME"),
                                     "workers": os.environ.get("GPTQMODEL_CPU_WORKERS"),
                                     "compile": os.environ.get("TORCH_COMPILE_DISABLE"),
                                     "dynamo_disabled": dynamo_config.disable,
                                     "gptqmodel": "gptqmodel" in sys.modules}))
    """)
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "HF_HOME",
            "TORCH_COMPILE_DISABLE",
            "GPTQMODEL_DISABLE_PACK_EXT",
            "PYTORCH_ALLOC_CONF",
            "CUDA_DEVICE_ORDER",
        )
    }
    env.update(GPTQMODEL_CPU_WORKERS="1", OMP_NUM_THREADS="1")  # a value the user chose
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["lazy"] == []  # `import kdq` imports no quantization backend
    assert result["gptqmodel"] is True
    assert result["hf_home"] is None  # gptqmodel's import sets it; kdq puts it back
    assert result["workers"] == "1"  # the user's value wins
    assert result["compile"] == "1" and result["dynamo_disabled"] is True
    # only kdq's two defaults changed; nothing gptqmodel's import set survives
    assert result["changed"] == ["GPTQMODEL_DISABLE_PACK_EXT", "TORCH_COMPILE_DISABLE"]


def test_gptq_cannot_pack_a_width_pruned_layer_and_kdq_refuses_it_before_calibration(
    tiny_tokenizer, probe, arena_csv, tmp_path
):
    """3. A width-pruned student with hidden 48 (not a multiple of 32): gptqmodel 7.6 fails deep inside the
    layer swap with "in_features must be divisible by 32"; kdq names the widths and the fix first."""
    from kdq.quant_methods.gptq_env import prepare_gptq
    from kdq.testing import make_tiny_classifier

    prepare_gptq("cpu")
    from transformers import AutoModelForSequenceClassification, GPTQConfig

    narrow = tmp_path / "narrow"
    make_tiny_classifier(narrow, tiny_tokenizer, hidden_size=48, intermediate_size=96, num_heads=4, num_kv_heads=2)
    data = [{"input_ids": [ids], "attention_mask": [[1] * len(ids)]} for ids in probe.calibration]
    with pytest.raises(ValueError, match="in_features must be divisible by 32"):
        AutoModelForSequenceClassification.from_pretrained(
            str(narrow),
            device_map={"": "cpu"},
            quantization_config=GPTQConfig(bits=8, dataset=data, group_size=32, backend="torch"),
        )
    with pytest.raises(ValueError, match=r"'hidden_size': 48.*multiples of 32.*group_size") as err:
        kdq.quantize(str(narrow), QuantConfig.from_name("gptq-8"), calibration=arena_csv, out_dir=tmp_path / "q")
    assert "'intermediate_size'" not in str(err.value) and "kdq.shrink" in str(err.value)  # 96: a multiple of 32
    assert not (tmp_path / "q").exists()
