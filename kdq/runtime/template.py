"""Arena row → token ids: the one template shared by training, calibration and inference.

This module imports nothing but the standard library (and its sibling ``constants``) on
purpose: ``kdq.export`` copies the ``kdq/runtime`` files whole into every exported folder, so
the notebook renders rows exactly as training did without importing kdq.

Template (documented in docs/template.md)::

    <bos>[Turn 1]
    Prompt: {prompt turn 1}
    Response A: {response_a turn 1}
    Response B: {response_b turn 1}
    [Turn 2]
    ...

Length budget. ``max_length`` covers everything, markers included. The markers are
fixed; the remaining budget ``B`` is split over the three parts (prompt, A, B) by
*water-filling with a floor*:

1. every part first gets ``min(len_p, floor(min_part_share * B))`` tokens (its floor);
2. the rest is poured into the parts that still want more, equally, so a short part is
   kept whole and the long ones share what is left (max-min fairness).

Each part's allowance is then split over its turns the same way, and every turn keeps
its head. No part or turn is cut to nothing while the budget holds one token for it.
When the markers of a very long conversation would eat more than half of ``max_length``,
the oldest turns are dropped first: the latest turns decide most arena votes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

PARTS = ("prompt", "response_a", "response_b")
_MARKERS = {
    "turn": "[Turn {i}]\n",
    "prompt": "Prompt: ",
    "response_a": "\nResponse A: ",
    "response_b": "\nResponse B: ",
}
_TURN_END = "\n"
MIN_MAX_LENGTH = 32  # the shortest max_length a TemplateConfig takes: markers and a little text


@dataclass(frozen=True)
class TemplateConfig:
    """How an arena row becomes a token sequence (each field's help is in its metadata)."""

    max_length: int = field(
        default=1024,
        metadata={"help": f"total tokens per row, special tokens and markers included (>= {MIN_MAX_LENGTH})"},
    )
    min_part_share: float = field(
        default=0.15,
        metadata={"help": "share of the text budget each of prompt / A / B is guaranteed when long enough (0 to 1/3)"},
    )
    add_bos: bool = field(default=True, metadata={"help": "prepend the tokenizer's BOS token when it has one"})

    def __post_init__(self):
        if not isinstance(self.max_length, int) or self.max_length < MIN_MAX_LENGTH:
            raise ValueError(f"TemplateConfig.max_length must be an int >= {MIN_MAX_LENGTH}, got {self.max_length!r}")
        if not (0.0 <= float(self.min_part_share) <= 1.0 / 3.0):
            raise ValueError(
                f"TemplateConfig.min_part_share must be in [0, 1/3], got {self.min_part_share!r}: "
                "three parts cannot each be guaranteed more than a third"
            )

    # kdq's config convention (kdq/config/base.py), by hand: the runtime imports nothing from kdq.
    def replace(self, **changes) -> TemplateConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_turns(value, *, row=None, column=None) -> list:
    """Parse one competition cell: a JSON list of strings (a turn may be ``null``).

    Returns a list of ``str``; a ``null`` turn becomes ``""``. Already-parsed lists pass through.
    Raises ``ValueError`` naming the row and column when the cell is not such a list.
    """
    where = f"row {row!r}, column {column!r}" if row is not None else f"column {column!r}"
    if isinstance(value, (list, tuple)):
        turns = list(value)
    else:
        if not isinstance(value, str):
            raise ValueError(
                f"{where}: expected a JSON list of strings, got {type(value).__name__}. "
                "Encode each cell as json.dumps([turn1, turn2, ...])."
            )
        try:
            turns = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{where}: not valid JSON ({err.msg} at char {err.pos}): {value[:80]!r}. "
                "Encode each cell as json.dumps([turn1, turn2, ...])."
            ) from None
        if not isinstance(turns, list):
            raise ValueError(
                f"{where}: expected a JSON list of strings, got JSON {type(turns).__name__}. "
                'Wrap a single turn as ["text"].'
            )
    out = []
    for t in turns:
        if t is None:
            out.append("")
        elif isinstance(t, str):
            out.append(_valid_unicode(t))
        else:
            raise ValueError(f"{where}: turn {t!r} is {type(t).__name__}, expected a string or null.")
    return out


def parse_plain(value, *, row=None, column=None) -> list:
    """Parse one WSDM Cup cell: a plain string is the single turn (``None`` becomes ``""``).

    Returns a one-element ``list[str]``; already-parsed lists pass through as in :func:`parse_turns`.
    Raises ``ValueError`` naming the row and column when the cell is neither.
    """
    if value is None:
        return [""]
    if isinstance(value, str):
        return [_valid_unicode(value)]
    if isinstance(value, (list, tuple)):
        return parse_turns(value, row=row, column=column)
    where = f"row {row!r}, column {column!r}" if row is not None else f"column {column!r}"
    raise ValueError(f"{where}: expected a string (the WSDM layout: one plain-text turn), got {type(value).__name__}.")


def parse_cell(value, scheme, *, row=None, column=None) -> list:
    """One text cell as a list of turns, the way ``scheme`` (a ``constants.LabelScheme``) writes them:
    plain strings (:func:`parse_plain`) or JSON lists of turns (:func:`parse_turns`)."""
    return (parse_plain if scheme.plain_turns else parse_turns)(value, row=row, column=column)


def _valid_unicode(text: str) -> str:
    """``text`` with lone UTF-16 surrogates (JSON escapes of a cut emoji, e.g. ``\\ud83d``) made U+FFFD.

    Such strings cannot be encoded as UTF-8, and the fast tokenizers reject them mid-run.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def water_fill(lengths, budget: int, floor: int = 0) -> list:
    """Split ``budget`` tokens over parts of the given ``lengths`` (max-min fair, with a floor).

    Every part first receives ``min(length, floor)``; the remainder goes to the parts that
    still want more, in equal shares, so short parts stay whole. Returns allowances with
    ``allow[i] <= lengths[i]`` and ``sum(allow) <= max(budget, 0)``.
    """
    lengths = [max(int(n), 0) for n in lengths]
    budget = max(int(budget), 0)
    if sum(lengths) <= budget:
        return list(lengths)
    allow = [min(n, floor) for n in lengths]
    if sum(allow) > budget:  # floor too generous for this budget: fall back to plain water-filling
        allow = [0] * len(lengths)
    left = budget - sum(allow)
    active = [i for i, n in enumerate(lengths) if n > allow[i]]
    while left > 0 and active:
        share = left // len(active)
        if share == 0:  # fewer tokens than parts: one each, in order
            for i in active[:left]:
                allow[i] += 1
            break
        for i in list(active):
            take = min(share, lengths[i] - allow[i])
            allow[i] += take
            left -= take
            if allow[i] == lengths[i]:
                active.remove(i)
    return allow


def _encode(tokenizer, texts):
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class RowTokens:
    """One arena row tokenized once, before any length budget (:func:`tokenize_row`).

    ``assemble(row_tokens, config)`` renders it under any ``max_length`` without tokenizing again:
    a length sweep tokenizes each row once and truncates it by the same rule as :func:`encode_row`.
    """

    bos: tuple  # () or (bos_token_id,)
    turn_markers: tuple  # per turn: the ids of "[Turn i]\n"
    part_markers: tuple  # per part (prompt, A, B): the ids of its marker
    turn_end: tuple  # the ids of the newline closing a turn
    segments: tuple  # per turn, per part: the text's ids (turn i, part j at [i][j])

    @property
    def text_lengths(self) -> tuple:
        """Tokens of text per part (prompt, response_a, response_b), summed over all turns."""
        return tuple(sum(len(turn[j]) for turn in self.segments) for j in range(len(PARTS)))

    @property
    def uncut_length(self) -> int:
        """Tokens the row takes with no length budget (BOS, every marker, every text token): what
        :func:`assemble` renders when nothing is cut."""
        per_turn = sum(len(p) for p in self.part_markers) + len(self.turn_end)
        return len(self.bos) + sum(len(t) + per_turn for t in self.turn_markers) + sum(self.text_lengths)

    @property
    def min_max_length(self) -> int:
        """The shortest ``max_length`` that leaves the row room for text: BOS, the markers of its last turn
        (older turns are dropped first) and one text token per part."""
        last = len(self.turn_markers[-1]) + sum(len(p) for p in self.part_markers) + len(self.turn_end)
        return len(self.bos) + last + len(PARTS)

    def swapped(self) -> RowTokens:
        """The row with responses A and B exchanged, without tokenizing again: each turn's text segments
        ``(prompt, a, b)`` become ``(prompt, b, a)`` and the markers stay. Equal to
        ``tokenize_row(tokenizer, prompt, response_b, response_a)`` (each text is tokenized on its own)."""
        return replace(self, segments=tuple((p, b, a) for p, a, b in self.segments))


@dataclass(frozen=True)
class Truncation:
    """What :func:`assemble` cut from one row: text tokens lost per part and whole turns dropped.

    ``lost`` maps each of :data:`PARTS` to the tokens of its text not kept (dropped turns included);
    ``dropped_turns`` counts the oldest turns left out because their markers would have taken more than
    half of ``max_length``; ``kept`` maps each part to the tokens of text kept.
    """

    lost: dict
    kept: dict
    dropped_turns: int

    @property
    def cut(self) -> bool:
        """Whether the row lost any text (or a turn) to the length budget."""
        return self.dropped_turns > 0 or any(self.lost.values())

    def to_dict(self) -> dict:
        return {"lost": dict(self.lost), "kept": dict(self.kept), "dropped_turns": self.dropped_turns}


def tokenize_row(tokenizer, prompt, response_a, response_b, *, add_bos: bool = True) -> RowTokens:
    """Tokenize one row's turns and the template markers, with no length budget yet.

    Args:
        tokenizer: a Hugging Face tokenizer (only ``__call__`` and ``bos_token_id`` are used).
        prompt, response_a, response_b: lists of turn strings (see :func:`parse_turns`); a
            missing turn in one part is an empty string.
        add_bos: prepend the tokenizer's BOS token when it has one (``TemplateConfig.add_bos``).
    """
    n_turns = max(len(prompt), len(response_a), len(response_b), 1)
    turns = [[(p[i] if i < len(p) else "") for p in (prompt, response_a, response_b)] for i in range(n_turns)]
    bos = (tokenizer.bos_token_id,) if (add_bos and getattr(tokenizer, "bos_token_id", None) is not None) else ()
    marker_texts = [_MARKERS["turn"].format(i=i + 1) for i in range(n_turns)]
    fixed = _encode(tokenizer, marker_texts + [_MARKERS[p] for p in PARTS] + [_TURN_END])
    seg = _encode(tokenizer, [text for turn in turns for text in turn])
    return RowTokens(
        bos=bos,
        turn_markers=tuple(tuple(t) for t in fixed[:n_turns]),
        part_markers=tuple(tuple(p) for p in fixed[n_turns : n_turns + 3]),
        turn_end=tuple(fixed[-1]),
        segments=tuple(tuple(tuple(seg[3 * i + j]) for j in range(3)) for i in range(n_turns)),
    )


def assemble(row: RowTokens, config: TemplateConfig) -> tuple:
    """Render a tokenized row under ``config.max_length``: ``(ids, Truncation)``.

    The length rule of the module docstring: the oldest turns are dropped while the markers would take
    more than half of ``max_length``, then the text budget is water-filled over the parts (with the
    ``min_part_share`` floor) and each part's allowance over its turns, every turn keeping its head.
    ``ValueError`` when ``max_length`` leaves no room for text after the markers.
    """
    n_turns = len(row.segments)
    bos = list(row.bos) if config.add_bos else []
    per_turn_overhead = [len(t) + sum(len(p) for p in row.part_markers) + len(row.turn_end) for t in row.turn_markers]

    # Drop the oldest turns while the markers alone would take more than half the budget.
    first = 0
    while first < n_turns - 1 and len(bos) + sum(per_turn_overhead[first:]) > config.max_length // 2:
        first += 1
    budget = config.max_length - len(bos) - sum(per_turn_overhead[first:])
    if budget < 3:
        raise ValueError(
            f"max_length={config.max_length} leaves no room for text after the template markers; raise max_length."
        )
    seg = [row.segments[i][j] for i in range(first, n_turns) for j in range(3)]  # turn first+k//3, part k%3
    part_len = [sum(len(seg[k]) for k in range(j, len(seg), 3)) for j in range(3)]
    part_allow = water_fill(part_len, budget, floor=math.floor(config.min_part_share * budget))
    seg_allow = [0] * len(seg)
    for j in range(3):
        idx = list(range(j, len(seg), 3))
        for k, a in zip(idx, water_fill([len(seg[k]) for k in idx], part_allow[j])):
            seg_allow[k] = a

    ids = list(bos)
    for t, i in enumerate(range(first, n_turns)):
        ids += row.turn_markers[i]
        for j in range(3):
            ids += list(row.part_markers[j]) + list(seg[3 * t + j][: seg_allow[3 * t + j]])
        ids += row.turn_end
    kept = {p: 0 for p in PARTS}
    for k, a in enumerate(seg_allow):
        kept[PARTS[k % 3]] += a
    # the final slice below never cuts: markers and allowances sum to at most max_length
    lost = {p: total - kept[p] for p, total in zip(PARTS, row.text_lengths)}
    return ids[: config.max_length], Truncation(lost=lost, kept=kept, dropped_turns=first)


def encode_row(tokenizer, prompt, response_a, response_b, config: TemplateConfig) -> list:
    """Render one arena row to token ids under ``config.max_length``.

    Args:
        tokenizer: a Hugging Face tokenizer (only ``__call__`` and ``bos_token_id`` are used).
        prompt, response_a, response_b: lists of turn strings (see :func:`parse_turns`).
    Returns:
        ``list[int]`` of length ``<= config.max_length``; :func:`tokenize_row` then :func:`assemble`,
        which also says what was cut.
    """
    return assemble(tokenize_row(tokenizer, prompt, response_a, response_b, add_bos=config.add_bos), config)[0]


def render(tokenizer, rows, config: TemplateConfig, *, swap: bool = False, bar=None) -> list:
    """Token ids of every row (``list[list[int]]``): :func:`encode_row` over ``rows``, a sequence of
    ``(prompt, response_a, response_b)`` turn lists. ``swap`` exchanges response A and B; ``bar``
    (optional, anything with ``update(n)``, e.g. a tqdm bar) counts the rows."""
    out = []
    for prompt, a, b in rows:
        out.append(encode_row(tokenizer, prompt, b, a, config) if swap else encode_row(tokenizer, prompt, a, b, config))
        if bar is not None:
            bar.update(1)
    return out
