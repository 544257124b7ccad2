"""kdq.evaluate / kdq.compare against the rows a model was trained on (its kdq-train-groups.json), and
compare's intervals over row groups, on a tiny real model."""

from __future__ import annotations

import json
import shutil
import warnings

import pandas as pd
import pytest

import kdq
from kdq.data import LeakWarning, group_keys, read_group_keys, write_group_keys
from kdq.evaluate import EvalConfig, compare, evaluate
from kdq.runtime.constants import TRAIN_GROUPS_FILE
from kdq.testing import make_arena_rows

CFG = EvalConfig(template=kdq.TemplateConfig(max_length=96), batch_size=8, progress=False, tta=False, budget=None)


@pytest.fixture(scope="module")
def heldout():
    return pd.DataFrame(make_arena_rows(12, seed=11, max_words=30))


@pytest.fixture()
def trained_on(tmp_path, tiny_model_dir, heldout):
    """A copy of the tiny model whose record says it was trained on 3 of the held-out rows (and 20 others)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    others = pd.DataFrame(make_arena_rows(20, seed=99, max_words=30, id_offset=1000))
    train = pd.concat([others, heldout.iloc[[2, 5, 7]]])
    write_group_keys(model / TRAIN_GROUPS_FILE, group_keys(kdq.load_arena(train.reset_index(drop=True))))
    return model


def test_evaluate_warns_and_records_held_out_rows_the_model_trained_on(trained_on, heldout):
    with pytest.warns(LeakWarning, match=r"3 of the 12 held-out rows"):
        m = evaluate(trained_on, heldout, CFG)
    assert m.overlap["leaked"] == 3 and m.overlap["n_heldout"] == 12
    assert set(m.overlap["example_ids"]) == {str(heldout["id"][i]) for i in (2, 5, 7)}
    with pytest.raises(ValueError, match=r"3 of the 12 held-out rows"):
        evaluate(trained_on, heldout, CFG.replace(strict_overlap=True))


def test_evaluate_is_silent_without_a_record_or_a_leak(tiny_model_dir, trained_on, heldout):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakWarning)
        assert evaluate(tiny_model_dir, heldout, CFG).overlap is None  # no record in the folder
        clean = heldout.drop(index=[2, 5, 7]).reset_index(drop=True)
        m = evaluate(trained_on, clean, CFG)
    assert m.overlap["leaked"] == 0 and m.overlap["n_heldout"] == 9


def test_compare_resamples_groups_and_names_the_leak(tmp_path, tiny_model_dir, trained_on, heldout):
    # rows 0-3 repeated with A and B exchanged: 16 rows in 12 groups
    dup = heldout.iloc[:4].copy()
    dup["id"] = dup["id"].astype(str) + "-dup"
    dup[["response_a", "response_b"]] = dup[["response_b", "response_a"]].to_numpy()
    rows = pd.concat([heldout, dup]).reset_index(drop=True)
    with pytest.warns(LeakWarning):
        result = compare({"plain": tiny_model_dir, "trained": trained_on}, rows, CFG, out_dir=tmp_path / "r")
    assert result.intervals["unit"] == "groups" and result.intervals["n_units"] == 12
    md = (tmp_path / "r" / "report.md").read_text()
    assert "resamples of the 12 groups of the 16 rows" in md
    notes = md.split("Notes:")[1].split("Peak")[0]
    assert "trained: 4 of 16 held-out rows share" in notes and "plain:" not in notes  # rows 2, 5, 7 and 2-dup
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["intervals"]["unit"] == "groups"
    assert next(v for v in report["variants"] if v["variant"] == "trained")["metrics"]["overlap"]["leaked"] == 4
    # without repeated rows the resample unit is the row, as before
    single = compare({"plain": tiny_model_dir}, heldout, CFG, out_dir=tmp_path / "s")
    assert single.intervals["unit"] == "rows"


def test_distill_checks_eval_rows_and_records_its_rows_for_evaluate_and_quantize(tmp_path, tiny_model_dir, heldout):
    """kdq.distill warns (or refuses) on eval rows shared with the training or transfer rows, saves the keys of
    the rows it learnt from with the student, and kdq.quantize carries them to the quantized folder."""
    from kdq.data import read_group_keys
    from kdq.quantize import QuantConfig

    train = pd.DataFrame(make_arena_rows(16, seed=21, max_words=30, id_offset=500))
    transfer = pd.DataFrame(make_arena_rows(8, seed=22, max_words=30, id_offset=900, labelled=False))
    transfer.loc[0, "prompt"] = heldout.loc[4, "prompt"]  # one eval row's prompt, only in the transfer set
    cfg = kdq.DistillConfig(
        output_dir=str(tmp_path / "run"),
        template=kdq.TemplateConfig(max_length=64),
        training={"max_steps": 1, "batch_size": 8},
    )
    with pytest.raises(ValueError, match=r"1 of the 12 eval rows"):
        kdq.distill(
            tiny_model_dir,
            train,
            eval_data=heldout,
            teacher=tiny_model_dir,
            transfer_data=transfer,
            config=cfg.replace(strict_overlap=True),
        )
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.warns(LeakWarning, match=r"1 of the 12 eval rows"):
        res = kdq.distill(
            tiny_model_dir, train, eval_data=heldout, teacher=tiny_model_dir, transfer_data=transfer, config=cfg
        )
    assert res.metrics["overlap"]["leaked"] == 1 and res.metrics["overlap"]["example_ids"] == [str(heldout["id"][4])]
    keys = read_group_keys(res.student_dir / TRAIN_GROUPS_FILE)
    assert keys.n_rows == 24 and keys == group_keys([kdq.load_arena(train), kdq.load_arena(transfer)])
    q = kdq.quantize(
        res.student_dir, QuantConfig.from_name("bnb-int8", device="cpu"), calibration=train, out_dir=tmp_path / "q"
    )
    assert read_group_keys(q / TRAIN_GROUPS_FILE) == keys
    with pytest.warns(LeakWarning, match=r"1 of the 12 held-out rows"):
        evaluate(q, heldout, CFG)


def test_the_training_record_follows_the_weights_through_shrink_and_distill(tmp_path, tiny_model_dir, heldout):
    """A student shrunk from a teacher keeps the teacher's record; a run from that student adds its own rows to it."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    seen = kdq.load_arena(heldout.iloc[[1, 3]].reset_index(drop=True))  # the teacher was trained on two of them
    write_group_keys(teacher / TRAIN_GROUPS_FILE, group_keys(seen))
    student = kdq.shrink(teacher, tmp_path / "student", kdq.ShrinkConfig(keep=[0]), verbose=False)
    assert read_group_keys(student / TRAIN_GROUPS_FILE) == group_keys(seen)
    train = pd.DataFrame(make_arena_rows(16, seed=31, max_words=30, id_offset=700))
    cfg = kdq.DistillConfig(
        output_dir=str(tmp_path / "run"),
        template=kdq.TemplateConfig(max_length=64),
        training={"max_steps": 1, "batch_size": 8},
    )
    res = kdq.distill(student, train, config=cfg)
    keys = read_group_keys(res.student_dir / TRAIN_GROUPS_FILE)
    assert keys == group_keys(kdq.load_arena(train)).union(group_keys(seen)) and keys.n_rows == 18
    with pytest.warns(LeakWarning, match=r"2 of the 12 held-out rows"):
        evaluate(res.student_dir, heldout, CFG)
