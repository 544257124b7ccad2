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

from ..data import (
    check_overlap,
    encode,
    group_keys,
    load_arena,
    recorded_group_keys,
    scheme_of_rows,
    swap_ab,
    write_group_keys,
)
from ..models import attach_template
from ..runtime.constants import (
    DISTILL_RECORD_FILE,
    FORMAT_KEY,
    RUN_RECORD_FILE,
    TRAIN_GROUPS_FILE,
    swap_permutation,
)
from ..utils.atomic import atomic_dir, atomic_write_json
from ..utils.distributed import is_main_process
from ..utils.jsonable import jsonable
from .config import DistillConfig
from .lora import load_student, merge_checked, wrap_lora
from .needs import TeacherNeeds, teacher_needs
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
    Raises:
        FileExistsError: ``<output_dir>/student`` exists without ``overwrite`` or ``resume``.
        ImportError: ``training.report_to`` names a logger that is not installed (before anything runs).
        ValueError: a setting the teacher cannot serve, rows that do not validate, a resumption under other
            inputs (each named, with the fix).
    """
    from accelerate import PartialState

    from .trainer import check_reporter, run_record

    cfg = config or DistillConfig()
    check_reporter(cfg.training.report_to)
    teacher = as_teacher(teacher)
    needs = teacher_needs(cfg, teacher is not None)  # the one rule: live, hidden states, cache, features
    if teacher is not None:
        teacher.check_terms(needs)  # a table or an ensemble cannot run live: say so before anything loads
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    _check_output(cfg, out / "student")
    # prints the training-memory projection, resolves gradient checkpointing, refuses what cannot fit
    cfg, memory = plan_training(student, cfg, teacher=teacher.model_source if needs.reads_model else None)
    # TrainingArguments sets up the (possibly distributed) process state; build it first so
    # the teacher pass below can synchronise processes through the same state.
    args = _training_args(cfg, out, has_eval=eval_data is not None)
    state = PartialState()
    rows = _load_rows(train_data, eval_data, transfer_data, teacher)
    # what this run trains with; a checkpoint resumes only under the same (before the teacher pass: it may be long)
    record = run_record(
        cfg,
        teacher=teacher.fingerprint if teacher is not None else None,
        student=_init_fingerprint(student),
        data=rows.fingerprints(),
    )
    resume_from = _resume_from(cfg, out, record)
    metrics = {**rows.counts(), "train_memory": memory}
    trained = _trained_on(rows, student, teacher)  # saved with the student for kdq.evaluate's overlap check
    if rows.eval is not None:  # a leak warns (or refuses, strict_overlap) before the teacher pass
        metrics["overlap"] = check_overlap(trained, rows.eval, strict=cfg.strict_overlap, what="eval rows").to_dict()
    if teacher is not None:
        metrics["teacher"] = {"kind": teacher.kind, "fingerprint": teacher.fingerprint}
    cache = _teacher_targets(teacher, rows.scored, cfg, needs)
    if cache is not None:
        metrics["teacher_pass"] = cache.summary()
    _start_run_folder(state, cfg, out, record)
    run = _build_run(
        student, rows, cfg, needs=needs, teacher=teacher, cache=cache, args=args, record=record, tokenizer=tokenizer
    )
    metrics.update(_train(run.trainer, resume_from))
    metrics["wall_seconds"] = time.perf_counter() - started  # teacher pass, loading and training
    cache_path = cache.path if cache is not None else None
    if state.is_main_process:
        facts = {"metrics": metrics, "student_source": run.student_fingerprint, "teacher_cache": cache_path}
        facts.update(run=record, resumed_from=_resumed_from(resume_from))
        _save_student(run, out / "student", cfg, facts, trained)
    state.wait_for_everyone()
    return DistillResult(student_dir=out / "student", metrics=metrics, cache_path=cache_path, config=cfg)


# --------------------------------------------------------------------------- the steps of a run
@dataclass(frozen=True)
class _Rows:
    """A run's canonical rows: ``train`` (labelled), ``eval`` and ``transfer`` (``None`` when not given), the
    label ``scheme`` of the training rows, and ``scored``: the training then the transfer rows (what the
    teacher scores and the student trains on)."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    transfer: datasets.Dataset | None
    scheme: object
    scored: datasets.Dataset

    def fingerprints(self) -> dict:
        return {name: rows_fingerprint(getattr(self, name)) for name in ("train", "eval", "transfer")}

    def counts(self) -> dict:
        return {f"n_{name}": len(getattr(self, name) or ()) for name in ("train", "eval", "transfer")}


@dataclass
class _Run:
    """What :func:`distill` trains and then saves: the trainer, the student's tokenizer and source fingerprint,
    and the training table (its first rows probe the LoRA merge)."""

    trainer: object
    tokenizer: object
    student_fingerprint: str
    train_set: datasets.Dataset


def _check_output(cfg: DistillConfig, student_dir: Path) -> None:
    if student_dir.exists() and not (cfg.overwrite or cfg.resume):
        raise FileExistsError(
            f"{student_dir} already exists; set DistillConfig(overwrite=True) to replace it, "
            "resume=True to continue a run, or choose another output_dir."
        )


def _load_rows(train_data, eval_data, transfer_data, teacher) -> _Rows:
    """The rows, validated: training rows with labels; eval and transfer rows in their layout; a teacher that
    speaks the rows' label scheme (LMSYS or WSDM: it sets the classes)."""
    train = load_arena(train_data, require_labels=True)
    scheme = scheme_of_rows(train)
    if teacher is not None:
        teacher.check_scheme(scheme)
    eval_rows = load_arena(eval_data, require_labels=True, scheme=scheme) if eval_data is not None else None
    extra = transfer_rows(transfer_data, train, teacher) if transfer_data is not None else None
    return _Rows(train=train, eval=eval_rows, transfer=extra, scheme=scheme, scored=scored_rows(train, extra))


def _trained_on(rows: _Rows, student, teacher):
    """The keys (:class:`kdq.data.GroupKeys`) of every row the student learns from: the training and transfer
    rows, and those its initial weights (a distilled or shrunk folder) and a teacher folder record having seen."""
    keys = group_keys(rows.scored)
    folder = teacher.source if isinstance(teacher, ModelTeacher) and teacher.is_path else None  # never loads it
    inherited = recorded_group_keys(student, folder)
    return keys if inherited is None else keys.union(inherited)


def _resume_from(cfg: DistillConfig, out: Path, record: dict) -> Path | None:
    from .trainer import resume_point

    return resume_point(out / "checkpoints", record) if cfg.resume else None


def _teacher_targets(teacher, rows, cfg: DistillConfig, needs: TeacherNeeds):
    """The teacher pass over ``rows`` (a :class:`~kdq.distill.cache.TeacherCache`), or ``None`` when the run
    caches nothing (no teacher, or live logits). Every process scores its share of the missing rows and reads
    the merged cache; they wait on each other's done-files, never at a collective, however long a share takes."""
    if not needs.cached_logits:
        return None
    if isinstance(teacher, ModelTeacher):  # the pass's copy serves the live forward too: one load
        teacher.keep_loaded = needs.live and cfg.teacher_pass.quantize == "none"
    return run_pass(teacher, rows, cfg.teacher_pass, cfg.template, features=needs.cached_features)


def _start_run_folder(state, cfg: DistillConfig, out: Path, record: dict) -> None:
    """On the main process: drop stale checkpoints of an overwritten run (they must not be resumed later) and
    write the run record (before training: every checkpoint gets a copy); then every process goes on."""

    if state.is_main_process:
        if cfg.overwrite:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        atomic_write_json(out / RUN_RECORD_FILE, record)
    state.wait_for_everyone()


def _build_run(student, rows: _Rows, cfg: DistillConfig, *, needs, teacher, cache, args, record, tokenizer) -> _Run:
    """Seed, load the student (dtype rule, QLoRA: :mod:`kdq.distill.lora`), render the tables, bring the live
    teacher and build the trainer.

    One seed fixes every random initialisation kdq causes: a new score head (load_student), LoRA matrices
    (wrap_lora) and projections (build_objective) are all drawn after it, before the Trainer seeds its own
    generators.
    """
    from transformers import set_seed

    from .trainer import RunRecordCallback

    set_seed(cfg.training.seed, deterministic=cfg.training.deterministic)
    loaded = load_student(student, cfg.lora, tokenizer=tokenizer, scheme=rows.scheme)
    model, tok = loaded.model, loaded.tokenizer
    attach_template(model, cfg.template)
    train_set = _training_table(rows.scored, tok, cfg.template, cfg.training.swap_augment, cache)
    eval_set = _eval_table(rows.eval, tok, cfg.template)
    teacher_model = _live_teacher(teacher, tok, cfg, needs) if needs.live else None
    trainer = _make_trainer(
        model, tok, (train_set, eval_set), cfg, needs=needs, args=args, teacher_model=teacher_model, cache=cache
    )
    trainer.add_callback(RunRecordCallback(record))
    return _Run(trainer=trainer, tokenizer=tok, student_fingerprint=loaded.fingerprint, train_set=train_set)


def _train(trainer, resume_from: Path | None) -> dict:
    """Train (from ``resume_from`` when given); the metrics of the run: time, Trainer's figures, the loss
    history, the best eval epoch and checkpoint, the projections' identity."""
    from .trainer import checkpoint_step

    if resume_from is not None:
        log.info("resuming from %s (step %d)", resume_from, checkpoint_step(resume_from))
    start = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    metrics: dict = {"train_seconds": time.perf_counter() - start}
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
    return metrics


def _training_table(rows, tokenizer, template, swap_augment, cache) -> datasets.Dataset:
    """``input_ids``, ``labels`` (-1: a transfer row), ``length`` and, with a cache, ``teacher_logits``
    (and ``teacher_features``) per row, joined in Arrow (no per-row Python lists).

    With ``swap_augment`` (``TrainingSettings.swap_augment``) the A/B-swapped copy of every row joins the
    table, its label and teacher distribution permuted to match (a↔b; tie stays) and its features the
    swapped row's: as rows of their own (``True``) or as ``*_swap`` columns of the same row (``"paired"``;
    the collator unpacks them).
    """
    keep = ["input_ids", "labels", "length"]
    table = encode(rows, tokenizer, template, desc="render train rows").rename_column("label", "labels")
    table = _with_teacher(table.select_columns(keep), cache, swapped=False)
    if not swap_augment:
        return table
    swapped = encode(swap_ab(rows, id_suffix=":swap"), tokenizer, template, desc="render swapped rows")
    swapped = _with_teacher(swapped.rename_column("label", "labels").select_columns(keep), cache, swapped=True)
    if swap_augment == "paired":  # the swapped copy's columns beside the row's, joined in Arrow
        paired = [c for c in swapped.column_names if c != "length"]
        return datasets.concatenate_datasets(
            [table, swapped.select_columns(paired).rename_columns({c: c + "_swap" for c in paired})], axis=1
        )
    return datasets.concatenate_datasets([table, swapped])


def _eval_table(rows, tokenizer, template) -> datasets.Dataset | None:
    """``input_ids``, ``labels`` and ``length`` of the eval rows (``None`` without them)."""
    if rows is None:
        return None
    table = encode(rows, tokenizer, template, desc="render eval rows").rename_column("label", "labels")
    return table.select_columns(["input_ids", "labels", "length"])


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


def _live_teacher(teacher, student_tokenizer, cfg: DistillConfig, needs: TeacherNeeds):
    """The frozen teacher that runs in every training step, after checking it reads the student's token ids
    (the copy the teacher pass loaded, when it kept one: :meth:`ModelTeacher.live`)."""
    from ..utils.distributed import training_device
    from .teachers import check_same_tokenizer

    loaded = teacher.live(cfg.teacher_pass.quantize, training_device())
    check_same_tokenizer(student_tokenizer, loaded.tokenizer, " and ".join(needs.terms) or "a live teacher")
    return loaded.model


def _training_args(cfg: DistillConfig, out: Path, *, has_eval: bool):
    from .trainer import training_arguments

    return training_arguments(cfg.training, out / "checkpoints", has_eval=has_eval)


def _make_trainer(model, tokenizer, tables: tuple, cfg: DistillConfig, *, needs, args, teacher_model, cache):
    """The :class:`~kdq.distill.trainer.KDTrainer` over ``tables`` (``(train, eval or None)``): the student
    (LoRA-wrapped when asked), its objective (:func:`~kdq.distill.objective.build_objective`) and the live
    teacher, if any."""
    from .objective import build_objective
    from .trainer import ArenaCollator, KDTrainer, compute_metrics

    if cfg.lora is not None:
        model = wrap_lora(model, cfg.lora)
    width = cache.feature_width if cache is not None and cache.has_features else None
    say = print if is_main_process() else (lambda *_: None)
    objective, model = build_objective(
        cfg.loss,
        needs,
        model,
        teacher_model=teacher_model,
        teacher_width=width,
        seed=cfg.training.seed,
        log=say,
    )
    return KDTrainer(
        model=model,
        args=args,
        train_dataset=tables[0],
        eval_dataset=tables[1],
        data_collator=ArenaCollator(tokenizer.pad_token_id),
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        objective=objective,
    )


def _save_student(run: _Run, student_dir: Path, cfg: DistillConfig, facts: dict, trained) -> Path:
    """Merge (LoRA / QLoRA: one plain folder that stock transformers loads; checked on the first
    :data:`MERGE_PROBE_ROWS` training rows) and save the student alone (projections never leave training) with
    ``kdq-distill.json``: ``facts`` (metrics, sources, run record, resumption) and the merge check; and
    ``kdq-train-groups.json``: ``trained``, the keys of the rows it learnt from (:class:`kdq.data.GroupKeys`),
    which :func:`kdq.evaluate` checks held-out rows against."""
    probe = run.train_set.select(range(min(MERGE_PROBE_ROWS, len(run.train_set))))["input_ids"]
    model = getattr(run.trainer.model, "student", run.trainer.model)
    model, merge = merge_checked(model, cfg.lora, probe, run.tokenizer.pad_token_id)
    attach_template(model, cfg.template)
    with atomic_dir(student_dir, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        run.tokenizer.save_pretrained(str(tmp))
        record = {
            FORMAT_KEY: DISTILL_RECORD_FORMAT,
            "config": cfg.to_dict(),
            **jsonable(facts),
            "merge": merge,
        }
        (tmp / DISTILL_RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
        write_group_keys(tmp / TRAIN_GROUPS_FILE, trained)
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
