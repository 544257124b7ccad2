"""Student training on Hugging Face ``Trainer``: only the loss is ours.

AMP, gradient accumulation, checkpoints, resumption and DDP (``accelerate launch`` /
``torchrun``) all come from ``Trainer``; :class:`KDTrainer` overrides ``compute_loss`` with a
:class:`~kdq.distill.objective.DistillObjective` (hard-label CE, a divergence to the teacher's
logits, and optionally a cosine term, a hidden-state term and a pooled-feature term), and logs
each part of :data:`~kdq.distill.objective.LOSS_PARTS` separately.

The run record (``kdq-run.json``) says what a run trains with: the teacher's and the student's
fingerprints, the rows' and the training config's (:func:`run_record`). It is written into the
output folder before training and into every checkpoint (:class:`RunRecordCallback`), and
``resume=True`` continues a checkpoint only under the same record (:func:`resume_point`).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..runtime.batching import pad_batch
from ..runtime.constants import FORMAT_KEY, RUN_RECORD_FILE
from ..runtime.dtypes import SHORT_NAMES, resolve_dtype
from ..utils.atomic import atomic_write_json
from ..utils.distributed import world_size
from ..utils.jsonable import jsonable
from .config import REPORTERS, RESUMABLE_FIELDS, DistillConfig, TrainingSettings
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


def check_reporter(report_to: str) -> None:
    """Raise ``ImportError`` naming the pip package when ``report_to`` (``TrainingSettings.report_to``) needs
    one that is not installed: checked before the teacher pass and training, not at ``Trainer``'s start."""
    modules = REPORTERS[report_to]
    if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ImportError(
            f"TrainingSettings.report_to={report_to!r} logs through the {modules[0]} package, which is not "
            f"installed. Install it with: pip install 'kdq[{report_to}]' (the kdq extra), or pip install {modules[0]}; "
            "or set training.report_to='none'."
        )


def training_arguments(training: TrainingSettings, checkpoint_dir, *, has_eval: bool) -> TrainingArguments:
    """Map :class:`TrainingSettings` onto ``TrainingArguments`` (one place, no kwargs soup)."""
    cuda = torch.cuda.is_available()
    # auto: fp16 AMP on GPUs without bf16 (T4), bf16 where it exists, fp32 on CPU (the runtime's rule)
    precision = SHORT_NAMES[resolve_dtype(training.precision, "cuda" if cuda else "cpu", bf16=True)]
    strategy = "epoch" if has_eval else "no"
    paired = training.swap_augment == "paired"
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        # "paired" swap: the collator turns each table row into two (the row and its swapped copy)
        per_device_train_batch_size=training.batch_size // 2 if paired else training.batch_size,
        per_device_eval_batch_size=training.eval_batch_size,
        gradient_accumulation_steps=training.grad_accum,
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_ratio,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps,
        eval_strategy=strategy,
        save_strategy="epoch",
        load_best_model_at_end=has_eval,
        metric_for_best_model="log_loss" if has_eval else None,
        greater_is_better=False,
        save_total_limit=training.save_total_limit,
        logging_steps=training.logging_steps,
        seed=training.seed,
        data_seed=training.seed,
        full_determinism=training.deterministic,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=not cuda,
        # CPU DDP (accelerate launch / torchrun without GPUs) needs gloo; naming a backend in a
        # single process would make accelerate look for a process group that does not exist.
        ddp_backend="gloo" if (not cuda and world_size() > 1) else None,
        activation_checkpointing=training.gradient_checkpointing,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=training.report_to,
        save_only_model=False,
        dataloader_num_workers=0,
    )


# --------------------------------------------------------------------------- the run record and resumption
RUN_RECORD_FORMAT = 1  # its format version (under FORMAT_KEY)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_record(cfg: DistillConfig, *, teacher: str | None, student: str, data: dict) -> dict:
    """What a run trains with, as plain data: the fingerprints of the ``teacher`` (``None``: hard labels),
    the ``student`` it starts from and the ``data`` (``{"train", "eval", "transfer"}``, ``None`` where not
    given), and every config field a step depends on (dotted names; all but :data:`RESUMABLE_FIELDS`)."""
    fields = {k: v for k, v in _flat(jsonable(cfg.to_dict())).items() if k not in RESUMABLE_FIELDS}
    return {
        FORMAT_KEY: RUN_RECORD_FORMAT,
        "teacher": teacher,
        "student_init": student,
        "data": dict(data),
        "config": dict(sorted(fields.items())),
    }


def _flat(value, prefix: str = "") -> dict:
    """``{"lora": {"r": 4}}`` → ``{"lora.r": 4}``; a nested config that is ``None`` stays one key."""
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for k, v in value.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def record_changes(old: dict, new: dict) -> list:
    """``["teacher (was X, now Y)", "config.learning_rate (was 5e-05, now 0.001)", ...]``: what differs."""
    flat_old = _flat({k: v for k, v in old.items() if k != FORMAT_KEY})
    flat_new = _flat({k: v for k, v in new.items() if k != FORMAT_KEY})
    return [
        f"{k} (was {flat_old.get(k, 'absent')!r}, now {flat_new.get(k, 'absent')!r})"
        for k in sorted(set(flat_old) | set(flat_new))
        if flat_old.get(k, "absent") != flat_new.get(k, "absent")
    ]


def last_checkpoint(checkpoint_dir) -> Path | None:
    """The checkpoint ``Trainer`` would resume: the ``checkpoint-N`` folder with the largest ``N``."""
    folder = Path(checkpoint_dir)
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and _CHECKPOINT.match(p.name)]
    return max(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1))) if found else None


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a ``checkpoint-N`` folder was saved at (``N``)."""
    return int(_CHECKPOINT.match(Path(checkpoint).name).group(1))


def resume_point(checkpoint_dir, record: dict) -> Path | None:
    """The checkpoint ``resume=True`` continues (``None``: none yet, the run starts from its init).

    Raises:
        ValueError: the last checkpoint was trained with another teacher, student init, data or
            training config than ``record`` says (each change named, old and new), or it has no run
            record to tell; the message names the choices: what the checkpoint was trained with, or
            ``DistillConfig(overwrite=True)`` to start again.
    """
    checkpoint = last_checkpoint(checkpoint_dir)
    if checkpoint is None:
        return None
    fix = (
        "Either go back to what it was trained with (the same teacher folder, student, data and DistillConfig "
        "training fields), or start again with DistillConfig(overwrite=True) (or another output_dir)."
    )
    saved = checkpoint / RUN_RECORD_FILE
    if not saved.is_file():
        raise ValueError(
            f"resume=True: {checkpoint} has no {RUN_RECORD_FILE} (it was written before kdq recorded what a run trains "
            "with, or the run stopped while saving it), so kdq cannot tell whether this run's teacher, data and "
            f"config are the ones it was trained with. Delete that folder to resume from an earlier checkpoint. {fix}"
        )
    changes = record_changes(json.loads(saved.read_text()), record)
    if changes:
        raise ValueError(
            f"resume=True would continue {checkpoint} (step {checkpoint_step(checkpoint)}) with other inputs than it "
            f"was trained with: {'; '.join(changes)}. Resuming would mix two trainings in one student. {fix}"
        )
    return checkpoint


class RunRecordCallback(TrainerCallback):
    """Writes the run record into every checkpoint ``Trainer`` saves (on the main process), so a checkpoint
    carries what it was trained with wherever it is copied."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write_json(folder / RUN_RECORD_FILE, self.record)
        return control
