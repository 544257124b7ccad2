"""``kdq.distill``: arena rows → cached teacher logits → trained student folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ..data import encode, load_arena, scheme_of_rows, swap_ab
from ..models import attach_template
from ..runtime.constants import DISTILL_RECORD_FILE, FORMAT_KEY, RUN_RECORD_FILE, swap_permutation
from ..utils.atomic import atomic_dir
from ..utils.distributed import is_main_process
from ..utils.jsonable import jsonable
from .config import DistillConfig
from .lora import load_student, merge_checked, wrap_lora
from .objective import projection_summary
from .planning import plan_training
from .teacher_pass import run_pass, scored_rows, transfer_rows
from .teachers import ModelTeacher, as_teacher

log = logging.getLogger("kdq.distill")
DISTILL_RECORD_FORMAT = 1  # kdq-distill.json's format version (under FORMAT_KEY), written by _save_student
MERGE_PROBE_ROWS = 8  # training rows the merged student is checked on against the trained adapters


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
        teacher: a folder, PEFT adapter folder, Hub id or model; a table of the teacher's class
            probabilities (CSV, parquet or DataFrame of ``id`` plus one column per class); a list of
            teachers or ``(teacher, weight)`` pairs, averaged in probability space; or a
            :class:`kdq.Teacher` (:mod:`kdq.distill.teachers`). ``None`` trains on hard labels only
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
    from transformers import set_seed

    from .trainer import RunRecordCallback, checkpoint_step, resume_point, run_record, write_record

    cfg = config or DistillConfig()
    teacher = as_teacher(teacher)
    if teacher is not None:
        teacher.check_terms(cfg)  # a table or an ensemble cannot run live: say so before anything loads
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    student_dir = out / "student"
    if student_dir.exists() and not (cfg.overwrite or cfg.resume):
        raise FileExistsError(
            f"{student_dir} already exists; set DistillConfig(overwrite=True) to replace it, "
            "resume=True to continue a run, or choose another output_dir."
        )
    # prints the training-memory projection, resolves gradient checkpointing, refuses what cannot fit
    live = teacher.model_source if teacher is not None and _needs_teacher_terms(cfg) else None
    cfg, memory = plan_training(student, cfg, teacher=live)
    # TrainingArguments sets up the (possibly distributed) process state; build it first so
    # the teacher pass below can synchronise processes through the same state.
    args = _training_args(cfg, out, has_eval=eval_data is not None)
    state = PartialState()
    train_rows = load_arena(train_data, require_labels=True)
    scheme = scheme_of_rows(train_rows)  # the rows' label scheme (LMSYS or WSDM) sets the classes
    if teacher is not None:
        teacher.check_scheme(scheme)
    eval_rows = load_arena(eval_data, require_labels=True, scheme=scheme) if eval_data is not None else None
    extra_rows = transfer_rows(transfer_data, train_rows, teacher) if transfer_data is not None else None
    for name in ("hidden_weight", "feature_weight"):
        if getattr(cfg, name) > 0 and teacher is None:
            raise ValueError(
                f"DistillConfig.{name} > 0 matches the teacher's hidden states and needs a teacher; "
                f"pass teacher=... or set {name}=0."
            )
    # what this run trains with; a checkpoint resumes only under the same (before the teacher pass: it may be long)
    data = {"train": train_rows, "eval": eval_rows, "transfer": extra_rows}
    record = run_record(
        cfg,
        teacher=teacher.fingerprint if teacher is not None else None,
        student=_init_fingerprint(student),
        data={name: rows_fingerprint(rows) for name, rows in data.items()},
    )
    resume_from = resume_point(out / "checkpoints", record) if cfg.resume else None
    metrics: dict = {
        "n_train": len(train_rows),
        "n_eval": len(eval_rows) if eval_rows is not None else 0,
        "n_transfer": len(extra_rows) if extra_rows is not None else 0,
        "train_memory": memory,
    }
    scored = scored_rows(train_rows, extra_rows)

    cache = None
    if teacher is not None:
        metrics["teacher"] = {"kind": teacher.kind, "fingerprint": teacher.fingerprint}
    if teacher is not None and cfg.teacher_logits == "cache":
        if isinstance(teacher, ModelTeacher):  # the pass's copy serves the live forward too: one load
            teacher.keep_loaded = _needs_live_teacher(teacher, cfg) and cfg.teacher_quantize == "none"
        # Every process scores its share of the missing rows and reads the merged cache; they wait on each
        # other's done-files, never at a collective, however long a share takes.
        cache = run_pass(teacher, scored, cfg, features=cfg.feature_weight > 0)
        metrics["teacher_pass"] = cache.summary()

    if state.is_main_process:
        if cfg.overwrite:  # a stale checkpoint must not be resumed later
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        write_record(out / RUN_RECORD_FILE, record)  # before training: every checkpoint gets a copy
    state.wait_for_everyone()
    # One seed fixes every random initialisation kdq causes: a new score head (load_student), LoRA
    # matrices (wrap_lora) and projections (build_objective) are all drawn after this, before the
    # Trainer seeds its own generators.
    set_seed(cfg.seed, deterministic=cfg.deterministic)
    loaded = load_student(student, cfg, tokenizer=tokenizer, scheme=scheme)  # dtype rule, QLoRA: kdq/distill/lora.py
    model, tok = loaded.model, loaded.tokenizer
    attach_template(model, cfg.template)
    train_set = _training_table(scored, tok, cfg, cache)
    eval_set = None
    if eval_rows is not None:
        eval_set = encode(eval_rows, tok, cfg.template, desc="render eval rows").rename_column("label", "labels")
        eval_set = eval_set.select_columns(["input_ids", "labels", "length"])
    teacher_model = _live_teacher(teacher, tok, cfg) if _needs_live_teacher(teacher, cfg) else None
    trainer = _make_trainer(model, tok, train_set, eval_set, cfg, args, teacher_model, cache)
    trainer.add_callback(RunRecordCallback(record))

    if resume_from is not None:
        log.info("resuming from %s (step %d)", resume_from, checkpoint_step(resume_from))
    start = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
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
    metrics["projections"] = projection_summary(trainer.model)
    metrics["wall_seconds"] = time.perf_counter() - started  # teacher pass, loading and training

    if state.is_main_process:  # the student alone: projections never leave training
        facts = {
            "metrics": metrics,
            "student_source": loaded.fingerprint,
            "teacher_cache": str(cache.path) if cache and cache.path else None,
            "run": record,
            "resumed_from": _resumed_from(resume_from),
        }
        probe = train_set.select(range(min(MERGE_PROBE_ROWS, len(train_set))))["input_ids"]
        _save_student(getattr(trainer.model, "student", trainer.model), tok, student_dir, cfg, facts, probe)
    state.wait_for_everyone()
    return DistillResult(student_dir=student_dir, metrics=metrics, cache_path=cache.path if cache else None, config=cfg)


def _training_table(rows, tokenizer, cfg: DistillConfig, cache) -> datasets.Dataset:
    """``input_ids``, ``labels`` (-1: a transfer row), ``length`` and, with a cache, ``teacher_logits``
    (and ``teacher_features``) per row, joined in Arrow (no per-row Python lists).

    With ``swap_augment`` the A/B-swapped copy of every row joins the table, its label and
    teacher distribution permuted to match (a↔b; tie stays) and its features the swapped row's:
    as rows of their own (``True``) or as ``*_swap`` columns of the same row (``"paired"``; the
    collator unpacks them).
    """
    keep = ["input_ids", "labels", "length"]
    table = encode(rows, tokenizer, cfg.template, desc="render train rows").rename_column("label", "labels")
    table = _with_teacher(table.select_columns(keep), cache, swapped=False)
    if not cfg.swap_augment:
        return table
    swapped = encode(swap_ab(rows, id_suffix=":swap"), tokenizer, cfg.template, desc="render swapped rows")
    swapped = _with_teacher(swapped.rename_column("label", "labels").select_columns(keep), cache, swapped=True)
    if cfg.swap_augment == "paired":  # the swapped copy's columns beside the row's, joined in Arrow
        paired = [c for c in swapped.column_names if c != "length"]
        return datasets.concatenate_datasets(
            [table, swapped.select_columns(paired).rename_columns({c: c + "_swap" for c in paired})], axis=1
        )
    return datasets.concatenate_datasets([table, swapped])


def _with_teacher(table: datasets.Dataset, cache, *, swapped: bool) -> datasets.Dataset:
    """``table`` with the cache's columns for its rows (or for their A/B-swapped copies) joined beside it."""
    if cache is None:
        return table
    names = {"logits": "teacher_logits"}
    if cache.has_features:
        names["features_swap" if swapped else "features"] = "teacher_features"
    teacher = cache.table.select_columns(list(names)).rename_columns(names)
    if swapped:
        perm = list(swap_permutation(cache.table.features["logits"].length))  # the scheme's swap
        teacher = teacher.with_format("numpy").map(
            lambda b: {"teacher_logits": b["teacher_logits"][:, perm]}, batched=True, desc="swap teacher targets"
        )
        teacher = teacher.with_format(None)
    return datasets.concatenate_datasets([table, teacher], axis=1)


def _needs_teacher_terms(cfg: DistillConfig) -> bool:
    """Whether a term reads the teacher beyond cached logits (what the memory plan must count)."""
    return cfg.hidden_weight > 0 or cfg.feature_weight > 0 or cfg.teacher_logits == "live"


def _needs_live_teacher(teacher, cfg: DistillConfig) -> bool:
    """A teacher forward in every step: the hidden-state term, live logits, or live features."""
    return teacher is not None and (
        cfg.hidden_weight > 0
        or cfg.teacher_logits == "live"
        or (cfg.feature_weight > 0 and cfg.teacher_logits == "live")
    )


def _live_teacher(teacher, student_tokenizer, cfg: DistillConfig):
    """The frozen teacher that runs in every training step, after checking it reads the student's token ids
    (the copy the teacher pass loaded, when it kept one: :meth:`ModelTeacher.live`)."""
    from ..utils.distributed import training_device
    from .teachers import check_same_tokenizer

    loaded = teacher.live(cfg, training_device())
    why = "DistillConfig.hidden_weight > 0" if cfg.hidden_weight > 0 else "a live teacher (teacher_logits='live')"
    check_same_tokenizer(student_tokenizer, loaded.tokenizer, why)
    return loaded.model


def _training_args(cfg: DistillConfig, out: Path, *, has_eval: bool):
    from .trainer import training_arguments

    return training_arguments(cfg, out / "checkpoints", has_eval=has_eval)


def _make_trainer(model, tokenizer, train_set, eval_set, cfg: DistillConfig, args, teacher_model=None, cache=None):
    from .objective import build_objective
    from .trainer import ArenaCollator, KDTrainer, compute_metrics

    if cfg.lora is not None:
        model = wrap_lora(model, cfg.lora)
    width = cache.feature_width if cache is not None and cache.has_features else None
    say = print if is_main_process() else (lambda *_: None)
    objective, model = build_objective(cfg, model, teacher_model=teacher_model, teacher_width=width, log=say)
    return KDTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=ArenaCollator(tokenizer.pad_token_id),
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        objective=objective,
    )


def _save_student(model, tokenizer, student_dir: Path, cfg: DistillConfig, facts: dict, probe: list) -> Path:
    """Merge (LoRA / QLoRA: one plain folder that stock transformers loads; checked on ``probe``, token id lists)
    and save the student with ``kdq-distill.json``: ``facts`` (metrics, sources, run record, resumption) and
    the merge check."""
    model, merge = merge_checked(model, cfg.lora, probe, tokenizer.pad_token_id)
    attach_template(model, cfg.template)
    with atomic_dir(student_dir, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        record = {
            FORMAT_KEY: DISTILL_RECORD_FORMAT,
            "config": cfg.to_dict(),
            **jsonable(facts),
            "merge": merge,
        }
        (tmp / DISTILL_RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    return student_dir


def _resumed_from(checkpoint: Path | None) -> dict | None:
    """``kdq-distill.json``'s ``resumed_from``: the checkpoint a resumed run continued and its step."""
    from .trainer import checkpoint_step

    if checkpoint is None:
        return None
    return {"checkpoint": checkpoint.name, "step": checkpoint_step(checkpoint)}


def _init_fingerprint(student) -> str:
    """The identity of what the student starts from, without loading it: a folder's or Hub id's
    (:func:`kdq.models.source_fingerprint`), or a hash of an in-memory model's weights."""
    from ..models import fingerprint_module, source_fingerprint

    if isinstance(student, (str, os.PathLike)):
        return source_fingerprint(student)
    return fingerprint_module(student)


def rows_fingerprint(rows) -> str | None:
    """Identity of a set of canonical arena rows: a hash of every column of every row, in order
    (``None`` for ``None``). Any change of text, label or order changes it."""
    if rows is None:
        return None
    h = hashlib.sha256()
    for batch in rows.with_format("arrow").iter(batch_size=4096):
        h.update(json.dumps(batch.to_pydict(), sort_keys=True, ensure_ascii=False, default=str).encode())
    return "rows:" + h.hexdigest()[:16]
