"""Row groups: which arena rows are the same conversation, leak-free splits, and the train/held-out check.

Arena data repeat themselves: the same prompt is asked many times (to other model pairs), and the same
two responses come back with A and B exchanged. Rows that share either are not independent: a model
trained on one scores its twin as if it had seen it, so a held-out figure on such rows is optimistic,
and a bootstrap over single rows gives intervals too narrow.

Keys. A row's **prompt key** is the hash of its normalised prompt (:func:`normalise_text`); its
**pair key** is the hash of its two normalised responses in sorted order (so the A/B-swapped row has
the same pair key). A hash is the first 16 hex digits of the SHA-1 of the UTF-8 text: short, stable
across runs and machines, and it stores no text. A part with no text in any turn (an empty prompt,
two empty responses) has the key ``""``, which matches nothing: an empty prompt says nothing about
which conversation a row is.

**Groups** (:func:`group_ids`): rows sharing a prompt key or a pair key, transitively (union-find),
are one group. :func:`grouped_split` puts whole groups on one side (scikit-learn's ``GroupShuffleSplit``
does the same for groups one already has); :func:`check_overlap` counts held-out rows whose prompt or pair
a model trained on; :func:`kdq.evaluate.stats.paired_intervals` resamples whole groups.

**Task instructions.** A prompt that many rows share by design ("Which response is more helpful?", the
demo's four VADER instructions) says nothing about which conversation a row is: a prompt shared by more than
:data:`INSTRUCTION_SHARE` of a row set's rows, and by more than :data:`INSTRUCTION_MIN_ROWS` of them, is read
as an instruction (:func:`instruction_prompts`). It joins no rows into a group and counts as no overlap; the
rows' pair keys still do. A repeated arena question ("hi", a popular puzzle) stays far below that share.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..runtime.constants import FORMAT_KEY, check_format
from ..runtime.template import PARTS
from ..utils.atomic import atomic_write_json

log = logging.getLogger("kdq.data")

GROUP_KEYS_FORMAT = 1  # TRAIN_GROUPS_FILE; bump it when normalise_text or the hash changes
KEY_CHARS = 16  # hex digits of the SHA-1 a key keeps
TURN_SEPARATOR = "\x1f"  # between the turns of a part (whitespace to str.split, so never left in a turn)
PAIR_SEPARATOR = "\x1e"  # between the two responses of a pair (likewise)
MAX_EXAMPLE_IDS = 5
# A prompt shared by more than this share of a row set's rows, and by more than INSTRUCTION_MIN_ROWS of them, is a
# task instruction, not a repeated conversation (module doc).
INSTRUCTION_SHARE = 0.05
INSTRUCTION_MIN_ROWS = 50


class LeakWarning(UserWarning):
    """Held-out rows share a prompt or a response pair with the rows a model trained on."""


def normalise_text(turns) -> str:
    """The text a key hashes: each turn casefolded (``str.casefold``), its whitespace runs collapsed to one
    space and stripped; the turns joined by :data:`TURN_SEPARATOR` (``"\\x1f"``, which the collapsing
    removes from the turns, so two turn lists never join to the same text).

    Args:
        turns: a list of turns (``str``; ``None`` is ``""``), or one string (one turn).
    Returns:
        ``str``; ``""`` only for one empty turn. ``normalise_text(["Hi  there\\n"]) == "hi there"``.
    """
    if turns is None or isinstance(turns, str):
        turns = [turns]
    return TURN_SEPARATOR.join(" ".join((t or "").casefold().split()) for t in turns)


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_CHARS]


def _blank(text: str) -> bool:
    return not text.replace(TURN_SEPARATOR, "").replace(PAIR_SEPARATOR, "")


def _key(text: str) -> str:
    return "" if _blank(text) else _hash(text)


def _keys_of(prompt, response_a, response_b) -> tuple:
    pair = PAIR_SEPARATOR.join(sorted((normalise_text(response_a), normalise_text(response_b))))
    return _key(normalise_text(prompt)), _key(pair)


# ---- reading rows -------------------------------------------------------------------------------------------


def _canonical(rows):
    """``rows`` as a ``datasets.Dataset`` whose text columns are turn lists: canonical rows as they are,
    anything else through :func:`kdq.data.load_arena` (``unlabelled=True``: only the text is read)."""
    import datasets

    if isinstance(rows, datasets.Dataset) and _has_turn_lists(rows):
        return rows
    from .arena import load_arena

    return load_arena(rows, unlabelled=True)


def _has_turn_lists(rows) -> bool:
    import datasets

    def is_list(feature):
        return isinstance(feature, (datasets.List, datasets.LargeList, datasets.Sequence))

    return "id" in rows.column_names and all(c in rows.column_names and is_list(rows.features[c]) for c in PARTS)


def _ids_and_keys(rows) -> tuple:
    """``(ids, keys)`` of ``rows`` (any form :func:`row_keys` takes): ``list[str]``, ``list[(prompt, pair)]``."""
    table = _canonical(rows)
    ids, keys = [], []
    for batch in table.select_columns(["id", *PARTS]).iter(batch_size=1000):
        ids.extend(str(i) for i in batch["id"])
        keys.extend(_keys_of(p, a, b) for p, a, b in zip(*(batch[c] for c in PARTS)))
    return ids, keys


def row_keys(rows) -> list:
    """Per row, ``(prompt key, pair key)``: 16-hex-digit hashes of the normalised prompt and of the
    normalised responses in sorted order (module doc); ``""`` for a part with no text.

    Args:
        rows: a ``datasets.Dataset`` as :func:`kdq.data.load_arena` returns, or anything it reads (a dict
            of columns, a list of row dicts, a DataFrame, a CSV/parquet path); cells may be JSON lists of
            turns or turn lists (WSDM: plain strings), read by the runtime's rule
            (:func:`kdq.runtime.template.parse_cell` with the rows' scheme).
    Returns:
        ``list[tuple[str, str]]``, one per row, in row order.
    Raises:
        ValueError: rows :func:`kdq.data.load_arena` rejects (its message names the row and the fix).
    """
    return _ids_and_keys(rows)[1]


def instruction_prompts(keys) -> frozenset:
    """The prompt keys of ``keys`` (:func:`row_keys`' list) shared by more than :data:`INSTRUCTION_SHARE` of the
    rows and by more than :data:`INSTRUCTION_MIN_ROWS` of them: task instructions (module doc)."""
    counts = Counter(p for p, _ in keys if p)
    bar = max(INSTRUCTION_MIN_ROWS, INSTRUCTION_SHARE * len(keys))
    return frozenset(p for p, c in counts.items() if c > bar)


def _group_ids_of(keys) -> list:
    instructions = instruction_prompts(keys)
    keys = [("" if p in instructions else p, r) for p, r in keys]
    parent = list(range(len(keys)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = {}  # ("p" | "r", key) -> the first row holding it
    for r, (prompt, pair) in enumerate(keys):
        for key in (("p", prompt), ("r", pair)):
            if not key[1]:
                continue
            other = first.setdefault(key, r)
            if other != r:
                a, b = find(other), find(r)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    numbers, out = {}, []
    for r in range(len(keys)):
        out.append(numbers.setdefault(find(r), len(numbers)))
    return out


def group_ids(rows) -> list:
    """One group id per row: rows sharing a prompt key or a pair key (:func:`row_keys`), transitively, form
    one group (union-find); a task instruction's prompt key (:func:`instruction_prompts`) joins no rows. Ids are
    ``0, 1, ...`` in order of each group's first row: deterministic.

    Args:
        rows: as :func:`row_keys`.
    Returns:
        ``list[int]`` of length ``N``.
    """
    return _group_ids_of(row_keys(rows))


# ---- grouped split ------------------------------------------------------------------------------------------


def grouped_split(rows, *, eval_size: float = 0.1, test_size: float = 0.0, seed: int = 0):
    """Split arena rows into ``train`` / ``eval`` (/ ``test``) with every group (:func:`group_ids`) whole on
    one side, so no held-out row shares a prompt or a response pair with a training row.

    Groups are shuffled with ``seed`` (numpy ``default_rng``) and dealt in that order: a group goes to the
    held-out split furthest below its target (``size * N`` rows) that it brings closer to it, else to train.
    Sizes are met as closely as the groups allow (a group larger than twice a target stays in train).
    Each split keeps the rows' order.

    Args:
        rows: as :func:`row_keys`. A ``datasets.Dataset`` is split as it is (``Dataset.select``); other
            sources are read by :func:`kdq.data.load_arena` (labels kept) first.
        eval_size: fraction of rows for ``eval``, in (0, 1).
        test_size: fraction of rows for ``test``, in [0, 1); 0 leaves ``test`` out.
        seed: the shuffle's seed; the same rows and seed give the same split.
    Returns:
        ``datasets.DatasetDict`` with ``train``, ``eval`` and (``test_size > 0``) ``test``.
    Raises:
        ValueError: a size outside its range or ``eval_size + test_size >= 1``; a split that would be
        empty (too few groups, or groups too large for the sizes).
    """
    import datasets
    import numpy as np

    for name, value, low_open in (("eval_size", eval_size, True), ("test_size", test_size, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 1):
            raise ValueError(f"grouped_split: {name} must be a fraction of the rows in [0, 1), got {value!r}.")
        if low_open and value == 0:
            raise ValueError(f"grouped_split: {name} must be above 0 (a fraction of the rows, e.g. 0.1), got 0.")
    if eval_size + test_size >= 1:
        raise ValueError(
            f"grouped_split: eval_size + test_size = {eval_size + test_size:g} leaves no training rows; "
            "their sum must be below 1."
        )
    if not isinstance(rows, datasets.Dataset):
        from .arena import load_arena

        rows = load_arena(rows)
    groups = np.asarray(group_ids(rows), dtype=np.int64)
    n = len(groups)
    sizes = np.bincount(groups)
    held = {"eval": float(eval_size) * n}
    if test_size > 0:
        held["test"] = float(test_size) * n
    have = dict.fromkeys(held, 0)
    side = np.zeros(len(sizes), dtype=np.int64)  # 0 train, 1 eval, 2 test
    codes = {name: i + 1 for i, name in enumerate(held)}
    for g in np.random.default_rng(seed).permutation(len(sizes)):
        size = int(sizes[g])
        for name in sorted(held, key=lambda s: have[s] - held[s]):  # the split furthest below its target first
            if abs(have[name] + size - held[name]) < abs(have[name] - held[name]):
                have[name] += size
                side[g] = codes[name]
                break
    where = side[groups]
    out = {}
    for name, code in (("train", 0), *codes.items()):
        index = np.flatnonzero(where == code)
        if index.size == 0:
            raise ValueError(
                f"grouped_split: the {name!r} split would be empty: {n} rows form {len(sizes)} groups (largest "
                f"{int(sizes.max())} rows) and cannot give eval_size={eval_size:g}, test_size={test_size:g}. "
                "Use more rows, or sizes the groups can fill (see kdq.data.group_ids)."
            )
        out[name] = rows.select(index.tolist())
    return datasets.DatasetDict(out)


# ---- the keys a model trained on ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupKeys:
    """The prompt and pair keys (:func:`row_keys`) of the rows a model trained on, without their text.

    ``prompts`` / ``pairs``: ``frozenset[str]`` of 16-hex-digit keys (blank parts and task instructions left
    out); ``n_rows``: how many rows they came from; ``instructions``: the prompt keys read as task instructions
    (:func:`instruction_prompts`), which count as no overlap.
    """

    prompts: frozenset
    pairs: frozenset
    n_rows: int
    instructions: frozenset = frozenset()

    def union(self, other: GroupKeys) -> GroupKeys:
        """The keys of both row sets (a training set and its transfer set); ``n_rows`` adds up; a prompt that is an
        instruction in either set is one in both."""
        instructions = self.instructions | other.instructions
        return GroupKeys(
            (self.prompts | other.prompts) - instructions,
            self.pairs | other.pairs,
            self.n_rows + other.n_rows,
            instructions,
        )


def group_keys(rows) -> GroupKeys:
    """The :class:`GroupKeys` of ``rows`` (as :func:`row_keys` takes, or a list of such row tables, or of
    ``GroupKeys``)."""
    if isinstance(rows, GroupKeys):
        return rows
    if _is_table_list(rows):
        out = GroupKeys(frozenset(), frozenset(), 0)
        for table in rows:
            out = out.union(group_keys(table))
        return out
    keys = row_keys(rows)
    instructions = instruction_prompts(keys)
    prompts = frozenset(p for p, _ in keys if p and p not in instructions)
    return GroupKeys(prompts, frozenset(r for _, r in keys if r), len(keys), instructions)


def _is_table_list(value) -> bool:
    """A list of row tables (not a list of row dicts): its items are tables, paths, or ``GroupKeys``."""
    import datasets

    if not isinstance(value, (list, tuple)) or not value:
        return False

    def is_table(item):
        if isinstance(item, (datasets.Dataset, GroupKeys, str, os.PathLike)):
            return True
        if isinstance(item, dict):  # a dict of columns, not a row dict
            return isinstance(item.get("id"), (list, tuple))
        return hasattr(item, "columns") or hasattr(item, "column_names")  # DataFrame, Arrow table

    return all(is_table(item) for item in value)


def write_group_keys(path, keys: GroupKeys) -> Path:
    """Write ``keys`` as JSON to ``path`` (a model folder's ``TRAIN_GROUPS_FILE``), atomically: a temporary
    file beside it, then a rename. Returns the path."""
    path = Path(path)
    record = {
        FORMAT_KEY: GROUP_KEYS_FORMAT,
        "what": "training-row keys: sha1[:16] of kdq.data.groups.normalise_text of each prompt / sorted pair",
        "n_rows": int(keys.n_rows),
        "prompts": sorted(keys.prompts),
        "pairs": sorted(keys.pairs),
        "instructions": sorted(keys.instructions),
    }
    atomic_write_json(path, record, indent=0)
    return path


def read_group_keys(path) -> GroupKeys:
    """The :class:`GroupKeys` :func:`write_group_keys` wrote to ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, a format newer than this code reads, or a record without its key lists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: a model folder carries its training-row keys when kdq.distill trained it; "
            "for another model, pass its training rows to kdq.data.check_overlap instead."
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a JSON training-row key file ({err}); write it with write_group_keys."
        ) from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds JSON {type(record).__name__}, not a training-row key record.")
    check_format(record, GROUP_KEYS_FORMAT, str(path), "upgrade kdq to read it")
    lists = {k: record.get(k, [] if k == "instructions" else None) for k in ("prompts", "pairs", "instructions")}
    for name, values in lists.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{path}: {name!r} must be a list of key strings; rewrite it with write_group_keys.")
    n_rows = record.get("n_rows")
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
        raise ValueError(f"{path}: 'n_rows' must be a count, got {n_rows!r}; rewrite it with write_group_keys.")
    return GroupKeys(frozenset(lists["prompts"]), frozenset(lists["pairs"]), n_rows, frozenset(lists["instructions"]))


# ---- the overlap check ------------------------------------------------------------------------------------------


def recorded_group_keys(*models) -> GroupKeys | None:
    """The training-row keys the model folders among ``models`` record (their ``TRAIN_GROUPS_FILE``, written by
    :func:`kdq.distill`), united; ``None`` when none is a folder with a record (a model object, a Hub id, a model
    trained elsewhere)."""
    from ..runtime.constants import TRAIN_GROUPS_FILE

    found = [
        read_group_keys(Path(m, TRAIN_GROUPS_FILE))
        for m in models
        if isinstance(m, (str, os.PathLike)) and Path(m, TRAIN_GROUPS_FILE).is_file()
    ]
    if not found:
        return None
    keys = found[0]
    for k in found[1:]:
        keys = keys.union(k)
    return keys


def carry_group_keys(model, folder) -> None:
    """Write the training-row keys ``model`` records (:func:`recorded_group_keys`) into ``folder``: a model made
    from it (shrunk, quantized) learnt from the same rows, so held-out rows are checked against them too."""
    from ..runtime.constants import TRAIN_GROUPS_FILE

    keys = recorded_group_keys(model)
    if keys is not None:
        write_group_keys(Path(folder, TRAIN_GROUPS_FILE), keys)


@dataclass(frozen=True)
class OverlapReport:
    """How many held-out rows share a prompt key or a pair key with the training rows.

    ``leaked``: rows sharing either (``shared_prompt`` / ``shared_pair`` count each on its own, so a row
    may be in both); ``example_ids``: up to 5 leaked rows' ids, in row order; ``instructions``: the training
    prompts read as task instructions (:func:`instruction_prompts`), which counted as no overlap.
    """

    what: str
    n_heldout: int
    n_train: int
    shared_prompt: int
    shared_pair: int
    leaked: int
    example_ids: tuple
    instructions: int = 0

    @property
    def share(self) -> float:
        """``leaked / n_heldout``."""
        return self.leaked / self.n_heldout if self.n_heldout else 0.0

    def to_dict(self) -> dict:
        return {
            "what": self.what,
            "n_heldout": self.n_heldout,
            "n_train": self.n_train,
            "shared_prompt": self.shared_prompt,
            "shared_pair": self.shared_pair,
            "leaked": self.leaked,
            "share": self.share,
            "example_ids": list(self.example_ids),
            "instructions": self.instructions,
        }

    def __str__(self) -> str:
        ignored = (
            f" ({self.instructions} prompt(s) shared by more than {INSTRUCTION_SHARE:.0%} of the training rows read as "
            "task instructions, not repeats)"
            if self.instructions
            else ""
        )
        if not self.leaked:
            return (
                f"none of the {self.n_heldout} {self.what} shares a prompt or a response pair with the "
                f"{self.n_train} training rows{ignored}."
            )
        return (
            f"{self.leaked} of the {self.n_heldout} {self.what} ({self.share:.1%}) share a prompt or a response "
            f"pair (A/B order ignored) with the {self.n_train} training rows{ignored} ({self.shared_prompt} the "
            f"prompt, {self.shared_pair} the pair), e.g. ids {list(self.example_ids)}: figures on them are optimistic. "
            "Split by group so no prompt or response pair is on both sides: "
            "kdq.data.grouped_split(rows, eval_size=...), or drop these rows."
        )


def check_overlap(train, heldout, *, strict: bool = False, what: str = "held-out rows") -> OverlapReport:
    """Count ``heldout`` rows whose prompt key or pair key (:func:`row_keys`) a model trained on.

    Args:
        train: the training rows (as :func:`row_keys` takes), a list of row tables (training + transfer
            set), or a :class:`GroupKeys` (:func:`read_group_keys` of a model folder's ``TRAIN_GROUPS_FILE``).
        heldout: the rows scored as held-out (as :func:`row_keys` takes).
        strict: raise instead of warning.
        what: the held-out rows' name in the message (``"eval rows"``).
    Returns:
        :class:`OverlapReport`. With no leak nothing is said.
    Raises:
        ValueError: ``strict=True`` and some row leaked; the message gives the counts, the share, example ids
        and the fix. With ``strict=False`` the same message is logged (``kdq.data``) and issued as a
        :class:`LeakWarning`.
    """
    known = group_keys(train)
    ids, keys = _ids_and_keys(heldout)
    prompt = [bool(p) and p in known.prompts for p, _ in keys]
    pair = [bool(r) and r in known.pairs for _, r in keys]
    leaked = [i for i, (a, b) in zip(ids, zip(prompt, pair)) if a or b]
    report = OverlapReport(
        what=what,
        n_heldout=len(keys),
        n_train=known.n_rows,
        shared_prompt=sum(prompt),
        shared_pair=sum(pair),
        leaked=len(leaked),
        example_ids=tuple(leaked[:MAX_EXAMPLE_IDS]),
        instructions=len(known.instructions),
    )
    if report.leaked:
        if strict:
            raise ValueError(str(report))
        log.warning("%s", report)
        warnings.warn(str(report), LeakWarning, stacklevel=2)
    return report
