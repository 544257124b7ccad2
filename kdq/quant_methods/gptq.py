"""GPTQ through transformers' ``GPTQConfig`` (optimum + the gptqmodel backend): ``kdq[gptq]``.

Why ``GPTQConfig`` and not GPTQModel's own API: GPTQModel loads a classifier as a causal LM
and drops the ``score`` head. Through transformers the model keeps its class; optimum only
quantizes the ``nn.Linear`` layers inside the decoder blocks (``model.layers``), so the head,
the embeddings and the norms stay in floating point.
"""

from __future__ import annotations

from .registry import QuantMethod, WeightFormat, register_quantizer


def default_backend(device) -> str:
    """``"torch"`` on CPU, ``"auto"`` elsewhere.

    On CPU the ``"auto"`` choice (gptqmodel's ``TorchAtenLinear`` for 4 bits) converts its
    weights to aten's int4pack layout in place on the first eval forward pass; a folder saved
    after that fails to reload (size mismatch), and one saved before it reloads with bf16
    numerics. ``"torch"`` (``TorchLinear``) keeps the GPTQ layout and reloads bit-exact.
    """
    return "torch" if str(device).split(":")[0] == "cpu" else "auto"


@register_quantizer("gptq")
class GPTQMethod(QuantMethod):
    extra = "gptq"
    runtime_modules = ("gptqmodel", "optimum")
    wheels = ("gptqmodel", "optimum")
    quant_method = "gptq"
    allowed_bits = (4, 8)
    bits_required = True
    needs_calibration = True
    uses_fields = frozenset({"group_size", "desc_act", "backend"})

    def validate(self, config) -> int:
        bits = super().validate(config)
        if (
            not isinstance(config.group_size, int)
            or isinstance(config.group_size, bool)
            or not (config.group_size == -1 or config.group_size > 0)
        ):
            raise ValueError(
                f"QuantConfig.group_size must be a positive int or -1 (one group per row), got {config.group_size!r}."
            )
        if config.backend is not None and not isinstance(config.backend, str):
            raise ValueError(
                f"QuantConfig.backend must be a gptqmodel backend name (e.g. 'torch', 'auto') "
                f"or None, got {config.backend!r}."
            )
        return bits

    def variant_name(self, config) -> str:
        return f"gptq-{config.bits}"

    def weight_format(self, qc: dict) -> WeightFormat:
        # one fp16 scale + one packed zero point per group; group_size -1 means per output channel
        bits, group_size = int(qc.get("bits", 4)), int(qc.get("group_size", 128) or 0)
        return WeightFormat(
            f"gptq-{bits}", bits, group_size if group_size > 0 else 0, 2 + bits / 8, needs=self.wheels[0]
        )

    def prepare_load(self, device) -> None:
        """gptqmodel's CPU-safe environment, and an import of it that leaves ``HF_HOME`` alone."""
        from .gptq_env import prepare_gptq

        prepare_gptq(device)

    def backend_for(self, config, device) -> str:
        return config.backend or default_backend(device)

    def quantize(self, source_dir, config, *, calibration, tokenizer, device, dtype):
        from transformers import AutoModelForSequenceClassification, GPTQConfig

        # Pre-tokenized rows skip optimum's own tokenization, so calibration sees exactly the
        # template-rendered ids. Each row is its own (1, L) batch: no padding inside calibration.
        dataset = [{"input_ids": [list(ids)], "attention_mask": [[1] * len(ids)]} for ids in calibration]
        qcfg = GPTQConfig(
            bits=config.bits,
            dataset=dataset,
            group_size=config.group_size,
            desc_act=config.desc_act,
            # group-aware act order needs real groups, and is off with desc_act anyway
            act_group_aware=(config.group_size > 0 and not config.desc_act),
            backend=self.backend_for(config, device),
            pad_token_id=tokenizer.pad_token_id,
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source_dir), quantization_config=qcfg, dtype=dtype, device_map={"": str(device)}
        )
        return model

    def finalize_config(self, model, config, device) -> None:
        qc = model.config.quantization_config
        # The calibration set (every rendered row) would otherwise be written into config.json.
        qc.dataset = None
        qc.tokenizer = None
        # transformers rebuilds quantization_config from optimum's dict, which drops the backend;
        # record the one used so a stock reload picks the same kernel (bit-exact on CPU).
        # A GPU notebook may override it at load time: GPTQConfig(bits=..., backend="auto").
        qc.backend = self.backend_for(config, device)

    def describe(self, model, config, device) -> dict:
        kernels = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "qweight")})
        return {
            "backend": self.backend_for(config, device),
            "group_size": config.group_size,
            "desc_act": config.desc_act,
            "kernels": kernels,
        }
