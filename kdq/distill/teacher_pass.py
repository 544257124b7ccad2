"""The teacher pass: score the rows a student trains on with the teacher, through the shared cache.

:func:`kdq.distill` runs it first; ``kdq cache-teacher`` and :func:`kdq.pipeline.run_pipeline`
(before any process group exists) run it alone. Only the rows the cache lacks are scored, and
the teacher is freed afterwards (unless it also runs live). Under ``accelerate launch`` / ``torchrun``
every process scores its share and reads the merged cache; in one process with several GPUs each
shard's rows are split over them (:mod:`kdq.distill.cache`). Before scoring, the main process prints
how long the pass should take on the devices found (an estimate from the teacher's shape, labelled so),
and while it runs, rows/s and the ETA of the whole pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import datasets

from ..data import core_columns, load_arena, scheme_of_rows
from ..runtime.constants import DEFAULT_BUDGET_NAME, GPU_CHECK_FILE
from ..runtime.template import TemplateConfig
from .config import TeacherPassSettings

log = logging.getLogger("kdq.distill")


def teacher_pass(
    teacher,
    rows,
    settings: TeacherPassSettings | None = None,
    *,
    template: TemplateConfig | None = None,
    transfer=None,
    features: bool = False,
    devices=None,
):
    """Teacher outputs for ``rows`` (then ``transfer`` rows, if any) from the shared cache.

    Args:
        teacher: anything :func:`kdq.distill.teachers.as_teacher` takes: a folder, PEFT adapter folder, Hub
            id or model; a table of class probabilities (CSV, parquet, DataFrame); a list of teachers or
            ``(teacher, weight)`` pairs (an ensemble); or a :class:`~kdq.distill.teachers.Teacher`.
        rows: the training rows (anything :func:`kdq.data.load_arena` reads; labels, if any, are dropped).
        settings: the :class:`~kdq.distill.config.TeacherPassSettings` of the run that will read the cache
            (``DistillConfig.teacher_pass``: TTA, batch size, cache folder, budget, GPU check); default:
            its defaults.
        template: how rows become tokens, the run's ``DistillConfig.template`` (part of the cache key);
            default: ``TemplateConfig()``.
        transfer: optional transfer rows (see :func:`transfer_rows`).
        features: also cache the teacher's pooled final hidden state (the feature term's target:
            :attr:`TeacherNeeds.cached_features <kdq.distill.needs.TeacherNeeds.cached_features>`).
        devices: where this process scores (default: its own GPU under a launcher, else every GPU, else the CPU).
    Returns:
        :class:`kdq.distill.cache.TeacherCache` over ``rows`` then ``transfer``, in order.
    """
    from .teachers import as_teacher

    t = as_teacher(teacher)
    if t is None:
        raise ValueError("teacher_pass needs a teacher: a model folder, a table of probabilities or a list of them.")
    rows = load_arena(rows, unlabelled=True)  # the teacher reads text only: labels, if any, are dropped
    extra = transfer_rows(transfer, rows, t) if transfer is not None else None
    scored = scored_rows(rows, extra)
    t.check_scheme(scheme_of_rows(scored))
    settings = settings or TeacherPassSettings()
    return run_pass(t, scored, settings, template or TemplateConfig(), features=features, devices=devices)


def run_pass(teacher, rows, settings: TeacherPassSettings, template: TemplateConfig, *, features=False, devices=None):
    """:meth:`Teacher.targets <kdq.distill.teachers.Teacher.targets>` over canonical rows, printing the
    projection of each model teacher's pass first."""
    from .teachers import pass_devices

    devices = list(devices) if devices else pass_devices()

    def announce(member, lengths):  # called by each model teacher's pass, on the main process, before it scores
        print(projection(member, lengths, settings, devices), flush=True)

    return teacher.targets(rows, settings, template, features=features, devices=devices, announce=announce)


# --------------------------------------------------------------------------- the projection
def projection(teacher, lengths, settings: TeacherPassSettings, devices) -> str:
    """One line: the rows the pass will score and how long that should take on ``devices``.

    On CUDA GPUs: the FLOPs of the teacher's shape over the rows' length-sorted padded batches at the GPU's
    peak (``kdq/budgets/_gpu_peaks.json``) times the budget profile's compute efficiency, or the efficiency
    ``bench/gpu_check.py`` measured (``settings.gpu_check``, else ``<kdq cache>/gpu_check.json`` when it
    exists), split over every GPU of every process. On CPU there is no CPU model: the line gives the same
    estimate for the budget profile's GPUs (``settings.budget``), and says so; the pass's own rows/s and
    ETA follow once it runs. Every figure is labelled an estimate.
    """
    import numpy as np
    import torch

    from ..utils.distributed import world_size

    lengths = np.asarray(lengths, dtype=np.int64)
    tta = settings.tta
    head = (
        f"kdq: teacher pass: {len(lengths)} rows to score ({int(lengths.sum()) * (2 if tta else 1):,} tokens"
        + (", each row A/B-swapped too (TTA)" if tta else "")
        + ")"
    )
    world = world_size()
    cuda = [torch.device(d) for d in devices if torch.device(d).type == "cuda"]
    try:
        estimate = _estimate(teacher, lengths, settings, cuda, world)
    except (ValueError, KeyError, OSError, TypeError) as err:
        estimate = f"no projection ({err})"
    where = f"{len(cuda) * world} GPU(s)" if cuda else f"CPU ({world} process{'es' if world > 1 else ''})"
    return f"{head} on {where}: {estimate}"


def _estimate(teacher, lengths, settings: TeacherPassSettings, cuda, world) -> str:
    import torch

    from ..costs.budget import GPU_PEAKS_FILE, gpu_peak_tflops, load_budget, measured_profile, project
    from ..costs.modelspec import weight_format_of
    from ..models import source_config
    from ..utils.cachedir import cache_root

    spec = teacher.spec()
    if spec is None:
        return "no projection (the teacher's config is not a Llama-like decoder kdq can count FLOPs for)"
    fmt = weight_format_of(source_config(teacher.model_source))
    profile = load_budget(settings.budget or DEFAULT_BUDGET_NAME)
    check = Path(settings.gpu_check) if settings.gpu_check else cache_root() / GPU_CHECK_FILE
    basis = f"the compute efficiency {profile.compute_efficiency:g} assumed by the {profile.name} profile"
    if check.is_file():
        profile, _ = measured_profile(profile, check)
        basis = f"the compute efficiency {profile.compute_efficiency:.3f} measured by bench/gpu_check.py ({check})"
    profile = dataclasses.replace(profile, batch_size=settings.batch_size, rows=len(lengths), overhead_hours=0.0)
    if cuda:
        name = torch.cuda.get_device_name(cuda[0].index or 0)
        key, peak = gpu_peak_tflops(name)
        if peak is None:
            return f"no projection ({name} is not in kdq/budgets/_gpu_peaks.json: add its fp16 peak and bandwidth)"
        bandwidth = json.loads(GPU_PEAKS_FILE.read_text())["gpus"][key]["bandwidth_gbs"]
        profile = dataclasses.replace(
            profile, name=key, gpus=len(cuda) * world, gpu_name=name, peak_tflops=peak, bandwidth_gbs=bandwidth
        )
        hours = project(spec, fmt, lengths, profile, tta=settings.tta)["projected_hours"]
        return f"about {_duration(hours * 3600)} (est.: the teacher's FLOPs at {key}'s fp16 peak and {basis})"
    hours = project(spec, fmt, lengths, profile, tta=settings.tta)["projected_hours"]
    return (
        f"no estimate for a CPU; on {profile.name} ({profile.gpus} x {profile.gpu_name}) it would take about "
        f"{_duration(hours * 3600)} (est.: the teacher's FLOPs at {basis}). This machine's rows/s and ETA follow "
        "once the pass runs."
    )


def _duration(seconds: float) -> str:
    from .cache import _duration as fmt

    return fmt(seconds)


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
    # the training rows' layout (LMSYS or WSDM), labels dropped
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
    return datasets.concatenate_datasets(
        [core_columns(train_rows), core_columns(transfer_rows)]
    )  # the WSDM language column too
