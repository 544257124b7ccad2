"""Teachers as data: a model, a table of probabilities or an ensemble, one object each; tables are
checked and used exactly like cached teacher logits; ensembles average in probability space; one load of a model
teacher serves the cache pass and the live forward."""

import json

import numpy as np
import pandas as pd
import pytest

import kdq
import kdq.models
from kdq.config.io import merge
from kdq.data import load_arena
from kdq.distill.api import _training_table
from kdq.distill.cache import cache_teacher_logits
from kdq.distill.teachers import EnsembleTeacher, ModelTeacher, TableTeacher, as_teacher
from kdq.runtime.constants import LMSYS, WSDM, swap_permutation
from kdq.testing import make_arena_rows, make_tiny_classifier, make_wsdm_rows

TEMPLATE = kdq.TemplateConfig(max_length=48)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("teachers")
    make_tiny_classifier(d / "teacher", tiny_tokenizer, seed=1)
    make_tiny_classifier(d / "teacher2", tiny_tokenizer, seed=7)
    make_tiny_classifier(d / "student", tiny_tokenizer, seed=2, num_layers=1)
    return d


def _rows(n=8, seed=3, offset=0):
    return load_arena(make_arena_rows(n, seed=seed, max_words=20, id_offset=offset))


def _probs(ids, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(classes), size=len(ids))
    return p


def _table(rows, seed=0, scheme=LMSYS):
    ids = list(rows["id"])
    p = _probs(ids, seed, scheme.num_labels)
    return pd.DataFrame({"id": ids, **{c: p[:, k] for k, c in enumerate(scheme.labels)}}), p


def _cfg(tmp_path, **kw):
    """A run of batches of 8 with its own teacher cache; ``kw`` fields (sections as dicts, merged into these)."""
    base = dict(
        output_dir=str(tmp_path / "run"),
        template=TEMPLATE,
        teacher_pass=dict(cache_dir=str(tmp_path / "cache")),
        training=dict(batch_size=8),
    )
    return kdq.DistillConfig(**merge(base, kw))


def _targets(teacher, rows, cfg):
    """``teacher``'s outputs over ``rows`` under ``cfg``'s teacher pass and template."""
    return teacher.targets(rows, cfg.teacher_pass, cfg.template)


def test_as_teacher_builds_one_object_from_what_teacher_accepts(tmp_path, models):
    rows = _rows()
    df, _ = _table(rows)
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    assert isinstance(as_teacher(str(models / "teacher")), ModelTeacher)
    for src in (tmp_path / "t.csv", str(tmp_path / "t.parquet"), df):
        assert isinstance(as_teacher(src), TableTeacher)
    ens = as_teacher([str(models / "teacher"), (tmp_path / "t.csv", 3.0)])
    assert isinstance(ens, EnsembleTeacher) and ens.weights == [0.25, 0.75]
    assert as_teacher([str(models / "teacher")]).kind == "model" and as_teacher(None) is None
    assert kdq.Teacher.of(df, weight=2).weight == 2.0
    with pytest.raises(ValueError, match="positive number"):
        as_teacher((df, 0.0))
    # fingerprinted by content: the same numbers from a CSV, a parquet and a DataFrame are one teacher
    fps = {as_teacher(src).fingerprint for src in (tmp_path / "t.csv", tmp_path / "t.parquet", df)}
    assert len(fps) == 1
    changed = df.copy()
    changed.loc[0, "winner_tie"] += 1e-4
    assert as_teacher(changed).fingerprint not in fps


def test_a_table_teacher_is_checked_and_the_first_bad_id_named(tmp_path):
    rows = _rows()
    df, _ = _table(rows)
    cfg = _cfg(tmp_path)
    lacking = df[df["id"] != rows["id"][3]]
    with pytest.raises(ValueError, match=rf"no row for id '{rows['id'][3]}'.*training or transfer"):
        _targets(TableTeacher(lacking), rows, cfg)
    bad = df.copy()
    bad.loc[5, "winner_model_a"] += 0.01
    with pytest.raises(ValueError, match=rf"id '{rows['id'][5]}' has probabilities .*sum to 1 within 0.001"):
        _targets(TableTeacher(bad), rows, cfg)
    nan = df.copy()
    nan.loc[2, "winner_tie"] = np.nan
    with pytest.raises(ValueError, match=rf"id '{rows['id'][2]}'"):
        _targets(TableTeacher(nan), rows, cfg)
    with pytest.raises(
        ValueError, match=r"no column 'winner_tie'.*\['winner_model_a', 'winner_model_b', 'winner_tie'\]"
    ):
        _targets(TableTeacher(df.drop(columns=["winner_tie"])), rows, cfg)
    twice = pd.concat([df, df.iloc[[1]]])
    with pytest.raises(ValueError, match=rf"id '{rows['id'][1]}' appears twice"):
        _targets(TableTeacher(twice), rows, cfg)
    within = df.copy()
    within.loc[5, "winner_model_a"] += 5e-4  # inside the tolerance
    _targets(TableTeacher(within), rows, cfg)
    with pytest.raises(ValueError, match="no 'id' column"):
        _targets(TableTeacher(df.drop(columns=["id"])), rows, cfg)


@pytest.mark.parametrize("mode", [True, "paired"])
def test_table_targets_are_log_probabilities_and_swapped_copies_get_the_permuted_distribution(
    tmp_path, tiny_tokenizer, mode
):
    rows = _rows()
    df, p = _table(rows.shuffle(seed=1))  # the table's order does not matter: rows are joined by id
    p = df.set_index("id").loc[list(rows["id"]), list(LMSYS.labels)].to_numpy()
    cache = _targets(TableTeacher(df), rows, _cfg(tmp_path))
    np.testing.assert_allclose(np.exp(cache.logits), p, rtol=1e-6)
    table = _training_table(rows, tiny_tokenizer, TEMPLATE, mode, cache)
    perm = list(swap_permutation(3))
    if mode is True:
        orig, swapped = np.asarray(table["teacher_logits"][:8]), np.asarray(table["teacher_logits"][8:])
    else:
        orig, swapped = np.asarray(table["teacher_logits"]), np.asarray(table["teacher_logits_swap"])
    np.testing.assert_allclose(np.exp(orig), p, rtol=1e-6)
    np.testing.assert_allclose(np.exp(swapped), p[:, perm], rtol=1e-6)


def test_hard_table_rows_stay_finite():
    from kdq.distill.losses import forward_kl, reverse_kl
    from kdq.distill.teachers import log_probabilities

    t = log_probabilities(np.array([[1.0, 0.0, 0.0]]))
    import torch

    s = torch.zeros(1, 3)
    assert np.isfinite(t).all()
    assert torch.isfinite(forward_kl(s, torch.tensor(t))).all() and torch.isfinite(reverse_kl(s, torch.tensor(t))).all()


def test_ensemble_averages_in_probability_space_by_hand(tmp_path, models):
    rows = _rows()
    t1, p1 = _table(rows, seed=1)
    t2, p2 = _table(rows, seed=2)
    cfg = _cfg(tmp_path)
    got = _targets(EnsembleTeacher([(t1, 1.0), (t2, 3.0)]), rows, cfg)
    np.testing.assert_allclose(np.exp(got.logits), (p1 + 3 * p2) / 4, rtol=1e-5)
    # a model and a table: the model's cached distribution, weighted with the table's
    mixed = _targets(as_teacher([(str(models / "teacher"), 2.0), (t1, 1.0)]), rows, cfg)
    alone = cache_teacher_logits(
        ModelTeacher(str(models / "teacher")), rows, cache_dir=cfg.teacher_pass.cache_dir, template=TEMPLATE
    )
    assert alone.computed == 0  # the ensemble cached its model member under the member's own fingerprint
    q = np.exp(alone.logits - alone.logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(mixed.logits), (2 * q + p1) / 3, rtol=1e-5)
    assert [m["weight"] for m in mixed.stats["members"]] == pytest.approx([2 / 3, 1 / 3])
    # two model members: each its own cache folder
    two = _targets(as_teacher([str(models / "teacher"), str(models / "teacher2")]), rows, cfg)
    paths = {m["path"] for m in two.stats["members"]}
    assert len(paths) == 2 and all(p for p in paths)


def test_distill_from_a_table_and_from_an_ensemble(tmp_path, models):
    train = _rows(16, seed=5)
    transfer = load_arena(make_arena_rows(6, seed=6, max_words=20, labelled=False, id_offset=500))
    both = pd.concat([_table(train, seed=1)[0], _table(transfer, seed=2)[0]])
    both.to_parquet(tmp_path / "big-teacher.parquet")
    res = kdq.distill(
        str(models / "student"),
        train,
        teacher=str(tmp_path / "big-teacher.parquet"),
        transfer_data=transfer,
        config=_cfg(tmp_path, training={"max_steps": 1}),
    )
    assert res.metrics["teacher"]["kind"] == "table" and res.cache_path == tmp_path / "big-teacher.parquet"
    assert res.metrics["teacher_pass"]["computed"] == 0 and res.metrics["n_transfer"] == 6
    record = json.loads((res.student_dir / "kdq-distill.json").read_text())
    assert record["teacher_cache"] == str(tmp_path / "big-teacher.parquet")
    ens = kdq.distill(
        str(models / "student"),
        train,
        teacher=[str(models / "teacher"), (both, 2.0)],
        transfer_data=transfer,
        config=_cfg(tmp_path / "e", training={"max_steps": 1}, overwrite=True),
    )
    assert ens.metrics["teacher"]["kind"] == "ensemble" and ens.cache_path is None
    assert ens.metrics["teacher_pass"]["computed"] == 22  # the model member scored every row
    # a term that needs the teacher model itself is refused for tables and ensembles, before anything loads
    for teacher in (both, [str(models / "teacher"), both]):
        for kw in (
            {"loss": {"hidden_weight": 1.0}},
            {"loss": {"feature_weight": 1.0}},
            {"teacher_pass": {"logits": "live"}},
        ):
            with pytest.raises(ValueError, match="needs the teacher model's own forward pass"):
                kdq.distill(str(models / "student"), train, teacher=teacher, config=_cfg(tmp_path / "x", **kw))


def test_a_wsdm_table_teacher_names_its_classes(tmp_path):
    rows = load_arena(make_wsdm_rows(6, seed=2, max_words=20))
    df, p = _table(rows, scheme=WSDM)
    cache = _targets(TableTeacher(df), rows, _cfg(tmp_path))
    assert cache.logits.shape == (6, 2)
    np.testing.assert_allclose(np.exp(cache.logits), p, rtol=1e-6)
    lmsys_table, _ = _table(rows)
    with pytest.raises(ValueError, match=r"no column 'model_a'"):
        _targets(TableTeacher(lmsys_table), rows, _cfg(tmp_path))


def test_one_load_of_the_teacher_serves_the_cache_pass_and_the_live_forward(tmp_path, models, monkeypatch):
    teacher = str(models / "teacher")
    student = kdq.shrink(teacher, tmp_path / "student", kdq.ShrinkConfig(keep=[0, 1]))  # shares the teacher's tokenizer
    real, loads = kdq.models.load_classifier, []

    def counting(src, *a, **k):
        if str(src) == teacher:
            loads.append(src)
        return real(src, *a, **k)

    monkeypatch.setattr(kdq.models, "load_classifier", counting)
    cfg = _cfg(
        tmp_path,
        loss={"hidden_weight": 1.0},
        training={"max_steps": 1},
        teacher_pass={"cache_dir": str(tmp_path / "own-cache")},
    )
    res = kdq.distill(str(student), _rows(16, seed=8), teacher=teacher, config=cfg)
    assert res.metrics["teacher_pass"]["computed"] == 16
    assert len(loads) == 1, f"the teacher was loaded {len(loads)} times"
    # with the cache already full the pass loads nothing, and the live forward loads it once
    loads.clear()
    kdq.distill(str(student), _rows(16, seed=8), teacher=teacher, config=cfg.replace(overwrite=True))
    assert len(loads) == 1


def test_the_cli_takes_tables_and_weighted_ensembles(tmp_path, models, capsys):
    from kdq.cli.main import main, teacher_of

    assert teacher_of(["runs/t1:2", "b.csv"]) == [("runs/t1", 2.0), ("b.csv", 1.0)]
    assert teacher_of(["runs/t1"]) == "runs/t1" and teacher_of([]) is None
    train = make_arena_rows(12, seed=9, max_words=20)
    pd.DataFrame(train).to_csv(tmp_path / "train.csv", index=False)
    table, _ = _table(load_arena(train), seed=4)
    table.to_csv(tmp_path / "t.csv", index=False)
    common = ["--set", "template.max_length=48", "--set", f"teacher_pass.cache_dir={tmp_path / 'cache'}"]
    code = main(
        [
            "cache-teacher",
            "--teacher",
            str(models / "teacher"),
            "--teacher",
            f"{tmp_path / 't.csv'}:3",
            "--data",
            str(tmp_path / "train.csv"),
            *common,
        ]
    )
    out = _last_json(capsys.readouterr().out)
    assert code == 0 and out["teacher"] == "ensemble" and out["computed"] == 12
    assert [round(m["weight"], 6) for m in out["members"]] == [0.25, 0.75]
    code = main(
        [
            "distill",
            "--student",
            str(models / "student"),
            "--train",
            str(tmp_path / "train.csv"),
            "--teacher",
            str(tmp_path / "t.csv"),
            "--output-dir",
            str(tmp_path / "run"),
            "--set",
            "training.max_steps=1",
            *common,
        ]
    )
    assert code == 0


def _last_json(text: str) -> dict:
    """The JSON object a command printed last (after its progress lines)."""
    return json.loads(text[text.rindex("\n{") + 1 :] if not text.startswith("{") else text)
