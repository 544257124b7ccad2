"""The teacher-logit cache: one Arrow table per teacher fingerprint, keyed by what the teacher saw.

Layout::

    <cache_dir>/teacher-<key>/
        fingerprint.json        # what <key> hashes: teacher identity, template, TTA, label scheme
        shards/part-<n>/        # datasets.Dataset.save_to_disk: id, row_hash, logits[num_labels]
        shards/part-<n>/ ...    #   (+ features[H], and features_swap[H] with TTA, when asked for)

* Same fingerprint → same folder → reused. A different teacher, template, ``max_length``
  or TTA setting hashes to another folder, so caches never mix.
* Each shard is written to a temporary folder and renamed when complete; a run that is
  interrupted keeps its finished shards, and the next run scores only the missing rows.
* Entries are keyed by ``row_hash``, a hash of the token ids the teacher saw: a teacher's
  logits are a function of its input, not of a row's name. Two runs that reuse an id for
  different text each get their own row's logits, a row whose text changed is scored again
  (never a stale logit), and the same text under another id is reused. ``id`` is kept in the
  table for people reading it.
* Optionally (``features=True``) a shard also holds the teacher's **pooled final hidden state**,
  the vector its ``score`` head reads, in fp16 (``features``; with TTA also ``features_swap``,
  the swapped row's). They live under the same fingerprint and resumption rules: a run that
  asks for features counts only the shards that have them, so rows cached without features
  are scored again once, into shards that have both.
* Reading never turns rows into Python lists: the shards are memory-mapped Arrow tables, rows are
  found with ``pyarrow.compute.index_in`` on ``row_hash``, and :attr:`TeacherCache.table` is a
  selection of them aligned with the requested rows, which the training table joins in Arrow.
* **Several processes** (``accelerate launch`` / ``torchrun``, one node or several, the cache on a
  filesystem they share) split the pass: each works out the same list of missing rows (the shards
  written before this pass; this pass's own shards are named after it), takes every ``W``-th row of it
  longest first (the same length profile on every process, token counts within one row), writes its
  own shards and then a done-file under ``passes/<pass>/``; it waits on the others' done-files (no
  collective, so no process-group timeout) and reads the merged cache. Rows still missing then (a
  writer outside the pass) are shared out again. **Several GPUs in one process** split each shard's
  rows over the GPUs, one thread each (:func:`kdq.runtime.predict.score_sharded`, as ``predict.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data import encode, scheme_of_rows
from ..runtime.batching import add_stats, predict_logits
from ..runtime.constants import LMSYS, TEACHER_FINGERPRINT_FILE, label_scheme
from ..runtime.template import TemplateConfig
from ..runtime.tta import score_tta
from ..utils.atomic import atomic_dir, atomic_write_json
from ..utils.distributed import call_key, post, rank, wait_for_all, world_size

CACHE_FORMAT = 1
PASS_ROUNDS = (
    5  # shares handed out per pass before a missing row is an error (one, unless a writer outside it interferes)
)


class IdList(Sequence):
    """The rows' ids, read from an Arrow string array on demand (no Python list of every id)."""

    def __init__(self, array):
        self.array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.array[i].to_pylist()
        return self.array[i].as_py()

    def index(self, value, start: int = 0, stop=None) -> int:
        found = pc.index(self.array, value, start=start, end=stop).as_py()
        if found < 0:
            raise ValueError(f"{value!r} is not among the ids")
        return found

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"IdList({len(self)} ids)"


@dataclass
class TeacherCache:
    """Teacher outputs for the requested rows, in their order.

    ``table``: a ``datasets.Dataset`` aligned with the rows: ``logits`` ``(num_labels,)`` float32
    (log-probabilities when TTA is on, or for a table or ensemble teacher) and, when asked for,
    ``features`` ``(H,)`` fp16 (with TTA also ``features_swap``). ``ids``: the rows' ids (a sequence
    read from Arrow on demand). ``reused`` / ``computed``: rows served from the cache / scored now by
    the whole pass (distinct inputs; every process of a split pass reports the same); ``stats``: this
    process's timing stats. ``path``: the cache folder (``None`` for an ensemble: see ``stats``).
    """

    path: Path | None
    ids: Sequence
    table: datasets.Dataset
    reused: int
    computed: int
    stats: dict

    @property
    def logits(self) -> np.ndarray:
        """``(N, num_labels)`` float32."""
        return self.table.with_format("numpy")[:]["logits"].astype(np.float32)

    @property
    def has_features(self) -> bool:
        return "features" in self.table.column_names

    @property
    def feature_width(self) -> int | None:
        """The teacher's hidden size ``H`` (the width of ``features``), or ``None`` without features."""
        return self.table.features["features"].length if self.has_features else None

    def summary(self) -> dict:
        """``metrics["teacher_pass"]``: rows reused and computed, and the pass's timing stats."""
        return {"reused": self.reused, "computed": self.computed, **self.stats}


def cache_fingerprint(teacher_fingerprint: str, template: TemplateConfig, tta: bool, scheme) -> dict:
    scheme = label_scheme(scheme)  # the rows' label scheme (its name, not only its class count)
    fp = {
        "format": CACHE_FORMAT,
        "teacher": teacher_fingerprint,
        "template": template.to_dict(),
        "max_length": template.max_length,
        "tta": bool(tta),
        "num_labels": scheme.num_labels,
    }
    if scheme != LMSYS:  # LMSYS caches written before schemes existed keep their key
        fp["scheme"] = scheme.name
    return fp


def _key(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _row_hash(ids) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).hexdigest()


def _fixed(rows: np.ndarray) -> pa.FixedSizeListArray:
    """An ``(N, K)`` array as an Arrow fixed-size list column (no Python lists)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(rows).reshape(-1)), rows.shape[1])


def _cached(folder: Path, features: bool, skip: str | None = None):
    """Every finished shard (those with features, when they are needed; not those whose name starts with
    ``skip``), memory-mapped, or ``None``."""
    parts = []
    for shard in sorted((folder / "shards").glob("part-*")):
        if skip and shard.name.startswith(skip):
            continue
        part = datasets.load_from_disk(str(shard))
        if not features or "features" in part.column_names:
            parts.append(part.select_columns([c for c in part.column_names if c != "id"]))
    if not parts:
        return None
    columns = set.intersection(*(set(p.column_names) for p in parts))
    return datasets.concatenate_datasets([p.select_columns(sorted(columns)) for p in parts])


def _positions(hashes: pa.ChunkedArray, cached) -> np.ndarray:
    """For each requested hash, its row in ``cached`` (``-1`` when absent)."""
    if cached is None:
        return np.full(len(hashes), -1, dtype=np.int64)
    found = pc.index_in(hashes, value_set=cached.data.column("row_hash").combine_chunks())
    return np.asarray(found.fill_null(-1), dtype=np.int64)


def _distinct_missing(hashes: pa.ChunkedArray, where: np.ndarray) -> np.ndarray:
    """Positions of the rows absent from the cache, one per distinct input (its first row), ascending."""
    missing = np.flatnonzero(where < 0)
    if not len(missing):
        return missing
    table = pa.table({"h": pc.take(hashes, pa.array(missing)), "i": pa.array(missing)})
    first = table.group_by("h", use_threads=False).aggregate([("i", "min")]).column("i_min")
    return np.sort(first.to_numpy())


def column(table: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """One column of a ``datasets.Dataset`` as Arrow, its selection (indices mapping) applied."""
    return table.select_columns([name]).with_format("arrow")[:][name]


def aligned(cached: datasets.Dataset, where: np.ndarray) -> datasets.Dataset:
    """Rows ``where`` of ``cached`` as a dataset over the same (memory-mapped) table: an indices
    mapping built in Arrow, never a Python list of indices."""
    base = cached.flatten_indices() if cached._indices is not None else cached
    indices = pa.table({"indices": pa.array(np.asarray(where, dtype=np.uint64))})
    return datasets.Dataset(base.data, info=base.info.copy(), indices_table=indices)


def _open(cache_dir, fp: dict) -> Path:
    folder = Path(cache_dir) / f"teacher-{_key(fp)}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / TEACHER_FINGERPRINT_FILE
    if meta.exists():
        if json.loads(meta.read_text()) != fp:
            raise ValueError(
                f"teacher cache {folder} holds a different fingerprint than its name says; "
                "it was edited by hand. Delete the folder to rebuild it."
            )
    else:
        atomic_write_json(meta, fp, sort_keys=True)  # concurrent processes write the same content
    return folder


def cache_teacher_logits(
    teacher,
    rows: datasets.Dataset,
    *,
    cache_dir,
    template: TemplateConfig,
    tta: bool = False,
    features: bool = False,
    batch_size: int = 16,
    chunk_rows: int = 1024,
    device=None,
    devices=None,
    announce=None,
    report_every_s: float = 60.0,
) -> TeacherCache:
    """Score ``rows`` with ``teacher``, reusing the cache; split over the launcher's processes and this
    process's ``devices`` (module doc).

    Args:
        teacher: a :class:`~kdq.models.LoadedModel`, ``LazyClassifier`` or
            :class:`~kdq.distill.teachers.ModelTeacher` (``tokenizer``, ``fingerprint``; ``model``, or
            ``models_on(devices)`` for several devices).
        rows: canonical arena rows (:func:`kdq.data.load_arena`).
        tta: also score the A/B-swapped row and store ``log`` of the averaged probabilities.
        features: also store the pooled final hidden state (fp16; with TTA the swapped row's too).
        chunk_rows: rows per shard; the unit of resumption after an interruption.
        device / devices: where this process scores (default: where the model is); several devices
            split each shard's rows, one thread each.
        announce: called once, on the main process, before anything is scored, with the token lengths
            ``(n,)`` of the distinct rows the whole pass will score (the projection is printed from them).
        report_every_s: how often the main process prints rows/s and the ETA of the whole pass.
    Returns:
        :class:`TeacherCache` aligned with ``rows``.
    """
    tok = teacher.tokenizer  # teacher.model is touched only if a row needs scoring (it may load lazily)
    began = time.perf_counter()
    folder = _open(cache_dir, cache_fingerprint(teacher.fingerprint, template, tta, scheme_of_rows(rows)))
    enc = encode(rows, tok, template, desc="render rows (teacher)")
    enc = enc.map(lambda b: {"row_hash": [_row_hash(x) for x in b["input_ids"]]}, batched=True, desc="hash rows")
    job = _Pass(
        teacher=teacher,
        rows=rows,
        enc=enc,
        folder=folder,
        template=template,
        tta=tta,
        features=features,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        devices=list(devices) if devices else ([device] if device is not None else None),
        report_every_s=report_every_s,
    )
    rendered = time.perf_counter() - began
    computed, stats = _run_rounds(job, announce)
    stats["render_seconds"] = rendered
    stats["pass_seconds"] = time.perf_counter() - began
    return _read_back(job, computed, stats)


@dataclass(frozen=True)
class _Pass:
    """One teacher pass: what every round, share and shard of it reads. ``enc``: the rows rendered with the
    teacher's tokenizer, with ``row_hash`` and ``length``; the rest as :func:`cache_teacher_logits` takes it."""

    teacher: object
    rows: datasets.Dataset
    enc: datasets.Dataset
    folder: Path
    template: TemplateConfig
    tta: bool
    features: bool
    batch_size: int
    chunk_rows: int
    devices: list | None
    report_every_s: float

    @property
    def hashes(self) -> pa.ChunkedArray:
        return column(self.enc, "row_hash")

    def missing(self, skip: str | None = None) -> np.ndarray:
        """Positions of the distinct rows no shard holds yet (shards named ``skip...`` not counted)."""
        return _distinct_missing(self.hashes, _positions(self.hashes, _cached(self.folder, self.features, skip=skip)))


def _run_rounds(job: _Pass, announce) -> tuple:
    """Score what the cache lacks, in rounds: every process works out the same missing rows, scores every
    ``W``-th of them longest first, then waits on the others' done-files (never at a collective) until nothing
    is missing. Returns ``(rows computed, timing stats)``."""
    lengths = column(job.enc, "length").to_numpy()
    world, me = world_size(), rank()
    pass_key = call_key(f"teacher-pass-{job.folder.name}") if world > 1 else None
    stats = add_stats({}, {})  # zeros
    computed = 0
    for round_ in range(1, PASS_ROUNDS + 1):
        tag = hashlib.sha1(f"{pass_key}/{round_}".encode()).hexdigest()[:16] if pass_key else None
        # the shards written before this round: every process works out the same missing rows
        todo = job.missing(skip=f"part-{tag}-")
        if not len(todo):
            break
        computed += len(todo)
        order = todo[np.argsort(-lengths[todo], kind="stable")]  # longest first: shards are length-homogeneous
        if round_ == 1 and announce is not None and me == 0:
            announce(lengths[order])
        share = order[me::world]
        if len(share):
            add_stats(stats, _score_rows(job, share, tag, total_rows=len(order)))
        if world == 1:
            break
        # the others' shares: wait on their done-files (or until nothing is missing), never at a collective
        post(
            job.folder / "passes" / tag, me, {"rows": int(len(share)), "host": socket.gethostname(), "pid": os.getpid()}
        )
        waited = time.perf_counter()
        wait_for_all(job.folder / "passes" / tag, world, done=lambda: not len(job.missing()))
        stats["wait_seconds"] = stats.get("wait_seconds", 0.0) + time.perf_counter() - waited
    if world > 1:
        stats["processes"] = world
    return computed, stats


def _read_back(job: _Pass, computed: int, stats: dict) -> TeacherCache:
    """The merged cache, aligned with the pass's rows; ``RuntimeError`` when a row is still missing."""
    cached = _cached(job.folder, job.features)
    where = _positions(job.hashes, cached)
    if (where < 0).any():
        raise RuntimeError(
            f"teacher cache {job.folder}: {int((where < 0).sum())} rows are still missing after the pass"
        )
    keep = ["logits"] + (["features"] + (["features_swap"] if job.tta else []) if job.features else [])
    return TeacherCache(
        path=job.folder,
        ids=IdList(column(job.enc, "id")),
        table=aligned(cached.select_columns(keep), where),
        reused=len(job.enc) - computed,
        computed=computed,
        stats=stats,
    )


def scorers(teacher, devices) -> list:
    """``[(device, model)]`` this process scores with: the teacher's copy on each of ``devices``
    (``models_on``), or its one model."""
    if hasattr(teacher, "models_on"):
        return teacher.models_on(devices)
    model = teacher.model
    return [((devices or [None])[0] or next(model.parameters()).device, model)]


class PassProgress:
    """Progress sink of the teacher pass: forwards to a tqdm bar and, on the main process, prints rows/s and
    the ETA of the whole pass after the first 5% (or ``every_s``) and then every ``every_s`` seconds.
    Rows run longest first, so the rate rises as the pass goes on and the ETA is an upper bound."""

    def __init__(self, bar, total: int, per_row: int, *, every_s: float = 60.0, enabled: bool = True, note: str = ""):
        self._bar, self.total, self.per_row, self.every_s = bar, total, per_row, every_s
        self.enabled, self.note = enabled, note
        self.done, self.start, self.last, self.lines = 0, time.perf_counter(), None, []
        self._lock = threading.Lock()

    def update(self, n):
        with self._lock:
            self.done += n
            self._bar.update(n)
            now = time.perf_counter()
            due = (
                (now - self.start >= self.every_s or self.done >= 0.05 * self.total)
                if self.last is None
                else (now - self.last >= self.every_s)
            )
            if self.enabled and due and self.done < self.total:
                self.last = now
                self.lines.append(self.message(now - self.start))
                print(self.lines[-1], file=sys.stderr, flush=True)

    def set_postfix(self, **kwargs):
        with self._lock:
            self._bar.set_postfix(**kwargs)

    def message(self, elapsed: float) -> str:
        rate = self.done / max(elapsed, 1e-9) / self.per_row  # rows (an original and its swapped copy: one)
        eta = (self.total - self.done) / self.per_row / max(rate, 1e-9)
        return (
            f"kdq: teacher pass: {self.done // self.per_row}/{self.total // self.per_row} rows in {elapsed:.0f} s, "
            f"{rate:.1f} rows/s; ETA {_duration(eta)} for the whole pass{self.note} "
            "(longest rows first: an upper bound)"
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _shard_name(tag, who: int, k: int) -> str:
    """A shard's folder name: the pass's tag and the writer's rank under a launcher, else the time."""
    return f"part-{tag}-r{who:05d}-{k:06d}" if tag else f"part-{time.time_ns():020d}-{os.getpid()}"


def _score_rows(job: _Pass, order, tag, *, total_rows: int) -> dict:
    """Score rows ``order`` (positions in ``job.enc``, longest first), one atomic shard per ``job.chunk_rows``.
    Returns the timing stats."""
    from tqdm.auto import tqdm

    models = scorers(job.teacher, job.devices)
    world, me = world_size(), rank()
    per_row = 2 if job.tta else 1
    desc = "teacher logits" + (f" (rank {me}/{world})" if world > 1 else "")
    note = f" (this process's share, 1/{world} of {total_rows} rows: the shares are balanced)" if world > 1 else ""
    bar = tqdm(total=len(order) * per_row, desc=desc, unit="seq", dynamic_ncols=True)
    sink = PassProgress(bar, len(order) * per_row, per_row, every_s=job.report_every_s, enabled=me == 0, note=note)
    stats = add_stats({}, {})
    try:
        for k, start in enumerate(range(0, len(order), job.chunk_rows)):
            columns = _score_shard(job, models, order[start : start + job.chunk_rows], sink, stats)
            with atomic_dir(job.folder / "shards" / _shard_name(tag, me, k)) as tmp:
                datasets.Dataset(pa.table(columns)).save_to_disk(str(tmp))
    finally:
        bar.close()
    return stats


def _score_shard(job: _Pass, models: list, chunk, sink, stats: dict) -> dict:
    """One shard's columns (``id``, ``row_hash``, ``logits``; ``features`` and ``features_swap`` when asked) for
    rows ``chunk`` of ``job.enc``, scored on ``models`` (``[(device, model)]``), progress to ``sink``."""
    from ..runtime.predict import score_sharded

    tok = job.teacher.tokenizer
    take = pa.array(chunk)
    seqs = pc.take(column(job.enc, "input_ids"), take).to_pylist()  # one shard's rows at a time
    swapped = None
    if job.tta:
        swapped = encode(job.rows.select(chunk), tok, job.template, swap=True, desc="render swapped rows")
        swapped = list(swapped["input_ids"])
    pooled = []

    def score(s):  # kdq.runtime.tta: original and swapped rows in one length-sorted pass
        st = {}
        if len(models) == 1:
            device, model = models[0]
            out = predict_logits(
                model, s, tok.pad_token_id, job.batch_size, device, progress=sink, stats=st, return_pooled=job.features
            )
        else:  # one thread per device, token-balanced, as predict.py splits rows over GPUs
            out = score_sharded(
                models, s, tok.pad_token_id, job.batch_size, progress=sink, stats=st, pooled=job.features
            )
        add_stats(stats, st)
        if job.features:
            out, feats = out
            pooled.append(feats)
        return out

    scored = score_tta(score, seqs, swapped, mode="full" if job.tta else "none")
    columns = {
        "id": pc.take(column(job.enc, "id"), take).combine_chunks(),
        "row_hash": pc.take(job.hashes, take).combine_chunks(),
        "logits": _fixed((scored.log_probs if job.tta else scored.logits).numpy().astype(np.float32)),
    }
    if job.features:
        feats = pooled[0].numpy().astype(np.float16)
        columns["features"] = _fixed(feats[: len(seqs)])
        if job.tta:
            columns["features_swap"] = _fixed(feats[len(seqs) :])
    return columns
