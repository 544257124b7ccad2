"""Host memory at scale (issue 30): one copy of a model, in the dtype it is stored in.

A 4B classifier is 7.9 GB in bf16 and 15.8 GB in fp32, and a Kaggle notebook has about 29 GB of host
RAM. So no stage may upcast a model whole to fp32 or hold a second copy: fp32 compute on CPU is a
layerwise cast of the stored weights (kdq.runtime.dtypes.compute_in), the export stores fp16 weights
tensor by tensor (kdq.export.fp16), and predict.py keeps an fp16 folder in fp16 on CPU. These tests pin
the arithmetic (the same logits, bit for bit) on tiny models; bench/rehearsal.py measures the memory at
full size (BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from kdq.export.fp16 import convert_folder, describe
from kdq.models import load_classifier
from kdq.runtime.dtypes import LAYERWISE_ATTR, compute_in, model_compute_dtype, restored_cast, stored_dtype
from kdq.testing import make_tiny_classifier

IDS = torch.randint(4, 300, (3, 24), generator=torch.Generator().manual_seed(0))


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def bf16_model(tiny_tokenizer):
    return make_tiny_classifier(None, tiny_tokenizer, seed=1).to(torch.bfloat16).eval()


def test_layerwise_fp32_compute_equals_an_fp32_copy_and_leaves_the_weights(bf16_model):
    model = copy.deepcopy(bf16_model)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    fp32 = copy.deepcopy(bf16_model).float()
    compute_in(model, torch.float32)
    got = _logits(model)
    assert got.dtype == torch.float32 and torch.equal(got, _logits(fp32))  # bit for bit
    assert stored_dtype(model) == torch.bfloat16 and model_compute_dtype(model) == torch.float32
    for n, p in model.state_dict().items():  # the stored tensors are back, unchanged, after every forward
        assert p.dtype == torch.bfloat16 and torch.equal(p, before[n]), n
    # fp16 compute is what an fp16 copy computes; fp32 "via fp16" is what predict.py computes from fp16 files
    half = copy.deepcopy(bf16_model).half()
    compute_in(model, torch.float16)
    assert torch.equal(_logits(model), _logits(half))
    compute_in(model, torch.float32, via=torch.float16)
    assert torch.equal(_logits(model), _logits(half.float()))
    getattr(model, LAYERWISE_ATTR).remove()
    assert _logits(model).dtype == torch.bfloat16  # detached: the stored dtype again


def test_restored_cast_gives_a_borrowed_model_back_as_it_was(bf16_model):
    model = copy.deepcopy(bf16_model)
    with restored_cast(model):
        compute_in(model, torch.float32)
    assert getattr(model, LAYERWISE_ATTR, None) is None
    compute_in(model, torch.float32)
    with restored_cast(model):
        compute_in(model, torch.float16, via=torch.float16)
    cast = getattr(model, LAYERWISE_ATTR)
    assert (cast.dtype, cast.via) == (torch.float32, None)


def test_frozen_load_keeps_a_bf16_folder_in_bf16_with_fp32_logits(tmp_path, bf16_model, tiny_tokenizer):
    bf16_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    frozen = load_classifier(tmp_path, dtype=torch.float32, device="cpu", frozen=True).model
    full = load_classifier(tmp_path, dtype=torch.float32, device="cpu").model  # training: a real fp32 copy
    assert stored_dtype(frozen) == torch.bfloat16 and stored_dtype(full) == torch.float32
    assert torch.equal(_logits(frozen), _logits(full))


def _planted_bf16_folder(folder, tokenizer):
    """A bf16 folder with values over fp16's maximum and under its smallest normal planted in one tensor."""
    model = make_tiny_classifier(None, tokenizer, seed=2).to(torch.bfloat16)
    w = model.model.layers[0].mlp.down_proj.weight.data
    w[0, :3] = torch.tensor([1e5, -7e4, 3e-6], dtype=torch.bfloat16)  # 2 over 65504, 1 subnormal in fp16
    w[1, 0] = torch.tensor(1e-9, dtype=torch.bfloat16)  # under fp16's smallest subnormal: flushed to zero
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def test_fp16_conversion_counts_what_it_changes_and_reloads(tmp_path, tiny_tokenizer):
    model = _planted_bf16_folder(tmp_path, tiny_tokenizer)
    source = load_file(str(tmp_path / "model.safetensors"))
    record = convert_folder(tmp_path, max_shard_bytes=40_000)  # small shards: an index, several files
    assert record["source_dtypes"] == ["bfloat16"] and record["shards"] > 1
    assert record["values_over_fp16_max"] == 2 and record["values_flushed_to_zero"] == 1
    assert record["values_subnormal"] >= 1
    assert record["tensors_changed"] >= 1 and record["worst"][0]["name"].endswith("layers.0.mlp.down_proj.weight")
    assert record["values_changed"] >= sum(w["changed"] for w in record["worst"])
    assert "2 over fp16's maximum" in describe(record)
    assert not list(tmp_path.glob(".fp16-shards*")) and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(source)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float16"
    # stock transformers loads the shards; every value in fp16's normal range is the bf16 value exactly
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), dtype="auto")
    assert stored_dtype(reloaded) == torch.float16
    got = reloaded.state_dict()
    for name, x in source.items():
        y = got[name]
        normal = (x.float().abs() >= 2.0**-14) & (x.float().abs() <= 65504)
        assert torch.equal(y.float()[normal], x.float()[normal]), name
    assert torch.isinf(got["model.layers.0.mlp.down_proj.weight"][0, :2]).all()
    del model


def test_fp16_conversion_of_an_fp16_folder_changes_nothing(tmp_path, tiny_tokenizer):
    make_tiny_classifier(None, tiny_tokenizer, seed=2).half().save_pretrained(tmp_path)
    before = load_file(str(tmp_path / "model.safetensors"))
    record = convert_folder(tmp_path)
    assert record["tensors"] == 0 and record["shards"] == 1
    assert describe(record) == "the weights were fp16 already"
    after = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fp16_conversion_keeps_integer_tensors(tmp_path):
    save_file({"a": torch.arange(6, dtype=torch.int64), "b": torch.ones(3)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    record = convert_folder(tmp_path)
    out = load_file(str(tmp_path / "model.safetensors"))
    assert out["a"].dtype == torch.int64 and out["b"].dtype == torch.float16 and record["tensors"] == 1


def test_predict_py_keeps_an_fp16_folder_in_fp16_on_cpu(tmp_path, tiny_tokenizer):
    """predict.py on CPU: the stored fp16 weights, computed in fp32 module by module (1x host RAM, not 2x)."""
    from kdq.runtime.predict import load_kwargs, load_model

    make_tiny_classifier(tmp_path, tiny_tokenizer, seed=4)
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).half()
    model.save_pretrained(tmp_path)
    assert load_kwargs(tmp_path, "cpu")["dtype"] == "auto"
    loaded = load_model(tmp_path, "cpu")
    assert stored_dtype(loaded) == torch.float16 and model_compute_dtype(loaded) == torch.float32
    # the same numbers as an fp32 copy of the fp16 weights (up to the attention kernel transformers picks)
    torch.testing.assert_close(_logits(loaded), _logits(model.float()), rtol=0, atol=1e-5)


def test_emulated_fp16_rounds_like_fp16_at_fp32_speed(bf16_model):
    """The export's fp16 check on CPU: fp32 kernels with fp16 rounding at every module boundary. It agrees with
    true fp16 compute to the order of fp16's own error, and an activation past 65504 still becomes inf."""
    from kdq.runtime.dtypes import HalfRounding

    model = copy.deepcopy(bf16_model)
    compute_in(model, torch.float16)
    half = _logits(model).float().softmax(-1)
    compute_in(model, torch.float32)
    full = _logits(model).softmax(-1)
    compute_in(model, torch.float32, via=torch.float16)
    with HalfRounding(model):
        emulated = _logits(model).softmax(-1)
    fp16_error = float((half - full).abs().max())
    assert 0 < float((emulated - half).abs().max()) <= 4 * fp16_error + 1e-6
    assert _logits(model).dtype == torch.float32  # the rounding hooks are gone after the block
    # a value past fp16's range (here token 5's embedding) turns the row non-finite, as in fp16; activations that
    # overflow only on some tokens are tests/test_export_fp16.py's model, whose export check runs this emulation
    model.model.embed_tokens.weight.data[5] *= 1e7
    ids = torch.tensor([[5, 6, 7]])
    with HalfRounding(model):
        assert not torch.isfinite(_logits(model, ids)).all()
    assert torch.isfinite(_logits(model, ids)).all()  # fp32 without the rounding stays finite


def test_a_dropped_model_is_freed_without_waiting_for_gc(bf16_model):
    """The layerwise cast holds its model weakly: no reference cycle keeps a dropped 4B model's weights beside
    the next one loaded (quantize drops the source, compare goes from variant to variant)."""
    import gc
    import weakref

    model = copy.deepcopy(bf16_model)
    compute_in(model, torch.float32)
    _logits(model)
    gc.disable()
    try:
        ref = weakref.ref(model)
        del model
        assert ref() is None  # freed by reference counting alone
    finally:
        gc.enable()
