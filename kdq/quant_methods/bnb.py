"""bitsandbytes LLM.int8 and 4-bit (nf4 / fp4, optional double quant), saved serialized: ``kdq[bnb]``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .registry import (
    ANY_CAPABILITY,
    HEAD_MODULES,
    CudaKernel,
    MethodSettings,
    QuantMethod,
    WeightFormat,
    register_quantizer,
)

# bitsandbytes 0.50.2 has one CUDA path per format (no quantization_config entry picks another),
# read from its installed source (site-packages/bitsandbytes/), not measured. Its CUDA libraries
# carry sm_75 SASS in every build (libbitsandbytes_cuda124/126: sm_60-90, cuda128: sm_70-120,
# cuda130: sm_75-120; read from their fatbin headers).
_BNB = "bitsandbytes 0.50.2 bitsandbytes/"
INT8_KERNEL = CudaKernel(
    "bnb-int8-igemmlt",
    (7, 5),
    (8,),
    source=(
        f"{_BNB}nn/modules.py:1180-1194 (Linear8bitLt.forward -> bnb.matmul); autograd/_functions.py:127-176 "
        "(fp16 int8 row quantization, outliers past llm_int8_threshold); backends/default/ops.py:64-119 "
        "(outlier columns in fp16, addmm); backends/cuda/ops.py:89-168 (cuBLASLt cigemmlt_32, fp32 "
        "fallbacks); diagnostics/cuda.py:128-134 (7.5: the minimum for int8 tensor cores)"
    ),
    note=(
        "LLM.int8: activations cast to fp16 and quantized per row every forward, columns with "
        "|x| >= 6.0 kept in fp16 and added back (addmm), the rest int8 x int8 -> int32 on cuBLASLt "
        "(int8 tensor cores from sm_75), then dequantized; an inner dimension not divisible by 4, "
        "or no cuBLASLt algorithm, falls back to an fp32 matmul"
    ),
)
GEMM_4BIT_KERNEL = CudaKernel(
    "bnb-4bit-gemm",
    ANY_CAPABILITY,
    (4,),
    source=(
        f"{_BNB}nn/modules.py:609-637 (Linear4bit.forward -> matmul_4bit in the compute dtype); "
        "autograd/_functions.py:407-480; backends/cuda/ops.py:583-733 (per-arch choice, sm_75 "
        "branches), 904-916 (dequantize + F.linear), 921-982 (gemm_4bit dispatch, M > 1536 -> dequantize)"
    ),
    note=(
        "nf4/fp4: for M = batch x tokens up to 1536 (fewer on sm_75, by shape) a fused "
        "dequantize+GEMM kernel (fp16 MMA on sm_75, SIMT below M=8), otherwise dequantize_4bit to "
        "the compute dtype then F.linear (cuBLAS); no capability check"
    ),
)


class _BnbMethod(QuantMethod):
    extra = "bnb"
    runtime_modules = ("bitsandbytes",)
    wheels = ("bitsandbytes",)
    quant_method = "bitsandbytes"
    quant_type = ""

    def bnb_config(self, config, dtype):
        raise NotImplementedError

    def quantize(self, source_dir, config, *, calibration, tokenizer, device, dtype):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            str(source_dir),
            quantization_config=self.bnb_config(config, dtype),
            dtype=dtype,
            device_map={"": str(device)},
        )

    def describe(self, model, config, device) -> dict:
        qc = model.config.quantization_config
        return {
            "quant_type": self.quant_type,
            "double_quant": bool(qc.load_in_4bit and qc.bnb_4bit_use_double_quant),
            "skip_modules": list(qc.llm_int8_skip_modules or []),
        }


@register_quantizer("bnb-int8")
class BnbInt8(_BnbMethod):
    allowed_bits = (8,)
    quant_type = "int8"
    cuda_kernels = (INT8_KERNEL,)
    # LLM.int8 picks its outlier columns (activations past 6.0) over the whole batch, padding
    # included, so other batch-mates change which columns run in fp16
    batch_size_atol = 1e-2

    def owns(self, qc: dict) -> bool:
        return super().owns(qc) and bool(qc.get("load_in_8bit"))

    def weight_format(self, qc: dict) -> WeightFormat:
        # LLM.int8: one fp32 scale per output row (negligible)
        return WeightFormat(self.name, 8, 0, 0.0, needs=self.wheels[0])

    def quantization_config_for(self, config) -> dict:
        return {"quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False}

    def bnb_config(self, config, dtype):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(HEAD_MODULES))


@dataclass(frozen=True)
class Bnb4bitSettings(MethodSettings):
    """bitsandbytes 4-bit's own field.

    Args:
        double_quant: also quantize the per-block scales. On by default: without it,
            bitsandbytes 0.50 saves a wrong layout after a CPU forward pass on AVX512-BF16
            machines (kdq saves before any forward pass and verifies either way).
    """

    double_quant: bool = field(
        default=True, metadata={"help": "bitsandbytes 4-bit: also quantize the per-block scales"}
    )

    def __post_init__(self):
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"QuantConfig.double_quant must be True or False, got {self.double_quant!r}")


class _Bnb4bit(_BnbMethod):
    settings = Bnb4bitSettings
    allowed_bits = (4,)
    cuda_kernels = (GEMM_4BIT_KERNEL,)

    def variant_name(self, config) -> str:
        return self.name if config.settings.double_quant else f"{self.name}-nodq"

    def owns(self, qc: dict) -> bool:
        return (
            super().owns(qc)
            and bool(qc.get("load_in_4bit"))
            and qc.get("bnb_4bit_quant_type", "fp4") == self.quant_type
        )

    def weight_format(self, qc: dict) -> WeightFormat:
        # one fp32 absmax per 64 weights, or with double quantization an int8 absmax plus an fp32 per 256 blocks
        scale = 1.0 + 4.0 / 256 if qc.get("bnb_4bit_use_double_quant") else 4.0
        return WeightFormat(self.name, 4, 64, scale, needs=self.wheels[0])

    def quantization_config_for(self, config) -> dict:
        return {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "bnb_4bit_quant_type": self.quant_type,
            "bnb_4bit_use_double_quant": config.settings.double_quant,
        }

    def load_overrides(self, qc: dict) -> dict:
        # Quantized on CPU, the folder records compute dtype float32: 2-4x slower on a T4, whose
        # predict.py computes in fp16.
        return {"cuda": {"bnb_4bit_compute_dtype": "float16"}}

    def bnb_config(self, config, dtype):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=config.settings.double_quant,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=list(HEAD_MODULES),
        )


@register_quantizer("bnb-nf4")
class BnbNF4(_Bnb4bit):
    quant_type = "nf4"


@register_quantizer("bnb-fp4")
class BnbFP4(_Bnb4bit):
    quant_type = "fp4"
