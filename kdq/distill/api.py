"""``kdq.distill``: arena rows → cached teacher logits → trained student folder."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ..data import encode, load_arena, swap_ab
from ..models import attach_template, load_classifier
from ..runtime.constants import FORMAT_KEY, SHRINK_KEY, SWAP_PERMUTATION
from ..utils.atomic import atomic_dir
from ..utils.jsonable import jsonable
from .config import DistillConfig
from .lora import load_student, merge_for_save, wrap_lora
from .planning import plan_training
from .teacher_pass import scored_rows, teacher_pass, transfer_rows

log = logging.getLogger("kdq.distill")
DISTILL_RECORD_FORMAT = 1  # kdq-distill.json's format version (under FORMAT_KEY), written by _save_student


@dataclass
class DistillResult:
    """What a distillation run produced."""

    student_dir: Path
    metrics: dict = field(default_factory=dict)
    cache_path: Path | None = None
    config: DistillConfig | None = None

    def to_dict(self) -> dict:
        return {
            "student_dir": str(self.student_dir),
            "metrics": self.metrics,
            "cache_path": str(self.cache_path) if self.cache_path else None,
            "config": self.config.to_dict() if self.config else None,
        }


def distill(
    student,
    train_data,
    eval_data=None,
    teacher=None,
    config: DistillConfig | None = None,
    *,
    transfer_data=None,
    tokenizer=None,
) -> DistillResult:
    """Train ``student`` on arena rows, distilling from ``teacher`` when given.

    Args:
        student: folder (full model or PEFT adapter) or ``PreTrainedModel`` to start from.
        train_data, eval_data: anything :func:`kdq.data.load_arena` reads (CSV, parquet,
            DataFrame, ``datasets.Dataset``). ``eval_data`` drives best-checkpoint selection.
        teacher: folder, PEFT adapter folder or model; ``None`` trains on hard labels only
            (the no-distillation baseline, and the way to fine-tune a teacher).
        config: :class:`DistillConfig`.
        transfer_data: extra arena rows without labels (a transfer set; label columns, if
            present, are ignored) that the teacher scores through the same cache and the
            student learns from through the teacher terms only. Needs a teacher.
        tokenizer: needed only when ``student`` is an object saved without one.
    Returns:
        :class:`DistillResult`; ``student_dir`` is ``<output_dir>/student``, a full model
        folder (LoRA merged) that stock ``AutoModelForSequenceClassification`` loads.
    """
    from accelerate import PartialState

    cfg = config or DistillConfig()
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    student_dir = out / "student"
    if student_dir.exists() and not (cfg.overwrite or cfg.resume):
        raise FileExistsError(
            f"{student_dir} already exists; set DistillConfig(overwrite=True) to replace it, "
            "resume=True to continue a run, or choose another output_dir."
        )
    # prints the training-memory projection, resolves gradient checkpointing, refuses what cannot fit
    cfg, memory = plan_training(student, cfg)
    # TrainingArguments sets up the (possibly distributed) process state; build it first so
    # the teacher pass below can synchronise processes through the same state.
    args = _training_args(cfg, out, has_eval=eval_data is not None)
    state = PartialState()
    train_rows = load_arena(train_data, require_labels=True)
    eval_rows = load_arena(eval_data, require_labels=True) if eval_data is not None else None
    extra_rows = transfer_rows(transfer_data, train_rows, teacher) if transfer_data is not None else None
    if cfg.hidden_weight > 0 and teacher is None:
        raise ValueError(
            "DistillConfig.hidden_weight > 0 matches the teacher's hidden states and needs a teacher; "
            "pass teacher=... or set hidden_weight=0."
        )
    metrics: dict = {
        "n_train": len(train_rows),
        "n_eval": len(eval_rows) if eval_rows is not None else 0,
        "n_transfer": len(extra_rows) if extra_rows is not None else 0,
        "train_memory": memory,
    }
    scored = scored_rows(train_rows, extra_rows)

    cache = None
    if teacher is not None and cfg.teacher_logits == "cache":
        # One process scores the teacher; the others wait and then read the same cache.
        with state.main_process_first():
            cache = teacher_pass(teacher, scored, cfg)
        metrics["teacher_pass"] = cache.summary()

    if cfg.overwrite and state.is_main_process:  # a stale checkpoint must not be resumed later
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    state.wait_for_everyone()
    loaded = load_student(student, cfg, tokenizer=tokenizer)  # dtype rule, QLoRA: kdq/distill/lora.py
    model, tok = loaded.model, loaded.tokenizer
    attach_template(model, cfg.template)
    train_set = _training_table(scored, tok, cfg, cache)
    eval_set = None
    if eval_rows is not None:
        eval_set = encode(eval_rows, tok, cfg.template, desc="render eval rows").rename_column("label", "labels")
        eval_set = eval_set.select_columns(["input_ids", "labels", "length"])
    live = teacher is not None and (cfg.hidden_weight > 0 or cfg.teacher_logits == "live")
    live_teacher = _live_teacher(teacher, model, cfg) if live else None
    trainer = _make_trainer(model, tok, train_set, eval_set, cfg, args, live_teacher)

    resume = cfg.resume and any((out / "checkpoints").glob("checkpoint-*"))
    start = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=True if resume else None)
    metrics["train_seconds"] = time.perf_counter() - start
    metrics["train"] = {k: v for k, v in train_out.metrics.items() if isinstance(v, (int, float))}
    metrics["history"] = [h for h in trainer.state.log_history if "eval_log_loss" in h or "ce" in h]
    evals = [h for h in trainer.state.log_history if "eval_log_loss" in h]
    if evals:
        best = min(evals, key=lambda h: h["eval_log_loss"])
        metrics["best_eval_log_loss"] = best["eval_log_loss"]
        metrics["best_eval_accuracy"] = best.get("eval_accuracy")
        metrics["best_epoch"] = best.get("epoch")
    metrics["best_checkpoint"] = trainer.state.best_model_checkpoint
    metrics["wall_seconds"] = time.perf_counter() - started  # teacher pass, loading and training

    if state.is_main_process:
        _save_student(trainer.model, tok, student_dir, cfg, metrics, loaded.fingerprint, cache)
    state.wait_for_everyone()
    return DistillResult(student_dir=student_dir, metrics=metrics, cache_path=cache.path if cache else None, config=cfg)


def _training_table(rows, tokenizer, cfg: DistillConfig, cache) -> datasets.Dataset:
    """``input_ids``, ``labels`` (-1: a transfer row), ``length`` and (with a teacher) ``teacher_logits`` per row.

    With ``swap_augment`` the A/B-swapped copy of every row joins the table, its label and
    teacher distribution permuted to match (a↔b; tie stays): as rows of their own (``True``)
    or as ``*_swap`` columns of the same row (``"paired"``; the collator unpacks them).
    """
    table = encode(rows, tokenizer, cfg.template, desc="render train rows")
    if cache is not None:
        table = table.add_column("teacher_logits", cache.logits.tolist())
    keep = ["input_ids", "labels", "length"] + (["teacher_logits"] if cache is not None else [])
    table = table.rename_column("label", "labels")
    if not cfg.swap_augment:
        return table.select_columns(keep)
    swapped = encode(swap_ab(rows, id_suffix=":swap"), tokenizer, cfg.template, desc="render swapped rows")
    swapped = swapped.rename_column("label", "labels")
    if cache is not None:
        swapped = swapped.add_column("teacher_logits", cache.logits[:, list(SWAP_PERMUTATION)].tolist())
    if cfg.swap_augment == "paired":  # the swapped copy's columns beside the row's, joined in Arrow
        paired = [c for c in keep if c != "length"]
        return datasets.concatenate_datasets(
            [
                table.select_columns(keep),
                swapped.select_columns(paired).rename_columns({c: c + "_swap" for c in paired}),
            ],
            axis=1,
        )
    return datasets.concatenate_datasets([table.select_columns(keep), swapped.select_columns(keep)])


def _live_teacher(teacher, student_model, cfg: DistillConfig):
    """The frozen teacher that runs in every training step (hidden-state term or ``teacher_logits="live"``),
    and, for the hidden-state term, the student→teacher layer map recorded by ``kdq.shrink``."""
    from ..models import default_device, model_dtype_for

    info = getattr(student_model.config, SHRINK_KEY, None)
    if cfg.hidden_weight > 0 and (not info or "kept_layers" not in info):
        raise ValueError(
            "DistillConfig.hidden_weight > 0 needs a student made by kdq.shrink from this teacher "
            f"(its config.json has no {SHRINK_KEY} layer map). Shrink the teacher first, or set "
            "hidden_weight=0."
        )
    device = default_device()
    t = load_classifier(teacher, dtype=model_dtype_for(device), device=device).model
    if cfg.hidden_weight == 0:
        return t, None
    n_t, h_t = t.config.num_hidden_layers, t.config.hidden_size
    if n_t != info["source_layers"] or h_t != student_model.config.hidden_size:
        raise ValueError(
            f"hidden_weight > 0: the student was shrunk from a {info['source_layers']}-layer model, but "
            f"the teacher has {n_t} layers and hidden size {h_t} (student {student_model.config.hidden_size}). "
            "Distil from the model the student was shrunk from, or set hidden_weight=0."
        )
    return t, list(info["kept_layers"])


def _training_args(cfg: DistillConfig, out: Path, *, has_eval: bool):
    from .trainer import training_arguments

    return training_arguments(cfg, out / "checkpoints", has_eval=has_eval)


def _make_trainer(model, tokenizer, train_set, eval_set, cfg: DistillConfig, args, live_teacher=None):
    from .trainer import ArenaCollator, KDTrainer, compute_metrics

    if cfg.lora is not None:
        model = wrap_lora(model, cfg.lora)
    return KDTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=ArenaCollator(tokenizer.pad_token_id),
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        kd_config=cfg,
        teacher_model=live_teacher[0] if live_teacher else None,
        layer_map=live_teacher[1] if live_teacher else None,
    )


def _save_student(model, tokenizer, student_dir: Path, cfg: DistillConfig, metrics: dict, fingerprint: str, cache):
    model = merge_for_save(model)  # LoRA / QLoRA: ship one plain folder that stock transformers loads
    attach_template(model, cfg.template)
    with atomic_dir(student_dir, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        record = {
            FORMAT_KEY: DISTILL_RECORD_FORMAT,
            "config": cfg.to_dict(),
            "metrics": jsonable(metrics),
            "student_source": fingerprint,
            "teacher_cache": str(cache.path) if cache else None,
        }
        (tmp / "kdq-distill.json").write_text(json.dumps(record, indent=2, default=str))
    return student_dir
