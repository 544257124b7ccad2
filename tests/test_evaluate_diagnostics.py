"""Truncation diagnostics and position bias (kdq.evaluate.diagnostics), by hand and on tiny real models."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import kdq
from kdq.data import encode
from kdq.evaluate import EvalConfig, compare, evaluate
from kdq.evaluate.diagnostics import (
    FLIP_RATE_WARN,
    position_bias,
    subset_comparison,
    swap_disagreement,
    truncation_summary,
)
from kdq.evaluate.metrics import HEADLINES, row_errors, row_log_losses
from kdq.evaluate.per_row import row_table_header
from kdq.evaluate.recommend import recommend
from kdq.evaluate.render import LOST_COLUMNS, SWAP_COLUMN, render_rows
from kdq.runtime.template import PARTS, assemble, tokenize_row
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = kdq.TemplateConfig(max_length=160)
CFG = EvalConfig(template=TEMPLATE, batch_size=4, progress=False, bootstrap_samples=300)
PERM = [1, 0, 2]


# --------------------------------------------------------------------------- pure numpy
def test_flip_rate_and_disagreement_in_closed_form():
    """10 rows; the swapped order changes the arg-max of exactly rows 0, 3 and 7 and moves P(A) by 0.1 on each row."""
    n = 10
    p = np.tile([0.5, 0.3, 0.2], (n, 1))
    q = p.copy()
    q[:, 0] -= 0.1
    q[:, 2] += 0.1  # A still first on the other rows: 0.4 > 0.3
    for i in (0, 3, 7):
        q[i] = [0.4, 0.6, 0.0]  # B wins in the swapped order (mapped back): a flip, P(A) down 0.1
    got = swap_disagreement(p, q)
    assert got == {"rows": 10, "flips": 3, "flip_rate": 0.3, "mean_disagreement": pytest.approx(0.1)}
    assert swap_disagreement(p, p)["flip_rate"] == 0.0 and swap_disagreement(p, p)["mean_disagreement"] == 0.0
    # gated: only the rows scored both ways count, and the summary says so
    gated = np.full_like(q, np.nan)
    gated[[0, 1]] = q[[0, 1]]
    bias = position_bias(p, gated, "gated")
    assert (bias["rows"], bias["flips"], bias["flip_rate"], bias["over"]) == (2, 1, 0.5, "the gated rows")
    assert position_bias(p, q, "full")["over"] == "all rows"
    assert position_bias(p, np.full_like(q, np.nan), "gated") is None and position_bias(p, None, "none") is None
    with pytest.raises(ValueError, match="one shape"):
        swap_disagreement(p, q[:3])


def test_truncation_summary_by_hand():
    lost = np.array([[0, 0, 0], [0, 5, 0], [2, 3, 4], [0, 0, 0], [0, 0, 0], [0, 0, 1]])
    dropped = np.array([0, 0, 1, 0, 2, 0])  # row 4: only dropped turns counted, still a cut row
    costs = np.array([0.5, 1.0, 2.0, 0.7, 1.2, 0.9])
    s = truncation_summary(lost, dropped, costs, HEADLINES["log_loss"], max_length=64, n_resamples=400, seed=3)
    cut = np.array([False, True, True, False, True, True])
    assert (s["rows"], s["rows_cut"], s["cut_share"], s["max_length"]) == (6, 4, pytest.approx(4 / 6), 64)
    assert (s["rows_with_dropped_turns"], s["dropped_turns"]) == (2, 3)
    assert s["parts"]["prompt"] == {
        "rows_cut": 1,
        "tokens_lost": 2,
        "mean_tokens_lost": pytest.approx(2 / 6),
        "mean_tokens_lost_when_cut": 2.0,
    }
    assert s["parts"]["response_a"]["rows_cut"] == 2 and s["parts"]["response_a"]["tokens_lost"] == 8
    assert s["parts"]["response_b"]["mean_tokens_lost_when_cut"] == pytest.approx(2.5)
    assert s["cut"]["rows"] == 4 and s["cut"]["value"] == pytest.approx(costs[cut].mean())
    assert s["uncut"]["rows"] == 2 and s["uncut"]["value"] == pytest.approx(costs[~cut].mean())
    assert s["difference"]["value"] == pytest.approx(costs[cut].mean() - costs[~cut].mean())
    for g in ("cut", "uncut", "difference"):
        assert s[g]["low"] <= s[g]["value"] <= s[g]["high"]
    assert json.loads(json.dumps(s)) == s
    # nothing cut: no cut group, no difference
    none = truncation_summary(np.zeros((6, 3)), np.zeros(6), costs, HEADLINES["log_loss"], max_length=64)
    assert none["rows_cut"] == 0 and none["cut"] is None and none["difference"] is None
    assert none["uncut"]["value"] == pytest.approx(costs.mean())


def test_subset_comparison_speaks_the_headline():
    """Accuracy is reported as accuracy: 1 − mean error per group, and the difference's sign flips."""
    probs = np.array([[0.9, 0.1]] * 6)
    labels = np.array([0, 0, 1, 0, 1, 1])  # rows 0-2 (the subset): 2 of 3 right; rows 3-5: 1 of 3 right
    mask = np.array([True, True, True, False, False, False])
    acc = HEADLINES["accuracy"]
    g = subset_comparison(row_errors(probs, labels), mask, acc, n_resamples=500, seed=1)
    assert g["in"]["value"] == pytest.approx(2 / 3) and g["out"]["value"] == pytest.approx(1 / 3)
    assert g["difference"]["value"] == pytest.approx(1 / 3)  # the subset is more accurate: positive
    assert g["difference"]["low"] <= g["difference"]["value"] <= g["difference"]["high"]
    again = subset_comparison(row_errors(probs, labels), mask, acc, n_resamples=500, seed=1)
    assert again == g  # seeded
    ll = subset_comparison(row_log_losses(np.array([[0.5, 0.5]] * 6), labels), mask, HEADLINES["log_loss"])
    assert ll["difference"]["value"] == pytest.approx(0.0, abs=1e-12)


def test_subset_intervals_resample_groups_of_repeated_rows():
    """Rows repeated 4 times are one piece of evidence each: with their groups the cut-vs-uncut intervals are as
    wide as on the rows taken once, and clearly wider than treating the copies as independent rows."""
    rng = np.random.default_rng(0)
    costs = rng.exponential(1.0, size=40)
    mask = np.arange(40) < 20
    once = subset_comparison(costs, mask, HEADLINES["log_loss"], n_resamples=2000, seed=3)
    rep, rep_mask = np.repeat(costs, 4), np.repeat(mask, 4)
    rows = subset_comparison(rep, rep_mask, HEADLINES["log_loss"], n_resamples=2000, seed=3)
    grouped = subset_comparison(
        rep, rep_mask, HEADLINES["log_loss"], n_resamples=2000, seed=3, groups=np.repeat(np.arange(40), 4)
    )

    def width(g):
        return g["difference"]["high"] - g["difference"]["low"]

    assert width(grouped) == pytest.approx(width(once), rel=1e-9)
    assert width(rows) < 0.6 * width(grouped)


# --------------------------------------------------------------------------- rendering
@pytest.fixture(scope="module")
def rows():
    return kdq.load_arena(pd.DataFrame(make_arena_rows(16, seed=5, max_words=80)))


def test_render_rows_match_encode_in_both_orders(tiny_tokenizer, rows):
    rendered = render_rows(rows, tiny_tokenizer, TEMPLATE, both_orders=True)
    assert rendered["input_ids"] == encode(rows, tiny_tokenizer, TEMPLATE)["input_ids"]
    assert rendered[SWAP_COLUMN] == encode(rows, tiny_tokenizer, TEMPLATE, swap=True)["input_ids"]
    for r in range(len(rows)):
        row = rows[r]
        tokens = tokenize_row(tiny_tokenizer, row["prompt"], row["response_a"], row["response_b"])
        swapped = tokenize_row(tiny_tokenizer, row["prompt"], row["response_b"], row["response_a"])
        assert tokens.swapped() == swapped  # the B/A order without tokenizing again
        cut = assemble(tokens, TEMPLATE)[1]
        assert [rendered[c][r] for c in LOST_COLUMNS] == [cut.lost[p] for p in PARTS]
        assert rendered["dropped_turns"][r] == cut.dropped_turns
    assert SWAP_COLUMN not in render_rows(rows, tiny_tokenizer, TEMPLATE, both_orders=False).column_names


@pytest.mark.parametrize("max_length", [48, 64, 100, 160])
def test_the_swapped_order_is_cut_alike_within_a_token(tiny_tokenizer, max_length):
    """The water-fill treats A and B alike except for a remainder token handed to the first part in line: the
    B/A order drops the same turns and loses the same tokens in all, each response within one token."""
    rows = kdq.load_arena(pd.DataFrame(make_arena_rows(40, seed=11, max_words=120)))
    config = kdq.TemplateConfig(max_length=max_length)
    differ = 0
    for r in range(len(rows)):
        row = rows[r]
        tokens = tokenize_row(tiny_tokenizer, row["prompt"], row["response_a"], row["response_b"])
        ab, ba = assemble(tokens, config)[1], assemble(tokens.swapped(), config)[1]
        assert ab.cut == ba.cut and ab.dropped_turns == ba.dropped_turns
        assert sum(ab.lost.values()) == sum(ba.lost.values()) and ab.lost["prompt"] == ba.lost["prompt"]
        assert abs(ab.lost["response_a"] - ba.lost["response_b"]) <= 1
        assert abs(ab.lost["response_b"] - ba.lost["response_a"]) <= 1
        differ += ab.lost["response_a"] != ba.lost["response_b"]
    assert differ < len(rows)  # mostly exact


# --------------------------------------------------------------------------- on a tiny model
@pytest.fixture(scope="module")
def metrics(tiny_model_dir, rows):
    return evaluate(tiny_model_dir, rows, CFG)


def test_evaluate_records_each_rows_cut_and_both_orders(tiny_model_dir, tiny_tokenizer, rows, metrics):
    rendered = render_rows(rows, tiny_tokenizer, TEMPLATE, both_orders=False)
    lost = np.stack([rendered[c] for c in LOST_COLUMNS], axis=1)
    np.testing.assert_array_equal(metrics.lost, lost)
    np.testing.assert_array_equal(metrics.dropped_turns, rendered["dropped_turns"])
    t = metrics.truncation
    cut = metrics.cut
    assert 0 < t["rows_cut"] == int(cut.sum()) < len(rows)  # max_length 160 cuts some of these rows, not all
    labels = np.asarray(rows["label"])
    assert t["cut"]["value"] == pytest.approx(row_log_losses(metrics.probs, labels)[cut].mean())
    assert t["headline"] == "log_loss" and t["max_length"] == 160
    # the swapped order's probabilities, mapped back, average into the TTA prediction
    np.testing.assert_allclose((metrics.probs + metrics.probs_swap) / 2, metrics.probs_tta, atol=1e-6)
    bias = metrics.position_bias
    flips = np.mean(metrics.probs.argmax(1) != metrics.probs_swap.argmax(1))
    assert bias["flip_rate"] == pytest.approx(flips) and 0.0 <= bias["flip_rate"] <= 1.0
    assert bias["mean_disagreement"] == pytest.approx(np.abs(metrics.probs[:, 0] - metrics.probs_swap[:, 0]).mean())
    assert bias["rows"] == len(rows) and bias["over"] == "all rows" and bias["tta_mode"] == "full"
    d = json.loads(json.dumps(metrics.to_dict()))
    assert d["truncation"]["rows_cut"] == t["rows_cut"] and d["position_bias"]["flips"] == bias["flips"]
    assert not {"lost", "dropped_turns", "probs_swap"} & set(d)
    plain = evaluate(tiny_model_dir, rows, CFG.replace(tta=False, budget=None))
    assert plain.position_bias is None and plain.probs_swap is None
    assert plain.truncation["parts"] == t["parts"]  # the cut does not depend on TTA (probabilities: batching)
    assert plain.truncation["cut"]["value"] == pytest.approx(t["cut"]["value"], abs=1e-5)


def test_gated_tta_measures_position_bias_on_its_rows(tiny_model_dir, rows, metrics):
    gated = evaluate(tiny_model_dir, rows, CFG.replace(tta="gated", tta_fraction=0.25, budget=None))
    scored = np.isfinite(gated.probs_swap).all(axis=1)
    chosen = sorted(np.argsort(metrics.probs.max(1), kind="stable")[:4].tolist())
    assert np.flatnonzero(scored).tolist() == chosen
    np.testing.assert_allclose(gated.probs_swap[chosen], metrics.probs_swap[chosen], atol=1e-6)
    bias = gated.position_bias
    assert bias["rows"] == 4 and bias["over"] == "the gated rows" and bias["tta_mode"] == "gated"
    assert bias["flip_rate"] == pytest.approx(
        swap_disagreement(metrics.probs[chosen], gated.probs_swap[chosen])["flip_rate"]
    )


def test_compare_reports_flip_rates_and_cuts(tmp_path, tiny_tokenizer, tiny_model_dir, rows, metrics):
    other = tmp_path / "other"
    make_tiny_classifier(other, tiny_tokenizer, seed=7)
    res = compare({"student": metrics, "other": other}, rows, CFG, out_dir=tmp_path / "r")
    by = {r["variant"]: r for r in res.rows}
    for name, m in res.metrics.items():
        r = by[name]
        flips = np.mean(m.probs.argmax(1) != m.probs_swap.argmax(1))
        assert 0.0 <= r["flip_rate"] <= 1.0 and r["flip_rate"] == pytest.approx(flips)
        assert r["cut_share"] == pytest.approx(m.cut.mean()) and r["swap_rows"] == len(rows)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [v["flip_rate"] for v in report["variants"]] == [by[n]["flip_rate"] for n in ("student", "other")]
    assert report["variants"][0]["metrics"]["truncation"]["rows_cut"] == metrics.truncation["rows_cut"]
    md = (tmp_path / "r" / "report.md").read_text()
    head = next(ln for ln in md.splitlines() if ln.startswith("| variant"))
    assert "rows cut" in head and "swap flips" in head
    assert f"- **student**: {metrics.truncation['rows_cut']} of 16 rows cut" in md and "flip rate" in md
    # rows.csv: one line per variant and row, the stored probabilities and cuts
    with open(res.paths["rows"], newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert list(lines[0]) == row_table_header("lmsys") and len(lines) == 2 * len(rows)
    mine = [ln for ln in lines if ln["variant"] == "student"]
    assert [ln["id"] for ln in mine] == list(rows["id"])
    np.testing.assert_allclose([float(ln["p_winner_model_a"]) for ln in mine], metrics.probs[:, 0])
    np.testing.assert_allclose([float(ln["p_swap_winner_model_b"]) for ln in mine], metrics.probs_swap[:, 1])
    assert [int(ln["cut"]) for ln in mine] == metrics.cut.astype(int).tolist()
    assert [int(ln["lost_response_a"]) for ln in mine] == metrics.lost[:, 1].tolist()


def test_recommend_notes_a_high_flip_rate_without_changing_the_pick(rows, metrics):
    biased = dataclasses.replace(metrics, position_bias={**metrics.position_bias, "flip_rate": 0.5, "flips": 8})
    calm = dataclasses.replace(metrics, position_bias={**metrics.position_bias, "flip_rate": 0.1, "flips": 2})
    quiet = recommend({"a": calm, "b": calm}, rows, "full", n_resamples=200)
    loud = recommend({"a": biased, "b": calm}, rows, "full", n_resamples=200)
    assert quiet["notes"] == [] and loud["best"] == quiet["best"] and loud["ranking"] == quiet["ranking"]
    assert len(loud["notes"]) == 1 and loud["notes"][0].startswith("a: ") and f"{FLIP_RATE_WARN:g}" in loud["notes"][0]
    # a rate over the gated rows only (the least confident ones) is not held to the all-rows bar
    gated = dataclasses.replace(biased, position_bias={**biased.position_bias, "over": "the gated rows"})
    assert recommend({"a": gated, "b": calm}, rows, "gated", n_resamples=200)["notes"] == []
