"""Synthetic arena rows from a seed: the probe batch of every quantized or exported model.

Library code (not a test helper). :func:`probe_rows` is the one definition of the probe rows:
:mod:`kdq.quantize` scores them when no calibration rows are given, and :func:`kdq.export`
stores their probabilities in the manifest so :func:`kdq.verify` can re-score them.
:mod:`kdq.testing` re-exports :func:`make_arena_rows` for users' own tests.
"""

from __future__ import annotations

import json
import random

from ..runtime.constants import LABELS
from ..runtime.template import PARTS, parse_turns

# The probe rows: fixed, so kdq.verify re-scores exactly the rows kdq.export scored (the manifest stores
# them too), and a quantized folder's synthetic probe is the same rows whatever the config.
PROBE_SEED = 20240
PROBE_MAX_WORDS = 120

WORDS = (
    "the a of to and in is it that for on with as was be this by are not or have from at "
    "but an they which you one were all we can her has there been if more when will would who "
    "so no she other its may these some what about than into only two could time very first "
    "answer code python list sort function return value error fix test data model good great "
    "helpful correct clear wrong bad poor unclear useless sorry cannot explain example step"
).split()
POSITIVE = ("good", "great", "helpful", "correct", "clear")
NEGATIVE = ("wrong", "bad", "poor", "unclear", "useless")


def _sentence(rng, n_words, polarity):
    words = [rng.choice(WORDS) for _ in range(n_words)]
    pool = POSITIVE if polarity > 0 else NEGATIVE
    for _ in range(abs(polarity)):
        words[rng.randrange(len(words))] = rng.choice(pool)
    return " ".join(words)


def make_arena_rows(
    n: int, *, seed: int = 0, long_tail: bool = True, labelled: bool = True, max_words: int = 600, id_offset: int = 0
) -> dict:
    """Synthetic rows in the competition format (JSON-encoded turn lists, one-hot winners).

    The winner is learnable: each response carries a hidden quality in {-2..2} written
    into it as positive or negative words; the better response wins, equal quality ties,
    and 10% of labels are flipped at random (annotator noise). With ``long_tail`` the
    response lengths follow a log-normal, as in the arena: most rows short, a few at
    ``max_words``. About 15% of rows have 2-3 turns and 2% contain a ``null`` turn.
    """
    rng = random.Random(seed)
    rows = {k: [] for k in ("id", "prompt", "response_a", "response_b", *LABELS)}
    for r in range(n):
        turns = 1 if rng.random() < 0.85 else rng.randint(2, 3)

        def length():
            return max(3, min(max_words, int(rng.lognormvariate(3.2, 1.0)))) if long_tail else 20

        qa, qb = rng.randint(-2, 2), rng.randint(-2, 2)
        prompt = [_sentence(rng, max(3, length() // 4), 0) for _ in range(turns)]
        a = [_sentence(rng, length(), qa) for _ in range(turns)]
        b = [_sentence(rng, length(), qb) for _ in range(turns)]
        if rng.random() < 0.02:
            b[-1] = None
        winner = 0 if qa > qb else 1 if qb > qa else 2
        if rng.random() < 0.1:
            winner = rng.randrange(3)
        rows["id"].append(str(id_offset + r))
        rows["prompt"].append(json.dumps(prompt))
        rows["response_a"].append(json.dumps(a))
        rows["response_b"].append(json.dumps(b))
        for k, lab in enumerate(LABELS):
            rows[lab].append(int(k == winner) if labelled else None)
    if not labelled:
        for lab in LABELS:
            del rows[lab]
    return rows


def probe_rows(n: int) -> dict:
    """The ``n`` probe rows: unlabelled synthetic arena rows in the competition columns (``id``, JSON turn
    lists). The first ``k`` of ``probe_rows(n)`` are ``probe_rows(k)``."""
    return make_arena_rows(n, seed=PROBE_SEED, labelled=False, max_words=PROBE_MAX_WORDS)


def probe_turns(n: int) -> tuple:
    """``(ids, rows)`` of :func:`probe_rows`, each row the tuple of turn lists ``(prompt, response_a,
    response_b)`` (as predict.py's ``read_rows`` returns them)."""
    raw = probe_rows(n)
    return list(raw["id"]), [tuple(parse_turns(raw[c][i]) for c in PARTS) for i in range(n)]
