"""torchao int8 weight-only through transformers' ``TorchAoConfig``: ``kdq[torchao]``.

``Int8WeightOnlyConfig`` (per output row): each decoder ``nn.Linear`` keeps its class, and its
weight becomes a torchao ``Int8Tensor`` (int8 values plus one scale per row, round to nearest,
no calibration); activations stay in the model's dtype. transformers 5 saves such tensors to
safetensors (flattened, described in the file's metadata) and loads them back with torchao
installed. The ``score`` head is left out (``modules_to_not_convert``), and so are the embeddings.

``set_inductor_config=False``: torchao's default rewrites ``torch._inductor`` settings for the
whole process when the config is applied; kdq never compiles the model, so it leaves them alone.
"""

from __future__ import annotations

from .registry import ANY_CAPABILITY, HEAD_MODULES, CudaKernel, QuantMethod, WeightFormat, register_quantizer

QUANT_TYPE = "Int8WeightOnlyConfig"

# torchao 0.18.0's one path for an Int8Tensor weight under F.linear, without torch.compile (kdq
# never compiles), read from its installed source (site-packages/torchao/), not measured.
MM_KERNEL = CudaKernel(
    "torchao-int8-mm",
    ANY_CAPABILITY,
    (8,),
    source=(
        "torchao 0.18.0 torchao/quantization/quantize_/workflows/int8/int8_tensor.py:266-359 "
        "(F.linear on an Int8Tensor: weight-only branch 336-354); torchao/quantization/quant_api.py:729-772"
    ),
    note=(
        "weight-only, eager: per row, the int8 weight is cast to the activation dtype every forward, "
        "then torch.mm (cuBLAS) and the per-row scale applied to the product (which is 1/scale times "
        "larger than the output, so an fp16 overflow risk); per group, dequantize then torch.mm; "
        "no capability check, no _weight_int8pack_mm, no int8 tensor cores"
    ),
)


def _quant_type(qc: dict) -> dict:
    """The torchao config recorded in ``quantization_config`` (``{"_type": ..., "_data": ...}``)."""
    quant_type = qc.get("quant_type")
    return (quant_type.get("default") or {}) if isinstance(quant_type, dict) else {}


@register_quantizer("torchao-int8")
class TorchAoInt8(QuantMethod):
    extra = "torchao"
    runtime_modules = ("torchao",)
    wheels = ("torchao",)
    quant_method = "torchao"
    allowed_bits = (8,)
    cuda_kernels = (MM_KERNEL,)

    def owns(self, qc: dict) -> bool:
        return super().owns(qc) and _quant_type(qc).get("_type") == QUANT_TYPE

    def weight_format(self, qc: dict) -> WeightFormat:
        # one int8 per weight; one scale per output row (negligible), or per group when made with PerGroup
        granularity = (_quant_type(qc).get("_data") or {}).get("granularity") or {}
        group = 0
        if granularity.get("_type") == "PerGroup":
            group = int((granularity.get("_data") or {}).get("group_size") or 0)
        return WeightFormat(self.name, 8, group, 2.0 if group else 0.0, needs=self.wheels[0])

    def quantization_config_for(self, config) -> dict:
        return {
            "quant_method": "torchao",
            "quant_type": {"default": {"_type": QUANT_TYPE}},
            "modules_to_not_convert": list(HEAD_MODULES),
        }

    def quantize(self, source_dir, config, *, calibration, tokenizer, device, dtype):
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import AutoModelForSequenceClassification, TorchAoConfig

        qcfg = TorchAoConfig(Int8WeightOnlyConfig(set_inductor_config=False), modules_to_not_convert=list(HEAD_MODULES))
        return AutoModelForSequenceClassification.from_pretrained(
            str(source_dir), quantization_config=qcfg, dtype=dtype, device_map={"": str(device)}
        )

    def describe(self, model, config, device) -> dict:
        qc = model.config.quantization_config
        return {
            "quant_type": QUANT_TYPE,
            "skip_modules": list(qc.modules_to_not_convert or []),
            "weight_tensors": sorted({type(m.weight).__name__ for m in model.modules() if hasattr(m, "weight")}),
        }
