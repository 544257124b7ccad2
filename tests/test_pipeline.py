"""kdq.pipeline: settings that would fail after hours of training fail at construction; the
recommended variant; DDP stages that never wait at a barrier for single-process work."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from _launch import launch_two_processes

import kdq
from kdq.evaluate.recommend import recommend
from kdq.pipeline import PipelineConfig, PipelineResult, _export_names
from kdq.quant_methods import get_quantizer, settings_fields, variant_names
from kdq.testing import make_arena_rows, make_tiny_classifier


def test_bad_settings_fail_before_any_training():
    with pytest.raises(ValueError, match="quant_methods"):
        PipelineConfig(quant_methods=("gptq-3",))
    with pytest.raises(ValueError, match="export_variants"):
        PipelineConfig(export_variants=("student-kd-gptq-4",), quant_methods=("bnb-int8",))
    with pytest.raises(ValueError, match="group_size"):
        PipelineConfig(gptq_group_size=0)
    with pytest.raises(ValueError, match="PipelineConfig.ddp_timeout"):
        PipelineConfig(ddp_timeout=0)
    cfg = PipelineConfig(quant_methods=("gptq-8", "bnb-nf4"), quantize_teacher=False, baseline=False)
    assert cfg.variant_names() == ["teacher", "student-kd", "student-kd-gptq-8", "student-kd-bnb-nf4"]
    # nothing set: QuantConfig and the method keep their own defaults (the pipeline repeats none of them)
    default = kdq.QuantConfig.from_name("gptq-8")
    assert cfg.calibration_samples is None and cfg.gptq_group_size is None
    assert (cfg.quant_config("gptq-8").num_samples, cfg.quant_config("gptq-8").group_size) == (
        default.num_samples,
        default.group_size,
    )


@pytest.mark.parametrize("variant", variant_names())
def test_every_registered_variant_is_a_pipeline_quant_method(variant):
    cfg = PipelineConfig(quant_methods=(variant,), calibration_samples=32, gptq_group_size=64)
    qc = cfg.quant_config(variant)
    assert qc.name == variant and cfg.variant_names()[-1] == f"student-kd-{variant}"
    quantizer = get_quantizer(qc.method)
    assert qc.num_samples == (32 if quantizer.needs_calibration else 128)
    assert getattr(qc, "group_size", None) == (64 if "group_size" in settings_fields(quantizer.settings) else None)


def _variant(probs, probs_tta=None, *, fits=True, hours=1.0, size=1e9, position_bias=None):
    return SimpleNamespace(
        probs=probs,
        probs_tta=probs_tta,
        rows_per_s=10.0,
        size_bytes=size,
        budget={"fits": fits, "projected_hours": hours},
        position_bias=position_bias,
    )


@pytest.fixture(scope="module")
def eval_rows():
    return kdq.load_arena(make_arena_rows(300, seed=8))


def _probs(labels, right, seed):
    """Probabilities putting ``right`` (+ noise) on the true label."""
    rng = np.random.default_rng(seed)
    p = np.full((len(labels), 3), (1 - right) / 2)
    p[np.arange(len(labels)), labels] = right
    p = p * rng.uniform(0.9, 1.1, p.shape)
    return p / p.sum(1, keepdims=True)


def test_recommended_ties_within_the_interval_go_to_the_faster_smaller_variant(eval_rows):
    labels = np.asarray(eval_rows["label"])
    metrics = {
        "teacher": _variant(_probs(labels, 0.70, 0), fits=False, hours=9.5),  # best, but does not fit
        "teacher-gptq-8": _variant(_probs(labels, 0.60, 1), hours=3.0, size=4e9),
        "teacher-gptq-4": _variant(_probs(labels, 0.599, 2), hours=2.5, size=2e9),  # within the interval: tied
        "student": _variant(_probs(labels, 0.40, 3), hours=0.5, size=1e9),  # clearly worse
    }
    sel = recommend(metrics, eval_rows, "none")
    assert sel["best"] == "teacher-gptq-8" and "teacher" not in sel["ranking"]
    assert sel["tied"] == ["teacher-gptq-4", "teacher-gptq-8"]  # the faster one first
    assert sel["ranking"] == ["teacher-gptq-4", "teacher-gptq-8", "student"]
    assert sel["log_loss"]["teacher-gptq-8"] < sel["log_loss"]["teacher-gptq-4"]  # tied, not equal
    # the TTA the export ships decides: with TTA the student's swap-averaged probabilities win clearly
    metrics["student"].probs_tta = _probs(labels, 0.9, 4)
    for name in ("teacher-gptq-8", "teacher-gptq-4"):
        metrics[name].probs_tta = metrics[name].probs
    assert recommend(metrics, eval_rows, "full")["ranking"][0] == "student"
    report = SimpleNamespace(metrics=dict.fromkeys(metrics, 0))
    assert _export_names(["recommended", "teacher"], report, sel) == [sel["ranking"], ["teacher"]]


def test_summary_prints_the_recommendation_and_its_notes(eval_rows, tmp_path):
    labels = np.asarray(eval_rows["label"])
    bias = {"flips": 90, "rows": 300, "flip_rate": 0.3, "over": "all rows", "mean_disagreement": 0.2}
    metrics = {
        "teacher": _variant(_probs(labels, 0.70, 0), hours=2.0),
        "student": _variant(_probs(labels, 0.40, 1), hours=0.5, position_bias=bias),  # order-dependent
    }
    sel = recommend(metrics, eval_rows, "none")
    assert len(sel["notes"]) == 1 and sel["notes"][0].startswith("student: swapping A and B flips 90 of 300")
    (tmp_path / "report.md").write_text("| variant |\n")
    report = SimpleNamespace(paths={"md": tmp_path / "report.md", "png": tmp_path / "report.png"}, gap_closed=None)
    result = PipelineResult(variants={}, report=report, exports={}, distill_metrics={}, recommendation=sel)
    lines = result.summary().splitlines()
    assert "recommended on 300 eval rows (log_loss, tta=none), best first: teacher, student" in lines
    assert "note: " + sel["notes"][0] in lines
    assert not any(line.startswith("note:") for line in PipelineResult({}, report, {}, {}).summary().splitlines())


def test_ddp_teacher_pass_longer_than_the_group_timeout_passes(tmp_path, tiny_tokenizer):
    """2 processes, gloo, ddp_timeout=30 s; the teacher pass takes >= 45 s."""
    make_tiny_classifier(tmp_path / "teacher", tiny_tokenizer, seed=1)
    make_tiny_classifier(tmp_path / "student", tiny_tokenizer, seed=2, num_layers=1)
    launch_two_processes("_ddp_pipeline.py", tmp_path, 30, 45, timeout=900)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank0["backend"] == "gloo"
    assert rank0["report"] and not rank1["report"]
    # both ranks read the cache rank 0 filled outside the group: nobody scored the teacher under a barrier
    assert rank0["teacher_pass"]["computed"] == rank1["teacher_pass"]["computed"] == 0
    assert rank1["seconds"] > 45 > 30  # rank 1 waited (on a file) longer than the group's timeout
    assert rank0["seconds"] > rank1["seconds"]  # and returned while rank 0 was still comparing
