"""Offline builders for tiny models, tokenizers and arena rows.

Used by the test suite, the benchmarks and the demo's ``--tiny`` mode. Everything here is
built in code from a seed: no Hub access, no downloads. The models are real
``LlamaForSequenceClassification`` instances, just small.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from .template import LABELS

_WORDS = ("the a of to and in is it that for on with as was be this by are not or have from at "
          "but an they which you one were all we can her has there been if more when will would who "
          "so no she other its may these some what about than into only two could time very first "
          "answer code python list sort function return value error fix test data model good great "
          "helpful correct clear wrong bad poor unclear useless sorry cannot explain example step").split()
POSITIVE = ("good", "great", "helpful", "correct", "clear")
NEGATIVE = ("wrong", "bad", "poor", "unclear", "useless")


def make_tokenizer(out_dir=None, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained in code on a fixed corpus; pads with ``<pad>``.

    Returns a ``PreTrainedTokenizerFast`` (saved to ``out_dir`` when given).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(30)) for _ in range(400)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="right")
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def tiny_llama_config(tokenizer, *, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                      num_heads: int = 4, num_kv_heads: int = 2, max_positions: int = 2048, **extra):
    """A ``LlamaConfig`` for a 3-label classifier. Dims are multiples of 32 so GPTQ 4/8-bit can pack them."""
    from transformers import LlamaConfig

    from .models import ID2LABEL, LABEL2ID

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                       max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       num_labels=3, id2label=dict(ID2LABEL), label2id=dict(LABEL2ID), tie_word_embeddings=False,
                       **extra)


def make_tiny_classifier(out_dir=None, tokenizer=None, *, seed: int = 0, **config_kwargs):
    """A randomly initialised ``LlamaForSequenceClassification`` (saved with its tokenizer when ``out_dir``)."""
    import torch
    from transformers import LlamaForSequenceClassification

    tokenizer = tokenizer or make_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, **config_kwargs))
    model.eval()
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return model


def _sentence(rng, n_words, polarity):
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    pool = POSITIVE if polarity > 0 else NEGATIVE
    for _ in range(abs(polarity)):
        words[rng.randrange(len(words))] = rng.choice(pool)
    return " ".join(words)


def make_arena_rows(n: int, *, seed: int = 0, long_tail: bool = True, labelled: bool = True,
                    max_words: int = 600, id_offset: int = 0) -> dict:
    """Synthetic rows in the competition format (JSON-encoded turn lists, one-hot winners).

    The winner is learnable: each response carries a hidden quality in {-2..2} written
    into it as positive or negative words; the better response wins, equal quality ties,
    and 10% of labels are flipped at random (annotator noise). With ``long_tail`` the
    response lengths follow a log-normal, as in the arena: most rows short, a few at
    ``max_words``. About 15% of rows have 2-3 turns and 2% contain a ``null`` turn.
    """
    rng = random.Random(seed)
    rows = {k: [] for k in ("id", "prompt", "response_a", "response_b", *LABELS)}
    for r in range(n):
        turns = 1 if rng.random() < 0.85 else rng.randint(2, 3)

        def length():
            return max(3, min(max_words, int(rng.lognormvariate(3.2, 1.0)))) if long_tail else 20

        qa, qb = rng.randint(-2, 2), rng.randint(-2, 2)
        prompt = [_sentence(rng, max(3, length() // 4), 0) for _ in range(turns)]
        a = [_sentence(rng, length(), qa) for _ in range(turns)]
        b = [_sentence(rng, length(), qb) for _ in range(turns)]
        if rng.random() < 0.02:
            b[-1] = None
        winner = 0 if qa > qb else 1 if qb > qa else 2
        if rng.random() < 0.1:
            winner = rng.randrange(3)
        rows["id"].append(str(id_offset + r))
        rows["prompt"].append(json.dumps(prompt))
        rows["response_a"].append(json.dumps(a))
        rows["response_b"].append(json.dumps(b))
        for k, lab in enumerate(LABELS):
            rows[lab].append(int(k == winner) if labelled else None)
    if not labelled:
        for lab in LABELS:
            del rows[lab]
    return rows


def write_arena_csv(path, n: int, **kwargs) -> Path:
    """Write :func:`make_arena_rows` to a competition-style CSV and return its path."""
    import pandas as pd

    path = Path(path)
    pd.DataFrame(make_arena_rows(n, **kwargs)).to_csv(path, index=False)
    return path
