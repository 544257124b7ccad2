"""The real data and the real model behind the demo: VADER human ratings and SmolLM2-135M."""

import json
import os
from pathlib import Path

import pytest
import torch
from _net import fetch_or_skip

from demo_assets.vader import arena_pairs, fetch_sdist, load_sentences
from kdq.data import load_arena

CACHE = Path(os.environ.get("KDQ_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "kdq"))


@pytest.fixture(scope="module")
def sdist():
    return fetch_or_skip(lambda: fetch_sdist(CACHE))


def test_vader_sentences_are_the_published_ground_truth(sdist):
    sentences = load_sentences(sdist)
    assert 23_000 < len(sentences) < 24_000
    assert {s.source for s in sentences} == {"tweet", "movie review", "product review", "newspaper editorial"}
    assert all(-4.0 <= s.mean <= 4.0 for s in sentences)


def test_pairs_are_balanced_disjoint_and_load_as_arena_rows(sdist):
    train, ev, test, info = arena_pairs(sdist, n_train=600, n_eval=150, n_test=150, seed=0)
    assert all(abs(share - 1 / 3) < 0.08 for share in info["class_balance"]["train"])
    texts = {
        name: {t for col in ("response_a", "response_b") for t in map(json.dumps, split[col])}
        for name, split in (("train", train), ("eval", ev), ("test", test))
    }
    assert (
        not texts["train"] & texts["eval"] and not texts["train"] & texts["test"] and not texts["eval"] & texts["test"]
    )
    rows = load_arena(train)
    assert len(rows) == 600 and set(rows["label"]) == {0, 1, 2}
    assert "Hutto" in info["citation"]


@pytest.mark.slow
def test_smollm2_gguf_becomes_a_shrinkable_classifier(tmp_path):
    pytest.importorskip("gguf")
    from transformers import AutoModelForSequenceClassification

    import kdq
    from demo_assets.smollm2 import smollm2_classifier
    from kdq.models import load_classifier

    folder = fetch_or_skip(lambda: smollm2_classifier(tmp_path / "smol"))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and "quantization_config" not in cfg
    student = kdq.shrink(str(folder), tmp_path / "small", kdq.ShrinkConfig(every=10))
    m = AutoModelForSequenceClassification.from_pretrained(student)
    assert m.config.num_hidden_layers == 4  # layers 0, 10, 20 and the last, 29
    loaded = load_classifier(student)
    ids = loaded.tokenizer(["Response A: great movie"], return_tensors="pt")["input_ids"]
    logits = m(input_ids=ids).logits
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()
