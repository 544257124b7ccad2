"""One CSV rule (kdq/runtime/csvfile.py): kdq's reader (kdq.load_arena, teacher tables) and the exported
predict.py's read_rows read every such file alike: a BOM, CRLF or CR line ends, quoted line breaks, spaces
around header names; and refuse alike, with the same message: an empty file, a header without rows, text that
is not UTF-8, a ragged row, a wrong header (the names found shown with repr)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from kdq.data import load_arena
from kdq.runtime.constants import LMSYS, WSDM
from kdq.runtime.predict import read_rows

HEADER = ["id", "prompt", "response_a", "response_b"]


def _write(path, rows, *, encoding="utf-8", line_end="\r\n", quoting=csv.QUOTE_MINIMAL):
    buf = io.StringIO()
    csv.writer(buf, lineterminator=line_end, quoting=quoting).writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def _lmsys(header=HEADER):
    return [
        header,
        ["1", json.dumps(["hi"]), json.dumps(["first\nanswer"]), json.dumps(["b"])],
        # a quoted cell holding real line breaks (JSON allows them between elements), one CRLF, one LF
        ["2", '[\r\n"x",\n"y"]', json.dumps(["a2"]), json.dumps(["b2"])],
    ]


def _wsdm(header=HEADER):
    return [header, ["7", "a prompt\r\nover two lines", "yes\nno", "maybe"], ["8", "q", "", "b"]]


def _kdq(path, scheme):
    rows = load_arena(path, scheme=scheme.name)
    return list(rows["id"]), [tuple(r[c] for c in HEADER[1:]) for r in rows]


def _predict(path, scheme):
    ids, rows = read_rows(path, scheme)
    return ids, [tuple(r) for r in rows]


def _both(path, scheme):
    return _kdq(path, scheme), _predict(path, scheme)


@pytest.mark.parametrize(
    "name, write",
    [
        ("bom", dict(encoding="utf-8-sig")),
        ("crlf", dict(line_end="\r\n")),
        ("lf", dict(line_end="\n")),
        ("cr", dict(line_end="\r", quoting=csv.QUOTE_ALL)),  # csv.writer quotes no "\n" when lines end in "\r"
        ("bom-lf", dict(encoding="utf-8-sig", line_end="\n")),
    ],
)
@pytest.mark.parametrize("scheme", [LMSYS, WSDM], ids=["lmsys", "wsdm"])
def test_kdq_and_predict_read_every_file_alike(tmp_path, name, write, scheme):
    rows = _lmsys() if scheme is LMSYS else _wsdm()
    path = _write(tmp_path / f"{name}.csv", rows, **write)
    kdq_rows, predict_rows = _both(path, scheme)
    assert kdq_rows == predict_rows
    ids, cells = predict_rows
    assert ids == [r[0] for r in rows[1:]]
    if scheme is LMSYS:
        assert cells[1][0] == ["x", "y"] and cells[0][1] == ["first\nanswer"]
    else:  # the quoted line breaks are kept as written, whatever the file's line ends
        assert cells[0][0] == ["a prompt\r\nover two lines"] and cells[0][1] == ["yes\nno"]


def test_spaces_and_a_bom_around_header_names_are_dropped(tmp_path):
    path = _write(tmp_path / "t.csv", _lmsys([" id", "prompt ", "\ufeffresponse_a", "\tresponse_b"]))
    kdq_rows, predict_rows = _both(path, LMSYS)
    assert kdq_rows == predict_rows and predict_rows[0] == ["1", "2"]


def test_a_teacher_table_reads_by_the_same_rule(tmp_path):
    from kdq.distill.teachers import TableTeacher

    rows = [["id ", " winner_model_a", "winner_model_b", "winner_tie"], ["1", "0.5", "0.25", "0.25"]]
    teacher = TableTeacher(_write(tmp_path / "t.csv", rows, encoding="utf-8-sig"))
    teacher.check_scheme(LMSYS)
    assert teacher.table().column("id").to_pylist() == ["1"]


def _refusals(path, scheme=LMSYS):
    out = []
    for read in (_kdq, _predict):
        with pytest.raises(ValueError) as info:
            read(path, scheme)
        out.append(str(info.value))
    return out


def test_an_empty_file_is_refused_alike(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    kdq_msg, predict_msg = _refusals(path)
    assert kdq_msg == predict_msg and "is empty" in kdq_msg and "header line" in kdq_msg


def test_a_header_without_rows_is_refused_by_both(tmp_path):
    path = _write(tmp_path / "header.csv", [HEADER])
    assert all("no rows" in m for m in _refusals(path))


def test_text_that_is_not_utf8_is_refused_alike_naming_the_line(tmp_path):
    rows = [HEADER, ["1", '["café"]', '["a"]', '["b"]']]
    path = _write(tmp_path / "latin.csv", rows, encoding="cp1252")
    kdq_msg, predict_msg = _refusals(path)
    assert kdq_msg == predict_msg and "line 2 (byte b'\\xe9' at column 10) is not UTF-8" in kdq_msg


def test_a_ragged_row_is_refused_alike_naming_the_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text('id,prompt,response_a,response_b\n1,["a"],["b"],["c"]\n2,["a"],["b"],["c"],extra\n')
    kdq_msg, predict_msg = _refusals(path)
    assert kdq_msg == predict_msg and "line 3 has 5 cells but the header has 4" in kdq_msg


def test_a_wrong_header_names_what_it_found_with_repr(tmp_path):
    # a zero-width space is neither whitespace nor a BOM: the name stays wrong, and the message shows it
    path = _write(tmp_path / "zw.csv", _lmsys(["\u200bid", "prompt", "response_a", "response_b"]))
    for msg in _refusals(path):
        assert "missing column(s) ['id']" in msg and "'\\u200bid'" in msg
    assert "rename the columns" in _refusals(path)[1]


def test_two_names_that_differ_only_by_spaces_are_refused_alike(tmp_path):
    path = _write(tmp_path / "dup.csv", _lmsys(["id", "prompt", "response_a", "response_b", " id"]))
    kdq_msg, predict_msg = _refusals(path)
    assert kdq_msg == predict_msg and "columns 1 ('id') and 5 (' id') are both named 'id'" in kdq_msg
