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

Saving merges: LoRA onto the base with peft's ``merge_and_unload``; QLoRA onto the
*dequantized* nf4 base (:func:`merge_for_save`), so the saved, unquantized folder computes what
the trained model computed, and stock transformers loads it.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from ..evaluate.modelspec import ModelSpec
from ..quant_methods import HEAD_MODULES, get_quantizer  # the head: never quantized, always trained in full
from ..quantize.config import QuantConfig
from ..evaluate.train_memory import (GB, TrainDevice, TrainSetup, alternatives, cuda_train_device, fits, peak_fits,
                                     format_projection, project_training)
from .config import LLAMA_LINEAR, DistillConfig, LoraSettings

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class TrainingMemoryError(ValueError):
    """The projected peak training memory exceeds the device; the message names settings that fit."""


def training_device() -> torch.device:
    """The device this process trains on: its local CUDA GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def base_dtype(lora: LoraSettings | None, device) -> torch.dtype:
    """The dtype the (frozen) base is loaded in: the rule in the module doc."""
    device = torch.device(device)
    if lora is None:
        return torch.float32
    if lora.base_dtype != "auto":
        return HALF[lora.base_dtype]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------- planning
def student_spec(student) -> ModelSpec | None:
    """The student's shape from its config (folder, adapter folder, model object or Hub id), or ``None``."""
    from ..models import _adapter_base, is_adapter_dir, is_hub_id

    try:
        if isinstance(student, torch.nn.Module):
            return ModelSpec.from_config(student.config)
        path = Path(student)
        if path.is_dir() and is_adapter_dir(path):
            path = Path(_adapter_base(path))
        if path.is_dir():
            return ModelSpec.from_config(path)
        if is_hub_id(student):
            from transformers import AutoConfig

            from ..evaluate.train_memory import known_models, model_spec

            if any(e["hub_id"] == str(student) for e in known_models().values()):  # no Hub needed
                return model_spec(str(student))

            return ModelSpec.from_config(AutoConfig.from_pretrained(str(student)))
    except (OSError, ValueError, TypeError):
        return None
    return None


def training_setup(cfg: DistillConfig, device, *, checkpointing: bool) -> TrainSetup:
    """The :class:`TrainSetup` a :class:`DistillConfig` trains with on ``device``."""
    device = torch.device(device)
    lora = cfg.lora
    if lora is not None and lora.base_dtype != "auto":
        half_base = lora.base_dtype != "fp32"
    else:  # the rule of base_dtype(), without asking a GPU we may be planning for from a CPU machine
        half_base = lora is not None and device.type == "cuda"
    half = half_base or (device.type == "cuda" and cfg.precision != "fp32")
    method = "full" if lora is None else ("qlora" if lora.quantize == "nf4" else "lora")
    extra = {} if lora is None else dict(lora_r=lora.r, lora_dropout=lora.dropout,
                                         lora_targets=tuple(m for m in lora.target_modules
                                                            if m in LLAMA_LINEAR) or ("q_proj",))
    return TrainSetup(method=method, batch_size=cfg.batch_size, seq_len=cfg.template.max_length,
                      checkpointing=checkpointing, half=half, **extra)


def plan_training(student, cfg: DistillConfig, *, device: TrainDevice | None = None, log=print):
    """Project peak training memory, decide gradient checkpointing, refuse what cannot fit.

    Args:
        student: what :func:`kdq.distill` will train (its config is read, never its weights).
        cfg: the run's config; ``cfg.gradient_checkpointing=None`` lets the projection decide.
        device: the GPU to plan for; default: this process's CUDA GPU, or none on CPU (the
            projection is printed, nothing is refused).
    Returns:
        ``(cfg, projection)``: ``cfg`` with ``gradient_checkpointing`` resolved to a bool;
        ``projection`` the :func:`~kdq.evaluate.train_memory.project_training` dict (or ``None``
        when the student's config is not Llama-like).
    Raises:
        TrainingMemoryError: on a device the projected peak does not fit, naming settings that do.
    """
    torch_device = training_device()
    if device is None and torch_device.type == "cuda":
        device = cuda_train_device(torch_device.index or 0)
    plan_device = "cuda" if device is not None else torch_device
    say = log if _main_process() else (lambda *_: None)
    spec = student_spec(student)
    user = cfg.gradient_checkpointing
    if spec is None:
        ckpt = bool(user)
        say(f"kdq: no training-memory projection (the student's config is not a Llama-like decoder); "
            f"gradient checkpointing {'on' if ckpt else 'off'}")
        return cfg.replace(gradient_checkpointing=ckpt), None
    setup = training_setup(cfg, plan_device, checkpointing=bool(user))
    why = "set by you"
    if user is None:
        need = device is not None and not fits(spec, setup, device)
        setup = replace(setup, checkpointing=need)
        why = ("auto: the projection without it exceeds the device" if need else
               "auto: fits without it" if device is not None else "auto: off on CPU")
    proj = project_training(spec, setup)
    name = getattr(getattr(student, "config", None), "_name_or_path", None) or str(student)
    say("kdq: " + format_projection(Path(name).name or name, proj, device))
    say(f"kdq: gradient checkpointing {'on' if setup.checkpointing else 'off'} ({why})")
    if device is not None and not peak_fits(proj, device):
        options = alternatives(spec, setup, device)
        hint = "; ".join(_as_settings(o, setup) for o in options) or (
            "nothing close fits: use a GPU with more memory or a smaller model")
        raise TrainingMemoryError(
            f"training would need {proj['peak'] / GB:.1f} GB on {device.name}, which has {device.usable_gb:.1f} GB "
            f"usable ({setup.describe()}). Settings that fit: {hint}.")
    return cfg.replace(gradient_checkpointing=setup.checkpointing), proj


def _as_settings(option: TrainSetup, current: TrainSetup) -> str:
    """A :class:`TrainSetup` as the DistillConfig fields (``--set`` names) that would change."""
    out = []
    if option.method != current.method:
        out.append("lora=LoraSettings(quantize='nf4') (--set lora.quantize=nf4)" if option.method == "qlora"
                   else "lora=LoraSettings() (--set lora.r=16)")
    if option.checkpointing != current.checkpointing:
        out.append("gradient_checkpointing=True")
    if option.batch_size != current.batch_size:
        factor = current.batch_size // option.batch_size
        out.append(f"batch_size={option.batch_size} (grad_accum x{factor} keeps the effective batch)")
    if option.seq_len != current.seq_len:
        out.append(f"template.max_length={option.seq_len}")
    return ", ".join(out)


# --------------------------------------------------------------------------- loading and wrapping
def load_student(student, cfg: DistillConfig, *, tokenizer=None, device=None):
    """Load the model to train as the dtype rule says; a :class:`kdq.models.LoadedModel`.

    QLoRA loads straight onto ``device`` through bitsandbytes (a folder or Hub id only: an
    in-memory model cannot be re-loaded in 4-bit; save it first).
    """
    from ..models import load_classifier

    device = torch.device(device) if device is not None else training_device()
    lora = cfg.lora
    dtype = base_dtype(lora, device)
    if lora is not None and lora.quantize == "nf4":
        return _load_nf4(student, tokenizer, dtype, device)
    loaded = load_classifier(student, tokenizer=tokenizer, dtype=dtype)
    loaded.model.to(dtype)  # dtype= only reaches folders; cast objects too
    return loaded


def _load_nf4(student, tokenizer, dtype, device):
    from transformers import AutoModelForSequenceClassification

    from ..import_utils import require
    from ..models import (LoadedModel, is_adapter_dir, is_hub_id, load_tokenizer, prepare_classifier,
                          prepare_tokenizer, source_fingerprint)

    require("bitsandbytes", purpose="QLoRA (LoraSettings(quantize='nf4'))")
    if not isinstance(student, (str, os.PathLike)) or (not Path(student).is_dir() and not is_hub_id(student)):
        raise ValueError("LoraSettings(quantize='nf4') loads the student in 4-bit from a model folder or Hub id; "
                         f"got {type(student).__name__}. Save an in-memory model with save_pretrained first.")
    if Path(student).is_dir() and is_adapter_dir(student):
        raise ValueError(f"{student} is a PEFT adapter folder; QLoRA needs a full model folder. Merge it first "
                         "(kdq.models.load_classifier(...).model.save_pretrained(DIR)) or pass its base.")
    # the registry's nf4 config (double quantization, head skipped), as kdq.quantize would write it
    qc = get_quantizer("bnb-nf4").bnb_config(QuantConfig.from_name("bnb-nf4"), dtype)
    model = AutoModelForSequenceClassification.from_pretrained(str(student), num_labels=3, quantization_config=qc,
                                                               dtype=dtype, device_map={"": str(device)})
    tok = prepare_tokenizer(tokenizer if hasattr(tokenizer, "pad_token_id") else load_tokenizer(tokenizer, str(student)))
    prepare_classifier(model, tok)
    return LoadedModel(model=model, tokenizer=tok, source=str(student), fingerprint=source_fingerprint(student))


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
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=lora.r, lora_alpha=lora.alpha,
                                             lora_dropout=lora.dropout, target_modules=list(lora.target_modules)))
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
def merge_for_save(model):
    """A plain ``PreTrainedModel`` with LoRA merged, ready for ``save_pretrained``.

    QLoRA: every 4-bit matrix is dequantized (``bitsandbytes.functional.dequantize_4bit``)
    and the adapter's ``B @ A * scale`` added in fp32, then cast to the model's dtype (its
    compute dtype, fp32 on CPU); the quantization config is removed. The saved weights are
    therefore the nf4 values the adapters were trained against, not the original base: the
    merged folder reproduces the trained model up to float rounding (measured in
    ``docs/distill.md``), where merging onto the original weights would not.
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    base = model.get_base_model()
    if not getattr(base, "is_loaded_in_4bit", False):
        return model.merge_and_unload()
    import bitsandbytes as bnb

    dtype = getattr(base.config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
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
        linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                 device=weight.device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if layer.bias is not None:
                linear.bias.copy_(layer.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name) if parent_name else base, child, linear)
    merged = model.merge_and_unload()  # no LoRA layers left: unwraps the head's trainable copy
    quantizer = getattr(merged, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(merged)  # what transformers' own dequantize() does last
    merged.is_loaded_in_4bit = False
    return merged.to(dtype)
