"""WSDM Cup 2025 rows: plain-string turns, a ``winner`` column, no tie, ``language`` metadata,
an ``id,winner`` submission scored by accuracy. The label scheme is one fact (kdq.runtime.constants), and
rows load, a 2-class model distils, evaluates, exports and predicts through it; LMSYS stays as it was."""

from __future__ import annotations

import csv
import dataclasses
import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import kdq
from kdq.data import load_arena, scheme_of_rows, swap_ab
from kdq.distill.cache import _key, cache_fingerprint
from kdq.evaluate import EvalConfig, compare, evaluate
from kdq.evaluate.recommend import recommend
from kdq.export import ExportConfig, export, verify
from kdq.export.script import load_predict_module
from kdq.runtime.batching import combine_swap_tta
from kdq.runtime.constants import (
    LABELS,
    LMSYS,
    SCHEME_KEY,
    SWAP_PERMUTATION,
    WSDM,
    label_scheme,
    scheme_of_config,
    swap_permutation,
)
from kdq.runtime.template import TemplateConfig
from kdq.testing import make_arena_rows, make_tiny_classifier, make_wsdm_rows, write_wsdm_file

TEMPLATE = TemplateConfig(max_length=96)
EVAL = EvalConfig(template=TEMPLATE, batch_size=4, progress=False, budget=None)
NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "kaggle_notebook.py"


def _wsdm_df(n=4, **kw):
    return pd.DataFrame(make_wsdm_rows(n, seed=0, max_words=30, **kw))


# --------------------------------------------------------------------------- the scheme, one fact
def test_each_scheme_names_its_classes_swap_submission_and_headline():
    assert (LMSYS.labels, LMSYS.swap, LMSYS.headline) == (LABELS, SWAP_PERMUTATION, "log_loss")
    assert LMSYS.submission_columns == ("id", "winner_model_a", "winner_model_b", "winner_tie")
    assert (WSDM.num_labels, WSDM.labels, WSDM.headline) == (2, ("model_a", "model_b"), "accuracy")
    assert WSDM.submission_columns == ("id", "winner")
    assert WSDM.submission_row("r1", [0.3, 0.7]) == ["r1", "model_b"]
    assert LMSYS.submission_row("r1", [0.2, 0.3, 0.5]) == ["r1", "0.2", "0.3", "0.5"]
    assert label_scheme("wsdm") is WSDM and label_scheme(LMSYS) is LMSYS
    with pytest.raises(ValueError, match="unknown label scheme 'kaggle'"):
        label_scheme("kaggle")
    # a model's scheme: the name recorded in config.json, else the class count, else LMSYS (a base model)
    assert scheme_of_config({SCHEME_KEY: "wsdm"}) is WSDM
    assert scheme_of_config({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}) is WSDM
    assert scheme_of_config({"model_type": "llama"}) is LMSYS


def test_the_two_class_swap_maps_a_to_b():
    assert WSDM.swap == swap_permutation(2) == (1, 0) and swap_permutation(3) == (1, 0, 2)
    rows = load_arena(make_wsdm_rows(8, seed=2, max_words=20))
    swapped = swap_ab(rows)
    assert swapped["label"] == [1 - y for y in rows["label"]] and scheme_of_rows(swapped) is WSDM
    assert swapped["response_a"] == rows["response_b"]
    # swap TTA un-swaps two classes the same way: p = (softmax(z) + softmax(z_swap)[:, [1, 0]]) / 2
    z, z_swap = torch.tensor([[2.0, -1.0], [0.5, 0.1]]), torch.tensor([[0.0, 3.0], [1.0, -1.0]])
    expected = (torch.softmax(z, -1) + torch.softmax(z_swap, -1)[:, [1, 0]]) / 2
    torch.testing.assert_close(combine_swap_tta(z, z_swap).exp(), expected)


def test_the_cache_fingerprint_names_the_scheme():
    lmsys = cache_fingerprint("path:teacher", TEMPLATE, True, LMSYS)
    wsdm = cache_fingerprint("path:teacher", TEMPLATE, True, WSDM)
    assert _key(lmsys) != _key(wsdm) and wsdm["scheme"] == "wsdm" and wsdm["num_labels"] == 2
    # LMSYS caches written before schemes existed keep their key: the same fields as then
    assert set(lmsys) == {"format", "teacher", "template", "max_length", "tta", "num_labels"}
    assert lmsys["num_labels"] == 3


# --------------------------------------------------------------------------- loading WSDM rows
def test_wsdm_rows_load_from_parquet_csv_dataframe_and_row_dicts(tmp_path):
    df = _wsdm_df(6)
    df.loc[0, "prompt"] = '["looks like JSON"]'  # a plain string, kept as it is
    df.loc[1, "response_a"] = 'two\nlines, "quoted"'
    df.to_parquet(tmp_path / "w.parquet", index=False)
    df.to_csv(tmp_path / "w.csv", index=False)
    base = load_arena(df)
    assert scheme_of_rows(base) is WSDM and base.features["label"].names == ["model_a", "model_b"]
    assert base["prompt"][0] == ['["looks like JSON"]'] and base["response_a"][1] == ['two\nlines, "quoted"']
    assert all(len(t) == 1 for c in ("prompt", "response_a", "response_b") for t in base[c])
    assert base["label"] == [WSDM.labels.index(w) for w in df["winner"]]
    assert base["language"] == list(df["language"])  # metadata, kept
    for src in (tmp_path / "w.parquet", tmp_path / "w.csv", df.to_dict("records"), base):
        rows = load_arena(src)
        assert rows["id"] == base["id"] and rows["label"] == base["label"] and rows["prompt"] == base["prompt"]
        assert rows["language"] == base["language"] and scheme_of_rows(rows) is WSDM
    # LMSYS rows keep their layout and scheme
    lmsys = load_arena(make_arena_rows(4, seed=0, max_words=20))
    assert scheme_of_rows(lmsys) is LMSYS and "language" not in lmsys.column_names


def test_unlabelled_wsdm_rows_load_by_their_language_column_or_scheme():
    test = _wsdm_df(3, labelled=False)
    rows = load_arena(test)
    assert rows["label"] == [-1, -1, -1] and scheme_of_rows(rows) is WSDM
    with pytest.raises(ValueError, match="no labels: add the 'winner' column"):
        load_arena(test, require_labels=True)
    bare = test.drop(columns=["language"])  # nothing says WSDM: read as LMSYS, and the error says what to do
    with pytest.raises(ValueError, match=r"not valid JSON.*scheme='wsdm'"):
        load_arena(bare)
    assert load_arena(bare, scheme="wsdm")["prompt"] == rows["prompt"]


@pytest.mark.parametrize("value", ["tie", "model_c", "", "winner_model_a"])
def test_a_bad_winner_is_named_with_the_row_and_the_fix(value):
    df = _wsdm_df()
    df.loc[2, "winner"] = value
    with pytest.raises(
        ValueError, match=rf"row '{df['id'][2]}': winner '{value}' is not one of \['model_a', 'model_b'\]"
    ):
        load_arena(df)
    if value == "tie":
        with pytest.raises(ValueError, match="no tie: drop tied rows"):
            load_arena(df)


def test_mixed_layouts_are_an_error_naming_the_columns():
    df = _wsdm_df().assign(winner_model_a=1, winner_model_b=0, winner_tie=0)
    with pytest.raises(ValueError, match=r"mixes two layouts.*Found columns \[.*'winner'.*'winner_model_a'"):
        load_arena(df)
    with pytest.raises(ValueError, match=r"loaded as lmsys.*'winner'"):
        load_arena(_wsdm_df(), scheme="lmsys")
    with pytest.raises(ValueError, match=r"loaded as wsdm.*winner_model_a"):
        load_arena(pd.DataFrame(make_arena_rows(4, seed=0, max_words=20)), scheme="wsdm")


def test_predict_reads_plain_string_rows_and_writes_id_winner(tmp_path):
    from kdq.runtime import predict

    path = tmp_path / "test.csv"
    _wsdm_df(3, labelled=False).assign(prompt=["[1, 2]", "a\nb", ""]).to_csv(path, index=False)
    ids, rows = predict.read_rows(path, WSDM)
    assert [r[0] for r in rows] == [["[1, 2]"], ["a\nb"], [""]] and len(ids) == 3
    with pytest.raises(ValueError, match=r"is parquet; predict.py reads CSV.*read_parquet"):
        predict.read_rows(tmp_path / "test.parquet", WSDM)
    out = predict.write_submission(tmp_path / "s.csv", ids, torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]]), WSDM)
    assert list(csv.reader(open(out))) == [
        ["id", "winner"],
        [ids[0], "model_a"],
        [ids[1], "model_b"],
        [ids[2], "model_a"],
    ]


# --------------------------------------------------------------------------- a 2-class model, end to end
@pytest.fixture(scope="module")
def wsdm_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("wsdm-data")
    train = write_wsdm_file(d / "train.parquet", 48, seed=3, max_words=40)
    held = write_wsdm_file(d / "held.csv", 16, seed=4, max_words=40, id_offset=1000)
    return train, held


@pytest.fixture(scope="module")
def wsdm_student(tmp_path_factory, tiny_model_dir, wsdm_data):
    """Hard labels only (teacher=None) from the LMSYS tiny classifier, whose 3-class head is re-initialised."""
    train, held = wsdm_data
    out = tmp_path_factory.mktemp("wsdm-run")
    cfg = kdq.DistillConfig(
        output_dir=str(out),
        template=TEMPLATE,
        training=kdq.TrainingSettings(max_steps=6, batch_size=8, swap_augment=True, logging_steps=1),
    )
    with pytest.warns(UserWarning, match="re-initialises its classification head"):
        return kdq.distill(str(tiny_model_dir), train, eval_data=held, config=cfg)


def test_a_model_trained_on_wsdm_rows_has_two_labels_and_records_its_scheme(wsdm_student):
    from transformers import AutoModelForSequenceClassification

    config = json.loads((wsdm_student.student_dir / "config.json").read_text())
    assert config[SCHEME_KEY] == "wsdm" and config["id2label"] == {"0": "model_a", "1": "model_b"}
    model = AutoModelForSequenceClassification.from_pretrained(wsdm_student.student_dir)  # stock transformers
    assert model.config.num_labels == 2 and model.score.out_features == 2
    assert wsdm_student.metrics["best_eval_accuracy"] is not None


def test_logit_kd_from_a_wsdm_teacher_caches_two_classes(
    tmp_path, tiny_tokenizer, tiny_model_dir, wsdm_data, wsdm_student
):
    train, held = wsdm_data
    make_tiny_classifier(tmp_path / "student", tiny_tokenizer, seed=5, num_layers=1, scheme="wsdm")
    cfg = kdq.DistillConfig(
        output_dir=str(tmp_path / "kd"),
        template=TEMPLATE,
        training=kdq.TrainingSettings(max_steps=2, batch_size=8, swap_augment=True),
        teacher_pass=kdq.TeacherPassSettings(tta=True, cache_dir=str(tmp_path / "cache")),
    )
    kd = kdq.distill(str(tmp_path / "student"), train, teacher=str(wsdm_student.student_dir), config=cfg)
    fingerprint = json.loads((kd.cache_path / "fingerprint.json").read_text())
    assert fingerprint["scheme"] == "wsdm" and fingerprint["num_labels"] == 2
    assert kd.metrics["teacher_pass"]["computed"] == 48
    assert json.loads((kd.student_dir / "config.json").read_text())[SCHEME_KEY] == "wsdm"
    # a teacher of the other scheme is refused before anything is scored
    with pytest.raises(ValueError, match=r"teacher is a classifier for lmsys.*rows are wsdm"):
        kdq.distill(str(tmp_path / "student"), train, teacher=str(tiny_model_dir), config=cfg.replace(overwrite=True))


def test_wsdm_evaluates_with_accuracy_as_the_headline(tmp_path, wsdm_student, wsdm_data, tiny_model_dir):
    _, held = wsdm_data
    m = evaluate(str(wsdm_student.student_dir), held, EVAL)
    labels = np.asarray(load_arena(held)["label"])
    assert (m.scheme, m.headline, m.probs.shape) == ("wsdm", "accuracy", (16, 2))
    assert m.accuracy == pytest.approx(np.mean(m.probs.argmax(1) == labels))
    assert m.to_dict()["headline"] == "accuracy"
    # swap TTA averages each row with its swapped copy, classes exchanged
    swapped = evaluate(str(wsdm_student.student_dir), swap_ab(load_arena(held)), EVAL)
    np.testing.assert_allclose(m.probs_tta, (m.probs + swapped.probs[:, [1, 0]]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match=r"classifier for lmsys.*rows are wsdm"):
        evaluate(str(tiny_model_dir), held, EVAL)

    res = compare({"teacher": m, "again": str(wsdm_student.student_dir)}, held, EVAL, out_dir=tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Ranked by **accuracy** (higher is better)" in md
    assert "| variant | format | accuracy | Δ vs teacher [95% CI] | log loss |" in md
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert (report["scheme"], report["headline"], res.headline) == ("wsdm", "accuracy", "accuracy")
    assert res.rows[1]["delta_vs_teacher"] == pytest.approx(0.0)
    selection = recommend(res.metrics, held, "full")
    assert selection["metric"] == "accuracy" and set(selection["accuracy"]) == {"teacher", "again"}
    with pytest.raises(ValueError, match="different label schemes"):
        compare({"a": m, "b": dataclasses.replace(m, scheme="lmsys")}, held, EVAL, out_dir=tmp_path / "r2")


def test_wsdm_export_predicts_id_winner(tmp_path, wsdm_student, wsdm_data, capsys):
    _, held = wsdm_data
    out = export(
        str(wsdm_student.student_dir),
        tmp_path / "export",
        ExportConfig(
            title="Tiny WSDM arena classifier", dataset_id="kdq-tests/tiny-wsdm", template=TEMPLATE, batch_size=4
        ),
    )
    config = json.loads((out / "config.json").read_text())
    assert config[SCHEME_KEY] == "wsdm" and len(config["id2label"]) == 2
    card = (out / "README.md").read_text()
    assert "WSDM Cup 2025 Multilingual Chatbot Arena" in card and "`id, winner`" in card
    assert "read_parquet" in card  # the notebook cell converts the competition's test.parquet first
    manifest = json.loads((out / "kdq-manifest.json").read_text())
    assert manifest["model"]["label_scheme"] == "wsdm" and manifest["model"]["submission"] == ["id", "winner"]
    verify(out)

    predict = load_predict_module(out / "predict.py")
    sub = tmp_path / "submission.csv"
    assert predict.main(["--test-csv", str(held), "--out", str(sub), "--devices", "cpu", "--quiet"]) == 0
    table = list(csv.reader(open(sub, newline="")))
    assert table[0] == ["id", "winner"]
    assert [r[0] for r in table[1:]] == list(pd.read_csv(held, dtype=str)["id"])
    expected = evaluate(str(out), held, EVAL.replace(tta=True)).probs_tta.argmax(1)
    assert [r[1] for r in table[1:]] == [WSDM.labels[k] for k in expected]
    # the default test file is the competition's parquet, which predict.py asks to convert
    capsys.readouterr()
    assert predict.main(["--out", str(sub), "--devices", "cpu", "--quiet", "--skip-checksums"]) == 1
    assert "wsdm-cup-multilingual-chatbot-arena/test.parquet is parquet" in capsys.readouterr().err

    # the example notebook checks the submission the model's scheme asks for
    notebook = runpy.run_path(str(NOTEBOOK))
    args = ["--dataset-dir", str(out), "--test-csv", str(held), "--out", str(tmp_path / "nb.csv")]
    assert notebook["main"]([*args, "--", "--devices", "cpu", "--quiet"]) == 0
    assert (tmp_path / "nb.csv").read_text() == sub.read_text()


def test_a_quantized_wsdm_model_keeps_its_scheme(tmp_path, wsdm_student, wsdm_data):
    train, held = wsdm_data
    q = kdq.quantize(
        str(wsdm_student.student_dir),
        kdq.QuantConfig.from_name("bnb-int8", template=TEMPLATE, device="cpu"),
        calibration=train,  # WSDM rows calibrate too
        out_dir=tmp_path / "int8",
    )
    assert json.loads((q / "config.json").read_text())[SCHEME_KEY] == "wsdm"
    m = evaluate(str(q), held, EVAL)
    assert m.scheme == "wsdm" and m.probs.shape == (16, 2)
