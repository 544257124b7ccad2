"""Narrow students on tiny models: width pruning, hidden-state KD across widths (learned projections),
the tokenizer check, cached pooled features and the memory plan of a live teacher."""

import importlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

import kdq
from kdq.costs.train_memory import train_device
from kdq.data import encode, load_arena
from kdq.distill.cache import cache_teacher_logits
from kdq.distill.objective import pooled, proportional_layer_map, resolve_layer_map
from kdq.distill.planning import TrainingMemoryError, plan_training
from kdq.models import load_classifier
from kdq.runtime.batching import predict_logits
from kdq.testing import make_arena_rows, make_tiny_classifier, make_tokenizer

TEMPLATE = kdq.TemplateConfig(max_length=64)
SHAPE = dict(num_layers=4, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("widths") / "teacher"
    make_tiny_classifier(d, tiny_tokenizer, seed=11, **SHAPE)
    return d


@pytest.fixture(scope="module")
def calib():
    return make_arena_rows(32, seed=31, max_words=40)


def _logits(model, tok, rows):
    seqs = encode(load_arena(rows), tok, TEMPLATE)["input_ids"]
    return predict_logits(model, seqs, tok.pad_token_id, batch_size=8)


# --------------------------------------------------------------------------- width pruning
def test_width_pruned_folder_reloads_with_stock_transformers(tmp_path, teacher, calib, tiny_tokenizer):
    config = kdq.ShrinkConfig(
        every=2,
        strategy="block-influence",
        hidden_size=48,
        intermediate_size=96,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    out = kdq.shrink(str(teacher), tmp_path / "s", config, calibration=calib)
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        48,
        96,
        2,
        1,
    )
    assert cfg["head_dim"] == 16 and cfg["num_hidden_layers"] == 3  # head_dim kept: 64 / 4
    width = cfg["kdq_shrink"]["width"]
    assert width["source"]["hidden_size"] == 64 and len(width["kept_channels"]) == 48
    assert [len(x) for x in width["kept_neurons"]] == [96] * 3 and all(len(h) == 2 for h in width["kept_heads"])
    # both kept query heads of a layer share its one kept KV head (a whole GQA group of the source)
    assert all(h[0] // 2 == h[1] // 2 == kv[0] for h, kv in zip(width["kept_heads"], width["kept_kv_heads"]))
    in_memory = kdq.shrink(str(teacher), config=config, calibration=calib, verbose=False)
    rows = make_arena_rows(8, seed=32, max_words=40)
    np.testing.assert_allclose(
        _logits(model, tiny_tokenizer, rows), _logits(in_memory, tiny_tokenizer, rows), atol=1e-5
    )


def test_pruning_what_is_provably_unused_keeps_the_logits(tiny_tokenizer, calib):
    """Neurons whose gate and up rows are zero, and a head whose value rows are zero, contribute nothing:
    importance ranks them last, and pruning them leaves the logits unchanged."""
    model = make_tiny_classifier(None, tiny_tokenizer, seed=12, **SHAPE)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[:16] = 0
            layer.mlp.up_proj.weight[:16] = 0
            layer.self_attn.v_proj.weight[16:32] = 0  # KV head 1, read by query heads 2 and 3
            layer.self_attn.o_proj.weight[:, 32:64] = 0
    config = kdq.ShrinkConfig(every=1, intermediate_size=112, num_attention_heads=2, num_key_value_heads=1)
    narrow = kdq.shrink(model, config=config, tokenizer=tiny_tokenizer, calibration=calib, verbose=False)
    width = narrow.config.kdq_shrink["width"]
    assert all(set(range(16)).isdisjoint(n) for n in width["kept_neurons"])
    assert width["kept_kv_heads"] == [[0]] * 4 and width["kept_heads"] == [[0, 1]] * 4
    rows = make_arena_rows(8, seed=33, max_words=40)
    np.testing.assert_allclose(_logits(narrow, tiny_tokenizer, rows), _logits(model, tiny_tokenizer, rows), atol=1e-5)


@pytest.mark.parametrize(
    "sizes, message",
    [
        (
            dict(num_attention_heads=3),
            r"num_attention_heads=3 cannot share num_key_value_heads=1.*Valid: num_attention_heads=\[2\]",
        ),
        (dict(num_attention_heads=4, num_key_value_heads=3), r"num_key_value_heads=3 must be an int in \[1, 2\]"),
        (dict(hidden_size=80), r"hidden_size=80 must be an int in \[1, 64\]"),
        (dict(num_attention_heads=2, num_key_value_heads=2), None),  # one query head per KV head: valid
    ],
)
def test_sizes_that_cannot_be_honoured_name_the_valid_ones(teacher, calib, sizes, message):
    config = kdq.ShrinkConfig(every=1, **sizes)
    if message is None:
        kdq.shrink(str(teacher), config=config, calibration=calib, verbose=False)
        return
    with pytest.raises(ValueError, match=message):
        kdq.shrink(str(teacher), config=config, calibration=calib, verbose=False)


def test_width_pruning_needs_calibration_rows(teacher):
    with pytest.raises(ValueError, match="width importance is measured on calibration rows"):
        kdq.shrink(str(teacher), config=kdq.ShrinkConfig(hidden_size=32))


# --------------------------------------------------------------------------- layer maps
def test_layer_maps():
    assert proportional_layer_map(16, 24) == [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23]
    assert proportional_layer_map(3, 3) == [0, 1, 2]

    class Cfg:
        def __init__(self, n, record=None):
            self.num_hidden_layers, self.kdq_shrink = n, record

    shrunk = Cfg(3, {"kept_layers": [0, 5, 9], "source_layers": 10})
    assert resolve_layer_map("auto", shrunk, Cfg(10))[0] == [0, 5, 9]
    assert resolve_layer_map("auto", shrunk, Cfg(12))[0] == proportional_layer_map(3, 12)  # shrunk from another depth
    assert resolve_layer_map([None, 1, 11], Cfg(3), Cfg(12))[0] == [None, 1, 11]
    with pytest.raises(ValueError, match="has 2 entries but the student has 3 layers"):
        resolve_layer_map([1, 2], Cfg(3), Cfg(12))
    with pytest.raises(ValueError, match=r"hidden_layer_map\[2\] = 12: must be a teacher layer in \[0, 11\]"):
        resolve_layer_map([1, 2, 12], Cfg(3), Cfg(12))


# --------------------------------------------------------------------------- hidden-state KD across widths
def _rotated_copy(model, seed: int):
    """The same function with its residual stream rotated by an orthogonal ``R``: hidden states are the
    teacher's times ``R``, logits unchanged (RMSNorm is rotation-invariant while its weights are 1)."""
    import copy

    assert all(torch.all(m.weight == 1) for n, m in model.named_modules() if n.endswith("norm"))
    g = torch.Generator().manual_seed(seed)
    r, _ = torch.linalg.qr(torch.randn(model.config.hidden_size, model.config.hidden_size, generator=g))
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.model.embed_tokens.weight.copy_(out.model.embed_tokens.weight @ r)
        out.score.weight.copy_(out.score.weight @ r)
        for layer in out.model.layers:
            for lin in (
                layer.self_attn.q_proj,
                layer.self_attn.k_proj,
                layer.self_attn.v_proj,
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
            ):
                lin.weight.copy_(lin.weight @ r)
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight.copy_(r.T @ lin.weight)
    return out


def test_a_learned_projection_aligns_a_rotated_student_that_identity_matching_cannot(tmp_path, tiny_tokenizer):
    teacher = make_tiny_classifier(None, tiny_tokenizer, seed=13, num_layers=2)
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer.save_pretrained(tmp_path / "teacher")
    student = _rotated_copy(teacher, seed=5)
    rows = make_arena_rows(64, seed=34, max_words=30)
    np.testing.assert_allclose(
        _logits(student, tiny_tokenizer, rows), _logits(teacher, tiny_tokenizer, rows), atol=1e-4
    )
    student.save_pretrained(tmp_path / "student")
    tiny_tokenizer.save_pretrained(tmp_path / "student")
    final = {}
    for projection in ("auto", "linear"):  # equal widths: "auto" is the identity, "linear" learns one
        res = kdq.distill(
            str(tmp_path / "student"),
            rows,
            teacher=str(tmp_path / "teacher"),
            config=kdq.DistillConfig(
                output_dir=str(tmp_path / projection),
                template=TEMPLATE,
                loss=kdq.LossSettings(hidden_weight=1.0, hidden_projection=projection),
                training=kdq.TrainingSettings(epochs=10, batch_size=16, learning_rate=1e-2, logging_steps=8),
                teacher_pass=kdq.TeacherPassSettings(cache_dir=str(tmp_path / "cache")),
            ),
        )
        final[projection] = [h["hidden"] for h in res.metrics["history"] if "hidden" in h]
    # identity matching compares R-rotated states with the teacher's: it stays far; the projection learns R^T
    assert final["linear"][-1] < 0.5 * final["auto"][-1], final  # measured 0.13 against 0.39
    assert final["linear"][-1] < 0.3 * final["linear"][0], final


def test_cross_width_student_trains_saves_no_projection_and_resumes_exactly(tmp_path, teacher, calib):
    student = kdq.shrink(str(teacher), tmp_path / "s", kdq.ShrinkConfig(every=2, hidden_size=48), calibration=calib)
    rows = make_arena_rows(32, seed=35, max_words=30)

    def run(name, epochs, **kw):
        cfg = kdq.DistillConfig(
            output_dir=str(tmp_path / name),
            template=TEMPLATE,
            loss=kdq.LossSettings(hidden_weight=1.0),
            training=kdq.TrainingSettings(epochs=epochs, batch_size=8, learning_rate=2e-3, logging_steps=1),
            teacher_pass=kdq.TeacherPassSettings(cache_dir=str(tmp_path / "cache")),
            **kw,
        )
        return kdq.distill(str(student), rows, teacher=str(teacher), config=cfg)

    straight = run("straight", 2)
    assert straight.metrics["projections"]["params"] == 3 * 48 * 64  # one 48→64 projection per student layer
    saved = load_file(str(straight.student_dir / "model.safetensors"))
    assert not [k for k in saved if "projection" in k] and all(k.startswith(("model.", "score.")) for k in saved)
    m, info = AutoModelForSequenceClassification.from_pretrained(straight.student_dir, output_loading_info=True)
    assert not any(info.values()) and m.config.hidden_size == 48
    checkpoint = load_file(
        str(next((tmp_path / "straight" / "checkpoints").glob("checkpoint-*")) / "model.safetensors")
    )
    assert any(k.startswith("hidden_projections.") for k in checkpoint)  # the projections are in every checkpoint

    # an interrupted run: only the first epoch's checkpoint exists; resuming must bring the projections back
    first = min((tmp_path / "straight" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.copytree(first, tmp_path / "resumed" / "checkpoints" / first.name)
    resumed = run("resumed", 2, resume=True)
    assert resumed.metrics["projections"]["checksum"] == straight.metrics["projections"]["checksum"]
    a = load_file(str(straight.student_dir / "model.safetensors"))
    b = load_file(str(resumed.student_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_tokenizer_mismatch_is_refused(tmp_path, teacher):
    other = make_tokenizer(vocab_size=300)
    make_tiny_classifier(tmp_path / "student", other, seed=14, num_layers=2)
    rows = make_arena_rows(16, seed=36, max_words=20)
    cfg = kdq.DistillConfig(
        output_dir=str(tmp_path / "run"), template=TEMPLATE, loss={"hidden_weight": 1.0}, training={"max_steps": 1}
    )
    with pytest.raises(ValueError, match=r"tokenizers differ: vocabulary sizes 300 \(student\) vs 400 \(teacher\)"):
        kdq.distill(str(tmp_path / "student"), rows, teacher=str(teacher), config=cfg)
    # logit KD through the cache renders rows with the teacher's own tokenizer: it keeps working
    ok = kdq.distill(
        str(tmp_path / "student"),
        rows,
        teacher=str(teacher),
        config=cfg.replace(
            loss=kdq.LossSettings(),
            output_dir=str(tmp_path / "logits"),
            teacher_pass=kdq.TeacherPassSettings(cache_dir=str(tmp_path / "c")),
        ),
    )
    assert ok.metrics["teacher_pass"]["computed"] == 16


# --------------------------------------------------------------------------- cached features
def test_cache_stores_the_pooled_features_the_score_head_reads(tmp_path, teacher):
    loaded = load_classifier(str(teacher))
    rows = load_arena(make_arena_rows(12, seed=37, max_words=30))
    kw = dict(cache_dir=tmp_path / "c", template=TEMPLATE, tta=True, batch_size=4, chunk_rows=5)
    plain = cache_teacher_logits(loaded, rows, **kw)
    assert not plain.has_features and plain.computed == 12
    with_features = cache_teacher_logits(loaded, rows, **kw, features=True)
    assert with_features.computed == 12 and with_features.path == plain.path  # same fingerprint, rescored once
    assert cache_teacher_logits(loaded, rows, **kw, features=True).computed == 0
    assert cache_teacher_logits(loaded, rows, **kw).computed == 0  # a logits-only run reads the same shards
    np.testing.assert_allclose(with_features.logits, plain.logits, atol=1e-6)
    feats = with_features.table.with_format("numpy")[:]
    assert with_features.feature_width == 64 and feats["features"].shape == (12, 64)
    seqs = encode(rows, loaded.tokenizer, TEMPLATE)["input_ids"]
    with torch.no_grad():
        ids = torch.tensor([seqs[0]])
        states = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        expected = pooled(states, ids, loaded.tokenizer.pad_token_id)[0]
    np.testing.assert_allclose(feats["features"][0], expected.numpy(), rtol=2e-3, atol=2e-3)  # stored in fp16
    assert not np.allclose(feats["features_swap"], feats["features"])  # the swapped rows' own states


@pytest.mark.parametrize("loss", ["cosine", "centered-cosine"])
def test_feature_term_trains_from_the_cache_without_a_live_teacher(tmp_path, teacher, calib, monkeypatch, loss):
    student = kdq.shrink(str(teacher), tmp_path / "s", kdq.ShrinkConfig(every=2, hidden_size=48), calibration=calib)
    rows = make_arena_rows(32, seed=38, max_words=30)
    api = importlib.import_module("kdq.distill.api")  # `import kdq.distill.api` meets the kdq.distill function

    monkeypatch.setattr(api, "_live_teacher", lambda *a: pytest.fail("the cached feature term loaded a live teacher"))
    res = kdq.distill(
        str(student),
        rows,
        teacher=str(teacher),
        config=kdq.DistillConfig(
            output_dir=str(tmp_path / "run"),
            template=TEMPLATE,
            loss=kdq.LossSettings(feature_weight=1.0, feature_loss=loss),
            teacher_pass=kdq.TeacherPassSettings(tta=True, cache_dir=str(tmp_path / "cache")),
            training=kdq.TrainingSettings(
                swap_augment=True, epochs=2, batch_size=8, learning_rate=2e-3, logging_steps=2
            ),
        ),
    )
    feature = [h["feature"] for h in res.metrics["history"] if "feature" in h]
    assert len(feature) >= 3 and feature[-1] < feature[0]
    with pytest.raises(ValueError, match="teacher_pass.tta=True"):
        kdq.DistillConfig(loss={"feature_weight": 1.0}, training={"swap_augment": True})


# --------------------------------------------------------------------------- the memory plan
def test_memory_plan_counts_the_live_teacher_and_names_settings_that_fit(tmp_path):
    from kdq.costs.train_memory import known_models

    def folder(name):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(known_models()[name]["config"]))
        return d

    student, teacher = folder("danube3-500m"), folder("danube3-4b")
    t4 = train_device("t4-16gb")
    base = dict(
        training=kdq.TrainingSettings(batch_size=4, gradient_checkpointing=True),
        template=kdq.TemplateConfig(max_length=1024),
    )
    quiet = dict(device=t4, log=lambda *_: None)
    hidden = kdq.LossSettings(hidden_weight=1.0)
    _, logits_only = plan_training(student, kdq.DistillConfig(**base), teacher=teacher, **quiet)
    assert logits_only["teacher_weights"] == 0
    with pytest.raises(TrainingMemoryError, match=r"live teacher.*teacher_pass.quantize='(int8|nf4)'") as err:
        plan_training(student, kdq.DistillConfig(**base, loss=hidden), teacher=teacher, **quiet)
    assert "learned projection" in str(err.value)
    nf4_teacher = kdq.TeacherPassSettings(quantize="nf4")
    _, nf4 = plan_training(
        student, kdq.DistillConfig(**base, loss=hidden, teacher_pass=nf4_teacher), teacher=teacher, **quiet
    )
    assert nf4["teacher_weights"] > 2e9 and nf4["projection_params"] == 16 * 1536 * 3840
    cached = kdq.DistillConfig(
        training=kdq.TrainingSettings(batch_size=4, gradient_checkpointing=True, swap_augment=True),
        template=kdq.TemplateConfig(max_length=1024),
        loss=kdq.LossSettings(feature_weight=1.0),
        teacher_pass=kdq.TeacherPassSettings(tta=True),
    )
    _, feature = plan_training(student, cached, teacher=teacher, **quiet)
    assert feature["teacher_weights"] == 0 and feature["projection_params"] == 1536 * 3840
    assert feature["peak"] < nf4["peak"]
