"""The teacher pass: score the rows a student trains on with the teacher, through the shared cache.

:func:`kdq.distill` runs it first; ``kdq cache-teacher`` and :func:`kdq.pipeline.run_pipeline`
(before any process group exists) run it alone. Only the rows the cache lacks are scored, and
the teacher is freed afterwards.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import datasets
import torch

from ..data import core_columns, load_arena, scheme_of_rows
from .config import DistillConfig

log = logging.getLogger("kdq.distill")


def teacher_pass(teacher, rows, config: DistillConfig, *, transfer=None, features: bool = False):
    """Teacher logits for ``rows`` (then ``transfer`` rows, if any) from the shared cache.

    Args:
        teacher: folder, PEFT adapter folder or model.
        rows: the training rows (anything :func:`kdq.data.load_arena` reads; labels not needed).
        config: the :class:`DistillConfig` of the run that will read the cache (template,
            ``teacher_tta``, ``teacher_batch_size``, ``cache_dir``).
        transfer: optional transfer rows (see :func:`transfer_rows`).
        features: also cache the teacher's pooled final hidden state (the feature term's target).
    Returns:
        :class:`kdq.distill.cache.TeacherCache` over ``rows`` then ``transfer``, in order.
    """
    rows = load_arena(rows, unlabelled=True)  # the teacher reads text only: labels, if any, are dropped
    extra = transfer_rows(transfer, rows, teacher) if transfer is not None else None
    return _score(teacher, scored_rows(rows, extra), config, features)


def _score(teacher, rows, cfg: DistillConfig, features: bool):
    from ..models import LazyClassifier, default_device, load_classifier, model_dtype_for
    from ..utils.cachedir import default_cache_dir
    from .cache import cache_teacher_logits

    device = default_device()
    load = dict(dtype=model_dtype_for(device), device=device)
    t = LazyClassifier(teacher, **load) if isinstance(teacher, (str, Path)) else load_classifier(teacher, **load)
    try:
        cache = cache_teacher_logits(
            t,
            rows,
            cache_dir=cfg.cache_dir or default_cache_dir(),
            template=cfg.template,
            tta=cfg.teacher_tta,
            features=features,
            batch_size=cfg.teacher_batch_size,
            device=device,
        )
        if cache.reused:
            log.warning(
                "teacher cache: reused %d of %d rows from %s (same teacher, template and TTA); scored %d.",
                cache.reused,
                cache.reused + cache.computed,
                cache.path,
                cache.computed,
            )
        return cache
    finally:  # free the teacher before the student trains: on a T4 both rarely fit
        del t
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def transfer_rows(transfer_data, train_rows, teacher) -> datasets.Dataset:
    """Unlabelled transfer rows (label -1), checked against the training rows' ids.

    Transfer rows are unlabelled by role: their winner columns, blank, soft or partial, are dropped
    before validation (:func:`kdq.data.load_arena` ``unlabelled=True``) and never reach the CE term.
    """
    import pyarrow.compute as pc

    if teacher is None:
        raise ValueError(
            "transfer_data needs a teacher: transfer rows have no labels, only the teacher's logits "
            "teach from them. Pass teacher=... or drop transfer_data."
        )
    # the training rows' layout (19.5), labels dropped
    rows = load_arena(transfer_data, scheme=scheme_of_rows(train_rows), unlabelled=True)
    ids = _ids(rows)
    shared = pc.is_in(ids, value_set=_ids(train_rows))
    if pc.any(shared).as_py():
        clash = ids[pc.index(shared, True).as_py()].as_py()
        raise ValueError(
            f"transfer_data: id {clash!r} is also a training row id; transfer rows are extra unlabelled "
            "pairs, and a shared id makes the training table ambiguous. Drop training rows from the "
            "transfer set, or give transfer rows their own ids (e.g. prefix them with 'transfer-')."
        )
    return rows


def _ids(rows: datasets.Dataset):
    """The rows' ``id`` column as one Arrow array (no Python list)."""
    return rows.select_columns(["id"]).with_format("arrow")[:]["id"].combine_chunks()


def scored_rows(train_rows: datasets.Dataset, transfer_rows) -> datasets.Dataset:
    """The rows the teacher scores and the student trains on: the training rows, then the transfer rows."""
    if transfer_rows is None:
        return train_rows
    return datasets.concatenate_datasets([core_columns(train_rows), core_columns(transfer_rows)])  # 19.5: language
