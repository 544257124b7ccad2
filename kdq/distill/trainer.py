"""Student training on Hugging Face ``Trainer``: only the loss is ours.

AMP, gradient accumulation, checkpoints, resumption and DDP (``accelerate launch`` /
``torchrun``) all come from ``Trainer``; :class:`KDTrainer` overrides ``compute_loss`` with a
:class:`~kdq.distill.objective.DistillObjective` (hard-label CE, a divergence to the teacher's
logits, and optionally a cosine term, a hidden-state term and a pooled-feature term), and logs
each part of :data:`~kdq.distill.objective.LOSS_PARTS` separately.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from ..runtime.batching import pad_batch
from ..runtime.dtypes import SHORT_NAMES, resolve_dtype
from ..utils.distributed import world_size
from .config import DistillConfig
from .objective import LOSS_PARTS, DistillObjective

TEACHER_COLUMNS = ("teacher_logits", "teacher_features")  # per-row teacher targets a training table may carry


class ArenaCollator:
    """Pad ``input_ids`` on the right; stack ``labels`` ``(B,)`` and, when present, ``teacher_logits``
    ``(B, C)`` and ``teacher_features`` ``(B, H_t)`` (fp32).

    A feature that also carries ``input_ids_swap`` (``swap_augment="paired"``) becomes two
    rows, the original and its A/B-swapped copy, side by side in the same batch.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features):
        keys = ("input_ids", "labels", *TEACHER_COLUMNS)
        if "input_ids_swap" in features[0]:
            rows = []
            for f in features:
                rows.append({k: f[k] for k in keys if k in f})
                rows.append({k: f[k + "_swap"] for k in keys if k + "_swap" in f})
            features = rows
        ids, mask = pad_batch([f["input_ids"] for f in features], self.pad_id)
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long),
        }
        for key in TEACHER_COLUMNS:
            if key in features[0]:
                batch[key] = torch.tensor(np.asarray([f[key] for f in features]), dtype=torch.float32)
        return batch


class KDTrainer(Trainer):
    """``Trainer`` whose loss is a :class:`~kdq.distill.objective.DistillObjective`; only the loss is ours."""

    # compute_loss returns a batch mean; Trainer must still divide it by the accumulation steps
    # (it would assume otherwise because the Llama forward accepts loss kwargs).
    loss_is_scaled_for_ga = False

    def __init__(self, *args, objective: DistillObjective, **kwargs):
        """``objective``: the loss; its teacher (if any) is frozen, moved to this process's device and
        run under ``torch.no_grad()``."""
        super().__init__(*args, **kwargs)
        self.objective = objective
        if objective.teacher is not None:
            objective.teacher.eval().requires_grad_(False)
            if not getattr(objective.teacher, "is_loaded_in_4bit", False) and not getattr(
                objective.teacher, "is_loaded_in_8bit", False
            ):
                objective.teacher.to(self.args.device)  # quantized weights are placed at load time
        self._parts = {name: [] for name in LOSS_PARTS}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        targets = {k: inputs.pop(k) for k in TEACHER_COLUMNS if k in inputs}
        outputs = model(**inputs)
        loss, parts = self.objective(outputs, {**inputs, **targets}, labels, training=model.training)
        if model.training:
            for name, value in parts.items():
                if value is not None:
                    self._parts[name].append(value.detach())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log line: add the mean of each loss part since the last one
            for name, vals in self._parts.items():
                # (sum, count) from every process, gathered unconditionally: a process whose batches held
                # only transfer rows has no "ce" values, and a gather that only some processes join hangs.
                local = torch.stack(vals).sum() if vals else torch.zeros(())
                pair = torch.stack([local.float(), torch.tensor(float(len(vals)))]).to(self.args.device)
                total = self.accelerator.gather(pair.reshape(1, 2)).reshape(-1, 2).sum(0)
                if total[1] > 0:
                    logs[name] = round(float(total[0] / total[1]), 6)
                vals.clear()
        super().log(logs, start_time)


def compute_metrics(eval_pred):
    """Eval log loss (= mean CE of the softmax, the competition metric) and accuracy."""
    logits = torch.as_tensor(eval_pred.predictions).float()
    labels = torch.as_tensor(eval_pred.label_ids).long()
    return {
        "log_loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "accuracy": float((logits.argmax(-1) == labels).float().mean()),
    }


def training_arguments(cfg: DistillConfig, checkpoint_dir, *, has_eval: bool) -> TrainingArguments:
    """Map :class:`DistillConfig` onto ``TrainingArguments`` (one place, no kwargs soup)."""
    cuda = torch.cuda.is_available()
    # auto: fp16 AMP on GPUs without bf16 (T4), bf16 where it exists, fp32 on CPU (the runtime's rule)
    precision = SHORT_NAMES[resolve_dtype(cfg.precision, "cuda" if cuda else "cpu", bf16=True)]
    strategy = "epoch" if has_eval else "no"
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        # "paired" swap: the collator turns each table row into two (the row and its swapped copy)
        per_device_train_batch_size=cfg.batch_size // 2 if cfg.swap_augment == "paired" else cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        eval_strategy=strategy,
        save_strategy="epoch",
        load_best_model_at_end=has_eval,
        metric_for_best_model="log_loss" if has_eval else None,
        greater_is_better=False,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        full_determinism=cfg.deterministic,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=not cuda,
        # CPU DDP (accelerate launch / torchrun without GPUs) needs gloo; naming a backend in a
        # single process would make accelerate look for a process group that does not exist.
        ddp_backend="gloo" if (not cuda and world_size() > 1) else None,
        activation_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        save_only_model=False,
        dataloader_num_workers=0,
    )
