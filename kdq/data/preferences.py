"""Chosen/rejected preference pairs as arena rows.

Preference data sets (UltraFeedback, Anthropic HH-RLHF, most reward-model data) give a prompt, a
*chosen* and a *rejected* response; an arena row gives a prompt, response A and response B and who won.
:func:`load_preference_pairs` places chosen at A or B at random (per row, from ``seed``) and writes the
winner, so the rows train an arena classifier or extend a transfer set (LMSYS 2024's 4th place drew extra
pairs from UltraFeedback).

Three layouts, told apart by the first row's ``chosen`` cell:

* **messages** (UltraFeedback-binarized, and chat-format sets): ``chosen`` / ``rejected`` are lists of
  ``{"role", "content"}`` messages (JSON text of one in a CSV). User turns are the prompt's turns,
  assistant turns the responses'; everything before the last assistant message must be the same in
  chosen and rejected. A leading ``system`` message is dropped (arena rows have none). Messages that
  start with the assistant (the prompt given only in ``prompt``) get ``prompt`` as their user turn.
* **transcript** (HH-RLHF): ``chosen`` / ``rejected`` are whole conversations,
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, and there is no prompt column to read; they are split into turns
  as messages are.
* **plain**: ``prompt``, ``chosen`` and ``rejected`` are strings, one turn each.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..runtime.constants import LMSYS, label_scheme
from ..runtime.template import PARTS
from .groups import normalise_text

MAX_LISTED = 10  # bad rows a ValueError lists
JSON_SUFFIXES = (".jsonl", ".json")
_SPEAKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")  # HH-RLHF's turn markers
_ROLES = {"Human": "user", "Assistant": "assistant"}


class _BadRow(Exception):
    """One row that cannot become an arena row; its message says why and the fix."""


def load_preference_pairs(
    source,
    *,
    seed: int = 0,
    labelled: bool = True,
    scheme=None,
    prompt_column: str = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    id_column: str | None = None,
):
    """Preference pairs (module doc: messages, transcript or plain layout) as canonical arena rows.

    Args:
        source: a ``datasets.Dataset``, a pandas DataFrame, a path (``.csv``, ``.parquet`` / ``.pq``,
            ``.jsonl`` / ``.json``), a list of row dicts or a dict of columns.
        seed: chooses, per row, whether chosen is response A or B (``numpy.random.default_rng(seed)``, one
            draw per row in order: about half each way; the same seed gives the same placement).
        labelled: write the winner (chosen wins) as the ``label``; ``False`` gives unlabelled rows
            (``label`` -1) for a transfer set.
        scheme: the label scheme to write (``"lmsys"``, the default, or ``"wsdm"``): LMSYS class 0
            ``winner_model_a`` when chosen is A, 1 ``winner_model_b`` when it is B; WSDM ``model_a`` /
            ``model_b``. No tie: preference pairs have none.
        prompt_column, chosen_column, rejected_column: the source's column names.
        id_column: the column holding row ids (kept as text); ``None`` numbers the rows ``pref-0``,
            ``pref-1``, ... by position. Ids never depend on the A/B placement.
    Returns:
        ``datasets.Dataset`` as :func:`kdq.data.load_arena` returns: ``id``, ``prompt`` / ``response_a`` /
        ``response_b`` (``list[str]``, one entry per turn) and ``label`` (the scheme's ``ClassLabel``).
    Raises:
        ValueError: a missing column (the message lists the columns found); rows that cannot be
        converted (a missing or empty chosen/rejected, chosen the same as rejected, an unparseable
        transcript, roles out of order, a history that differs between chosen and rejected), collected
        over all rows and listed (up to 10) by index and id, with the fix; a duplicate id.
    """
    import datasets
    import numpy as np

    scheme = LMSYS if scheme is None else label_scheme(scheme)
    wanted = [c for c in (prompt_column, chosen_column, rejected_column, id_column) if c]
    columns, found = _read_columns(source, wanted)
    for name, role in (
        (chosen_column, "chosen_column"),
        (rejected_column, "rejected_column"),
        (id_column, "id_column"),
    ):
        if name is not None and name not in columns:
            raise ValueError(
                f"preference data has no column {name!r} ({role}); found {found}. Pass {role}= the column's name."
            )
    n = len(columns[chosen_column])
    if n == 0:
        raise ValueError("preference data is empty: it has no rows.")
    prompts = columns.get(prompt_column, [None] * n)
    layout = _layout(columns[chosen_column])
    if layout == "plain" and prompt_column not in columns:
        raise ValueError(
            f"preference data: chosen/rejected are plain strings (not messages, not 'Human:/Assistant:' "
            f"transcripts), so the prompt is read from a column, but there is no column {prompt_column!r}; "
            f"found {found}. Pass prompt_column= the prompt's column."
        )
    ids = [str(v) for v in columns[id_column]] if id_column else [f"pref-{i}" for i in range(n)]
    chosen_is_a = np.random.default_rng(seed).random(n) < 0.5
    out = {"id": ids, **{c: [] for c in PARTS}, "label": []}
    bad = []
    for i in range(n):
        try:
            prompt, chosen, rejected = _convert(
                layout, prompts[i], columns[chosen_column][i], columns[rejected_column][i]
            )
        except _BadRow as err:
            bad.append(f"row {i} (id {ids[i]!r}): {err}")
            continue
        a, b = (chosen, rejected) if chosen_is_a[i] else (rejected, chosen)
        out["prompt"].append(prompt)
        out["response_a"].append(a)
        out["response_b"].append(b)
        # class 0 is "A won" and class 1 "B won" in every scheme (LabelScheme.swap exchanges them)
        out["label"].append((0 if chosen_is_a[i] else 1) if labelled else -1)
    if bad:
        listed = "\n  ".join(bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise ValueError(
            f"preference data: {len(bad)} of {n} rows cannot become arena rows ({layout} layout):\n  {listed}{more}\n"
            "Fix or drop these rows (e.g. datasets.Dataset.filter) and load again."
        )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            **{c: datasets.List(datasets.Value("string")) for c in PARTS},
            "label": datasets.ClassLabel(names=list(scheme.labels)),
        }
    )
    from .arena import load_arena

    rows = datasets.Dataset.from_dict(out, features=features)
    return load_arena(rows, scheme=scheme)  # the one validation of arena rows (duplicate ids, text)


# ---- reading ----------------------------------------------------------------------------------------------------


def _read_columns(source, wanted: list) -> tuple:
    """``(columns, names)``: the ``wanted`` columns ``source`` has as Python lists (a name it lacks is left
    out), and every column name it has, sorted."""
    if isinstance(source, dict):
        return {k: list(source[k]) for k in wanted if k in source}, sorted(source)
    if isinstance(source, (list, tuple)):
        for i, row in enumerate(source):
            if not isinstance(row, dict):
                raise ValueError(
                    f"preference data row {i}: expected a dict of column: value, got {type(row).__name__}."
                )
        present = {k for row in source for k in row}
        return {k: [row.get(k) for row in source] for k in wanted if k in present}, sorted(present)
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in JSON_SUFFIXES:
        import datasets

        path = Path(source)
        if not path.is_file():
            raise ValueError(f"preference data file {str(path)!r} does not exist.")
        table = datasets.Dataset.from_json(str(path))
    else:
        from .tables import read_table

        table = read_table(
            source,
            what="preference data",
            expects="a CSV, parquet or JSON Lines path, a pandas DataFrame, a list of row dicts, a dict of "
            "columns or a datasets.Dataset",
            text_columns=tuple(wanted),
        )
    present = [k for k in wanted if k in table.column_names]
    return (table.select_columns(present).to_dict() if present else {}), sorted(table.column_names)


def _messages(value):
    """``value`` as a list of message dicts, or ``None`` when it is not one (JSON text of one counts)."""
    if isinstance(value, str):
        text = value.lstrip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        return list(value)
    return None


def _layout(chosen: list) -> str:
    """``"messages"``, ``"transcript"`` or ``"plain"``, from the first chosen cell that holds anything."""
    first = next((v for v in chosen if v is not None and len(v) > 0), None)
    if first is None:
        return "plain"  # every row is empty: each is named as such
    if _messages(first) is not None:
        return "messages"
    if isinstance(first, str) and first.lstrip().startswith("Human:"):
        return "transcript"
    return "plain"


# ---- one row ----------------------------------------------------------------------------------------------------


def _convert(layout: str, prompt, chosen, rejected) -> tuple:
    """One pair → ``(prompt turns, chosen turns, rejected turns)``; raises :class:`_BadRow`."""
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None or (hasattr(value, "__len__") and len(value) == 0):
            raise _BadRow(f"{name} is missing or empty; every pair needs both responses.")
    if layout == "plain":
        for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise _BadRow(f"{name} is {type(value).__name__}, expected text like the other rows' (plain layout).")
        turns = ([prompt], [chosen], [rejected])
    else:
        read = _from_messages if layout == "messages" else _from_transcript
        c_history, c_last = read(chosen, prompt, "chosen")
        r_history, r_last = read(rejected, prompt, "rejected")
        if c_history != r_history:
            raise _BadRow(
                "chosen and rejected differ before their last assistant turn; both must continue the same "
                "conversation (the same user and assistant turns, then one differing answer)."
            )
        users = [m for role, m in c_history if role == "user"]
        answers = [m for role, m in c_history if role == "assistant"]
        turns = (users, answers + [c_last], answers + [r_last])
    if not any(normalise_text(t) for t in turns[0]):
        raise _BadRow("the prompt is empty; give each pair the prompt it answers.")
    for name, t in (("chosen", turns[1]), ("rejected", turns[2])):
        if not normalise_text(t[-1]):
            raise _BadRow(f"the {name} response is empty; every pair needs both responses.")
    if normalise_text(turns[1][-1]) == normalise_text(turns[2][-1]):
        raise _BadRow(
            "chosen and rejected are the same text (ignoring case and whitespace), which says nothing about "
            "preference; drop the row."
        )
    return turns


def _ordered(messages: list, what: str) -> tuple:
    """``(role, text)`` messages that alternate user, assistant, ..., assistant → ``(history, last answer)``."""
    for k, (role, _) in enumerate(messages):
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            order = ", ".join(r for r, _ in messages)
            raise _BadRow(
                f"{what}'s turns are out of order ({order}): turn {k} is {role!r} where {expected!r} belongs; "
                "turns must alternate user, assistant, ..., ending with the assistant's answer."
            )
    if len(messages) % 2:
        raise _BadRow(f"{what} ends with a user turn; it must end with the assistant's answer.")
    return messages[:-1], messages[-1][1]


def _from_messages(value, prompt, what: str) -> tuple:
    messages = _messages(value)
    if messages is None:
        raise _BadRow(f"{what} is not a list of {{'role', 'content'}} messages like the other rows'.")
    out = []
    for k, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not (content is None or isinstance(content, str)):
            raise _BadRow(f"{what} message {k} is {m!r}; each message needs a 'role' and a text 'content'.")
        if role == "system" and not out:
            continue
        out.append((role, content or ""))
    if out and out[0][0] == "assistant" and isinstance(prompt, str):
        out.insert(0, ("user", prompt))
    return _ordered(out, what)


def _from_transcript(value, prompt, what: str) -> tuple:
    if not isinstance(value, str):
        raise _BadRow(f"{what} is {type(value).__name__}, expected a 'Human: ... Assistant: ...' transcript.")
    parts = _SPEAKER.split(value.lstrip())
    if parts[0].strip() or len(parts) < 3:
        raise _BadRow(
            f"{what} is not a transcript of '\\n\\nHuman: ...\\n\\nAssistant: ...' turns "
            f"(starts {value[:60]!r}); give it in that form, or use the plain layout with a prompt column."
        )
    messages = [(_ROLES[parts[k]], parts[k + 1].strip()) for k in range(1, len(parts), 2)]
    return _ordered(messages, what)
