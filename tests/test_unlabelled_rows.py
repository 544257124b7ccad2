"""Rows that are unlabelled by role (a transfer set, the rows the teacher caches, the rows predict.py scores):
their winner columns are dropped before validation, so blank, soft or partial labels never fail and never
reach the CE term."""

import json

import numpy as np
import pandas as pd
import pytest

import kdq
from kdq.data import load_arena
from kdq.distill.api import _training_table
from kdq.distill.teacher_pass import scored_rows, transfer_rows
from kdq.testing import make_arena_rows, make_tiny_classifier, make_wsdm_rows

TEMPLATE = kdq.TemplateConfig(max_length=48)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("unlabelled-models")
    make_tiny_classifier(d / "teacher", tiny_tokenizer, seed=1)
    make_tiny_classifier(d / "student", tiny_tokenizer, seed=2, num_layers=1)
    return d


def _blank(n=6, offset=9000):
    """LMSYS rows whose winner columns are present but empty (a pseudo-labelled extra set before labelling)."""
    df = pd.DataFrame(make_arena_rows(n, seed=40, max_words=20, id_offset=offset))
    return df.assign(winner_model_a="", winner_model_b="", winner_tie="")


def _soft(n=6, offset=9100):
    """LMSYS rows with soft probabilities in the winner columns (e.g. an earlier teacher's output)."""
    df = pd.DataFrame(make_arena_rows(n, seed=41, max_words=20, id_offset=offset))
    return df.assign(winner_model_a=0.6, winner_model_b=0.1, winner_tie=0.3)


def test_labelled_loading_still_refuses_soft_and_blank_winners():
    with pytest.raises(ValueError, match="not one-hot"):
        load_arena(_soft())
    with pytest.raises(ValueError, match="not one-hot"):
        load_arena(_blank())
    with pytest.raises(ValueError, match="require_labels"):
        load_arena(_soft(), require_labels=True, unlabelled=True)


@pytest.mark.parametrize("make", [_blank, _soft, lambda: _soft().drop(columns=["winner_tie"])])
def test_unlabelled_loading_drops_winner_columns_before_validation(tmp_path, make):
    df = make()
    for src in (df, df.to_dict("records")):
        rows = load_arena(src, unlabelled=True)
        assert rows["label"] == [-1] * len(df) and rows["id"] == list(df["id"])
    df.to_csv(tmp_path / "x.csv", index=False)
    assert load_arena(tmp_path / "x.csv", unlabelled=True)["label"] == [-1] * len(df)
    # canonical rows with labels lose them too
    labelled = load_arena(make_arena_rows(4, seed=3, max_words=20))
    assert load_arena(labelled, unlabelled=True)["label"] == [-1] * 4


def test_unlabelled_wsdm_rows_keep_their_layout_with_a_blank_winner():
    df = pd.DataFrame(make_wsdm_rows(4, seed=2, max_words=20)).drop(columns=["language"]).assign(winner="")
    rows = load_arena(df, unlabelled=True)  # the winner column still says WSDM; its values are dropped
    assert rows.features["label"].names == ["model_a", "model_b"] and rows["label"] == [-1] * 4


@pytest.mark.parametrize("make", [_blank, _soft])
def test_transfer_rows_with_blank_or_soft_winners_are_unlabelled(tiny_tokenizer, make):
    train = load_arena(make_arena_rows(8, seed=1, max_words=20), require_labels=True)
    extra = transfer_rows(make(), train, teacher="a teacher")
    assert extra["label"] == [-1] * 6
    table = _training_table(scored_rows(train, extra), tiny_tokenizer, TEMPLATE, False, None)
    labels = np.asarray(table["labels"])
    assert (labels[:8] >= 0).all() and (labels[8:] == -1).all()  # never a CE target


def test_distill_with_a_soft_transfer_set(tmp_path, models):
    res = kdq.distill(
        str(models / "student"),
        make_arena_rows(16, seed=5, max_words=20),
        teacher=str(models / "teacher"),
        transfer_data=pd.concat([_soft(4), _blank(4, offset=9200)]),
        config=kdq.DistillConfig(
            output_dir=str(tmp_path / "run"),
            template=TEMPLATE,
            training=kdq.TrainingSettings(max_steps=1, batch_size=8),
            teacher_pass=kdq.TeacherPassSettings(cache_dir=str(tmp_path)),
        ),
    )
    assert res.metrics["n_transfer"] == 8 and res.metrics["teacher_pass"]["computed"] == 24


def test_cli_transfer_and_cache_teacher_take_blank_and_soft_winners(tmp_path, models, capsys):
    from kdq.cli.main import main

    train, soft, blank = tmp_path / "train.csv", tmp_path / "soft.csv", tmp_path / "blank.csv"
    pd.DataFrame(make_arena_rows(16, seed=6, max_words=20)).to_csv(train, index=False)
    _soft().to_csv(soft, index=False)
    _blank().to_csv(blank, index=False)
    common = ["--set", "template.max_length=48", "--set", f"teacher_pass.cache_dir={tmp_path / 'cache'}"]
    assert main(["cache-teacher", "--teacher", str(models / "teacher"), "--data", str(soft), *common]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n") :])["rows"] == 6
    assert main(["cache-teacher", "--teacher", str(models / "teacher"), "--data", str(blank), *common]) == 0
    code = main(
        [
            "distill",
            "--student",
            str(models / "student"),
            "--teacher",
            str(models / "teacher"),
            "--train",
            str(train),
            "--transfer",
            str(soft),
            "--output-dir",
            str(tmp_path / "run"),
            "--set",
            "training.max_steps=1",
            *common,
        ]
    )
    assert code == 0


def test_predict_py_reads_rows_with_blank_winner_columns(tmp_path):
    from kdq.runtime.constants import LMSYS
    from kdq.runtime.predict import read_rows

    _blank(3).to_csv(tmp_path / "test.csv", index=False)
    ids, rows = read_rows(tmp_path / "test.csv", LMSYS)
    assert len(ids) == 3 and all(len(r) == 3 for r in rows)
