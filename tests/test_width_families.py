"""Width pruning is proven per model family at init: every channel kept gives the source's logits exactly, and with
channels dropped the hidden state entering layer 0 is the source's on the kept channels (Gemma's sqrt(hidden_size)
embedding multiplier folded). Families whose forward kdq has not read are refused before the calibration pass."""

import importlib

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import kdq
from kdq.distill.width import WIDTH_FAMILIES, WidthPlan, prune_width
from kdq.testing import make_arena_rows

TINY = dict(
    vocab_size=400,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_labels=3,
    pad_token_id=0,
)
FAMILY_EXTRAS = {"gemma2": dict(query_pre_attn_scalar=16, sliding_window=8)}


def tiny_model(family: str, seed: int = 0, **extra):
    """A random ``*ForSequenceClassification`` of ``family`` (every weight, norms included, perturbed)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(family, **(TINY | FAMILY_EXTRAS.get(family, {}) | extra))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # norms off 1 (Gemma's off 0), score head non-trivial
    return model.eval()


def _plan(model, channels, neurons, heads, kv_heads):
    cfg = model.config
    n = cfg.num_hidden_layers
    sizes = {
        "hidden_size": len(channels),
        "intermediate_size": len(neurons),
        "num_attention_heads": len(heads),
        "num_key_value_heads": len(kv_heads),
    }
    return WidthPlan(sizes, list(channels), [list(neurons)] * n, [list(heads)] * n, [list(kv_heads)] * n)


IDS = torch.tensor([[5, 17, 33, 9, 120, 44, 7, 300, 2, 61], [8, 8, 91, 250, 13, 77, 3, 14, 0, 0]])
MASK = (IDS != 0).long()
NARROW = kdq.ShrinkConfig(every=1, hidden_size=48)  # every layer kept, 64 -> 48 channels


def _out(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True)


@pytest.mark.parametrize("family", sorted(WIDTH_FAMILIES))
def test_every_channel_kept_gives_the_source_exactly(family):
    model = tiny_model(family)
    full = prune_width(model, _plan(model, range(64), range(128), range(4), range(2)))
    assert type(full) is type(model) and full.config.model_type == family
    assert torch.equal(_out(full).logits, _out(model).logits)


@pytest.mark.parametrize("family", sorted(WIDTH_FAMILIES))
def test_dropped_channels_keep_the_source_layer0_input_on_the_kept_channels(family):
    model = tiny_model(family, seed=1)
    channels = sorted(torch.randperm(64, generator=torch.Generator().manual_seed(3))[:40].tolist())
    pruned = prune_width(model, _plan(model, channels, range(0, 128, 2), [0, 1], [0]))
    assert pruned.config.hidden_size == 40 and pruned.config.head_dim == 16
    src, got = _out(model).hidden_states[0], _out(pruned).hidden_states[0]
    assert got.shape[-1] == 40
    torch.testing.assert_close(got, src[..., channels], rtol=1e-6, atol=0)
    # the pruned model still runs end to end, and is the source's family
    assert torch.isfinite(_out(pruned).logits).all()


def test_shrink_measures_and_prunes_a_gemma2_through_its_own_norms(tiny_tokenizer):
    model = tiny_model("gemma2", seed=2, vocab_size=len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id)
    rows = make_arena_rows(12, seed=50, max_words=25)
    small = kdq.shrink(model, config=NARROW, calibration=rows, tokenizer=tiny_tokenizer, verbose=False)
    kept = small.config.kdq_shrink["width"]["kept_channels"]
    ids = IDS.clamp(max=len(tiny_tokenizer) - 1)
    with torch.no_grad():
        src = model(input_ids=ids, output_hidden_states=True).hidden_states[0]
        got = small(input_ids=ids, output_hidden_states=True).hidden_states[0]
    torch.testing.assert_close(got, src[..., kept], rtol=1e-6, atol=0)


def test_an_unchecked_family_is_refused_before_the_calibration_pass(tiny_tokenizer, monkeypatch):
    model = tiny_model("olmo", vocab_size=len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id)

    def calibrate(*args, **kwargs):
        raise AssertionError("the calibration pass ran before the family was checked")

    monkeypatch.setattr(importlib.import_module("kdq.distill.shrink"), "calibrate", calibrate)
    rows = make_arena_rows(4, seed=51, max_words=10)
    with pytest.raises(ValueError, match=r"width pruning of model_type 'olmo' is refused.*drop layers only"):
        kdq.shrink(model, config=NARROW, calibration=rows, tokenizer=tiny_tokenizer, verbose=False)
