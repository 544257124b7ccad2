"""Synthetic arena rows from a seed: the probe batch of every quantized or exported model, and the
arena-like rows of the export's fp16 check.

Library code (not a test helper). :func:`probe_rows` is the one definition of the probe rows:
:mod:`kdq.quantize` scores them when no calibration rows are given, and :func:`kdq.export`
stores their probabilities in the manifest so :func:`kdq.verify` can re-score them.
:func:`arena_like_rows` is the one definition of the rows that look like the arena (code, maths,
markup, long numbers, non-English text), which :func:`kdq.export` computes in fp16 and fp32 before
it stores fp16 weights. :mod:`kdq.testing` re-exports :func:`make_arena_rows` for users' own tests.
"""

from __future__ import annotations

import json
import random

from ..runtime.constants import LABELS, WSDM
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


def make_wsdm_rows(n: int, *, seed: int = 0, labelled: bool = True, max_words: int = 600, id_offset: int = 0) -> dict:
    """Synthetic rows in the WSDM Cup 2025 layout: plain-string ``prompt`` / ``response_a`` / ``response_b``
    (one turn each), ``winner`` (``model_a`` / ``model_b``), ``language``, and hex ids.

    The first turn of :func:`make_arena_rows` rows with the same arguments, so the winner is learnable
    the same way; a tie there is a winner drawn at random here (the WSDM data has no tie).
    """
    rng = random.Random(seed + 1)
    src = make_arena_rows(n, seed=seed, labelled=True, max_words=max_words, id_offset=id_offset)
    rows = {"id": [], "prompt": [], "response_a": [], "response_b": [], "winner": [], "language": []}
    for r in range(n):
        rows["id"].append(f"{int(src['id'][r]):08x}{rng.getrandbits(32):08x}")
        for c in PARTS:
            rows[c].append(parse_turns(src[c][r])[0])
        k = next(k for k, lab in enumerate(LABELS) if src[lab][r])
        rows["winner"].append(WSDM.labels[k if k < 2 else rng.randrange(2)])
        rows["language"].append(rng.choice(("English", "Chinese", "Russian", "Spanish")))
    if not labelled:
        del rows["winner"]
    return rows


def probe_rows(n: int) -> dict:
    """The ``n`` probe rows: unlabelled synthetic arena rows in the competition columns (``id``, JSON turn
    lists). The first ``k`` of ``probe_rows(n)`` are ``probe_rows(k)``."""
    return make_arena_rows(n, seed=PROBE_SEED, labelled=False, max_words=PROBE_MAX_WORDS)


def probe_turns(n: int) -> tuple:
    """``(ids, rows)`` of :func:`probe_rows`, each row the tuple of turn lists ``(prompt, response_a,
    response_b)`` (as predict.py's ``read_rows`` returns them)."""
    return turns_of(probe_rows(n))


# The arena-like rows of the export's fp16 check: fixed (seeded), so every export checks the same rows.
ARENA_LIKE_SEED = 20241
ARENA_LIKE_ROWS = 20  # the export's default: four rows of each kind below
ARENA_LIKE_ID_PREFIX = "arena-like"

# What arena conversations hold that lowercase English words do not: each kind is a bank of snippets.
ARENA_LIKE_SNIPPETS = {
    "code": (
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "```python\nimport numpy as np\nx = np.arange(10) ** 2\nprint(x[x % 3 == 0])\n```",
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
        "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;",
        "const f = async (url) => { const r = await fetch(url); return r.json(); };",
        '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }',
        'fn main() { let v: Vec<u64> = (1..=5).map(|x| x * x).collect(); println!("{:?}", v); }',
        "$ git rebase -i HEAD~3 && git push --force-with-lease origin feature/x",
    ),
    "maths": (
        "Solve $x^2 - 5x + 6 = 0$: $x = \\frac{5 \\pm \\sqrt{25 - 24}}{2}$, so $x \\in \\{2, 3\\}$.",
        "\\int_0^{\\infty} e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}",
        "∑_{k=1}^{n} k = n(n+1)/2, and ∀ε>0 ∃δ>0: |x−a|<δ ⇒ |f(x)−f(a)|<ε",
        "P(A|B) = P(B|A)·P(A) / P(B) = 0.9 × 0.01 / 0.0585 ≈ 0.1538",
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}^{-1} = -\\frac{1}{2}"
        "\\begin{pmatrix} 4 & -2 \\\\ -3 & 1 \\end{pmatrix}",
        "lim_{x→0} sin(x)/x = 1; d/dx [x³ + 2x] = 3x² + 2; √2 ≈ 1.41421356",
    ),
    "markup": (
        "## Summary\n\n| Model | Score |\n|---|---:|\n| A | **0.91** |\n| B | *0.87* |",
        '<div class="card"><h1>Title</h1><p>Hello &amp; welcome</p><br/></div>',
        "- [x] item one\n- [ ] item two\n> quoted text\n\n1. first\n2. second",
        '{"name": "arena", "values": [1, 2.5, null, true], "nested": {"k": "v"}}',
        "key: value\nlist:\n  - a: 1\n  - b: [2, 3]\n# comment",
        "[link](https://example.com/path?q=1&lang=en#top) ![img](a.png) `inline code`",
    ),
    "numbers": (
        "3.14159265358979323846264338327950288419716939937510582097494459230781640628",
        "123456789012345678901234567890 × 987654321098765432109876543210 = ?",
        "IBAN DE89 3704 0044 0532 0130 00, tel. +1-202-555-0173, 2024-06-30T23:59:59Z",
        "0x7FFFFFFFFFFFFFFF = 9223372036854775807; 1e-308; -2.2250738585072014e-308",
        "SHA-256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ),
    "multilingual": (
        "请用中文解释一下量子计算的基本原理，并举一个例子。",
        "この文章を英語に翻訳してください。ありがとうございます！",
        "인공지능의 장점과 단점은 무엇인가요?",
        "Напишите короткое стихотворение о зиме и снеге.",
        "ما هي عاصمة المملكة العربية السعودية؟",
        "कृपया इस वाक्य का अनुवाद करें।",
        "Xin chào, bạn có khỏe không? Çok teşekkür ederim. Ελληνικά γράμματα.",
        "Größe, Straße, naïve café, ¿Dónde está la biblioteca? ¡Olé! 😀🚀🔥👍🏽",
    ),
}
ARENA_LIKE_KINDS = tuple(ARENA_LIKE_SNIPPETS)


def _arena_like_text(rng, kind, n_snippets):
    """Snippets of ``kind`` (after the first, now and then one of another kind) between plain words, as
    arena turns mix them."""
    parts = []
    for i in range(n_snippets):
        k = kind if i == 0 or rng.random() < 0.8 else rng.choice(ARENA_LIKE_KINDS)
        parts.append(rng.choice(ARENA_LIKE_SNIPPETS[k]))
        if rng.random() < 0.5:
            parts.append(_sentence(rng, rng.randint(3, 12), 0))
    return "\n".join(parts)


def arena_like_rows(n: int = ARENA_LIKE_ROWS, *, seed: int = ARENA_LIKE_SEED) -> dict:
    """``n`` unlabelled rows that look like arena data, in the competition columns (``id``, JSON turn lists).

    Row ``k`` is of kind ``ARENA_LIKE_KINDS[k % 5]`` (code, maths, markup, long numbers, multilingual
    text and emoji), with its id ``"arena-like-{k}-{kind}"``: its prompt and both responses start with
    snippets of that kind (a template keeps every part's head), mixed with plain words and now and then
    another kind; about one row in five has two turns. Deterministic for a ``seed``; the first ``k`` of
    ``arena_like_rows(n)`` are ``arena_like_rows(k)``. The export computes them in fp16 and fp32
    (:class:`kdq.ExportConfig` ``fp16_atol``), because activations that overflow fp16 do so on
    particular tokens, which lowercase words (the probe rows) never contain.
    """
    rows = {k: [] for k in ("id", "prompt", "response_a", "response_b")}
    for k in range(n):
        rng = random.Random(f"{seed}-{k}")  # one stream per row: a prefix of the rows does not depend on n
        kind = ARENA_LIKE_KINDS[k % len(ARENA_LIKE_KINDS)]
        turns = 1 if rng.random() < 0.8 else 2
        rows["id"].append(f"{ARENA_LIKE_ID_PREFIX}-{k}-{kind}")
        rows["prompt"].append(json.dumps([_arena_like_text(rng, kind, 1) for _ in range(turns)], ensure_ascii=False))
        for col in ("response_a", "response_b"):
            rows[col].append(
                json.dumps([_arena_like_text(rng, kind, rng.randint(1, 3)) for _ in range(turns)], ensure_ascii=False)
            )
    return rows


def turns_of(raw: dict) -> tuple:
    """``(ids, rows)`` of rows in the competition columns (``id`` and JSON turn lists), each row the tuple of
    turn lists ``(prompt, response_a, response_b)`` (as predict.py's ``read_rows`` returns them)."""
    n = len(raw["id"])
    return list(raw["id"]), [tuple(parse_turns(raw[c][i]) for c in PARTS) for i in range(n)]


def arena_like_turns(n: int = ARENA_LIKE_ROWS) -> tuple:
    """``(ids, rows)`` of :func:`arena_like_rows`, as :func:`probe_turns` gives the probe rows."""
    return turns_of(arena_like_rows(n))
