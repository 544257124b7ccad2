"""kdq.distill end to end on tiny models: cache, Trainer, LoRA, resume, DDP, and that KD transfers."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from _launch import launch_two_processes
from transformers import AutoModelForSequenceClassification

import kdq
from kdq.config.io import merge
from kdq.data import load_arena
from kdq.distill import cache as cache_mod
from kdq.distill.api import DISTILL_RECORD_FORMAT
from kdq.distill.cache import cache_teacher_logits
from kdq.models import LazyClassifier, load_classifier, template_of
from kdq.runtime.constants import FORMAT_KEY, SHRINK_KEY
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = kdq.TemplateConfig(max_length=64)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("models")
    make_tiny_classifier(d / "teacher", tiny_tokenizer, seed=1)
    make_tiny_classifier(d / "student", tiny_tokenizer, seed=2, num_layers=1)
    return d


def _cfg(tmp_path, **kw):
    """The tests' run: one epoch of batches of 8, a log line per step; ``kw`` fields (sections as dicts,
    merged into these)."""
    base = dict(
        output_dir=str(tmp_path / "run"), template=TEMPLATE, training=dict(epochs=1, batch_size=8, logging_steps=1)
    )
    return kdq.DistillConfig(**merge(base, kw))


def test_distill_end_to_end_from_csv(tmp_path, models, arena_csv):
    res = kdq.distill(
        str(models / "student"),
        arena_csv,
        eval_data=arena_csv,
        teacher=str(models / "teacher"),
        config=_cfg(tmp_path, training={"epochs": 2, "swap_augment": True}, teacher_pass={"tta": True}),
    )
    assert res.student_dir == tmp_path / "run" / "student"
    assert res.cache_path.is_dir() and (res.cache_path / "fingerprint.json").is_file()
    assert res.metrics["teacher_pass"]["computed"] == 64
    evals = [h for h in res.metrics["history"] if "eval_log_loss" in h]
    assert [round(h["epoch"]) for h in evals] == [1, 2]  # eval log loss every epoch
    assert res.metrics["best_eval_log_loss"] == min(h["eval_log_loss"] for h in evals)
    train_logs = [h for h in res.metrics["history"] if "ce" in h]
    assert train_logs and all("kd" in h for h in train_logs)  # ce and kd logged separately
    # The saved student is a plain folder: stock transformers loads it and it remembers its template.
    m = AutoModelForSequenceClassification.from_pretrained(res.student_dir)
    assert m.config.num_labels == 3 and m.config.id2label[2] == "winner_tie"
    assert template_of(res.student_dir) == TEMPLATE
    record = json.loads((res.student_dir / "kdq-distill.json").read_text())
    assert record["config"]["teacher_pass"]["tta"] is True and record[FORMAT_KEY] == DISTILL_RECORD_FORMAT == 1
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kdq.distill(str(models / "student"), arena_csv, teacher=str(models / "teacher"), config=_cfg(tmp_path))


def test_cache_reuses_resumes_and_never_mixes(tmp_path, models, monkeypatch):
    teacher = load_classifier(str(models / "teacher"))
    rows = load_arena(make_arena_rows(40, seed=7, max_words=60))
    kw = dict(cache_dir=tmp_path / "c", template=TEMPLATE, batch_size=8, chunk_rows=10)

    real = cache_mod.predict_logits
    calls = {"n": 0}

    def interrupted(*a, **k):  # simulate Ctrl-C during the third shard
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "predict_logits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache_teacher_logits(teacher, rows, **kw)
    monkeypatch.setattr(cache_mod, "predict_logits", real)
    folder = next((tmp_path / "c").iterdir())
    assert len(list((folder / "shards").glob("part-*"))) == 2
    assert not [p for p in (folder / "shards").iterdir() if p.name.startswith(".")]  # no half-written shard

    resumed = cache_teacher_logits(teacher, rows, **kw)
    assert (resumed.reused, resumed.computed) == (20, 20)
    fresh = cache_teacher_logits(teacher, rows, **{**kw, "cache_dir": tmp_path / "fresh"})
    np.testing.assert_allclose(resumed.logits, fresh.logits, atol=1e-5)
    again = cache_teacher_logits(teacher, rows, **kw)
    assert again.computed == 0 and again.path == resumed.path
    lazy = LazyClassifier(str(models / "teacher"))
    assert lazy.fingerprint == teacher.fingerprint
    assert cache_teacher_logits(lazy, rows, **kw).computed == 0 and lazy._model is None  # a hit loads no weights

    tta = cache_teacher_logits(teacher, rows, **{**kw, "tta": True})
    assert tta.path != resumed.path and tta.computed == 40  # another fingerprint, another table
    longer = cache_teacher_logits(teacher, rows, **{**kw, "template": kdq.TemplateConfig(max_length=96)})
    assert longer.path not in (resumed.path, tta.path)

    # Entries are keyed by what the teacher saw, not by id: a row whose text changed under the same id
    # is scored again (no stale logit, no error), and the same text under new ids is a hit.
    changed = rows.map(lambda r: {"prompt": ["something else entirely"]} if r["id"] == "3" else {})
    rescored = cache_teacher_logits(teacher, changed, **kw)
    assert (rescored.reused, rescored.computed) == (39, 1)
    k = rescored.ids.index("3")
    assert not np.allclose(rescored.logits[k], resumed.logits[k], atol=1e-4)
    np.testing.assert_allclose(
        rescored.logits,
        cache_teacher_logits(teacher, changed, **{**kw, "cache_dir": tmp_path / "fresh2"}).logits,
        atol=1e-5,
    )
    renamed = rows.map(lambda r: {"id": "renamed-" + r["id"]})
    hit = cache_teacher_logits(teacher, renamed, **kw)
    assert hit.computed == 0 and hit.ids[0].startswith("renamed-")
    np.testing.assert_allclose(hit.logits, resumed.logits)


def test_teacher_cache_is_shared_between_runs_by_fingerprint(tmp_path, models, kdq_cache_root, caplog):
    """No cache_dir: the user cache ($KDQ_CACHE, a temporary folder in tests) serves every run with
    the same teacher, template and TTA, whatever its output_dir; kdq cache-teacher fills the same one."""
    from kdq.cli.main import main

    rows = make_arena_rows(24, seed=21, max_words=40, id_offset=7000)  # ids are row identities in a shared cache
    teacher, student = str(models / "teacher"), str(models / "student")
    first = kdq.distill(student, rows, teacher=teacher, config=_cfg(tmp_path / "a", training={"max_steps": 1}))
    assert first.metrics["teacher_pass"] == {**first.metrics["teacher_pass"], "reused": 0, "computed": 24}
    assert first.cache_path.parent == kdq_cache_root / "teacher-logits"
    assert not (tmp_path / "a" / "run" / "teacher-cache").exists()
    caplog.clear()
    with caplog.at_level("WARNING", logger="kdq.distill"):
        config = _cfg(tmp_path / "b", training={"max_steps": 1}, loss={"temperature": 4.0})
        second = kdq.distill(student, rows, teacher=teacher, config=config)
    assert second.cache_path == first.cache_path
    assert (second.metrics["teacher_pass"]["reused"], second.metrics["teacher_pass"]["computed"]) == (24, 0)
    assert f"reused 24 of 24 rows from {first.cache_path}" in caplog.text  # and says so
    # another TTA setting is another teacher output: its own folder, never mixed
    config = _cfg(tmp_path / "c", training={"max_steps": 1}, teacher_pass={"tta": True})
    tta = kdq.distill(student, rows, teacher=teacher, config=config)
    assert tta.cache_path != first.cache_path and tta.metrics["teacher_pass"]["computed"] == 24
    # cache_dir still overrides the shared folder
    config = _cfg(tmp_path / "d", training={"max_steps": 1}, teacher_pass={"cache_dir": str(tmp_path / "own")})
    own = kdq.distill(student, rows, teacher=teacher, config=config)
    assert own.cache_path.parent == tmp_path / "own" and own.metrics["teacher_pass"]["computed"] == 24
    # the CLI's cache-teacher runs the same teacher pass, into the same shared cache
    more = make_arena_rows(8, seed=22, max_words=40, id_offset=7500)
    csv = tmp_path / "more.csv"
    import pandas as pd

    pd.DataFrame({k: v for k, v in more.items()}).to_csv(csv, index=False)
    assert main(["cache-teacher", "--teacher", teacher, "--data", str(csv), "--set", "template.max_length=64"]) == 0
    third = kdq.distill(student, more, teacher=teacher, config=_cfg(tmp_path / "e", training={"max_steps": 1}))
    assert third.cache_path == first.cache_path and third.metrics["teacher_pass"]["computed"] == 0


def test_tta_cache_is_the_unswapped_average(tmp_path, models):
    from kdq.data import encode
    from kdq.runtime.batching import predict_logits

    teacher = load_classifier(str(models / "teacher"))
    rows = load_arena(make_arena_rows(12, seed=8, max_words=40))
    got = cache_teacher_logits(teacher, rows, cache_dir=tmp_path, template=TEMPLATE, tta=True).logits
    pad = teacher.tokenizer.pad_token_id
    p = predict_logits(teacher.model, encode(rows, teacher.tokenizer, TEMPLATE)["input_ids"], pad).softmax(-1)
    q = predict_logits(teacher.model, encode(rows, teacher.tokenizer, TEMPLATE, swap=True)["input_ids"], pad).softmax(
        -1
    )
    expected = (p + q[:, [1, 0, 2]]) / 2
    np.testing.assert_allclose(np.exp(got), expected.numpy(), atol=1e-5)


def test_peft_adapter_teacher_is_loaded_on_its_base(tmp_path, models):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForSequenceClassification.from_pretrained(models / "teacher")
    peft_model = get_peft_model(
        base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = load_classifier(tmp_path / "adapter")
    ids = torch.tensor([[1, 20, 30, 40]])
    expected = peft_model.eval()(input_ids=ids).logits
    assert torch.allclose(loaded.model(input_ids=ids).logits, expected, atol=1e-5)
    assert not any("lora" in n for n, _ in loaded.model.named_parameters())  # merged


def test_lora_student_trains_the_head_and_saves_merged(tmp_path, models):
    rows = make_arena_rows(32, seed=9, max_words=40)
    before = AutoModelForSequenceClassification.from_pretrained(models / "student").score.weight.clone()
    res = kdq.distill(
        str(models / "student"),
        rows,
        teacher=None,
        config=_cfg(tmp_path, lora=kdq.LoraSettings(r=4), training={"learning_rate": 1e-2}),
    )
    after = AutoModelForSequenceClassification.from_pretrained(res.student_dir)
    assert not torch.allclose(after.score.weight, before)
    assert not any("lora" in k for k in after.state_dict())
    assert res.cache_path is None and "teacher_pass" not in res.metrics


def test_resume_continues_from_the_last_checkpoint(tmp_path, models):
    rows = make_arena_rows(32, seed=10, max_words=40)
    first = kdq.distill(str(models / "student"), rows, eval_data=rows, config=_cfg(tmp_path, training={"epochs": 1}))
    steps_one = first.metrics["train"]["epoch"]
    second = kdq.distill(
        str(models / "student"), rows, eval_data=rows, config=_cfg(tmp_path, training={"epochs": 2}, resume=True)
    )
    epochs_logged = [round(h["epoch"]) for h in second.metrics["history"] if "eval_log_loss" in h]
    assert steps_one == 1 and epochs_logged == [1, 2]  # epoch 1 came from the checkpoint's history


def test_config_errors_name_the_field():
    with pytest.raises(
        ValueError,
        match=r"LossSettings.divergence must be one of \['forward_kl', 'jsd', 'prob_cosine', 'reverse_kl'\]",
    ):
        kdq.DistillConfig(loss={"divergence": "kl"})
    with pytest.raises(ValueError, match="LossSettings.alpha"):
        kdq.DistillConfig(loss=kdq.LossSettings(alpha=1.5))
    with pytest.raises(ValueError, match="LoraSettings.r"):
        kdq.LoraSettings(r=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        kdq.DistillConfig().loss.alpha = 0.1  # frozen
    with pytest.raises(ValueError, match=r"LoraSettings has no field\(s\) \['rank'\]"):
        kdq.DistillConfig(lora={"rank": 4})


def test_shrink_keeps_every_third_layer_and_reloads(tmp_path, tiny_tokenizer):
    make_tiny_classifier(tmp_path / "t", tiny_tokenizer, seed=3, num_layers=7)
    out = kdq.shrink(str(tmp_path / "t"), tmp_path / "s", kdq.ShrinkConfig(every=3))
    m = AutoModelForSequenceClassification.from_pretrained(out)
    assert m.config.num_hidden_layers == 3
    assert getattr(m.config, SHRINK_KEY)["kept_layers"] == [0, 3, 6]
    assert [layer.self_attn.layer_idx for layer in m.model.layers] == [0, 1, 2]
    t = AutoModelForSequenceClassification.from_pretrained(tmp_path / "t")
    assert torch.equal(m.model.layers[1].mlp.up_proj.weight, t.model.layers[3].mlp.up_proj.weight)
    assert torch.equal(m.score.weight, t.score.weight)
    full = kdq.shrink(t, config=kdq.ShrinkConfig(keep=range(7)))
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.allclose(full(input_ids=ids).logits, t(input_ids=ids).logits)
    assert t.config.num_hidden_layers == 7  # the source object is untouched


def test_two_process_ddp_with_accelerate_launch(tmp_path, models):
    for name in ("teacher", "student"):
        os.symlink(models / name, tmp_path / name)
    launch_two_processes("_ddp_distill.py", tmp_path)
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i["world_size"] == 2 and i["backend"] == "gloo" for i in infos)
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()
    # 64 rows, 8 per device, 2 devices: 4 optimizer steps per epoch, not 8.
    assert infos[0]["metrics"]["train"]["epoch"] == 1 and infos[0]["metrics"]["history"][-1]["step"] == 4


def test_gradient_accumulation_does_not_inflate_the_loss(tmp_path, models):
    rows = make_arena_rows(32, seed=12, max_words=40)
    res = kdq.distill(str(models / "student"), rows, config=_cfg(tmp_path, training={"batch_size": 4, "grad_accum": 2}))
    logged = [h for h in res.metrics["history"] if "loss" in h and "ce" in h]
    # With hard labels the loss is the CE; unscaled accumulation would log ~2x it.
    assert logged and all(abs(h["loss"] - h["ce"]) < 0.15 * h["ce"] for h in logged)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not _installed("tensorboard"), reason="tensorboard is not installed (pip install tensorboard)")
def test_report_to_tensorboard_writes_event_files(tmp_path, models):
    rows = make_arena_rows(16, seed=23, max_words=30)
    cfg = _cfg(tmp_path, training={"max_steps": 2, "report_to": "tensorboard"})
    kdq.distill(str(models / "student"), rows, config=cfg)
    events = list((tmp_path / "run" / "checkpoints" / "runs").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


@pytest.mark.parametrize("reporter, package", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_logger_is_named_with_its_pip_package_before_anything_runs(
    tmp_path, models, monkeypatch, reporter, package
):
    import importlib.util

    real = importlib.util.find_spec
    hidden = {"wandb", "tensorboard", "tensorboardX"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    cfg = _cfg(tmp_path, training={"report_to": reporter})
    with pytest.raises(
        ImportError, match=rf"report_to='{reporter}' .*pip install 'kdq\[{reporter}\]'.*pip install {package}"
    ):
        kdq.distill(str(models / "student"), make_arena_rows(8, seed=24), teacher=str(models / "teacher"), config=cfg)
    assert not (tmp_path / "run").exists()  # refused before the teacher pass and the run folder
    from kdq.cli.main import main
    from kdq.cli.spec import EXIT_MISSING_DEP

    argv = ["distill", "--student", str(models / "student"), "--train", "x.csv", "--output-dir", str(tmp_path / "r")]
    assert main([*argv, "--set", f"training.report_to={reporter}"]) == EXIT_MISSING_DEP
