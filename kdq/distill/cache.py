"""The teacher-logit cache: one Arrow table per teacher fingerprint, keyed by what the teacher saw.

Layout::

    <cache_dir>/teacher-<key>/
        fingerprint.json        # what <key> hashes: teacher identity, template, TTA, label count
        shards/part-00000/      # datasets.Dataset.save_to_disk: id, row_hash, logits[num_labels]
        shards/part-00001/ ...

* Same fingerprint → same folder → reused. A different teacher, template, ``max_length``
  or TTA setting hashes to another folder, so caches never mix.
* Each shard is written to a temporary folder and renamed when complete; a run that is
  interrupted keeps its finished shards, and the next run scores only the missing rows.
* Entries are keyed by ``row_hash``, a hash of the token ids the teacher saw: a teacher's
  logits are a function of its input, not of a row's name. Two runs that reuse an id for
  different text each get their own row's logits, a row whose text changed is scored again
  (never a stale logit), and the same text under another id is reused. ``id`` is kept in the
  table for people reading it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from ..data import encode
from ..runtime.batching import add_stats, predict_logits
from ..runtime.constants import LABELS
from ..runtime.template import TemplateConfig
from ..runtime.tta import score_tta
from ..utils.atomic import atomic_dir

CACHE_FORMAT = 1


@dataclass
class TeacherCache:
    """Teacher logits for the requested rows, in their order."""

    path: Path
    ids: list
    logits: np.ndarray  # (N, num_labels) float32; log-probabilities when TTA is on
    reused: int
    computed: int
    stats: dict

    def summary(self) -> dict:
        """``metrics["teacher_pass"]``: rows reused and computed, and the pass's timing stats."""
        return {"reused": self.reused, "computed": self.computed, **self.stats}


def cache_fingerprint(teacher_fingerprint: str, template: TemplateConfig, tta: bool, num_labels: int) -> dict:
    return {
        "format": CACHE_FORMAT,
        "teacher": teacher_fingerprint,
        "template": template.to_dict(),
        "max_length": template.max_length,
        "tta": bool(tta),
        "num_labels": int(num_labels),
    }


def _key(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _row_hash(ids) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).hexdigest()


def _load_shards(folder: Path):
    shards = sorted((folder / "shards").glob("part-*"))
    if not shards:
        return {}
    table = datasets.concatenate_datasets([datasets.load_from_disk(str(s)) for s in shards])
    return {h: np.asarray(z, dtype=np.float32) for h, z in zip(table["row_hash"], table["logits"])}


def cache_teacher_logits(
    teacher,
    rows: datasets.Dataset,
    *,
    cache_dir,
    template: TemplateConfig,
    tta: bool = False,
    batch_size: int = 16,
    chunk_rows: int = 1024,
    device=None,
) -> TeacherCache:
    """Score ``rows`` with ``teacher`` (a :class:`~kdq.models.LoadedModel` or ``LazyClassifier``), reusing the cache.

    Args:
        rows: canonical arena rows (:func:`kdq.data.load_arena`).
        tta: also score the A/B-swapped row and store ``log`` of the averaged probabilities.
        chunk_rows: rows per shard; the unit of resumption after an interruption.
    Returns:
        :class:`TeacherCache` with ``logits`` of shape ``(len(rows), num_labels)``.
    """
    from tqdm.auto import tqdm

    tok = teacher.tokenizer  # teacher.model is touched only if a row needs scoring (it may load lazily)
    fp = cache_fingerprint(teacher.fingerprint, template, tta, len(LABELS))
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
        meta.write_text(json.dumps(fp, indent=2, sort_keys=True))

    enc = encode(rows, tok, template, desc="render rows (teacher)")
    hashes = [_row_hash(x) for x in enc["input_ids"]]
    cached = _load_shards(folder)
    todo, queued = [], set()
    for k, h in enumerate(hashes):  # one score per distinct input, however many rows share it
        if h not in cached and h not in queued:
            todo.append(k)
            queued.add(h)
    stats = add_stats({}, {})  # zeros
    if todo:
        model = teacher.model
        swapped = encode(rows.select(todo), tok, template, swap=True, desc="render swapped rows") if tta else None
        # Longest rows first across the whole pass, so shards are length-homogeneous.
        todo_sorted = sorted(range(len(todo)), key=lambda k: -enc[todo[k]]["length"])
        next_part = len(list((folder / "shards").glob("part-*")))
        bar = tqdm(total=len(todo) * (2 if tta else 1), desc="teacher logits", unit="row", dynamic_ncols=True)
        for start in range(0, len(todo_sorted), chunk_rows):
            chunk = todo_sorted[start : start + chunk_rows]
            seqs = [enc[todo[k]]["input_ids"] for k in chunk]

            def score(s):  # through kdq.runtime.tta: original and swapped rows in one length-sorted pass
                st = {}
                out = predict_logits(model, s, tok.pad_token_id, batch_size, device, progress=bar, stats=st)
                add_stats(stats, st)
                return out

            scored = score_tta(
                score, seqs, [swapped[k]["input_ids"] for k in chunk] if tta else None, mode="full" if tta else "none"
            )
            logits = scored.log_probs if tta else scored.logits
            part = datasets.Dataset.from_dict(
                {
                    "id": [enc[todo[k]]["id"] for k in chunk],
                    "row_hash": [hashes[todo[k]] for k in chunk],
                    "logits": logits.numpy().astype(np.float32).tolist(),
                }
            )
            with atomic_dir(folder / "shards" / f"part-{next_part:05d}") as tmp:
                part.save_to_disk(str(tmp))
            next_part += 1
            for h, z in zip(part["row_hash"], logits.numpy()):
                cached[h] = z.astype(np.float32)
        bar.close()
    out = np.stack([cached[h] for h in hashes]).astype(np.float32)
    return TeacherCache(
        path=folder, ids=list(enc["id"]), logits=out, reused=len(enc) - len(todo), computed=len(todo), stats=stats
    )
