"""Chosen/rejected preference pairs as arena rows: the three layouts, A/B placement, labels, bad rows."""

import json

import pandas as pd
import pytest

from kdq.data import load_arena, load_preference_pairs, row_keys
from kdq.runtime.constants import LMSYS, WSDM


def _msgs(*turns):
    return [{"role": role, "content": text} for role, text in turns]


def _ultrafeedback(n=6):
    rows = []
    for i in range(n):
        p = f"question {i}?"
        rows.append(
            {
                "prompt": p,
                "chosen": _msgs(("user", p), ("assistant", f"good answer {i}")),
                "rejected": _msgs(("user", p), ("assistant", f"bad answer {i}")),
            }
        )
    return rows


def _unplace(rows):
    """(prompt, chosen, rejected) per row, read back through the labels."""
    out = []
    for r in rows:
        chosen, rejected = (r["response_a"], r["response_b"]) if r["label"] == 0 else (r["response_b"], r["response_a"])
        out.append((r["prompt"], chosen, rejected))
    return out


def _round_trips(rows):
    """The rows written out in the LMSYS competition layout (JSON turn lists, one-hot winners) load back
    through load_arena as the same rows."""
    raw = {"id": rows["id"], **{c: [json.dumps(t) for t in rows[c]] for c in ("prompt", "response_a", "response_b")}}
    for k, name in enumerate(LMSYS.labels):
        raw[name] = [int(v == k) for v in rows["label"]]
    again = load_arena(raw)
    assert again.features == rows.features and again.to_list() == rows.to_list()


def test_ultrafeedback_messages_become_labelled_lmsys_rows():
    rows = load_preference_pairs(_ultrafeedback())
    assert rows.features == load_arena(rows).features and rows.features["label"].names == list(LMSYS.labels)
    assert rows["id"] == [f"pref-{i}" for i in range(6)]
    assert _unplace(rows) == [([f"question {i}?"], [f"good answer {i}"], [f"bad answer {i}"]) for i in range(6)]
    assert set(rows["label"]) <= {0, 1}
    _round_trips(rows)


def test_multi_turn_messages_share_their_history_and_keep_turn_lists():
    history = [("system", "be nice"), ("user", "hi"), ("assistant", "hello!"), ("user", "tell a joke")]
    row = {
        "prompt": "hi",
        "chosen": _msgs(*history, ("assistant", "a funny joke")),
        "rejected": _msgs(*history, ("assistant", "no.")),
    }
    ((prompt, chosen, rejected),) = _unplace(load_preference_pairs([row]))
    assert prompt == ["hi", "tell a joke"]  # the system message is dropped
    assert chosen == ["hello!", "a funny joke"] and rejected == ["hello!", "no."]
    # answers given without their user turn take the prompt column's (argilla-style sets)
    only_answers = {"prompt": "q?", "chosen": _msgs(("assistant", "yes")), "rejected": _msgs(("assistant", "no"))}
    assert _unplace(load_preference_pairs([only_answers])) == [(["q?"], ["yes"], ["no"])]


def test_hh_transcripts_split_into_turns():
    shared = "\n\nHuman: What is a cat?\n\nAssistant: An animal.\n\nHuman: Which one?"
    data = {
        "chosen": [shared + "\n\nAssistant: A small furry one.", "\n\nHuman: Hi\n\nAssistant: Hello"],
        "rejected": [shared + "\n\nAssistant: Dunno.", "\n\nHuman: Hi\n\nAssistant: Go away"],
    }
    rows = load_preference_pairs(pd.DataFrame(data), seed=1)
    assert _unplace(rows) == [
        (["What is a cat?", "Which one?"], ["An animal.", "A small furry one."], ["An animal.", "Dunno."]),
        (["Hi"], ["Hello"], ["Go away"]),
    ]


def test_plain_strings_with_ids_unlabelled_and_wsdm(tmp_path):
    data = pd.DataFrame({"uid": ["007", "8"], "question": ["q1", "q2"], "good": ["yes", "sure"], "bad": ["no", "nope"]})
    data.to_csv(tmp_path / "p.csv", index=False)
    kw = dict(prompt_column="question", chosen_column="good", rejected_column="bad", id_column="uid")
    rows = load_preference_pairs(tmp_path / "p.csv", **kw)
    assert rows["id"] == ["007", "8"] and _unplace(rows) == [(["q1"], ["yes"], ["no"]), (["q2"], ["sure"], ["nope"])]
    unlabelled = load_preference_pairs(data, labelled=False, **kw)
    assert unlabelled["label"] == [-1, -1] and unlabelled["response_a"] == rows["response_a"]  # same placement
    assert load_arena(unlabelled, unlabelled=True)["id"] == ["007", "8"]
    wsdm = load_preference_pairs(data, scheme="wsdm", **kw)
    assert wsdm.features["label"].names == list(WSDM.labels) and wsdm["label"] == rows["label"]


def test_jsonl_and_parquet_messages(tmp_path):
    data = pd.DataFrame(_ultrafeedback(4))
    data.to_json(tmp_path / "p.jsonl", orient="records", lines=True)
    data.to_parquet(tmp_path / "p.parquet")
    base = load_preference_pairs(data)
    for path in (tmp_path / "p.jsonl", tmp_path / "p.parquet"):
        got = load_preference_pairs(path)
        assert got["prompt"] == base["prompt"] and got["response_a"] == base["response_a"]
    as_text = data.assign(chosen=data["chosen"].map(json.dumps), rejected=data["rejected"].map(json.dumps))
    as_text.to_csv(tmp_path / "p.csv", index=False)  # messages as JSON text in a CSV
    assert load_preference_pairs(tmp_path / "p.csv")["response_b"] == base["response_b"]


def test_placement_is_about_half_reproducible_and_hides_the_winner_from_ids():
    data = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(400)]
    one, same, other = (load_preference_pairs(data, seed=s) for s in (0, 0, 1))
    share = sum(v == 0 for v in one["label"]) / 400
    assert 0.42 < share < 0.58
    assert one["label"] == same["label"] and one["response_a"] == same["response_a"]
    assert one["label"] != other["label"] and one["id"] == other["id"]
    assert all(r["response_a" if r["label"] == 0 else "response_b"] == [f"c{i}"] for i, r in enumerate(one))
    assert row_keys(one) == row_keys(other)  # the pair key ignores the placement


def test_bad_rows_are_collected_and_named():
    data = _ultrafeedback(5)
    data[1]["rejected"] = data[1]["chosen"]  # chosen == rejected
    data[2]["chosen"] = []  # empty
    data[3]["rejected"] = _msgs(("user", "another question"), ("assistant", "x"))  # history differs
    data[4]["chosen"] = _msgs(("assistant", "a"), ("user", "q"), ("user", "b"))  # role order broken
    with pytest.raises(ValueError) as err:
        load_preference_pairs(data, id_column=None)
    text = str(err.value)
    assert "4 of 5 rows cannot become arena rows" in text
    assert "row 1 (id 'pref-1'): chosen and rejected are the same text" in text
    assert "row 2 (id 'pref-2'): chosen is missing or empty" in text
    assert "row 3 (id 'pref-3'): chosen and rejected differ before their last assistant turn" in text
    assert "row 4 (id 'pref-4'): chosen's turns are out of order" in text
    assert "row 0" not in text and "drop these rows" in text


def test_bad_transcripts_and_listing_limit():
    data = {"chosen": ["no markers at all"] * 12, "rejected": ["\n\nHuman: a\n\nAssistant: b"] * 12}
    data["chosen"][0] = "\n\nHuman: a\n\nAssistant: c"
    with pytest.raises(ValueError) as err:
        load_preference_pairs(data)
    text = str(err.value)
    assert "11 of 12 rows" in text and "row 1 (id 'pref-1'): chosen is not a transcript" in text
    assert "row 10 " in text and "row 11 " not in text and "... and 1 more" in text


def test_missing_columns_and_duplicate_ids_say_the_fix():
    with pytest.raises(ValueError, match=r"no column 'chosen' \(chosen_column\).*Pass chosen_column="):
        load_preference_pairs([{"prompt": "p", "good": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match=r"no column 'prompt'.*prompt_column="):
        load_preference_pairs([{"q": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match="duplicate id 'x'"):
        load_preference_pairs([{"i": "x", "prompt": "p", "chosen": "a", "rejected": "b"}] * 2, id_column="i")
