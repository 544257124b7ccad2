"""One reader for the tables users hand kdq (kdq.data.tables): arena rows and teacher prediction tables follow the
same path checks, suffix rule and CSV typing, and each error names what was being read and what to pass."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kdq.data import load_arena
from kdq.data.tables import TABLE_SUFFIXES, read_table
from kdq.distill.teachers import TableTeacher, as_teacher
from kdq.testing import make_arena_rows


def test_a_missing_or_unsupported_file_names_the_table_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"arena data file .*nope\.csv' does not exist; pass a CSV or parquet path"):
        load_arena(tmp_path / "nope.csv")
    with pytest.raises(
        ValueError, match=r"teacher table file .*nope\.parquet' does not exist; pass a CSV or parquet of id"
    ):
        TableTeacher(tmp_path / "nope.parquet").table()
    (tmp_path / "rows.json").write_text("{}")
    with pytest.raises(ValueError, match=r"unsupported suffix '\.json'; use \.csv or \.parquet"):
        read_table(tmp_path / "rows.json", what="arena data", expects="a CSV")
    with pytest.raises(ValueError, match=r"teacher table: cannot read a set; pass a CSV or parquet of id"):
        TableTeacher({1, 2}).table()
    assert as_teacher(tmp_path / "p.PQ").kind == "table" and ".pq" in TABLE_SUFFIXES


def test_teacher_csvs_keep_text_ids_and_read_scientific_notation(tmp_path):
    """The arena reader's CSV typing now serves teacher tables too: ids that look like numbers stay the same
    text (``"007"``, not 7), and ``1e-3`` is a probability."""
    ids = ["007", "12", "3"]
    (tmp_path / "t.csv").write_text(
        "id,winner_model_a,winner_model_b,winner_tie\n007,0.5,0.499,1e-3\n12,0.2,0.3,0.5\n3,1E-1,0.8,0.1\n"
    )
    table = TableTeacher(tmp_path / "t.csv").table()
    assert table.column("id").to_pylist() == ids
    assert pa.types.is_floating(table.column("winner_tie").type)
    np.testing.assert_allclose(table.column("winner_tie").to_numpy(), [1e-3, 0.5, 0.1])
    # the same numbers from a DataFrame and an Arrow table are the same teacher (content fingerprint)
    df = pd.DataFrame(
        {
            "id": ids,
            "winner_model_a": [0.5, 0.2, 0.1],
            "winner_model_b": [0.499, 0.3, 0.8],
            "winner_tie": [1e-3, 0.5, 0.1],
        }
    )
    prints = {
        as_teacher(s).fingerprint for s in (tmp_path / "t.csv", df, pa.Table.from_pandas(df, preserve_index=False))
    }
    assert len(prints) == 1


def test_arena_rows_read_from_an_arrow_table_like_any_other_source():
    rows = make_arena_rows(5, seed=2, max_words=10)
    from_arrow = load_arena(pa.Table.from_pydict(rows))
    from_dict = load_arena(rows)
    assert from_arrow["id"] == from_dict["id"] and from_arrow["label"] == from_dict["label"]
    assert from_arrow["prompt"] == from_dict["prompt"]
