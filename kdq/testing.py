"""Offline builders for tiny models, tokenizers and arena rows.

For users' own tests (and kdq's test suite, benchmarks and the demo's ``--tiny`` mode).
Everything here is built in code from a seed: no Hub access, no downloads. The models are real
``LlamaForSequenceClassification`` instances, just small.
"""

from __future__ import annotations

import random
from pathlib import Path

from .data.probe import WORDS, make_arena_rows, make_wsdm_rows


def make_tokenizer(out_dir=None, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained in code on a fixed corpus; pads with ``<pad>``.

    Returns a ``PreTrainedTokenizerFast`` (saved to ``out_dir`` when given).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(400)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def tiny_llama_config(
    tokenizer,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 2048,
    scheme="lmsys",
    **extra,
):
    """A ``LlamaConfig`` for a classifier of ``scheme``'s classes (``"lmsys"``: 3, ``"wsdm"``: 2; recorded
    under ``kdq_scheme``). Dims are multiples of 32 so GPTQ 4/8-bit can pack them."""
    from transformers import LlamaConfig

    from .runtime.constants import SCHEME_KEY, label_scheme

    scheme = label_scheme(scheme)

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=scheme.num_labels,
        id2label=scheme.id2label,
        label2id=scheme.label2id,
        tie_word_embeddings=False,
        **{SCHEME_KEY: scheme.name},
        **extra,
    )


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


def write_arena_csv(path, n: int, **kwargs) -> Path:
    """Write :func:`make_arena_rows` to a competition-style CSV and return its path."""
    import pandas as pd

    path = Path(path)
    pd.DataFrame(make_arena_rows(n, **kwargs)).to_csv(path, index=False)
    return path


def write_wsdm_file(path, n: int, **kwargs) -> Path:
    """Write :func:`make_wsdm_rows` as a WSDM Cup-style table (``.parquet``, as the competition ships it,
    or ``.csv``) and return its path."""
    import pandas as pd

    path = Path(path)
    df = pd.DataFrame(make_wsdm_rows(n, **kwargs))
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path
