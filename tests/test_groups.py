"""Row groups: keys, union-find groups, leak-free splits, the train/held-out overlap check and its key file."""

import json
import logging
import warnings

import pytest

from kdq.data import (
    GroupKeys,
    LeakWarning,
    check_overlap,
    group_ids,
    group_keys,
    grouped_split,
    load_arena,
    normalise_text,
    read_group_keys,
    row_keys,
    write_group_keys,
)
from kdq.runtime.constants import FORMAT_KEY
from kdq.testing import make_arena_rows


def _rows(n=40, seed=0, id_offset=0):
    return make_arena_rows(n, seed=seed, max_words=20, id_offset=id_offset)


def _row(rid, prompt, a, b):
    return {"id": rid, "prompt": json.dumps(prompt), "response_a": json.dumps(a), "response_b": json.dumps(b)}


def test_normalise_text_casefolds_collapses_and_keeps_turns_apart():
    assert normalise_text(["  Hello\n\tWORLD  "]) == "hello world"
    assert normalise_text("Straße") == normalise_text(["STRASSE"])  # casefold, not lower
    assert normalise_text(["a b"]) != normalise_text(["a", "b"])  # turns never merge into one
    assert normalise_text(["a\x1fb"]) == normalise_text(["a b"])  # the separator is whitespace inside a turn
    assert normalise_text([None, "x"]) == normalise_text(["", "x"])


def test_keys_ignore_case_whitespace_and_ab_order_and_read_every_form():
    rows = [
        _row("1", ["What is 2+2?"], ["Four."], ["It is 4"]),
        _row("2", ["what  is 2+2? "], ["it is 4"], ["FOUR."]),  # same prompt, the pair swapped
        _row("3", ["What is 2+2?", "and 3+3?"], ["Four."], ["It is 4"]),  # another prompt (2 turns)
    ]
    keys = row_keys(rows)
    assert keys[0] == keys[1]
    assert keys[2][0] != keys[0][0] and keys[2][1] == keys[0][1]
    assert all(len(k) == 16 and int(k, 16) >= 0 for pair in keys for k in pair)
    canonical = load_arena(rows)
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    assert row_keys(canonical) == keys == row_keys(columns)


def test_group_ids_join_prompts_and_pairs_transitively_in_first_appearance_order():
    rows = [
        _row("u", ["unrelated"], ["x"], ["y"]),
        _row("a", ["p1"], ["r1"], ["r2"]),
        _row("b", ["p2"], ["r2"], ["r1"]),  # shares a's pair (swapped)
        _row("c", ["P2 "], ["r3"], ["r4"]),  # shares b's prompt: joins a through b
        _row("d", ["p3"], ["r5"], ["r6"]),
        _row("e", ["p4"], ["r6"], ["r5"]),  # shares d's pair
    ]
    assert group_ids(rows) == [0, 1, 1, 1, 2, 2]


def test_blank_parts_match_nothing():
    rows = [_row("1", [""], ["a"], ["b"]), _row("2", [None], ["c"], ["d"]), _row("3", ["q"], [""], [""])]
    rows.append(_row("4", ["r"], [""], [None]))
    assert row_keys(rows)[0][0] == "" and row_keys(rows)[2][1] == ""
    assert group_ids(rows) == [0, 1, 2, 3]


def _grouped_rows(n=120):
    """Arena rows where every 3rd row repeats an earlier prompt and every 7th swaps an earlier pair."""
    rows = load_arena(_rows(n)).to_list()
    for i in range(3, n, 3):
        rows[i]["prompt"] = list(rows[i - 2]["prompt"])
    for i in range(7, n, 7):
        rows[i]["response_a"], rows[i]["response_b"] = rows[i - 5]["response_b"], rows[i - 5]["response_a"]
    return load_arena(rows)


def test_grouped_split_keeps_groups_whole_meets_sizes_and_reproduces():
    rows = _grouped_rows()
    groups = group_ids(rows)
    assert len(set(groups)) < len(rows) - 30  # the planted repeats made real groups
    split = grouped_split(rows, eval_size=0.2, test_size=0.1, seed=3)
    assert set(split) == {"train", "eval", "test"}
    sizes = {k: len(v) for k, v in split.items()}
    assert sum(sizes.values()) == len(rows)
    assert abs(sizes["eval"] - 24) <= 3 and abs(sizes["test"] - 12) <= 3
    group_of = dict(zip(rows["id"], groups))
    sides = {}
    for name, part in split.items():
        for rid in part["id"]:
            assert sides.setdefault(group_of[rid], name) == name  # a group never spans two splits
    for held in ("eval", "test"):
        assert check_overlap(split["train"], split[held]).leaked == 0
    again = grouped_split(rows, eval_size=0.2, test_size=0.1, seed=3)
    assert all(again[k]["id"] == split[k]["id"] for k in split)
    other = grouped_split(rows, eval_size=0.2, test_size=0.1, seed=4)
    assert other["eval"]["id"] != split["eval"]["id"]
    assert split["train"].features == rows.features  # a Dataset is split as it is


def test_grouped_split_reads_raw_rows_and_leaves_test_out_by_default():
    split = grouped_split(_rows(30), eval_size=0.1)
    assert set(split) == {"train", "eval"} and len(split["eval"]) == 3
    assert set(split["train"]["label"]) <= {0, 1, 2}  # labels kept


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"eval_size": 0}, "eval_size must be above 0"),
        ({"eval_size": 1.0}, r"eval_size must be a fraction"),
        ({"eval_size": 0.5, "test_size": 0.5}, "leaves no training rows"),
        ({"test_size": -0.1}, "test_size must be a fraction"),
    ],
)
def test_grouped_split_rejects_bad_sizes(kw, match):
    with pytest.raises(ValueError, match=match):
        grouped_split(_rows(10), **kw)


def test_grouped_split_says_when_a_split_would_be_empty():
    rows = [_row(str(i), ["the same prompt"], [f"a{i}"], [f"b{i}"]) for i in range(10)]  # one group
    with pytest.raises(ValueError, match=r"'eval' split would be empty: 10 rows form 1 groups"):
        grouped_split(rows, eval_size=0.2)


def _planted():
    """40 training rows and 20 held-out rows; held-out rows h3 and h11 repeat training row 5's prompt
    (other case and spacing), h7 repeats training row 9's response pair swapped, h11 also row 2's pair."""
    train = load_arena(_rows(40)).to_list()
    held = load_arena(_rows(20, seed=1, id_offset=1000)).to_list()
    for r in held:
        r["id"] = "h" + str(int(r["id"]) - 1000)
    for i in (3, 11):
        held[i]["prompt"] = ["  " + t.upper().replace(" ", "   ") for t in train[5]["prompt"]]
    held[7]["response_a"], held[7]["response_b"] = train[9]["response_b"], train[9]["response_a"]
    held[11]["response_a"], held[11]["response_b"] = train[2]["response_a"], train[2]["response_b"]
    return load_arena(train), load_arena(held)


def test_overlap_counts_planted_prompts_and_swapped_pairs_and_warns(caplog):
    train, held = _planted()
    with pytest.warns(LeakWarning) as caught, caplog.at_level(logging.WARNING, logger="kdq.data"):
        report = check_overlap(train, held, what="eval rows")
    assert (report.shared_prompt, report.shared_pair, report.leaked) == (2, 2, 3)
    assert report.example_ids == ("h3", "h7", "h11")
    assert (report.n_heldout, report.n_train) == (20, 40)
    message = str(caught[0].message)
    assert "3 of the 20 eval rows (15.0%)" in message and "['h3', 'h7', 'h11']" in message
    assert "kdq.data.grouped_split" in message
    assert message in caplog.text
    assert report.to_dict() == {
        "what": "eval rows",
        "n_heldout": 20,
        "n_train": 40,
        "shared_prompt": 2,
        "shared_pair": 2,
        "leaked": 3,
        "share": 0.15,
        "example_ids": ["h3", "h7", "h11"],
        "instructions": 0,
    }


def test_overlap_strict_raises_and_no_leak_is_silent(caplog):
    train, held = _planted()
    with pytest.raises(ValueError, match=r"3 of the 20 held-out rows .*'h3', 'h7', 'h11'"):
        check_overlap(train, held, strict=True)
    clean = held.select([i for i in range(20) if i not in (3, 7, 11)])
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="kdq.data"):
        warnings.simplefilter("error")
        report = check_overlap(train, clean, strict=True)
    assert report.leaked == 0 and caplog.text == ""
    assert "none of the 17 held-out rows" in str(report)


def test_overlap_example_ids_stop_at_five():
    rows = load_arena(_rows(12))
    with pytest.warns(LeakWarning):
        report = check_overlap(rows, rows)
    assert report.leaked == 12 and report.example_ids == tuple(rows["id"][:5])


def test_group_keys_file_round_trip_and_table_lists(tmp_path):
    train, held = _planted()
    first, second = train.select(range(20)), train.select(range(20, 40))
    keys = group_keys([first, second])
    assert keys == group_keys(train) == group_keys(first).union(group_keys(second))
    assert keys.n_rows == 40 and len(keys.prompts) == 40
    path = write_group_keys(tmp_path / "model" / "kdq-train-groups.json", keys)
    assert read_group_keys(path) == keys
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    with pytest.warns(LeakWarning):
        from_file = check_overlap(read_group_keys(path), held)
    with pytest.warns(LeakWarning):
        from_list = check_overlap([first, group_keys(second)], held)
    assert from_file.to_dict() == from_list.to_dict()
    assert from_file.leaked == 3
    assert isinstance(keys, GroupKeys) and keys.prompts.isdisjoint({""})


def test_group_keys_file_errors(tmp_path):
    path = tmp_path / "keys.json"
    with pytest.raises(FileNotFoundError, match="kdq.distill"):
        read_group_keys(path)
    write_group_keys(path, GroupKeys(frozenset({"ab"}), frozenset(), 1))
    record = json.loads(path.read_text())
    assert record[FORMAT_KEY] == 1
    path.write_text(json.dumps({**record, FORMAT_KEY: 99}))
    with pytest.raises(ValueError, match="format 99.*upgrade kdq"):
        read_group_keys(path)
    path.write_text(json.dumps({**record, "pairs": "ab"}))
    with pytest.raises(ValueError, match="'pairs' must be a list"):
        read_group_keys(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a JSON"):
        read_group_keys(path)


def test_a_task_instruction_shared_by_many_rows_neither_groups_nor_leaks():
    """The demo's VADER rows ask four instructions for 800 distinct response pairs: a prompt that many rows share
    by design is no repeated conversation (kdq.data.groups, "Task instructions"); a repeated pair still is."""
    from kdq.data import instruction_prompts

    ask = ["Which sentence is more positive?"]
    train = [_row(f"t{i}", ask, [f"good {i}"], [f"bad {i}"]) for i in range(120)]
    held = [_row(f"h{i}", ask, [f"fine {i}"], [f"poor {i}"]) for i in range(30)]
    held.append(_row("h-dup", ask, ["bad 7"], ["good 7"]))  # train row t7, A and B exchanged
    held.append(_row("h-q", ["a rare question"], ["x"], ["y"]))
    assert len(instruction_prompts(row_keys(train))) == 1
    ids = group_ids(train + held)
    assert len(set(ids)) == len(ids) - 1  # only h-dup joins a group (t7's)
    with pytest.warns(LeakWarning, match=r"1 of the 32 .*1 prompt\(s\) shared by more than 5%"):
        report = check_overlap(train, held)
    assert report.leaked == 1 and report.shared_pair == 1 and report.shared_prompt == 0
    assert report.example_ids == ("h-dup",) and report.instructions == 1
    # below the bar (50 rows, 5%) a shared prompt still groups and leaks: a planted duplicate is caught
    few = train[:40] + [_row("h-same", ask, ["new"], ["other"])]
    assert instruction_prompts(row_keys(few)) == frozenset()
    assert len(set(group_ids(few))) == 1
    with pytest.warns(LeakWarning):
        assert check_overlap(train[:40], [few[-1]]).shared_prompt == 1
    # the record keeps the instructions: a folder's keys read back the same
    keys = group_keys(train)
    assert keys.instructions and not (keys.prompts & keys.instructions)
