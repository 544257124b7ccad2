"""kdq.pipeline: settings that would fail after hours of training fail at construction."""
from types import SimpleNamespace

import pytest

from kdq.pipeline import PipelineConfig, _export_names


def test_bad_settings_fail_before_any_training():
    with pytest.raises(ValueError, match="quant_methods"):
        PipelineConfig(quant_methods=("gptq-3",))
    with pytest.raises(ValueError, match="export_variants"):
        PipelineConfig(export_variants=("student-kd-gptq-4",), quant_methods=("bnb-int8",))
    with pytest.raises(ValueError, match="group_size"):
        PipelineConfig(gptq_group_size=0)
    cfg = PipelineConfig(quant_methods=("gptq-8", "bnb-nf4"), quantize_teacher=False, baseline=False)
    assert cfg.variant_names() == ["teacher", "student-kd", "student-kd-gptq-8", "student-kd-bnb-nf4"]
    assert cfg.quant_config("gptq-8").num_samples == cfg.calibration_samples


def test_recommended_is_the_best_variant_that_fits():
    report = SimpleNamespace(metrics={"teacher": 0, "student": 0, "student-q": 0}, rows=[
        {"variant": "teacher", "log_loss": 0.90, "fits": False},
        {"variant": "student", "log_loss": 0.95, "fits": True},
        {"variant": "student-q", "log_loss": 0.96, "fits": True},
    ])
    assert _export_names(["recommended"], report) == [["student", "student-q"]]  # best first, then fallbacks
    assert _export_names(["recommended", "teacher"], report) == [["student", "student-q"], ["teacher"]]
