"""How :func:`kdq.distill` holds the model it trains: dtype, LoRA / QLoRA, checkpointing, merge on save.

The dtype rule:

* **no LoRA** (full fine-tuning): fp32 master weights everywhere; on CUDA, AMP computes in
  fp16 (bf16 where the GPU has it) per op.
* **LoRA**: the frozen base is held in ``LoraSettings.base_dtype`` — ``"auto"`` is bf16 on
  GPUs with bf16 (A100, H100), fp16 on the others (T4), fp32 on CPU; the trainable LoRA
  matrices and the ``score`` head are fp32 (optimizer and gradients stay exact).
* **QLoRA** (``LoraSettings(quantize="nf4")``): the decoder's linear layers load in 4-bit nf4
  with double quantization (bitsandbytes), computing in the same dtype as above; peft's
  ``prepare_model_for_kbit_training`` freezes the base and upcasts embedding and norms to
  fp32; the ``score`` head is skipped by the quantizer and trained in full, in fp32.

Saving merges each adapted weight in fp32 and rounds the sum once to ``LoraSettings.save_dtype``, one layer
at a time on the host (:func:`merge_checked`): no fp32 copy of the model is ever held (a 4B base is 7.9 GB in
bf16, 15.8 GB in fp32). QLoRA merges onto the *dequantized* nf4 base. The saved, unquantized folder computes
what the trained model computed, and stock transformers loads it. :func:`merge_checked` proves it on probe
rows before any weight changes: the merged student against the trained adapters, both computed in fp32,
within ``LoraSettings.merge_atol`` (max |Δp|), or the save is refused.

Why the check: a LoRA update ``B·A·α/r`` is small beside the weight it is added to, and fp16 / bf16 keep 11 /
8 significant bits, so rounding the merged sum to them drops the part of the update below half a step of the
weight's grid (a peer measured probabilities moving by up to 0.097). The merge's arithmetic is not the problem;
the storage is. ``save_dtype="auto"`` (the default) keeps the base's own dtype when the rounded merge stays
within ``merge_atol``, and saves fp32 (twice the bytes, with a warning) when it does not.
"""

from __future__ import annotations

import os
import warnings
from functools import partial
from pathlib import Path

import torch

from ..quant_methods import HEAD_MODULES, load_time_config  # the head: never quantized, always trained in full
from ..runtime.dtypes import DTYPES, SHORT_NAMES, compute_in, resolve_dtype, restored_cast
from ..utils.distributed import training_device
from ..utils.errors import CheckFailed
from .config import LoraSettings


def base_dtype(lora: LoraSettings | None, device) -> torch.dtype:
    """The dtype the (frozen) base is loaded in: the rule in the module doc (the runtime's, with bf16)."""
    if lora is None:
        return torch.float32
    return resolve_dtype(lora.base_dtype, device, bf16=True)


# --------------------------------------------------------------------------- loading and wrapping
def load_student(student, lora: LoraSettings | None, *, tokenizer=None, device=None, scheme=None):
    """Load the model to train as the dtype rule says; a :class:`kdq.models.LoadedModel`.

    ``lora``: the run's :class:`LoraSettings` (``None``: full fine-tuning). A saved head of another size, or
    none, is re-initialised for ``scheme`` (a warning). QLoRA loads straight onto ``device`` in the
    registry's nf4 config (:func:`kdq.quant_methods.load_time_config`: double quantization, the head
    skipped) through :func:`kdq.models.load_classifier`.

    Raises:
        ValueError: QLoRA of an in-memory model (it cannot be re-loaded in 4-bit: save it first) or of a PEFT
            adapter folder (merge it first).
        ImportError: QLoRA without bitsandbytes, naming the pip extra.
    """
    from ..models import load_classifier

    device = torch.device(device) if device is not None else training_device()
    dtype = base_dtype(lora, device)
    common = dict(tokenizer=tokenizer, dtype=dtype, scheme=scheme, head="reinit", role="the student")
    if lora is not None and lora.quantize == "nf4":
        _check_nf4_source(student)
        qc = load_time_config("bnb-nf4", dtype)
        return load_classifier(student, device=device, quantization_config=qc, **common)
    loaded = load_classifier(student, **common)
    loaded.model.to(dtype)  # dtype= only reaches folders; cast objects too
    return loaded


def _check_nf4_source(student) -> None:
    """QLoRA loads a full model folder or Hub id in 4-bit, with bitsandbytes; else a ``ValueError`` (an
    ``ImportError``) saying what to do."""
    from ..models import is_adapter_dir, is_hub_id
    from ..utils.imports import require

    require("bitsandbytes", purpose="QLoRA (LoraSettings(quantize='nf4'))")
    if not isinstance(student, (str, os.PathLike)) or (not Path(student).is_dir() and not is_hub_id(student)):
        raise ValueError(
            "LoraSettings(quantize='nf4') loads the student in 4-bit from a model folder or Hub id; "
            f"got {type(student).__name__}. Save an in-memory model with save_pretrained first."
        )
    if Path(student).is_dir() and is_adapter_dir(student):
        raise ValueError(
            f"{student} is a PEFT adapter folder; QLoRA needs a full model folder. Merge it first "
            "(kdq.models.load_classifier(...).model.save_pretrained(DIR)) or pass its base."
        )


def wrap_lora(model, lora: LoraSettings):
    """Attach LoRA adapters (peft); adapters and the ``score`` head trainable and fp32, the rest frozen."""
    from peft import LoraConfig, get_peft_model

    quantized = getattr(model, "is_loaded_in_4bit", False)
    if quantized:
        from peft import prepare_model_for_kbit_training

        # checkpointing is the Trainer's job (TrainingArguments), decided by plan_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                # on CPU, bitsandbytes repacks 4-bit weights for a bf16 kernel on the first eval
                # forward: evaluation would then score another computation than training trains
                module.support_avx512bf16_for_cpu = False
    # task_type SEQ_CLS puts the classification head in modules_to_save: it trains in full.
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="SEQ_CLS",
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
        ),
    )
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # the head copy inherits the base's dtype; AMP needs fp32 to unscale
    for name, module in model.named_modules():
        head = any(part in HEAD_MODULES for part in name.split("."))  # ...score.modules_to_save.default
        if head and isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
            module.register_forward_pre_hook(_cast_input_to_weight)
    return model


def _cast_input_to_weight(module, args):
    x = args[0]
    return (x.to(module.weight.dtype),) + tuple(args[1:]) if x.dtype != module.weight.dtype else None


# --------------------------------------------------------------------------- saving
def merge_checked(model, lora: LoraSettings | None, probe: list, pad_id: int) -> tuple:
    """Merge ``model`` for saving, in ``lora.save_dtype``, and prove the merge on ``probe``.

    Args:
        model: the trained model; a ``PeftModel`` (LoRA / QLoRA) is merged, anything else is returned as it is.
        lora: the run's :class:`LoraSettings` (``None``: full fine-tuning, nothing to merge).
        probe: token id lists (a few training rows) both models score.
        pad_id: the tokenizer's pad id.
    Returns:
        ``(merged model on the CPU, record)``; the record (``kdq-distill.json``'s ``merge``, ``None`` when
        nothing was merged) holds ``save_dtype`` (what was saved), ``max_dp``: the largest |Δp| over the probe
        rows and classes between the merged student (its saved weights, fp32 compute) and the trained adapters
        (fp32 compute over the stored base; QLoRA: as trained, over the nf4 base), ``max_dp_trained_compute``:
        how far the trained model as it ran (the base's dtype) is from that fp32 reference, for scale, and with
        ``save_dtype="auto"`` the base dtype's own ``max_dp`` when it was too far and fp32 was saved instead.

    Plain LoRA never holds an fp32 copy of the model (a 4B base is 7.9 GB in bf16, 15.8 GB in fp32): fp32
    compute is a layerwise cast (:func:`kdq.runtime.dtypes.compute_in`), each adapted weight is merged in fp32
    and rounded once to the saved dtype, one layer at a time, and the rounded merge is checked before any weight
    changes (:func:`_virtual_merge`), so ``"auto"`` can still choose fp32.
    Raises:
        CheckFailed: ``max_dp`` above ``lora.merge_atol``, with the number and the fixes.
    """
    if lora is None or not hasattr(model, "merge_and_unload"):
        return model, None
    model.eval()
    trained = _probabilities(model, probe, pad_id)
    if _is_qlora(model):
        return _checked_nf4(model, lora, probe, pad_id, trained)
    model.to("cpu")  # in its own dtype
    stored = next(p.dtype for n, p in model.named_parameters() if "lora_" not in n)
    with restored_cast(model):
        compute_in(model, torch.float32)
        reference = _probabilities(model, probe, pad_id)
        wanted = stored if lora.save_dtype == "auto" else DTYPES[lora.save_dtype]
        got = _virtual_merge(model, wanted, lambda: _probabilities(model, probe, pad_id))
    record = _merge_record(lora, wanted, got, reference, trained, len(probe))
    if lora.save_dtype == "auto" and not record["max_dp"] <= lora.merge_atol and wanted != torch.float32:
        record["base_dtype_max_dp"] = record["max_dp"]
        wanted = torch.float32  # the adapters' small updates need fp32 to survive: twice the bytes, said below
        with restored_cast(model):
            compute_in(model, torch.float32)
            got = _virtual_merge(model, wanted, lambda: _probabilities(model, probe, pad_id))
        record.update(_merge_record(lora, wanted, got, reference, trained, len(probe)))
        warnings.warn(
            f"LoRA merge: stored in {SHORT_NAMES[stored]}, the merged student moves probabilities by up to "
            f"{record['base_dtype_max_dp']:.3g} from the trained adapters (LoraSettings.merge_atol="
            f"{lora.merge_atol:g}); it is saved in fp32 instead (twice the bytes).",
            stacklevel=2,
        )
    _refuse_drift(record, lora, len(probe))
    return _merge_layers(model, wanted), record


def _merge_record(lora, dtype, got, reference, trained, rows: int) -> dict:
    return {
        "method": "lora",
        "save_dtype": SHORT_NAMES[dtype],
        "probe_rows": rows,
        "max_dp": _max_abs(got - reference),
        "max_dp_trained_compute": _max_abs(trained - reference),
        "atol": lora.merge_atol,
    }


def _refuse_drift(record: dict, lora: LoraSettings, rows: int) -> None:
    if record["max_dp"] <= lora.merge_atol:
        return
    saved = record["save_dtype"]
    fix = (
        f"{saved} rounds away the adapters' small updates: set LoraSettings(save_dtype='fp32') "
        if saved != "fp32"
        else "Raise LoraSettings.merge_atol if that gap is acceptable "
    )
    raise CheckFailed(
        f"the merged student ({saved} weights) moves probabilities by up to {record['max_dp']:.3g} "
        f"from the trained adapters on {rows} training rows (LoraSettings.merge_atol="
        f"{lora.merge_atol:g}); nothing was saved. {fix}and rerun with DistillConfig(resume=True): it continues "
        "from the last checkpoint and saves again."
    )


def _lora_layers(model):
    """``(wrapper, base layer, fp32 update)`` for every LoRA-adapted layer (the update summed over active adapters)."""
    for module in model.modules():
        if not (hasattr(module, "get_base_layer") and hasattr(module, "lora_A")):
            continue
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        if adapters:
            yield module, module.get_base_layer(), adapters


def _delta(module, adapters) -> torch.Tensor:
    return sum(module.get_delta_weight(a).float() for a in adapters)


def _virtual_merge(model, dtype: torch.dtype, score):
    """``score()`` of the model as if merged and stored in ``dtype``, without changing any weight: during each
    adapted layer's forward its base weight is ``(W + ΔW)`` rounded to ``dtype``, its adapters off (the head's
    trained copy, peft's ``modules_to_save``, stays in use)."""
    handles = []

    def pre(module, args, base=None, adapters=None):
        stored = base.weight.data
        module._kdq_stored = stored
        base.weight.data = (stored.float() + _delta(module, adapters)).to(dtype)

    def post(module, args, output, base=None):
        base.weight.data = module.__dict__.pop("_kdq_stored")

    layers = list(_lora_layers(model))
    for module, base, adapters in layers:
        handles.append(module.register_forward_pre_hook(partial(pre, base=base, adapters=adapters)))
        handles.append(module.register_forward_hook(partial(post, base=base), always_call=True))
        module.enable_adapters(False)  # this layer's adapters only: the head's trained copy (modules_to_save) stays
    try:
        return score()
    finally:
        for h in handles:
            h.remove()
        for module, _, _ in layers:
            module.enable_adapters(True)


def _merge_layers(model, dtype: torch.dtype):
    """Each adapted weight merged in fp32 and rounded once to ``dtype``, layer by layer; the adapters removed
    (peft's ``unload``: the head's trained copy replaces the original); every other weight cast to ``dtype``."""
    with torch.no_grad():
        for module, base, adapters in _lora_layers(model):
            base.weight.data = (base.weight.data.float() + _delta(module, adapters)).to(dtype)
    return model.unload().to(dtype)


def _checked_nf4(model, lora: LoraSettings, probe: list, pad_id: int, trained):
    """QLoRA: merged onto the dequantized nf4 base (:func:`merge_for_save`), checked against the model as trained."""
    dtype = torch.float32 if lora.save_dtype == "auto" else DTYPES[lora.save_dtype]
    merged = merge_for_save(model, torch.float32)
    merged.to(dtype).float()  # the save dtype's grid, computed in fp32 (in place: one fp32 copy at a time)
    got = _probabilities(merged, probe, pad_id)
    merged.to(dtype)  # exact: the weights are on its grid already
    record = _merge_record(lora, dtype, got, trained, trained, len(probe))
    record["method"] = "qlora"
    _refuse_drift(record, lora, len(probe))
    return merged, record


def _probabilities(model, probe: list, pad_id: int) -> torch.Tensor:
    """``(N, C)`` fp32 class probabilities of the token id lists ``probe``, on the model's device."""
    from ..runtime.batching import predict_logits

    return predict_logits(model, probe, pad_id).softmax(-1)


def _max_abs(diff: torch.Tensor) -> float:
    return float(diff.abs().max()) if diff.numel() else 0.0


def _is_qlora(model) -> bool:
    return bool(getattr(model.get_base_model(), "is_loaded_in_4bit", False))


def merge_for_save(model, dtype: torch.dtype = torch.float32):
    """A plain ``PreTrainedModel`` with LoRA merged in fp32, its weights in ``dtype`` on the CPU, ready for
    ``save_pretrained`` (anything that is not a ``PeftModel`` is returned as it is).

    LoRA: the model is moved to the host in fp32 (in place, one tensor at a time) and peft merges
    ``B·A·α/r`` into every adapted weight there, in fp32; the sum is then rounded once to ``dtype``.
    QLoRA: every 4-bit matrix is dequantized (``bitsandbytes.functional.dequantize_4bit``)
    and the adapter's update added in fp32, then stored in ``dtype``; the quantization config is
    removed. The saved weights are therefore the nf4 values the adapters were trained against, not
    the original base: the merged folder reproduces the trained model up to float rounding
    (measured in ``docs/distill.md``), where merging onto the original weights would not.
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    if _is_qlora(model):
        return _merge_nf4(model, model.get_base_model(), dtype)
    model.to("cpu")
    return _merge_layers(model, dtype)


def _merge_nf4(model, base, dtype: torch.dtype):
    import bitsandbytes as bnb

    for name, module in list(base.named_modules()):
        layer = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if not isinstance(layer, bnb.nn.Linear4bit) or name.endswith("base_layer"):  # wrappers replace their own
            continue
        w = layer.weight
        if getattr(w.quant_state, "packing_format_for_cpu", False):
            # bitsandbytes repacks 4-bit weights for its CPU inference kernel on the first eval
            # forward; undo it (as its own state_dict saving does) before dequantizing
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            w.data, w.quant_state = _convert_weight_packed_for_cpu_inverse(w.data, w.quant_state)
        weight = bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
        if module is not layer:
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).float()
        linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        linear.weight = torch.nn.Parameter(weight.to(device="cpu", dtype=dtype), requires_grad=False)
        if layer.bias is not None:
            linear.bias = torch.nn.Parameter(layer.bias.detach().to(device="cpu", dtype=dtype), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name) if parent_name else base, child, linear)
    merged = model.merge_and_unload()  # no LoRA layers left: unwraps the head's trainable copy
    quantizer = getattr(merged, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(merged)  # what transformers' own dequantize() does last
    merged.is_loaded_in_4bit = False
    return merged.to(device="cpu", dtype=dtype)
