"""bnb LLM.int8 with outlier activations: kdq and the exported predict.py score identically.

LLM.int8 computes every activation column that holds a value >= 6.0 anywhere in the batch
(padding included) in 16-bit, and the rest in int8: a row's result depends on its batch-mates.
The tiny model below has a pad-token embedding that crosses the threshold, so a batch with
padding and one without take different paths, as with real Danube3/SmolLM2 outliers. The
runtime scores original and swapped rows in one length-sorted pass everywhere (evaluate, the
export probe, predict.py), so the batches, and the probabilities, are the same.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kdq
from kdq.data.probe import probe_turns
from kdq.export import ExportConfig, export, verify
from kdq.export.script import load_predict_module
from kdq.runtime.batching import combine_swap_tta, predict_logits
from kdq.runtime.template import TemplateConfig, encode_row
from kdq.testing import make_tiny_classifier

pytest.importorskip("bitsandbytes")
TEMPLATE = TemplateConfig(max_length=96)
THRESHOLD = 6.0  # BitsAndBytesConfig.llm_int8_threshold's default


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, tiny_tokenizer):
    src = tmp_path_factory.mktemp("outlier")
    model = make_tiny_classifier(None, tiny_tokenizer, seed=4)
    with torch.no_grad():  # one pad-embedding channel dominates: after RMSNorm it is ~8 > 6.0
        emb = model.model.embed_tokens.weight
        emb[tiny_tokenizer.pad_token_id, 0] = 20 * emb.abs().max()
    model.save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    return kdq.quantize(
        str(src),
        kdq.QuantConfig.from_name("bnb-int8", template=TEMPLATE),
        out_dir=tmp_path_factory.mktemp("q") / "int8",
    )


def _sequences(loaded, n):
    _, rows = probe_turns(n)
    seqs = [encode_row(loaded.tokenizer, p, a, b, TEMPLATE) for p, a, b in rows]
    swapped = [encode_row(loaded.tokenizer, p, b, a, TEMPLATE) for p, a, b in rows]
    return rows, seqs, swapped


def test_the_model_has_outliers_that_make_results_depend_on_the_batch(int8_dir):
    import bitsandbytes as bnb

    from kdq.models import load_classifier

    loaded = load_classifier(int8_dir)
    _, seqs, swapped = _sequences(loaded, 8)
    peaks = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: peaks.append(float(inp[0].abs().max())))
        for m in loaded.model.modules()
        if isinstance(m, bnb.nn.Linear8bitLt)
    ]
    pad = loaded.model.config.pad_token_id
    two_calls = combine_swap_tta(
        predict_logits(loaded.model, seqs, pad, 4), predict_logits(loaded.model, swapped, pad, 4)
    )
    for h in hooks:
        h.remove()
    assert max(peaks) > THRESHOLD and min(peaks) < THRESHOLD  # some batches cross it, some do not
    both = predict_logits(loaded.model, seqs + swapped, pad, 4)
    one_pass = combine_swap_tta(both[:8], both[8:])
    # the old layout (two calls) and predict.py's (one list) really disagree on this model
    assert float((two_calls.exp() - one_pass.exp()).abs().max()) > 1e-6


@pytest.mark.parametrize("tta", ["full", "none", "gated"])
def test_int8_export_with_outliers_verifies_and_predict_py_matches_kdq_exactly(int8_dir, tmp_path, tta):
    out = export(
        int8_dir,
        tmp_path / "export",
        ExportConfig(title="Tiny int8 outliers", dataset_id="kdq-tests/int8-out", tta=tta, batch_size=4, probe_rows=8),
    )
    probe = json.loads((out / "kdq-manifest.json").read_text())["probe"]
    assert probe["batch_size"] == 4 and probe["tta"] == tta
    assert probe["max_abs_diff_vs_source"] == 0.0  # same runtime, same batches: the same bits
    assert verify(out).probe_max_abs_diff == 0.0
    if tta == "full":
        # predict.py re-run on the folder at the export's batch size gives the stored probabilities, bit for bit
        module = load_predict_module(out / "predict.py")
        _, rows = probe_turns(8)
        got = module.predict_probs(out, rows, tta=tta, batch_size=4).numpy()
        np.testing.assert_array_equal(got, np.array(probe["probs"]))
        # another batch size regroups the rows: within the documented int8 allowance, not bit-equal
        report = verify(out, batch_size=3)
        assert 0 < report.probe_max_abs_diff <= 1e-2
