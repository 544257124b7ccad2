"""The distillation recipes on tiny models: transfer set, paired swap, cosine term, block-influence
shrink, hidden-state distillation and reproducible reruns."""

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from _scoring import held_out_logits

import kdq
from kdq.config.io import merge
from kdq.data import load_arena
from kdq.distill.api import _training_table
from kdq.distill.cache import TeacherCache, _fixed
from kdq.distill.losses import forward_kl
from kdq.distill.shrink import block_influence, select_by_influence
from kdq.distill.trainer import ArenaCollator
from kdq.models import load_classifier
from kdq.runtime.constants import SHRINK_KEY, SWAP_PERMUTATION
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = kdq.TemplateConfig(max_length=64)
COMMON = dict(template=TEMPLATE, training=dict(batch_size=16, learning_rate=2e-3, logging_steps=4, seed=0))


def _cfg(output_dir, **kw) -> kdq.DistillConfig:
    """The recipes' common settings, ``kw`` merged in (sections as dicts)."""
    return kdq.DistillConfig(**merge({**COMMON, "output_dir": str(output_dir)}, kw))


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("recipes")
    make_tiny_classifier(d / "t0", tiny_tokenizer, seed=4, num_layers=4)
    train = make_arena_rows(256, seed=20, max_words=40)
    t = kdq.distill(str(d / "t0"), train, teacher=None, config=_cfg(d / "teacher", training={"epochs": 4}))
    return d, t.student_dir


def test_transfer_set_brings_the_student_closer_to_the_teacher(tmp_path, trained_teacher, tiny_tokenizer):
    d, teacher = trained_teacher
    make_tiny_classifier(tmp_path / "s0", tiny_tokenizer, seed=5, num_layers=1)
    labelled = make_arena_rows(32, seed=30, max_words=40)  # few labels ...
    transfer = make_arena_rows(256, seed=31, max_words=40, labelled=False, id_offset=50_000)  # ... many unlabelled rows
    held = load_arena(make_arena_rows(96, seed=21, max_words=40, id_offset=10_000))
    cfg = dict(
        training={"epochs": 3},
        loss={"alpha": 0.5, "temperature": 1.0},
        teacher_pass={"cache_dir": str(tmp_path / "cache")},
    )
    plain = kdq.distill(
        str(tmp_path / "s0"),
        labelled,
        teacher=str(teacher),
        config=_cfg(tmp_path / "kd", **cfg),
    )
    more = kdq.distill(
        str(tmp_path / "s0"),
        labelled,
        teacher=str(teacher),
        transfer_data=transfer,
        config=_cfg(tmp_path / "kd-transfer", **cfg),
    )
    assert more.metrics["n_transfer"] == 256 and more.metrics["teacher_pass"]["computed"] == 256  # 32 reused
    logs = [h for h in more.metrics["history"] if "kd" in h]
    assert logs and all("ce" in h for h in logs)  # ce (labelled rows) and kd (all rows) logged separately
    t = held_out_logits(teacher, held, TEMPLATE)
    kl_plain = forward_kl(held_out_logits(plain.student_dir, held, TEMPLATE), t).mean().item()
    kl_more = forward_kl(held_out_logits(more.student_dir, held, TEMPLATE), t).mean().item()
    assert kl_more < kl_plain, f"held-out KL to teacher: with transfer {kl_more:.4f} vs without {kl_plain:.4f}"


def test_transfer_set_errors_name_the_fix(tmp_path, trained_teacher):
    d, teacher = trained_teacher
    train = make_arena_rows(16, seed=1, max_words=20)
    clash = make_arena_rows(8, seed=2, max_words=20, labelled=False, id_offset=5)
    cfg = _cfg(tmp_path / "x")
    with pytest.raises(ValueError, match="needs a teacher"):
        kdq.distill(str(teacher), train, teacher=None, transfer_data=clash, config=cfg)
    with pytest.raises(ValueError, match="id '5' is also a training row id"):
        kdq.distill(str(teacher), train, teacher=str(teacher), transfer_data=clash, config=cfg)


def _cache(logits, features, features_swap) -> TeacherCache:
    """A teacher cache over 6 rows, built as the cache builds its table (Arrow fixed-size lists)."""
    table = datasets.Dataset(
        pa.table({"logits": _fixed(logits), "features": _fixed(features), "features_swap": _fixed(features_swap)})
    )
    return TeacherCache(path=Path("."), ids=[str(i) for i in range(6)], table=table, reused=6, computed=0, stats={})


@pytest.mark.parametrize("mode", [True, "paired"])
def test_swapped_rows_get_permuted_teacher_logits_and_their_own_features(tiny_tokenizer, mode):
    rows = load_arena(make_arena_rows(6, seed=3, max_words=20))
    logits = np.arange(18, dtype=np.float32).reshape(6, 3)
    feats = np.arange(24, dtype=np.float16).reshape(6, 4)
    feats_swap = -feats
    table = _training_table(rows, tiny_tokenizer, TEMPLATE, mode, _cache(logits, feats, feats_swap))
    if mode is True:
        assert len(table) == 12
        swapped = np.asarray(table["teacher_logits"][6:])
        swapped_labels = table["labels"][6:]
        swapped_feats = np.asarray(table["teacher_features"][6:])
        np.testing.assert_array_equal(np.asarray(table["teacher_features"][:6]), feats)
    else:
        assert len(table) == 6
        batch = ArenaCollator(tiny_tokenizer.pad_token_id)([table[i] for i in range(2)])
        # the collator puts each row next to its own swapped copy, in the same batch
        assert batch["input_ids"].shape[0] == 4
        assert torch.equal(batch["teacher_logits"][1], torch.tensor(logits[0][list(SWAP_PERMUTATION)]))
        assert torch.equal(batch["teacher_features"][1], torch.tensor(feats_swap[0], dtype=torch.float32))
        swapped = np.asarray(table["teacher_logits_swap"])
        swapped_labels = table["labels_swap"]
        swapped_feats = np.asarray(table["teacher_features_swap"])
    np.testing.assert_array_equal(swapped, logits[:, list(SWAP_PERMUTATION)])  # a ↔ b, tie stays
    np.testing.assert_array_equal(swapped_feats, feats_swap)  # the swapped row's own pooled state
    assert swapped_labels == [SWAP_PERMUTATION[y] for y in rows["label"]]


def test_swap_augment_values_are_validated():
    kdq.TrainingSettings(swap_augment="paired", batch_size=8)
    with pytest.raises(ValueError, match="TrainingSettings.swap_augment must be False, True or 'paired'"):
        kdq.DistillConfig(training={"swap_augment": "both"})
    with pytest.raises(ValueError, match="TrainingSettings.batch_size must be even"):
        kdq.TrainingSettings(swap_augment="paired", batch_size=7)


def test_paired_swap_and_cosine_term_train_end_to_end(tmp_path, trained_teacher, tiny_tokenizer):
    d, teacher = trained_teacher
    make_tiny_classifier(tmp_path / "s0", tiny_tokenizer, seed=5, num_layers=1)
    rows = make_arena_rows(48, seed=8, max_words=30)
    res = kdq.distill(
        str(tmp_path / "s0"),
        rows,
        teacher=str(teacher),
        config=_cfg(
            tmp_path / "run",
            training={"swap_augment": "paired", "epochs": 1, "batch_size": 8, "logging_steps": 2},
            loss={"cosine_weight": 0.5},
            teacher_pass={"cache_dir": str(tmp_path / "cache")},  # a cache of its own: the test counts what it scores
        ),
    )
    logs = [h for h in res.metrics["history"] if "ce" in h]
    assert logs and all("cos" in h and "kd" in h for h in logs)
    assert max(h["step"] for h in logs) == 12  # 48 pairs = 96 rows, 8 rows (4 pairs) per step


def _near_identity_layers(model, layers):
    """Make some decoder layers add (almost) nothing to the residual stream: their input ≈ output."""
    for i in layers:
        layer = model.model.layers[i]
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)


def test_block_influence_drops_the_layers_that_do_nothing(tmp_path, tiny_tokenizer):
    model = make_tiny_classifier(None, tiny_tokenizer, seed=9, num_layers=8)
    _near_identity_layers(model, [2, 5])
    rows = make_arena_rows(24, seed=4, max_words=30)
    scores = block_influence(model, tiny_tokenizer, rows, template=TEMPLATE)
    assert len(scores) == 8 and scores[2] == pytest.approx(0.0, abs=1e-6) and scores[5] == pytest.approx(0.0, abs=1e-6)
    assert min(scores[i] for i in (1, 3, 4, 6)) > 1e-3
    assert select_by_influence(scores, 6) == [0, 1, 3, 4, 6, 7]
    model.save_pretrained(tmp_path / "src")
    tiny_tokenizer.save_pretrained(tmp_path / "src")
    config = kdq.ShrinkConfig(strategy="block-influence", num_layers=6)
    out = kdq.shrink(str(tmp_path / "src"), tmp_path / "student", config, calibration=rows)
    cfg = load_classifier(out).model.config
    assert cfg.num_hidden_layers == 6
    shrink_map = getattr(cfg, SHRINK_KEY)
    assert shrink_map["kept_layers"] == [0, 1, 3, 4, 6, 7] and shrink_map["strategy"] == "block-influence"
    uniform = kdq.shrink(
        str(tmp_path / "src"), config=kdq.ShrinkConfig(every=2)
    )  # same depth by default: 0,2,4,6 + last
    assert getattr(uniform.config, SHRINK_KEY)["kept_layers"] == [0, 2, 4, 6, 7]
    with pytest.raises(ValueError, match="calibration"):
        kdq.shrink(str(tmp_path / "src"), config=config.replace(num_layers=None))
    with pytest.raises(ValueError, match="strategy"):
        kdq.ShrinkConfig(strategy="random")


def test_hidden_state_term_trains_a_shrunk_student(tmp_path, trained_teacher):
    d, teacher = trained_teacher
    rows = make_arena_rows(64, seed=12, max_words=30)
    student = kdq.shrink(str(teacher), tmp_path / "s0", kdq.ShrinkConfig(keep=[0, 3]))
    res = kdq.distill(
        str(student),
        rows,
        teacher=str(teacher),
        config=_cfg(
            tmp_path / "run",
            loss={"hidden_weight": 1.0},
            training={"epochs": 3, "logging_steps": 2},
            teacher_pass={"cache_dir": str(tmp_path / "cache")},
        ),
    )
    hidden = [h["hidden"] for h in res.metrics["history"] if "hidden" in h]
    assert len(hidden) >= 3 and hidden[-1] < hidden[0], hidden  # the student's states move toward the teacher's
    # a student not shrunk from this teacher (same tokenizer) matches it by depth, proportionally
    not_shrunk = tmp_path / "plain"
    make_tiny_classifier(not_shrunk, load_classifier(str(teacher)).tokenizer, seed=3, num_layers=2)
    plain = kdq.distill(
        str(not_shrunk),
        rows,
        teacher=str(teacher),
        config=_cfg(tmp_path / "plain-run", loss={"hidden_weight": 1.0}, training={"max_steps": 2, "logging_steps": 1}),
    )
    assert any("hidden" in h for h in plain.metrics["history"])
    with pytest.raises(ValueError, match="needs a teacher"):
        kdq.distill(
            str(student),
            rows,
            teacher=None,
            config=_cfg(tmp_path / "bad2", loss={"hidden_weight": 1.0}),
        )


def test_reruns_reproduce(tmp_path, trained_teacher, tiny_tokenizer):
    d, teacher = trained_teacher
    make_tiny_classifier(tmp_path / "s0", tiny_tokenizer, seed=5, num_layers=1)
    rows = make_arena_rows(48, seed=13, max_words=30)
    held = make_arena_rows(32, seed=14, max_words=30, id_offset=9000)
    runs = [
        kdq.distill(
            str(tmp_path / "s0"),
            rows,
            eval_data=held,
            teacher=str(teacher),
            config=_cfg(
                tmp_path / f"run{k}",
                training={"swap_augment": "paired", "epochs": 2},
                teacher_pass={"cache_dir": str(tmp_path / "c")},
            ),
        )
        for k in range(2)
    ]
    assert runs[0].metrics["best_eval_log_loss"] == runs[1].metrics["best_eval_log_loss"]
    a, b = (held_out_logits(r.student_dir, load_arena(held), TEMPLATE) for r in runs)
    assert torch.equal(a, b)


def test_recipes_under_accelerate_launch_two_processes(tmp_path, trained_teacher):
    import json
    import os

    from _launch import launch_two_processes

    d, teacher = trained_teacher
    os.symlink(teacher, tmp_path / "teacher")
    # a narrower student: the hidden term trains a learned projection on every process
    calib = make_arena_rows(16, seed=40, max_words=30)
    kdq.shrink(str(teacher), tmp_path / "student", kdq.ShrinkConfig(keep=[0, 3], hidden_size=48), calibration=calib)
    launch_two_processes("_ddp_recipes.py", tmp_path)
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i["world_size"] == 2 for i in infos)
    # 32 labelled + 32 transfer rows as pairs = 64 table rows, 4 pairs per device, 2 devices: 8 steps
    history = infos[0]["metrics"]["history"]
    assert history[-1]["step"] == 8 and all("hidden" in h and "kd" in h for h in history if "ce" in h)
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()
    # DDP synchronised the projections: both processes end with the same values
    projections = [i["metrics"]["projections"] for i in infos]
    assert projections[0]["params"] == 2 * 48 * 64 and projections[0] == projections[1]


def test_live_teacher_logits_need_no_cache_pass(tmp_path, trained_teacher, tiny_tokenizer):
    d, teacher = trained_teacher
    make_tiny_classifier(tmp_path / "s0", tiny_tokenizer, seed=5, num_layers=1)
    rows = make_arena_rows(32, seed=15, max_words=30)
    transfer = make_arena_rows(32, seed=16, max_words=30, labelled=False, id_offset=7000)
    res = kdq.distill(
        str(tmp_path / "s0"),
        rows,
        teacher=str(teacher),
        transfer_data=transfer,
        config=_cfg(tmp_path / "run", teacher_pass={"logits": "live"}, training={"epochs": 1, "logging_steps": 1}),
    )
    assert res.cache_path is None and "teacher_pass" not in res.metrics
    logs = [h for h in res.metrics["history"] if "kd" in h]
    assert len(logs) == 4 and all(h["kd"] > 0 for h in logs)  # 64 rows / 16: the teacher scored every batch
    with pytest.raises(ValueError, match="set tta=False"):
        kdq.DistillConfig(teacher_pass={"logits": "live", "tta": True})
