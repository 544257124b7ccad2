"""GPTQ through transformers' ``GPTQConfig`` (optimum + the gptqmodel backend): ``kdq[gptq]``.

Why ``GPTQConfig`` and not GPTQModel's own API: GPTQModel loads a classifier as a causal LM
and drops the ``score`` head. Through transformers the model keeps its class; optimum only
quantizes the ``nn.Linear`` layers inside the decoder blocks (``model.layers``), so the head,
the embeddings and the norms stay in floating point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .gptq_env import GPTQ_CPU_DEFAULTS
from .registry import ANY_CAPABILITY, CudaKernel, MethodSettings, QuantMethod, WeightFormat, register_quantizer

PACK_MULTIPLE = 32  # GPTQModel packs a layer's input columns in blocks of 32 ("in_features must be divisible by 32")


# GPTQModel 7.6.0's CUDA kernels for a GPTQ checkpoint, in the order its backend="auto" tries them
# (each class's SUPPORTS_FORMATS priority, utils/importer.py:479-533; the first that validates on the
# device wins, utils/importer.py:922-1007), read from the installed source and not measured. Left out:
# machete (prio 100: exactly sm_90, utils/machete.py:56) and swordfish (prio 101: sm_100/103/110,
# utils/swordfish.py:220), whose capability range is closed, so "first whose floor is met" cannot
# express them (on an H100 "auto" picks machete where its extension builds; kdq picks marlin); triton
# (prio 40: gptqmodel checks no capability, tritonv2.py:122-152, and triton is not installed here to
# read its own floor); bitblas (prio 30: needs the bitblas package, bitblas.py:474-482); torch_fused,
# torch_aten and torch_int8 (CPU/XPU only). All paths in ``source`` are under site-packages/.
_GM = "gptqmodel 7.6.0 gptqmodel/"
CUDA_KERNELS = (
    CudaKernel(
        "gptq-marlin",
        (7, 5),
        (4, 8),
        overrides={"backend": "marlin"},
        group_sizes=(-1, 32, 64, 128),
        sym_only=True,
        compute_dtypes=("float16", "bfloat16"),
        source=(
            f"{_GM}nn_modules/qlinear/marlin.py:61-86 (sm_75 floor, 4/8 bits, sym, group sizes), 274-287 "
            "(bf16 refused on sm_75), 312-330; utils/marlin.py:48-49, 244-262 (JIT build); "
            "gptqmodel_ext/marlin/marlin_template.h:278-286 (fp16 accumulation on sm_75)"
        ),
        note=(
            "auto's first valid choice on sm_75 and sm_80 (prio 90); fused dequant+GEMM, "
            "JIT-compiled with nvcc on first load; on sm_75 fp16 only, m16n8k8 MMA accumulating "
            "in fp16 (except 4-bit per-channel); act-order weights need a 64x128-aligned tile"
        ),
    ),
    CudaKernel(
        "gptq-exllama-v2",
        ANY_CAPABILITY,
        (4,),
        overrides={"backend": "exllama_v2"},
        group_sizes=(-1, 32, 64, 128),
        compute_dtypes=("float16", "bfloat16"),
        source=(
            f"{_GM}nn_modules/qlinear/exllamav2.py:35-56, 108-112 (no capability check); "
            "utils/exllamav2.py:127 (JIT build)"
        ),
        note="4-bit only (prio 80); JIT-compiled with nvcc; in/out features multiples of 32",
    ),
    CudaKernel(
        "gptq-torch",
        ANY_CAPABILITY,
        (2, 3, 4, 5, 6, 7, 8),
        overrides={"backend": "torch"},
        group_sizes=(-1, 16, 32, 64, 128, 256, 512, 1024),
        source=(
            f"{_GM}nn_modules/qlinear/torch.py:114-133 (bits, devices: all), 213-216 and 242-259 "
            "(torch.compile of the dequantization), 302-337 (dequantize, cast to the input dtype, torch.matmul)"
        ),
        note=(
            "the fallback (prio 20): dequantizes each layer's weight to the compute dtype every forward, then a "
            "cuBLAS GEMM; kdq's CPU kernel"
        ),
    ),
)

# config.json ``backend`` values that leave the kernel to the card (kdq records "torch" after a CPU
# quantization; on CUDA the kernel chosen from CUDA_KERNELS replaces it: choose_cuda_kernel for kdq,
# kdq-predict.json ``cuda_kernels`` for predict.py); any other value pins a kernel.
FREE_BACKENDS = (None, "", "auto", "torch")


def pinned_backend(qc: dict) -> str | None:
    """The kernel backend a folder's ``quantization_config`` pins (``"marlin"`` for ``"marlin"`` or
    ``"gptq_marlin"``), or ``None`` when it leaves the choice to the card (see :data:`FREE_BACKENDS`)."""
    backend = qc.get("backend")
    backend = backend.strip().lower() if isinstance(backend, str) else backend
    if backend in FREE_BACKENDS:
        return None
    return str(backend).removeprefix("gptq_")


def check_widths(model_config, group_size: int) -> None:
    """Refuse, before calibration, a model whose decoder layers GPTQModel cannot pack.

    Every quantized linear layer's input width (``hidden_size`` for q/k/v/gate/up, heads x head_dim for
    o_proj, ``intermediate_size`` for down_proj) must be a multiple of 32, and of ``group_size`` where a
    group fits in it. A width-pruned student (``kdq.shrink`` with ``ShrinkConfig(hidden_size=...)``) may have neither.

    Raises:
        ValueError: naming each width and the fix.
    """
    c = model_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    widths = {
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads x head_dim": c.num_attention_heads * head_dim,
    }
    bad = {k: v for k, v in widths.items() if v % PACK_MULTIPLE or (0 < group_size <= v and v % group_size)}
    if bad:
        unpackable = any(v % PACK_MULTIPLE for v in bad.values())
        fix = (
            "width-prune to multiples of 32 (kdq.shrink with ShrinkConfig(hidden_size=..., intermediate_size=...)), "
            "or use a bitsandbytes method, which has no such constraint"
            if unpackable
            else "pick a group_size that divides them (--set group_size=32, or -1 for one group per row)"
        )
        raise ValueError(
            f"gptq: the decoder's input widths {bad} must be multiples of {PACK_MULTIPLE} (GPTQModel packs columns "
            f"in blocks of {PACK_MULTIPLE}) and of group_size={group_size}. Fix: {fix}."
        )


def default_backend(device) -> str:
    """``"torch"`` on CPU, ``"auto"`` elsewhere.

    On CPU the ``"auto"`` choice (gptqmodel's ``TorchAtenLinear`` for 4 bits) converts its
    weights to aten's int4pack layout in place on the first eval forward pass; a folder saved
    after that fails to reload (size mismatch), and one saved before it reloads with bf16
    numerics. ``"torch"`` (``TorchLinear``) keeps the GPTQ layout and reloads bit-exact.
    """
    return "torch" if str(device).split(":")[0] == "cpu" else "auto"


@dataclass(frozen=True)
class GPTQSettings(MethodSettings):
    """GPTQ's own fields.

    Args:
        group_size: columns sharing one scale; ``-1`` = one group per row.
        desc_act: act-order (quantize columns by decreasing activation).
        backend: gptqmodel kernel backend passed to ``GPTQConfig``; ``None`` = ``"torch"`` on CPU
            (the default backend repacks weights on the first CPU forward pass into a layout
            that does not reload) and ``"auto"`` on CUDA. Saved into ``config.json``.
    """

    group_size: int = field(default=128, metadata={"help": "GPTQ columns sharing one scale; -1: one group per row"})
    desc_act: bool = field(
        default=False, metadata={"help": "GPTQ act-order: quantize columns by decreasing activation"}
    )
    backend: str | None = field(
        default=None, metadata={"help": "GPTQ kernel backend; null: torch on CPU, auto on CUDA (saved in config.json)"}
    )

    def __post_init__(self):
        g = self.group_size
        if not isinstance(g, int) or isinstance(g, bool) or not (g == -1 or g > 0):
            raise ValueError(f"QuantConfig.group_size must be a positive int or -1 (one group per row), got {g!r}.")
        if not isinstance(self.desc_act, bool):
            raise ValueError(f"QuantConfig.desc_act must be True or False, got {self.desc_act!r}")
        if self.backend is not None and not isinstance(self.backend, str):
            raise ValueError(
                f"QuantConfig.backend must be a gptqmodel backend name (e.g. 'torch', 'auto') "
                f"or None, got {self.backend!r}."
            )


@register_quantizer("gptq")
class GPTQMethod(QuantMethod):
    settings = GPTQSettings
    variants = {"gptq-8": {"bits": 8}, "gptq-4": {"bits": 4}}
    extra = "gptq"
    runtime_modules = ("gptqmodel", "optimum")
    wheels = ("gptqmodel", "optimum")
    quant_method = "gptq"
    allowed_bits = (4, 8)
    bits_required = True
    needs_calibration = True
    load_env = {"cpu": GPTQ_CPU_DEFAULTS}
    cuda_kernels = CUDA_KERNELS

    def variant_name(self, config) -> str:
        return f"gptq-{config.bits}"

    def weight_format(self, qc: dict) -> WeightFormat:
        # one fp16 scale + one packed zero point per group; group_size -1 means per output channel
        bits, group_size = int(qc.get("bits", 4)), int(qc.get("group_size", 128) or 0)
        return WeightFormat(
            f"gptq-{bits}", bits, group_size if group_size > 0 else 0, 2 + bits / 8, needs=self.wheels[0]
        )

    def quantization_config_for(self, config) -> dict:
        s = config.settings
        return {"quant_method": "gptq", "bits": config.bits, "group_size": s.group_size, "desc_act": s.desc_act}

    def kernel_misfit(self, kernel, qc: dict) -> str | None:
        # a backend chosen explicitly at quantization time stays, so only its kernel can run
        pinned = pinned_backend(qc)
        if pinned is not None and kernel.overrides.get("backend") != pinned:
            known = [k.overrides["backend"] for k in self.cuda_kernels]
            if pinned not in known:
                return f"(config.json pins backend {qc['backend']!r}, a kernel kdq has no facts for; it knows {known})"
            return f"(config.json pins backend {qc['backend']!r})"
        group_size = qc.get("group_size", 128)
        return kernel.misfit(
            bits=int(qc.get("bits", 4)),
            group_size=-1 if group_size is None else int(group_size),
            sym=bool(qc.get("sym", True)),
        )

    def prepare_load(self, device) -> None:
        """gptqmodel's CPU-safe environment, and an import of it that leaves ``HF_HOME`` alone."""
        from .gptq_env import prepare_gptq

        prepare_gptq(device)

    def backend_for(self, config, device) -> str:
        """The gptqmodel backend for ``device``: the one the config names; on CPU ``"torch"``
        (:func:`default_backend`); on CUDA the first of :data:`CUDA_KERNELS` that runs this config on the
        card's compute capability (:func:`~kdq.quant_methods.registry.choose_cuda_kernel`), so a T4 gets a
        kernel that exists on sm_75 rather than whatever ``"auto"`` tries first."""
        if config.settings.backend or str(device).split(":")[0] != "cuda":
            return config.settings.backend or default_backend(device)
        import torch

        from .registry import choose_cuda_kernel

        capability = torch.cuda.get_device_capability(torch.device(device))
        choice = choose_cuda_kernel(self.quantization_config_for(config), capability)
        if choice is None:
            return default_backend(device)  # the budget verdict and predict.py say why no kernel fits
        return choice.overrides.get("backend", default_backend(device))

    def quantize(self, source_dir, config, *, calibration, tokenizer, device, dtype):
        from transformers import AutoConfig, AutoModelForSequenceClassification, GPTQConfig

        s = config.settings
        check_widths(AutoConfig.from_pretrained(str(source_dir)), s.group_size)
        # Pre-tokenized rows skip optimum's own tokenization, so calibration sees exactly the
        # template-rendered ids. Each row is its own (1, L) batch: no padding inside calibration.
        dataset = [{"input_ids": [list(ids)], "attention_mask": [[1] * len(ids)]} for ids in calibration]
        qcfg = GPTQConfig(
            bits=config.bits,
            dataset=dataset,
            group_size=s.group_size,
            desc_act=s.desc_act,
            # group-aware act order needs real groups, and is off with desc_act anyway
            act_group_aware=(s.group_size > 0 and not s.desc_act),
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
        # record the one used so a stock reload picks the same kernel (bit-exact on CPU). On CUDA,
        # predict.py replaces a free one with the kernel it picks from kdq-predict.json's cuda_kernels.
        qc.backend = self.backend_for(config, device)

    def describe(self, model, config, device) -> dict:
        kernels = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "qweight")})
        return {
            "backend": self.backend_for(config, device),
            "group_size": config.settings.group_size,
            "desc_act": config.settings.desc_act,
            "kernels": kernels,
        }
