"""Arena loading, validation, the row template and its length budget."""

import json

import pandas as pd
import pytest

from kdq.data import encode, load_arena, swap_ab
from kdq.runtime.template import TemplateConfig, encode_row, parse_turns, water_fill
from kdq.testing import make_arena_rows


def _df(n=4, **kw):
    return pd.DataFrame(make_arena_rows(n, seed=0, max_words=30, **kw))


def test_loads_csv_parquet_dataframe_and_dataset_alike(tmp_path):
    df = _df()
    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_parquet(tmp_path / "a.parquet")
    base = load_arena(df)
    for src in (tmp_path / "a.csv", tmp_path / "a.parquet", base, make_arena_rows(4, seed=0, max_words=30)):
        rows = load_arena(src)
        assert rows["id"] == base["id"] and rows["label"] == base["label"]
        assert rows["response_a"] == base["response_a"]
    assert set(base["label"]) <= {0, 1, 2}


def test_test_time_rows_have_unknown_labels():
    rows = load_arena(pd.DataFrame(make_arena_rows(3, labelled=False)))
    assert rows["label"] == [-1, -1, -1]
    with pytest.raises(ValueError, match="no labels"):
        load_arena(pd.DataFrame(make_arena_rows(3, labelled=False)), require_labels=True)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.drop(columns=["response_b"]), r"missing column.*response_b"),
        (lambda d: d.iloc[:0], "empty"),
        (lambda d: d.assign(id=["7", "7", "8", "9"]), r"duplicate id '7' at rows 0 and 1"),
        (
            lambda d: d.assign(prompt=['["ok"]', '["ok"]', "[not json", '["ok"]']),
            r"row '2', column 'prompt': not valid JSON",
        ),
        (lambda d: d.assign(prompt=['["ok"]', '{"a": 1}', '["ok"]', '["ok"]']), r"row '1', column 'prompt'.*JSON dict"),
        (lambda d: d.assign(winner_tie=[1, 1, 1, 1]), r"row '\d+': winner columns .* not one-hot"),
        (lambda d: d.drop(columns=["winner_tie"]), "not all of"),
    ],
)
def test_bad_input_names_the_row_or_column(mutate, match):
    with pytest.raises(ValueError, match=match):
        load_arena(mutate(_df()))


def test_null_turns_become_empty_strings():
    assert parse_turns('["a", null, "b"]') == ["a", "", "b"]
    with pytest.raises(ValueError, match="turn 3 is int"):
        parse_turns("[3]", row="r1", column="prompt")


def test_swap_exchanges_responses_and_labels():
    rows = load_arena(_df(8))
    sw = swap_ab(rows)
    assert sw["response_a"] == rows["response_b"] and sw["response_b"] == rows["response_a"]
    assert [{0: 1, 1: 0, 2: 2}[v] for v in rows["label"]] == sw["label"]


def test_water_fill_keeps_short_parts_whole_and_never_starves_a_part():
    assert water_fill([10, 500, 3000], 1000, floor=150) == [10, 495, 495]
    assert water_fill([10, 20, 30], 100) == [10, 20, 30]
    alloc = water_fill([5000, 4, 900], 300, floor=45)
    assert alloc[1] == 4 and min(alloc) > 0 and sum(alloc) <= 300


def test_long_rows_fit_max_length_with_every_part_present(tiny_tokenizer):
    long = " ".join(["word"] * 3000)
    cfg = TemplateConfig(max_length=128, min_part_share=0.2)
    ids = encode_row(tiny_tokenizer, ["short prompt"], [long], [long], cfg)
    text = tiny_tokenizer.decode(ids)
    assert len(ids) == 128
    assert "short prompt" in text  # the short prompt is kept whole
    a = text.split("Response A: ")[1].split("Response B: ")[0]
    b = text.split("Response B: ")[1]
    assert a.count("word") > 10 and b.count("word") > 10  # both long responses keep a real share


def test_many_turns_drop_the_oldest_first(tiny_tokenizer):
    cfg = TemplateConfig(max_length=64)
    turns = [f"turn{i}" for i in range(40)]
    ids = encode_row(tiny_tokenizer, turns, turns, turns, cfg)
    text = tiny_tokenizer.decode(ids)
    assert len(ids) <= 64 and "turn39" in text and "turn0 " not in text


def test_encode_adds_ids_and_lengths(tiny_tokenizer):
    rows = load_arena(_df(6))
    enc = encode(rows, tiny_tokenizer, TemplateConfig(max_length=64))
    assert enc["length"] == [len(x) for x in enc["input_ids"]] and max(enc["length"]) <= 64
    swapped = encode(rows, tiny_tokenizer, TemplateConfig(max_length=64), swap=True)
    assert swapped["input_ids"] != enc["input_ids"]


def test_template_config_is_validated():
    with pytest.raises(ValueError, match="max_length"):
        TemplateConfig(max_length=8)
    with pytest.raises(ValueError, match="min_part_share"):
        TemplateConfig(min_part_share=0.5)
    assert json.loads(json.dumps(TemplateConfig().to_dict()))["max_length"] == 1024


def test_assemble_renders_a_tokenized_row_at_every_length_as_encode_row_does(tiny_tokenizer):
    """A length sweep tokenizes once: tokenize_row + assemble equals encode_row at every max_length,
    and the Truncation record adds up (kept + lost = the text's tokens; a short enough budget drops turns)."""
    from kdq.runtime.template import PARTS, assemble, tokenize_row

    tok = tiny_tokenizer
    words = "the quick brown fox jumps over a lazy dog while it rains".split()
    prompt = [" ".join(words[: 3 + i]) for i in range(6)]
    a = [" ".join(words * (1 + i)) for i in range(6)]
    b = ["short", "", "x y z", "q", "r s", "t"]
    row = tokenize_row(tok, prompt, a, b)
    assert row.text_lengths == tuple(
        sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in p) for p in (prompt, a, b)
    )
    seen_cut, seen_drop = False, False
    for max_length in (96, 128, 160, 256, 512, 4096):
        cfg = TemplateConfig(max_length=max_length)
        ids, cut = assemble(row, cfg)
        assert ids == encode_row(tok, prompt, a, b, cfg)
        assert len(ids) <= max_length
        for part, total in zip(PARTS, row.text_lengths):
            assert cut.kept[part] + cut.lost[part] == total and cut.lost[part] >= 0
        seen_cut |= cut.cut
        seen_drop |= cut.dropped_turns > 0
    assert seen_cut and seen_drop
    assert not assemble(row, TemplateConfig(max_length=4096))[1].cut
    assert assemble(row, TemplateConfig(max_length=96))[1].lost["response_a"] > 0
