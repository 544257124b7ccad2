"""What a model costs, from its config alone: parameters, FLOPs, weight and activation memory.

Arithmetic on a model *config* (never on weights), so a 4B teacher can be checked on a laptop.

Counting conventions (Llama-like decoder + ``score`` head), with ``H`` hidden size, ``I``
intermediate size, ``V`` vocabulary, ``n``/``k`` query/KV heads of ``d`` dims, ``Ly`` layers:

* attention weights per layer: ``q: H*n*d``, ``k, v: H*k*d`` each, ``o: n*d*H``;
* MLP weights per layer: ``gate, up: H*I`` each, ``down: I*H``; two RMSNorm vectors ``H``;
* embedding ``V*H``, final norm ``H``; the classifier head ``score`` is ``H*num_labels``
  (a causal LM's ``lm_head`` is ``V*H`` unless tied to the embedding).
* FLOPs per token of a row of length ``L``: ``2 * linear_weights`` (one multiply-add per
  weight) plus attention ``4 * Ly * n * d * L`` (``QK^T`` and ``AV`` over the whole padded
  length: with a padding mask, SDPA kernels do not skip the causal upper triangle).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config.validate import check_range
from ..quant_methods import FP16, WeightFormat, method_for, quantization_config_of

#: the Llama-family linear layers of a decoder block (the names LoRA targets and width pruning slices)
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

__all__ = [
    "ModelSpec",
    "WeightFormat",
    "FP16",
    "weight_format_of",
    "param_counts",
    "flops_per_token",
    "batch_flops",
    "weight_bytes",
    "activation_bytes",
]


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a Llama-like sequence classifier, as read from its ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_labels: int = 3
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    use_cache: bool = True
    model_type: str = "llama"

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "num_labels",
        ):
            check_range("ModelSpec", name, getattr(self, name), 1, kind=int)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelSpec.num_kv_heads must divide num_heads ({self.num_heads}), got {self.num_kv_heads}"
            )

    @classmethod
    def from_config(cls, config) -> ModelSpec:
        """Read a ``PretrainedConfig``, a config dict, a model folder or a ``config.json`` path."""
        if isinstance(config, (str, os.PathLike)):
            path = Path(config)
            path = path / "config.json" if path.is_dir() else path
            if not path.is_file():
                raise ValueError(f"no config.json at {str(path)!r}; pass a model folder or its config.json.")
            config = json.loads(path.read_text())
        if not isinstance(config, dict):
            if hasattr(config, "get_text_config"):
                config = config.get_text_config()
            config = config.to_dict()
        need = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        missing = [k for k in need if config.get(k) is None]
        if missing:
            raise ValueError(
                f"model config lacks {missing}: budget arithmetic needs a Llama-like decoder "
                f"config (model_type={config.get('model_type')!r})."
            )
        heads = int(config["num_attention_heads"])
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        n_labels = config.get("num_labels") or len(config.get("id2label") or {}) or 3
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate_size=int(config["intermediate_size"]),
            num_labels=int(n_labels),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            use_cache=bool(config.get("use_cache", True)),
            model_type=str(config.get("model_type", "llama")),
        )

    def to_dict(self) -> dict:
        return asdict(self)


HEADS = ("classifier", "lm")


def param_counts(spec: ModelSpec, head: str = "classifier") -> dict:
    """Parameter counts by part. ``head``: ``"classifier"`` (``score``, H x labels) or ``"lm"``.

    Returns a dict with ``embedding``, ``attention``, ``mlp``, ``norms``, ``head`` (all layers
    summed), ``decoder_linear`` (the weight matrices inside the decoder layers: what GPTQ and
    bitsandbytes quantize), ``linear`` (matrices that cost FLOPs per token: decoder + head)
    and ``total``.
    """
    if head not in HEADS:
        raise ValueError(f"param_counts head must be one of {list(HEADS)}, got {head!r}")
    h, q, kv = spec.hidden_size, spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    attn_w = h * q + 2 * h * kv + q * h
    attn_b = (q + 2 * kv + h) if spec.attention_bias else 0
    mlp_w = 3 * h * spec.intermediate_size
    mlp_b = (2 * spec.intermediate_size + h) if spec.mlp_bias else 0
    head_w = h * spec.num_labels if head == "classifier" else h * spec.vocab_size
    head_params = 0 if (head == "lm" and spec.tie_word_embeddings) else head_w
    counts = {
        "embedding": spec.vocab_size * h,
        "attention": spec.num_layers * (attn_w + attn_b),
        "mlp": spec.num_layers * (mlp_w + mlp_b),
        "norms": spec.num_layers * 2 * h + h,
        "head": head_params,
        "decoder_linear": spec.num_layers * (attn_w + mlp_w),
    }
    counts["linear"] = counts["decoder_linear"] + head_w
    counts["total"] = sum(counts[k] for k in ("embedding", "attention", "mlp", "norms", "head"))
    return counts


def flops_per_token(spec: ModelSpec, length: int) -> int:
    """Forward FLOPs for one token of a row padded to ``length`` tokens (see module doc)."""
    attn = 4 * spec.num_layers * spec.num_heads * spec.head_dim * int(length)
    return 2 * param_counts(spec)["linear"] + attn


def batch_flops(spec: ModelSpec, batch: int, length: int) -> int:
    """Forward FLOPs of a ``(batch, length)`` padded batch."""
    return int(batch) * int(length) * flops_per_token(spec, length)


# --------------------------------------------------------------------------- weight formats
def weight_format_of(config) -> WeightFormat:
    """The weight format of a (possibly quantized) model: fp16 when it has no ``quantization_config``.

    ``config``: ``PretrainedConfig``, config dict, or model folder. Each quantization method
    states its own on-disk format (:meth:`kdq.quant_methods.QuantMethod.weight_format`); an
    unknown method is a ``ValueError`` naming the known ones. Unquantized weights are counted
    as fp16 whatever their saved dtype: that is what a T4 notebook loads.
    """
    method = method_for(config)
    return FP16 if method is None else method.weight_format(quantization_config_of(config))


def weight_bytes(spec: ModelSpec, fmt: WeightFormat = FP16) -> float:
    """Bytes of weights on one GPU: quantized decoder matrices + everything else in fp16."""
    counts = param_counts(spec)
    quantized = counts["decoder_linear"]
    return quantized * fmt.bytes_per_weight + (counts["total"] - quantized) * 2


def activation_bytes(spec: ModelSpec, batch: int, length: int, dtype_bytes: int = 2) -> dict:
    """Peak transient memory of one forward pass on a ``(batch, length)`` batch.

    Rough on purpose (tensors freed between ops are not all counted): the residual stream
    and its normed copy (``3H``), plus the larger of the attention tensors (q/k/v and their
    rotated copies, ``3(n+k)d``) and the MLP tensors (gate, up and their product, ``3I``);
    the 4-D padding mask (``L^2`` per row); and, because the classifier's config keeps
    ``use_cache=True``, the KV cache that transformers fills during the pass
    (``2 * layers * k * d`` per token). Returns bytes: ``activations``, ``mask``, ``kv_cache``, ``total``.
    """
    tokens = int(batch) * int(length)
    h, i = spec.hidden_size, spec.intermediate_size
    attn = 3 * (spec.num_heads + spec.num_kv_heads) * spec.head_dim
    acts = tokens * dtype_bytes * (3 * h + max(attn, 3 * i))
    mask = int(batch) * int(length) ** 2 * dtype_bytes
    kv = 2 * spec.num_layers * tokens * spec.num_kv_heads * spec.head_dim * dtype_bytes if spec.use_cache else 0
    return {"activations": acts, "mask": mask, "kv_cache": kv, "total": acts + mask + kv}
