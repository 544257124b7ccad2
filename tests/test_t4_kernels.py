"""Which CUDA kernel runs each format, by compute capability: pure logic, no GPU, no backend.

The kernel facts are read from the installed backends' source (docs/quantize.md, "Kernels on a T4
(sm_75)"); these tests pin the choice kdq makes from them, the record the export writes for the
standalone predict.py, and the refusal of a format that has no kernel on a card.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdq.quant_methods import (
    ANY_CAPABILITY,
    FP16_KERNEL,
    choose_cuda_kernel,
    cuda_kernel_reason,
    cuda_kernels_for,
    get_quantizer,
    has_cuda_kernel,
    parse_capability,
    registered_methods,
    runtime_settings,
    variant_names,
)
from kdq.quantize import QuantConfig

T4, A100, H100 = (7, 5), (8, 0), (9, 0)
PROFILE = Path(__file__).resolve().parents[1] / "kdq" / "budgets" / "lmsys-2xt4.json"

# (kernel, quantization_config overrides) per format, the same on sm_75, sm_80 and sm_90: kdq's lists
# leave out kernels with a closed capability range (GPTQ machete: sm_90 only), so an H100 gets marlin
EXPECTED = {
    "fp16": ("torch-fp16", {}),
    "gptq-8": ("gptq-marlin", {"backend": "marlin"}),
    "gptq-4": ("gptq-marlin", {"backend": "marlin"}),
    "bnb-int8": ("bnb-int8-igemmlt", {}),
    "bnb-nf4": ("bnb-4bit-gemm", {}),
    "bnb-fp4": ("bnb-4bit-gemm", {}),
    "torchao-int8": ("torchao-int8-mm", {}),
}


def saved_config(variant: str, **extra) -> dict | None:
    """The ``quantization_config`` a folder of ``variant`` holds (``None`` for fp16), plus ``extra``."""
    if variant == "fp16":
        return None
    cfg = QuantConfig.from_name(variant)
    return {**get_quantizer(cfg.method).quantization_config_for(cfg), **extra}


def gptq(bits=4, **extra) -> dict:
    return {"quant_method": "gptq", "bits": bits, "group_size": 128, "desc_act": False, **extra}


def predict_rule(record: list, capability, dtype: str) -> dict | None:
    """What the standalone predict.py does with kdq-predict.json ``cuda_kernels`` (it cannot import kdq):
    its own rule, kdq_runtime.predict.pick_kernel, on the record."""
    from kdq.runtime.predict import pick_kernel

    return pick_kernel(record, capability, dtype)


@pytest.mark.parametrize("capability", [T4, A100, H100], ids=["sm75", "sm80", "sm90"])
@pytest.mark.parametrize("variant", list(EXPECTED))
def test_kernel_choice_per_method_and_capability(variant, capability):
    kernel, overrides = EXPECTED[variant]
    choice = choose_cuda_kernel(saved_config(variant), capability)
    assert (choice.kernel, choice.overrides) == (kernel, overrides)
    assert choice.min_capability <= capability
    assert re.search(r"\.py:\d+", choice.source)  # cites the installed backend's file and line
    assert "not measured" in choice.reason and f"sm_{capability[0]}{capability[1]}" in choice.reason
    # the budget verdict asks by weight format name, and gets the same answer
    assert has_cuda_kernel(variant, capability)
    assert cuda_kernel_reason(variant, capability) == choice.reason


def test_gptq_folder_quantized_on_cpu_still_gets_the_gpu_kernel():
    # kdq records backend "torch" after a CPU quantization; on CUDA the card picks the kernel
    for backend in ("torch", "auto", None):
        assert choose_cuda_kernel(gptq(4, backend=backend), T4).kernel == "gptq-marlin"
    assert choose_cuda_kernel(saved_config("gptq-4", backend="torch"), "7.5").overrides == {"backend": "marlin"}


@pytest.mark.parametrize(
    ("qc", "capability", "dtype", "kernel"),
    [
        (gptq(4), (7, 0), "float16", "gptq-exllama-v2"),  # below marlin's sm_75 floor: 4-bit only
        (gptq(8), (7, 0), "float16", "gptq-torch"),
        (gptq(4, sym=False), T4, "float16", "gptq-exllama-v2"),  # marlin runs symmetric weights only
        (gptq(8, sym=False), T4, "float16", "gptq-torch"),
        (gptq(4, group_size=256), T4, "float16", "gptq-torch"),  # marlin and exllama: group <= 128
        (gptq(4), T4, "float32", "gptq-torch"),  # predict.py's fp32 fallback: marlin is fp16/bf16 only
        (gptq(4, backend="gptq_marlin"), T4, "float16", "gptq-marlin"),  # a pinned backend is kept
        (gptq(4, backend="exllama_v2"), A100, "float16", "gptq-exllama-v2"),
        (gptq(3), T4, "float16", "gptq-torch"),  # a 3-bit folder (not a kdq variant) has the torch kernel
        (saved_config("bnb-int8"), T4, "float32", "bnb-int8-igemmlt"),  # casts activations to fp16 itself
        (None, T4, "float32", "torch-fp16"),
    ],
)
def test_fallbacks_within_a_method(qc, capability, dtype, kernel):
    assert choose_cuda_kernel(qc, capability, dtype).kernel == kernel


@pytest.mark.parametrize(
    ("qc", "capability", "why"),
    [
        # machete needs exactly sm_90; kdq has no facts for it, so a folder pinned to it is flagged
        (gptq(4, backend="machete"), T4, "machete"),
        (gptq(8, backend="exllama_v2"), T4, "4-bit weights, not 8-bit"),  # exllama v2 is 4-bit only
        (gptq(4, backend="marlin", sym=False), T4, "symmetric"),
        (gptq(4, backend="marlin"), (7, 0), "compute capability >= 7.5"),
        (saved_config("bnb-int8"), (7, 0), "compute capability >= 7.5"),  # int8 tensor cores start at sm_75
    ],
)
def test_no_kernel_is_refused_and_flagged(qc, capability, why):
    assert choose_cuda_kernel(qc, capability) is None
    assert not has_cuda_kernel(qc, capability)
    reason = cuda_kernel_reason(qc, capability)
    assert "has no CUDA kernel on sm_" in reason and why in reason
    record = runtime_settings(qc)["cuda_kernels"]
    assert predict_rule(record, capability, "float16") is None  # predict.py finds none either


def test_marlin_runs_on_a_t4_in_gptqmodel_7_6():
    """gptqmodel 7.6.0 gives marlin an fp16-only sm_75 path (nn_modules/qlinear/marlin.py:61-63), so
    forcing it on a T4 is allowed; bf16 there is refused by gptqmodel (marlin.py:274-287), and by kdq."""
    assert choose_cuda_kernel(gptq(8, backend="marlin"), T4).kernel == "gptq-marlin"
    assert choose_cuda_kernel(gptq(8, backend="marlin"), A100, "bfloat16").kernel == "gptq-marlin"
    for dtype in ("bfloat16", "float32"):
        assert choose_cuda_kernel(gptq(8, backend="marlin"), T4, dtype) is None
    assert "bfloat16 below compute capability 8.0" in cuda_kernel_reason(None, T4, "bfloat16")


@pytest.mark.parametrize("variant", ["fp16", *variant_names()])
def test_runtime_settings_record_shape_and_predict_rule(variant):
    qc = saved_config(variant)
    settings = runtime_settings(qc)
    assert set(settings) == {"backend_modules", "backend_packages", "load", "cuda_kernels"}
    record = settings["cuda_kernels"]
    assert record and json.loads(json.dumps(record)) == record  # plain JSON, for kdq-predict.json
    for entry in record:
        assert set(entry) == {"kernel", "min_capability", "quantization_config", "compute_dtypes"}
        major, minor = entry["min_capability"]
        assert isinstance(major, int) and isinstance(minor, int)
        assert isinstance(entry["quantization_config"], dict) and entry["compute_dtypes"]
    assert [e["kernel"] for e in record] == [k.name for k in cuda_kernels_for(qc)]
    # predict.py's rule on the record picks what choose_cuda_kernel picks, on every card and dtype
    for capability in [(6, 1), (7, 0), T4, A100, H100, (10, 0), (12, 0)]:
        for dtype in ("float16", "float32"):
            choice = choose_cuda_kernel(qc, capability, dtype)
            picked = predict_rule(record, capability, dtype)
            assert (picked and picked["kernel"]) == (choice and choice.kernel), (capability, dtype)
            if choice is not None:
                assert picked["quantization_config"] == choice.overrides


def test_runtime_settings_records_the_kernels_and_no_second_cuda_backend():
    """On CUDA the kernel list alone says which backend loads a GPTQ folder (predict.py merges the kernel it
    picks): no ``load["cuda"]`` backend record beside it says the same thing twice."""
    settings = runtime_settings(saved_config("gptq-4", backend="torch"))
    assert set(settings["load"]) == {"cpu"}
    assert settings["load"]["cpu"]["env"]["TORCH_COMPILE_DISABLE"] == "1"
    assert settings["cuda_kernels"][0] == {
        "kernel": "gptq-marlin",
        "min_capability": [7, 5],
        "quantization_config": {"backend": "marlin"},
        "compute_dtypes": ["float16", "bfloat16"],
    }
    assert [e["kernel"] for e in settings["cuda_kernels"]] == ["gptq-marlin", "gptq-exllama-v2", "gptq-torch"]
    assert [e["kernel"] for e in runtime_settings(saved_config("gptq-8"))["cuda_kernels"]] == [
        "gptq-marlin",
        "gptq-torch",
    ]
    assert runtime_settings(None) == {
        "backend_modules": [],
        "backend_packages": [],
        "load": {},
        "cuda_kernels": [FP16_KERNEL.record()],
    }
    assert FP16_KERNEL.record()["min_capability"] == list(ANY_CAPABILITY)


def test_every_format_the_t4_budget_lists_has_a_kernel_there():
    profile = json.loads(PROFILE.read_text())
    for fmt in profile["compute_slowdown"]:
        assert has_cuda_kernel(fmt, profile["compute_capability"]), cuda_kernel_reason(fmt, "7.5")


def test_every_method_owns_cited_kernel_facts():
    for name in registered_methods():
        kernels = get_quantizer(name).cuda_kernels
        assert kernels, f"{name} lists no CUDA kernel"
        for k in (*kernels, FP16_KERNEL):
            assert len(k.min_capability) == 2 and all(isinstance(x, int) for x in k.min_capability)
            assert k.bits and re.search(r"\.py:\d+", k.source) and k.note
            json.dumps(k.record())


def test_capability_spellings_and_unknown_formats():
    assert parse_capability("7.5") == parse_capability("sm_75") == parse_capability([7, 5]) == T4
    assert parse_capability("sm_100") == (10, 0) and parse_capability((9, 0)) == H100
    for bad in ("", "seven", (7,), (7, 5, 0), None, (-1, 0)):
        with pytest.raises(ValueError, match="compute capability"):
            parse_capability(bad)
    with pytest.raises(ValueError, match="unknown weight format 'gptq-3'.*gptq-4"):
        has_cuda_kernel("gptq-3", T4)


def test_the_choice_needs_neither_torch_nor_a_gpu():
    code = (
        "import sys, kdq.quant_methods as q; "
        "assert q.choose_cuda_kernel({'quant_method': 'gptq', 'bits': 4}, (7, 5)).kernel == 'gptq-marlin'; "
        "assert q.has_cuda_kernel('bnb-nf4', '7.5'); "
        "print(sorted(m for m in ('torch', 'transformers', 'gptqmodel', 'bitsandbytes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
