"""The live teacher: loaded once, frozen, in the dtype or quantization the run's memory allows.

A live teacher runs in every training step (the hidden-state term, live logits, live
features) on exactly the token ids the student sees, so it must share the student's
tokenizer: :func:`tokenizer_differences` says what differs when it does not.
"""

from __future__ import annotations

import os

from .config import DistillConfig

PROBE_TEXTS = (
    "[Turn 1]\nPrompt: Which is better?\nResponse A: The first answer.\nResponse B: The second answer.\n",
    "def f(x):\n    return x ** 2  # 3.14159 <b>bold</b> naïve café 東京 😀",
)


def tokenizer_differences(student_tok, teacher_tok) -> list:
    """What differs between two tokenizers that must map text to the same ids (empty when nothing does).

    Compares the vocabulary, the special tokens kdq relies on (BOS, pad) and the ids of a few
    probe texts (code, markup, non-English text and emoji), so normalisation differences show too.
    """
    out = []
    vs, vt = student_tok.get_vocab(), teacher_tok.get_vocab()
    if len(vs) != len(vt):
        out.append(f"vocabulary sizes {len(vs)} (student) vs {len(vt)} (teacher)")
    else:
        diff = next((tok for tok, i in sorted(vs.items(), key=lambda kv: kv[1]) if vt.get(tok) != i), None)
        if diff is not None:
            out.append(f"token {diff!r} is id {vs[diff]} for the student and {vt.get(diff)} for the teacher")
    for name in ("bos_token_id", "pad_token_id"):
        a, b = getattr(student_tok, name, None), getattr(teacher_tok, name, None)
        if a != b:
            out.append(f"{name} {a} (student) vs {b} (teacher)")
    for text in PROBE_TEXTS:
        a = student_tok(text, add_special_tokens=False)["input_ids"]
        b = teacher_tok(text, add_special_tokens=False)["input_ids"]
        if a != b:
            out.append(f"{text[:30]!r} encodes to {a[:8]}... (student) vs {b[:8]}... (teacher)")
            break
    return out


def check_same_tokenizer(student_tok, teacher_tok, why: str) -> None:
    """Raise ``ValueError`` naming what differs, when the teacher cannot read the student's token ids."""
    diffs = tokenizer_differences(student_tok, teacher_tok)
    if diffs:
        raise ValueError(
            f"{why} feeds the teacher the student's token ids, but their tokenizers differ: " + "; ".join(diffs) + ". "
            "Use a student that shares the teacher's tokenizer (e.g. one made by kdq.shrink, or the same model "
            "family), or distil logits only: set hidden_weight=0, feature_weight=0 and teacher_logits='cache' "
            "(the cache pass renders rows with the teacher's own tokenizer)."
        )


def load_live_teacher(teacher, cfg: DistillConfig, device):
    """The frozen teacher model for the live forward, in ``cfg.teacher_quantize`` on ``device``.

    ``"none"``: fp16 on CUDA, fp32 on CPU; ``"int8"`` / ``"nf4"``: bitsandbytes, with the quantization
    registry's configs (the ``score`` head is never quantized), placed on ``device`` at load time.
    Returns a ``kdq.models.LoadedModel``.
    """
    from ..models import load_classifier, model_dtype_for

    dtype = model_dtype_for(device)
    if cfg.teacher_quantize == "none":
        return load_classifier(teacher, dtype=dtype, device=device)
    from ..quant_methods import get_quantizer
    from ..quantize.config import QuantConfig

    method = {"int8": "bnb-int8", "nf4": "bnb-nf4"}[cfg.teacher_quantize]
    get_quantizer(method).prepare_load(device)
    qc = get_quantizer(method).bnb_config(QuantConfig.from_name(method), dtype)
    if not isinstance(teacher, (str, os.PathLike)):
        raise ValueError(
            f"DistillConfig.teacher_quantize={cfg.teacher_quantize!r} loads the teacher quantized from a folder; got a "
            f"{type(teacher).__name__}. Save it with save_pretrained first, or set teacher_quantize='none'."
        )
    return load_classifier(teacher, dtype=dtype, device=device, quantization_config=qc)
