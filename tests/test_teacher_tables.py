"""Teacher tables as pandas writes them: ids written as floats (30192.0, once a merge put NaN in the column) join
the integer ids of the rows, or the message says the ids are floats and how to write them; a blank or non-finite
probability is named by its row id, every one of them, in a CSV as in a parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kdq
from kdq.data import load_arena
from kdq.distill.teachers import TableTeacher
from kdq.runtime.constants import LMSYS
from kdq.testing import make_arena_rows

N = 8


@pytest.fixture(scope="module")
def rows():
    return load_arena(make_arena_rows(N, seed=3, max_words=20, id_offset=30190))


def _targets(teacher, rows, tmp_path):
    """``teacher``'s outputs over ``rows`` through a teacher pass with its own cache folder."""
    return teacher.targets(rows, kdq.TeacherPassSettings(cache_dir=str(tmp_path / "cache")), kdq.TemplateConfig())


def _table(rows) -> pd.DataFrame:
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=len(rows))
    return pd.DataFrame({"id": [int(i) for i in rows["id"]], **{c: p[:, k] for k, c in enumerate(LMSYS.labels)}})


def _save(df, path):
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def _merged_with_a_nan_id(df) -> pd.DataFrame:
    """An outer merge that met a prediction without a row: the id column becomes float64 (30192.0)."""
    stray = pd.DataFrame({"id": [np.nan], **{c: [1 / 3] for c in LMSYS.labels}})
    return pd.concat([df, stray], ignore_index=True)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_whole_number_float_ids_join_the_integer_ids(tmp_path, rows, suffix):
    df = _table(rows)
    expected = _targets(TableTeacher(df), rows, tmp_path).logits
    floats = df.assign(id=df["id"].astype("float64"))
    path = _save(floats, tmp_path / f"t{suffix}")
    if suffix == ".csv":
        assert "30190.0," in path.read_text()  # as pandas writes a float id column
    got = _targets(TableTeacher(path), rows, tmp_path).logits
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_row_without_an_id_is_refused_with_the_fix(tmp_path, rows, suffix):
    path = _save(_merged_with_a_nan_id(_table(rows)), tmp_path / f"t{suffix}")
    with pytest.raises(
        ValueError, match=r"1 row\(s\) without an id \(table row 8, counted from 0.*dropna\(subset=\['id'\]\)"
    ):
        _targets(TableTeacher(path), rows, tmp_path)


def test_float_ids_that_match_no_row_say_they_are_floats_and_how_to_fix_them(tmp_path, rows):
    df = _table(rows)
    off = df.assign(id=df["id"] + 0.5)  # not whole numbers: no integer id to match
    path = _save(off, tmp_path / "t.csv")
    with pytest.raises(ValueError) as info:
        _targets(TableTeacher(path), rows, tmp_path)
    msg = str(info.value)
    assert "ids are floats" in msg and "'30190.5'" in msg and "astype('Int64')" in msg
    assert "score those rows too" not in msg  # the rows are there, under float ids: not a missing-rows fix


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_every_blank_or_non_finite_probability_is_named_by_its_row_id(tmp_path, rows, suffix):
    df = _table(rows)
    df.loc[2, "winner_tie"] = np.nan  # a blank cell in the CSV, a null/NaN in the parquet
    df.loc[5, "winner_model_a"] = np.nan
    df.loc[6, "winner_model_b"] = np.inf
    path = _save(df, tmp_path / f"t{suffix}")
    with pytest.raises(ValueError) as info:
        _targets(TableTeacher(path), rows, tmp_path)
    msg = str(info.value)
    assert "not numeric" not in msg
    ids = list(rows["id"])
    assert "3 row(s) have a blank or non-finite probability" in msg
    for r, column in ((2, "winner_tie"), (5, "winner_model_a"), (6, "winner_model_b")):
        assert f"id '{ids[r]}' ({column}" in msg
    assert "inf" in msg


def test_text_in_a_probability_column_is_named_by_its_row_id(tmp_path, rows):
    df = _table(rows).astype({"winner_tie": object})
    df.loc[4, "winner_tie"] = "n/a"
    path = _save(df, tmp_path / "t.csv")
    with pytest.raises(ValueError, match=rf"id '{rows['id'][4]}' \(winner_tie 'n/a'\)"):
        _targets(TableTeacher(path), rows, tmp_path)
