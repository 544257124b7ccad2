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
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data import encode, scheme_of_rows
from ..runtime.batching import add_stats, predict_logits
from ..runtime.constants import LMSYS, label_scheme
from ..runtime.template import TemplateConfig
from ..runtime.tta import score_tta
from ..utils.atomic import atomic_dir

CACHE_FORMAT = 1


@dataclass
class TeacherCache:
    """Teacher outputs for the requested rows, in their order.

    ``table``: a ``datasets.Dataset`` aligned with the rows: ``logits`` ``(num_labels,)`` float32
    (log-probabilities when TTA is on) and, when asked for, ``features`` ``(H,)`` fp16 (with TTA
    also ``features_swap``). ``ids``: the rows' ids. ``reused`` / ``computed``: rows served from
    the cache / scored now (distinct inputs); ``stats``: the pass's timing stats.
    """

    path: Path
    ids: list
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


def _cached(folder: Path, features: bool):
    """Every finished shard (those with features, when they are needed), memory-mapped, or ``None``."""
    parts = []
    for shard in sorted((folder / "shards").glob("part-*")):
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


def _open(cache_dir, fp: dict) -> Path:
    folder = Path(cache_dir) / f"teacher-{_key(fp)}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "fingerprint.json"
    if meta.exists():
        if json.loads(meta.read_text()) != fp:
            raise ValueError(
                f"teacher cache {folder} holds a different fingerprint than its name says; "
                "it was edited by hand. Delete the folder to rebuild it."
            )
    else:
        tmp = meta.with_name(meta.name + f".{time.time_ns()}.partial")
        tmp.write_text(json.dumps(fp, indent=2, sort_keys=True))
        tmp.replace(meta)  # atomic: concurrent processes write the same content
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
) -> TeacherCache:
    """Score ``rows`` with ``teacher`` (a :class:`~kdq.models.LoadedModel` or ``LazyClassifier``), reusing the cache.

    Args:
        rows: canonical arena rows (:func:`kdq.data.load_arena`).
        tta: also score the A/B-swapped row and store ``log`` of the averaged probabilities.
        features: also store the pooled final hidden state (fp16; with TTA the swapped row's too).
        chunk_rows: rows per shard; the unit of resumption after an interruption.
    Returns:
        :class:`TeacherCache` aligned with ``rows``.
    """
    tok = teacher.tokenizer  # teacher.model is touched only if a row needs scoring (it may load lazily)
    folder = _open(cache_dir, cache_fingerprint(teacher.fingerprint, template, tta, scheme_of_rows(rows)))  # 19.5
    enc = encode(rows, tok, template, desc="render rows (teacher)")
    enc = enc.map(lambda b: {"row_hash": [_row_hash(x) for x in b["input_ids"]]}, batched=True, desc="hash rows")
    hashes = enc.data.column("row_hash")
    where = _positions(hashes, _cached(folder, features))
    missing = np.flatnonzero(where < 0)
    # one score per distinct input, however many rows share it
    _, first = np.unique(np.asarray(pc.take(hashes, pa.array(missing))), return_index=True)
    todo = missing[np.sort(first)]
    stats = add_stats({}, {})  # zeros
    if len(todo):
        _score_rows(teacher, rows, enc, todo, folder, template, tta, features, batch_size, chunk_rows, device, stats)
        where = _positions(hashes, _cached(folder, features))
    if (where < 0).any():
        raise RuntimeError(f"teacher cache {folder}: {int((where < 0).sum())} rows are still missing after the pass")
    cached = _cached(folder, features)
    keep = ["logits"] + (["features"] + (["features_swap"] if tta else []) if features else [])
    table = cached.select_columns(keep).select(where)
    return TeacherCache(
        path=folder,
        ids=list(enc["id"]),
        table=table,
        reused=len(enc) - len(todo),
        computed=len(todo),
        stats=stats,
    )


def _score_rows(teacher, rows, enc, todo, folder, template, tta, features, batch_size, chunk_rows, device, stats):
    """Score rows ``todo`` (positions in ``enc``), longest first, one atomic shard per ``chunk_rows``."""
    from tqdm.auto import tqdm

    model, tok = teacher.model, teacher.tokenizer
    lengths = np.asarray(enc.select(todo)["length"])
    order = todo[np.argsort(-lengths, kind="stable")]  # longest first: shards are length-homogeneous
    bar = tqdm(total=len(order) * (2 if tta else 1), desc="teacher logits", unit="row", dynamic_ncols=True)
    try:
        for start in range(0, len(order), chunk_rows):
            chunk = order[start : start + chunk_rows].tolist()
            part = enc.select(chunk)
            seqs = list(part["input_ids"])
            swapped = (
                list(encode(rows.select(chunk), tok, template, swap=True, desc="render swapped rows")["input_ids"])
                if tta
                else None
            )
            pooled = []

            def score(s, pooled=pooled):  # kdq.runtime.tta: original and swapped rows in one length-sorted pass
                st = {}
                out = predict_logits(
                    model, s, tok.pad_token_id, batch_size, device, progress=bar, stats=st, return_pooled=features
                )
                add_stats(stats, st)
                if features:
                    out, feats = out
                    pooled.append(feats)
                return out

            scored = score_tta(score, seqs, swapped, mode="full" if tta else "none")
            columns = {
                "id": pa.array(list(part["id"]), pa.string()),
                "row_hash": pa.array(list(part["row_hash"]), pa.string()),
                "logits": _fixed((scored.log_probs if tta else scored.logits).numpy().astype(np.float32)),
            }
            if features:
                feats = pooled[0].numpy().astype(np.float16)
                columns["features"] = _fixed(feats[: len(seqs)])
                if tta:
                    columns["features_swap"] = _fixed(feats[len(seqs) :])
            name = f"part-{time.time_ns():020d}-{os.getpid()}"
            with atomic_dir(folder / "shards" / name) as tmp:
                datasets.Dataset(pa.table(columns)).save_to_disk(str(tmp))
    finally:
        bar.close()
