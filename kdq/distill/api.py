"""``kdq.distill``: arena rows → cached teacher logits → trained student folder."""
from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch

from .._json import jsonable
from ..atomic import atomic_dir
from ..batching import SWAP_PERMUTATION
from ..data import encode, load_arena, swap_ab
from ..models import attach_template, load_classifier
from .config import DistillConfig

log = logging.getLogger("kdq.distill")


@dataclass
class DistillResult:
    """What a distillation run produced."""

    student_dir: Path
    metrics: dict = field(default_factory=dict)
    cache_path: Path | None = None
    config: DistillConfig | None = None

    def to_dict(self) -> dict:
        return {"student_dir": str(self.student_dir), "metrics": self.metrics,
                "cache_path": str(self.cache_path) if self.cache_path else None,
                "config": self.config.to_dict() if self.config else None}


def distill(student, train_data, eval_data=None, teacher=None, config: DistillConfig | None = None, *,
            tokenizer=None) -> DistillResult:
    """Train ``student`` on arena rows, distilling from ``teacher`` when given.

    Args:
        student: folder (full model or PEFT adapter) or ``PreTrainedModel`` to start from.
        train_data, eval_data: anything :func:`kdq.data.load_arena` reads (CSV, parquet,
            DataFrame, ``datasets.Dataset``). ``eval_data`` drives best-checkpoint selection.
        teacher: folder, PEFT adapter folder or model; ``None`` trains on hard labels only
            (the no-distillation baseline, and the way to fine-tune a teacher).
        config: :class:`DistillConfig`.
        tokenizer: needed only when ``student`` is an object saved without one.
    Returns:
        :class:`DistillResult`; ``student_dir`` is ``<output_dir>/student``, a full model
        folder (LoRA merged) that stock ``AutoModelForSequenceClassification`` loads.
    """
    from accelerate import PartialState

    cfg = config or DistillConfig()
    out = Path(cfg.output_dir)
    student_dir = out / "student"
    if student_dir.exists() and not (cfg.overwrite or cfg.resume):
        raise FileExistsError(f"{student_dir} already exists; set DistillConfig(overwrite=True) to replace it, "
                              "resume=True to continue a run, or choose another output_dir.")
    # TrainingArguments sets up the (possibly distributed) process state; build it first so
    # the teacher pass below can synchronise processes through the same state.
    args = _training_args(cfg, out, has_eval=eval_data is not None)
    state = PartialState()
    train_rows = load_arena(train_data, require_labels=True)
    eval_rows = load_arena(eval_data, require_labels=True) if eval_data is not None else None
    metrics: dict = {"n_train": len(train_rows), "n_eval": len(eval_rows) if eval_rows is not None else 0}

    cache = None
    if teacher is not None:
        # One process scores the teacher; the others wait and then read the same cache.
        with state.main_process_first():
            cache = _teacher_pass(teacher, train_rows, cfg)
        metrics["teacher_pass"] = {"reused": cache.reused, "computed": cache.computed, **cache.stats}

    if cfg.overwrite and state.is_main_process:  # a stale checkpoint must not be resumed later
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    state.wait_for_everyone()
    loaded = load_classifier(student, tokenizer=tokenizer, dtype=torch.float32)
    # fp32 master weights (AMP casts per op); dtype= only reaches folders, so cast objects too
    model, tok = loaded.model.float(), loaded.tokenizer
    attach_template(model, cfg.template)
    train_set = _training_table(train_rows, tok, cfg, cache)
    eval_set = None
    if eval_rows is not None:
        eval_set = encode(eval_rows, tok, cfg.template, desc="render eval rows").rename_column("label", "labels")
        eval_set = eval_set.select_columns(["input_ids", "labels", "length"])
    trainer = _make_trainer(model, tok, train_set, eval_set, cfg, args)

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

    if state.is_main_process:
        _save_student(trainer.model, tok, student_dir, cfg, metrics, loaded.fingerprint, cache)
    state.wait_for_everyone()
    return DistillResult(student_dir=student_dir, metrics=metrics, cache_path=cache.path if cache else None, config=cfg)


def _teacher_pass(teacher, rows, cfg: DistillConfig):
    """Teacher logits for ``rows`` from the shared cache (``cfg.cache_dir``, default the user cache),
    scoring only the rows it lacks; the teacher is freed afterwards. ``kdq cache-teacher`` calls this too."""
    from ..cachedir import default_cache_dir
    from ..models import LazyClassifier, default_device, model_dtype_for
    from .cache import cache_teacher_logits

    device = default_device()
    load = dict(dtype=model_dtype_for(device), device=device)
    t = LazyClassifier(teacher, **load) if isinstance(teacher, (str, Path)) else load_classifier(teacher, **load)
    try:
        cache = cache_teacher_logits(t, rows, cache_dir=cfg.cache_dir or default_cache_dir(),
                                     template=cfg.template, tta=cfg.teacher_tta, batch_size=cfg.teacher_batch_size,
                                     device=device)
        if cache.reused:
            log.warning("teacher cache: reused %d of %d rows from %s (same teacher, template and TTA); scored %d.",
                        cache.reused, cache.reused + cache.computed, cache.path, cache.computed)
        return cache
    finally:  # free the teacher before the student trains: on a T4 both rarely fit
        del t
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _training_table(rows, tokenizer, cfg: DistillConfig, cache) -> datasets.Dataset:
    """``input_ids``, ``labels``, ``length`` and (with a teacher) ``teacher_logits`` per row.

    With ``swap_augment`` the A/B-swapped copy of every row joins the table, its label and
    teacher distribution permuted to match (a↔b; tie stays).
    """
    table = encode(rows, tokenizer, cfg.template, desc="render train rows")
    parts = [table]
    if cfg.swap_augment:
        parts.append(encode(swap_ab(rows, id_suffix=":swap"), tokenizer, cfg.template, desc="render swapped rows"))
    if cache is not None:
        t = cache.logits
        parts[0] = parts[0].add_column("teacher_logits", t.tolist())
        if cfg.swap_augment:
            parts[1] = parts[1].add_column("teacher_logits", t[:, list(SWAP_PERMUTATION)].tolist())
    table = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    keep = ["input_ids", "labels", "length"] + (["teacher_logits"] if cache is not None else [])
    return table.rename_column("label", "labels").select_columns(keep)


def _training_args(cfg: DistillConfig, out: Path, *, has_eval: bool):
    from .trainer import training_arguments

    return training_arguments(cfg, out / "checkpoints", has_eval=has_eval)


def _make_trainer(model, tokenizer, train_set, eval_set, cfg: DistillConfig, args):
    from .trainer import ArenaCollator, KDTrainer, compute_metrics

    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        # task_type SEQ_CLS puts the classification head in modules_to_save: it trains in full.
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout,
                                                 target_modules=list(cfg.lora.target_modules)))
    return KDTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                     data_collator=ArenaCollator(tokenizer.pad_token_id), compute_metrics=compute_metrics,
                     processing_class=tokenizer, kd_config=cfg)


def _save_student(model, tokenizer, student_dir: Path, cfg: DistillConfig, metrics: dict, fingerprint: str, cache):
    if hasattr(model, "merge_and_unload"):  # LoRA: ship one plain folder that stock transformers loads
        model = model.merge_and_unload()
    attach_template(model, cfg.template)
    with atomic_dir(student_dir, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        record = {"config": cfg.to_dict(), "metrics": jsonable(metrics), "student_source": fingerprint,
                  "teacher_cache": str(cache.path) if cache else None}
        (tmp / "kdq-distill.json").write_text(json.dumps(record, indent=2, default=str))
    return student_dir
