"""Length-sorted batched inference: order, equivalence to one-by-one scoring, padding efficiency."""

import torch

from kdq.data import encode, load_arena
from kdq.runtime.batching import combine_swap_tta, length_sorted_batches, predict_logits
from kdq.runtime.template import TemplateConfig
from kdq.testing import make_arena_rows, make_tiny_classifier


def test_batched_scores_equal_row_by_row_in_original_order(tiny_tokenizer):
    model = make_tiny_classifier(tokenizer=tiny_tokenizer)
    enc = encode(load_arena(make_arena_rows(40, seed=5, max_words=120)), tiny_tokenizer, TemplateConfig(max_length=128))
    stats = {}
    batched = predict_logits(model, enc["input_ids"], tiny_tokenizer.pad_token_id, batch_size=8, stats=stats)
    single = torch.cat([model(input_ids=torch.tensor([s])).logits for s in enc["input_ids"]])
    assert batched.shape == (40, 3)
    assert torch.allclose(batched, single, atol=1e-4)
    assert stats["rows"] == 40 and 0 < stats["padding_efficiency"] <= 1


def test_long_tail_padding_efficiency_above_90_percent(tiny_tokenizer):
    # token lengths of rendered rows (what batches are padded in), not the JSON strings' lengths
    enc = encode(load_arena(make_arena_rows(800, seed=0)), tiny_tokenizer, TemplateConfig(max_length=1024))
    lengths = list(enc["length"])
    assert max(lengths) == 1024 and sorted(lengths)[len(lengths) // 2] < 512  # a long tail up to the budget
    batches = length_sorted_batches(lengths, 16)
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert real / padded > 0.9
    assert sorted(i for b in batches for i in b) == list(range(800))
    in_order = [list(range(i, min(i + 16, 800))) for i in range(0, 800, 16)]  # what sorting buys
    assert sum(len(b) * max(lengths[i] for i in b) for b in in_order) > 1.3 * padded


def test_max_batch_tokens_caps_long_batches():
    lengths = [1000] * 4 + [10] * 40
    batches = length_sorted_batches(lengths, 32, max_batch_tokens=2000)
    assert all(len(b) * max(lengths[i] for i in b) <= 2000 for b in batches)


def test_tta_unswaps_before_averaging():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    swapped = torch.tensor([[0.1, 0.6, 0.3]])  # the swapped row says "B" = original A
    out = combine_swap_tta(p.log(), swapped.log()).exp()
    assert torch.allclose(out, torch.tensor([[0.65, 0.15, 0.2]]), atol=1e-6)
