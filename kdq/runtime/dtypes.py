"""The dtype rule, once: which floating-point type a model is held and computed in (torch only).

A T4 (the notebook's GPU, sm_75) has no bf16, so scoring, quantizing and everything exported runs
in fp16 on CUDA; training may take bf16 where the GPU has it natively (A100, H100). On CPU it is
fp32 everywhere: fp16/bf16 matmuls are slow or missing there. kdq asks this module (loading,
evaluation, quantization, the teacher pass, LoRA's frozen base, the Trainer's AMP precision), and so
does the exported ``predict.py``.
"""

from __future__ import annotations

import torch

# Every spelling kdq's configs use for a dtype (LoraSettings/DistillConfig say fp16, the others float16).
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
SHORT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compute_dtype(device, *, bf16: bool = False) -> torch.dtype:
    """fp32 on CPU; on CUDA fp16, or bf16 when ``bf16`` is asked for (training) and the GPU has it natively."""
    if torch.device(device).type != "cuda":
        return torch.float32
    if bf16 and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def resolve_dtype(name, device, *, bf16: bool = False) -> torch.dtype:
    """A dtype setting: ``None`` or ``"auto"`` follow :func:`compute_dtype`; a name (``fp16``, ``bfloat16``...)
    is that dtype whatever the device."""
    if name is None or name == "auto":
        return compute_dtype(device, bf16=bf16)
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use auto or one of {sorted(DTYPES)}") from None
