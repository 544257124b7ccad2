"""kdq.evaluate and kdq.compare on tiny real models (fp32 and bitsandbytes nf4), offline."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss

import kdq
from kdq.data import encode, swap_ab
from kdq.evaluate import EvalConfig, Metrics, compare, evaluate, load_budget
from kdq.evaluate.metrics import softmax
from kdq.evaluate.report import REPORT_FORMAT
from kdq.models import load_classifier
from kdq.runtime.constants import FORMAT_KEY
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = kdq.TemplateConfig(max_length=160)
CFG = EvalConfig(template=TEMPLATE, batch_size=4, progress=False)
PERM = [1, 0, 2]


@pytest.fixture(scope="module")
def rows():
    return kdq.load_arena(pd.DataFrame(make_arena_rows(16, seed=5, max_words=80)))


@pytest.fixture(scope="module")
def metrics(tiny_model_dir, rows):
    return evaluate(tiny_model_dir, rows, CFG)


def test_probs_are_the_models_own_predictions_in_row_order(tiny_model_dir, rows, metrics):
    """Length-sorted, padded batches must give each row what the model says about it alone."""
    loaded = load_classifier(tiny_model_dir)
    enc = encode(rows, loaded.tokenizer, TEMPLATE)
    with torch.inference_mode():
        alone = torch.cat([loaded.model(input_ids=torch.tensor([ids])).logits for ids in enc["input_ids"]])
    np.testing.assert_allclose(metrics.probs, softmax(alone.numpy()), atol=1e-5)
    labels = np.asarray(rows["label"])
    assert metrics.log_loss == pytest.approx(sk_log_loss(labels, metrics.probs, labels=[0, 1, 2]), rel=1e-9)
    assert metrics.accuracy == pytest.approx(np.mean(metrics.probs.argmax(1) == labels))
    assert metrics.n_rows == 16 and metrics.lengths.tolist() == enc["length"]


def test_tta_unswaps_the_swapped_pass(tiny_model_dir, rows, metrics):
    swapped_rows = swap_ab(rows)  # responses exchanged, labels a<->b
    swapped = evaluate(tiny_model_dir, swapped_rows, dataclasses.replace(CFG, budget=None))
    # swapped.probs[i] scores row i with B first: its column 0 is "B wins" in the original row
    expected = (metrics.probs + swapped.probs[:, PERM]) / 2
    np.testing.assert_allclose(metrics.probs_tta, expected, atol=1e-6)
    labels = np.asarray(rows["label"])
    assert metrics.log_loss_tta == pytest.approx(sk_log_loss(labels, expected, labels=[0, 1, 2]), rel=1e-6)
    # TTA is swap-equivariant: scoring the swapped rows with TTA gives the same answer, classes exchanged
    np.testing.assert_allclose(swapped.probs_tta, metrics.probs_tta[:, PERM], atol=1e-6)
    assert swapped.log_loss_tta == pytest.approx(metrics.log_loss_tta, rel=1e-6)
    assert swapped.budget is None


def test_metrics_report_cost_and_budget(tiny_model_dir, rows, metrics):
    weights = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    assert (metrics.size_bytes, metrics.size_source) == (weights, "disk")
    model = load_classifier(tiny_model_dir).model
    assert metrics.n_params == sum(p.numel() for p in model.parameters())
    assert metrics.peak_memory_bytes > 50e6 and metrics.peak_memory_kind.startswith("rss")
    assert metrics.rows_per_s > 0 and metrics.tokens_per_s > metrics.rows_per_s
    # the format column says what is on disk: the tiny folder stores fp32 (the budget still projects fp16)
    assert metrics.device.startswith("cpu (") and metrics.weight_format == "fp32"
    assert metrics.weight_format_spec["name"] == "fp16"
    assert 0 < metrics.padding_efficiency <= 1 and metrics.max_length == 160
    assert metrics.budget["profile"] == "lmsys-2xt4" and metrics.budget["basis"] == "flops-estimate"
    assert metrics.budget["fits"] is True and metrics.budget["tta_factor"] == 2.0
    d = metrics.to_dict()
    assert not {"probs", "probs_tta", "lengths"} & set(d)
    assert json.loads(json.dumps(d))["log_loss"] == pytest.approx(metrics.log_loss)
    # an in-memory model: size is its parameter bytes, and it scores the same
    in_memory = evaluate(model, rows, dataclasses.replace(CFG, tta=False))
    tensors = list(model.parameters()) + list(model.buffers())  # buffers: the rotary inv_freq
    assert in_memory.size_source == "memory" and in_memory.size_bytes == sum(t.nbytes for t in tensors)
    assert in_memory.probs_tta is None and in_memory.log_loss_tta is None and in_memory.budget["tta_factor"] == 1.0
    np.testing.assert_allclose(in_memory.probs, metrics.probs, atol=1e-6)


def test_gated_tta_swaps_only_the_least_confident_rows(tiny_model_dir, rows, metrics):
    gated = evaluate(
        tiny_model_dir, rows, dataclasses.replace(CFG, tta="gated", tta_fraction=0.25, budget="lmsys-2xt4")
    )
    np.testing.assert_allclose(gated.probs, metrics.probs, atol=1e-6)
    confidence = metrics.probs.max(1)
    chosen = sorted(np.argsort(confidence, kind="stable")[:4].tolist())  # ceil(0.25 * 16)
    rest = [i for i in range(16) if i not in chosen]
    np.testing.assert_allclose(gated.probs_tta[chosen], metrics.probs_tta[chosen], atol=1e-6)
    np.testing.assert_allclose(gated.probs_tta[rest], metrics.probs[rest], atol=1e-6)
    assert gated.budget["tta_factor"] == pytest.approx(1.25)
    assert EvalConfig(tta=False).tta_mode == "none" and EvalConfig().tta_mode == "full"
    with pytest.raises(ValueError, match="EvalConfig.tta must be"):
        EvalConfig(tta="sometimes")
    with pytest.raises(ValueError, match="EvalConfig.tta_fraction"):
        EvalConfig(tta="gated", tta_fraction=1.5)


def test_bad_input_is_named(tiny_model_dir, rows):
    unlabelled = kdq.load_arena(pd.DataFrame(make_arena_rows(3, seed=1, labelled=False)))
    with pytest.raises(ValueError, match="row '0' has no label"):
        evaluate(tiny_model_dir, unlabelled, CFG)
    with pytest.raises(ValueError, match="EvalConfig.batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="EvalConfig.dtype"):
        EvalConfig(dtype="int4")
    with pytest.raises(ValueError, match="EvalConfig.device"):
        EvalConfig(device="tpu:9")
    with pytest.raises(ValueError, match="no-such-budget"):
        evaluate(tiny_model_dir, rows, dataclasses.replace(CFG, budget="no-such-budget"))


@pytest.fixture(scope="module")
def variants(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    """A bigger tiny teacher, its bitsandbytes nf4 copy, the student, and a hard-label baseline."""
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    root = tmp_path_factory.mktemp("variants")
    teacher = root / "teacher"
    # dims are multiples of 64: bitsandbytes' CPU 4-bit kernel needs whole 64-weight blocks per row
    make_tiny_classifier(teacher, tiny_tokenizer, seed=3, hidden_size=128, intermediate_size=256, num_layers=2)
    nf4 = AutoModelForSequenceClassification.from_pretrained(
        str(teacher),
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
    )
    nf4.save_pretrained(str(root / "teacher-nf4"))
    tiny_tokenizer.save_pretrained(str(root / "teacher-nf4"))
    make_tiny_classifier(root / "baseline", tiny_tokenizer, seed=7)
    return {
        "teacher-fp16": teacher,
        "teacher-nf4": root / "teacher-nf4",
        "student": tiny_model_dir,
        "baseline": root / "baseline",
    }


def test_compare_writes_table_plot_and_verdicts(tmp_path, variants, rows, metrics):
    out = tmp_path / "report"
    res = compare(
        variants | {"student-again": metrics},
        rows,
        CFG,
        out_dir=out,
        teacher="teacher-fp16",
        baseline="baseline",
        student="student",
    )
    names = ["teacher-fp16", "teacher-nf4", "student", "baseline", "student-again"]
    assert [r["variant"] for r in res.rows] == names
    assert all(isinstance(r["fits"], bool) for r in res.rows)  # a budget verdict for every variant
    by = {r["variant"]: r for r in res.rows}
    assert by["teacher-nf4"]["weight_format"] == "bnb-nf4" and by["teacher-fp16"]["delta_vs_teacher"] == 0
    assert by["teacher-nf4"]["size_mb"] < by["teacher-fp16"]["size_mb"]
    assert by["student-again"]["log_loss"] == by["student"]["log_loss"]  # same rows, same model
    m = res.metrics
    t, b, s = (m[n].log_loss for n in ("teacher-fp16", "baseline", "student"))
    if b - t > 1e-6:
        assert res.gap_closed == pytest.approx((b - s) / (b - t))
    else:
        assert res.gap_closed is None and any("undefined" in n for n in res.notes)

    md = (out / "report.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + len(names) and "Δ vs teacher" in table[0] and "fits lmsys-2xt4" in table[0]
    assert "Gap closed" in md and any(ln.startswith("| teacher-nf4 | bnb-nf4 |") for ln in table)
    assert any("bitsandbytes wheel" in n for n in res.notes)  # offline notebook must bring the wheel
    report = json.loads((out / "report.json").read_text())
    assert [v["variant"] for v in report["variants"]] == names and report["profile"]["name"] == "lmsys-2xt4"
    assert report[FORMAT_KEY] == REPORT_FORMAT == 1
    assert report["variants"][1]["metrics"]["budget"]["weight_format"] == "bnb-nf4"
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(str(out / "report.png")).shape
    assert width > 2 * height > 300  # two panels side by side

    with pytest.raises(FileExistsError):
        compare(variants, rows, CFG, out_dir=out)
    other_rows = kdq.load_arena(pd.DataFrame(make_arena_rows(16, seed=6, max_words=80)))
    with pytest.raises(ValueError, match="other rows"):
        compare({"a": metrics}, other_rows, CFG, out_dir=tmp_path / "r2")
    with pytest.raises(ValueError, match="baseline='nope'"):
        compare(variants, rows, CFG, out_dir=tmp_path / "r3", baseline="nope")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_compare_reprojects_stored_metrics_onto_another_budget(tmp_path, rows, metrics):
    profile = dataclasses.replace(load_budget("lmsys-2xt4"), name="tiny-box", time_limit_hours=0.1)
    res = compare({"student": metrics}, rows, CFG.replace(budget=profile), out_dir=tmp_path / "r")
    verdict = res.metrics["student"].budget
    assert verdict["profile"] == "tiny-box" and verdict["fits"] is False and not verdict["fits_time"]
    assert isinstance(res.metrics["student"], Metrics) and "✗" in (tmp_path / "r" / "report.md").read_text()


def test_compare_reprojects_gated_tta_metrics_at_their_own_passes_per_row(tmp_path, tiny_model_dir, rows):
    """Stored Metrics scored with gated TTA cost about 1 + tta_fraction passes per row, in compare's table as in
    evaluate's verdict (compare once re-projected them at full TTA's 2 passes)."""
    gated = evaluate(tiny_model_dir, rows, CFG.replace(tta="gated", tta_fraction=0.25, budget="lmsys-2xt4"))
    assert gated.budget["tta_factor"] == pytest.approx(1.25)
    res = compare({"student": gated}, rows, CFG.replace(budget="lmsys-2xt4"), out_dir=tmp_path / "r")
    verdict = res.metrics["student"].budget
    assert verdict["tta_factor"] == pytest.approx(1.25)
    assert verdict["projected_hours"] == pytest.approx(gated.budget["projected_hours"])
    assert res.rows[0]["t4_hours"] == pytest.approx(gated.budget["projected_hours"])
