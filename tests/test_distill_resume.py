"""resume=True continues a checkpoint only under what it was trained with: teacher, student init, data, config."""

import json

import pytest

import kdq
from kdq.config.io import merge
from kdq.runtime.constants import RUN_RECORD_FILE
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = kdq.TemplateConfig(max_length=48)


@pytest.fixture
def models(tmp_path, tiny_tokenizer):
    make_tiny_classifier(tmp_path / "teacher", tiny_tokenizer, seed=1)
    make_tiny_classifier(tmp_path / "student", tiny_tokenizer, seed=2, num_layers=1)
    return tmp_path


def _cfg(tmp_path, **kw):
    """One epoch of batches of 8; ``kw``: fields, sections as dicts merged into these."""
    base = dict(
        output_dir=str(tmp_path / "run"), template=TEMPLATE, training=dict(epochs=1, batch_size=8, logging_steps=1)
    )
    return kdq.DistillConfig(**merge(base, kw))


def _run(models, rows, **kw):
    return kdq.distill(str(models / "student"), rows, teacher=str(models / "teacher"), config=_cfg(models, **kw))


def test_resume_records_its_step_and_refuses_a_replaced_teacher(models, tiny_tokenizer):
    rows = make_arena_rows(16, seed=40, max_words=30)
    first = _run(models, rows)
    record = json.loads((first.student_dir / "kdq-distill.json").read_text())
    assert record["resumed_from"] is None
    run = json.loads((models / "run" / RUN_RECORD_FILE).read_text())  # written before training, in the output folder
    checkpoint = models / "run" / "checkpoints" / "checkpoint-2"
    assert json.loads((checkpoint / RUN_RECORD_FILE).read_text()) == run  # and carried by every checkpoint
    assert run["teacher"].startswith("path:") and run["data"]["train"].startswith("rows:")
    assert (
        run["data"]["eval"] is None and "output_dir" not in run["config"] and "training.learning_rate" in run["config"]
    )
    assert "training.epochs" not in run["config"] and "loss.temperature" in run["config"]  # dotted, resumable ones out

    # the same inputs, run for longer: resumes, and says from where
    second = _run(models, rows, training={"epochs": 2}, resume=True)
    record = json.loads((second.student_dir / "kdq-distill.json").read_text())
    assert record["resumed_from"] == {"checkpoint": "checkpoint-2", "step": 2}
    assert second.metrics["train"]["epoch"] == 2

    # the teacher folder is replaced by a retrained teacher: its checkpoint was trained against the old one
    make_tiny_classifier(models / "teacher", tiny_tokenizer, seed=7)
    with pytest.raises(ValueError, match=r"checkpoint-4 \(step 4\).*teacher \(was 'path:.*overwrite=True"):
        _run(models, rows, training={"epochs": 3}, resume=True)
    assert not (models / "run" / "checkpoints" / "checkpoint-6").exists()  # refused before training


def test_resume_refuses_changed_data_config_or_init_and_a_checkpoint_without_a_record(models, tiny_tokenizer):
    rows = make_arena_rows(16, seed=41, max_words=30)
    lr = {"learning_rate": 1e-3}
    _run(models, rows, training=lr)
    edited = make_arena_rows(16, seed=41, max_words=30)
    edited["response_a"][3] = json.dumps(["an answer edited after the checkpoint"])
    with pytest.raises(ValueError, match=r"data\.train \(was 'rows:\w+', now 'rows:\w+'\)"):
        _run(models, edited, training={**lr, "epochs": 2}, resume=True)
    with pytest.raises(ValueError, match=r"config\.training\.learning_rate \(was 0\.001, now 0\.002\)"):
        _run(models, rows, training={"learning_rate": 2e-3, "epochs": 2}, resume=True)
    with pytest.raises(ValueError, match=r"config\.loss\.temperature \(was 2\.0, now 1\.0\)"):
        _run(models, rows, training={**lr, "epochs": 2}, loss={"temperature": 1.0}, resume=True)
    with pytest.raises(ValueError, match=r"config\.lora \(was None, now 'absent'\).*config\.lora\.r"):
        _run(models, rows, training={**lr, "epochs": 2}, resume=True, lora=kdq.LoraSettings(r=4))
    make_tiny_classifier(models / "student", tiny_tokenizer, seed=8, num_layers=1)
    with pytest.raises(ValueError, match=r"student_init \(was 'path:"):
        _run(models, rows, training={**lr, "epochs": 2}, resume=True)
    (models / "run" / "checkpoints" / "checkpoint-2" / RUN_RECORD_FILE).unlink()
    with pytest.raises(ValueError, match=rf"checkpoint-2 has no {RUN_RECORD_FILE}.*Delete that folder"):
        _run(models, rows, training={**lr, "epochs": 2}, resume=True)
