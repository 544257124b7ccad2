"""Shared fixtures: tiny random Llama classifiers and a tokenizer, built offline in code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The demo's data and model helpers live in examples/demo_assets (out of the library wheel).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

# Tokenizers' own thread pool would fight the tests' processes for the cores (and warns after a fork).
# gptqmodel's CPU defaults are kdq.quantize's to set (kdq.quant_methods.gptq_env), and tests that want one
# torch thread ask for the one_torch_thread fixture below.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from kdq.testing import make_tiny_classifier, make_tokenizer, write_arena_csv


@pytest.fixture(scope="session")
def kdq_cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("kdq-cache")


@pytest.fixture(autouse=True)
def private_kdq_cache(kdq_cache_root, monkeypatch):
    """Tests never write to the user's cache (~/.cache/kdq): the shared teacher cache goes to a
    temporary folder, one per test session."""
    monkeypatch.setenv("KDQ_CACHE", str(kdq_cache_root))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved random 2-layer LlamaForSequenceClassification (hidden 64) with its tokenizer."""
    d = tmp_path_factory.mktemp("tiny-model")
    make_tiny_classifier(d, tiny_tokenizer, seed=0)
    return d


@pytest.fixture(scope="session")
def arena_csv(tmp_path_factory):
    """64 labelled synthetic arena rows in the competition CSV format (long-tailed lengths)."""
    return write_arena_csv(tmp_path_factory.mktemp("arena") / "train.csv", 64, seed=1, max_words=200)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls gain nothing from threads, and OpenMP spin-waits make them 10-100x slower
    when other processes share the two cores (GPTQ on tiny models especially)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
