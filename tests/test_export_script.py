"""The generated predict.py: kdq's template/batching pasted byte for byte, no kdq import, its
CSV reading, sharding and submission writing."""
from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pytest
import torch

import kdq
from kdq.export.script import INLINED, extract_inlined, kdq_imports, load_predict_module, render_script

KDQ_DIR = Path(kdq.__file__).parent


@pytest.fixture(scope="module")
def script_text():
    return render_script(title="Tiny arena classifier", slug="tiny-arena", kdq_version=kdq.__version__,
                         quant_method="gptq")


@pytest.fixture(scope="module")
def predict(tmp_path_factory, script_text):
    path = tmp_path_factory.mktemp("script") / "predict.py"
    path.write_text(script_text)
    return load_predict_module(path)


@pytest.mark.parametrize("name", INLINED)
def test_inlined_modules_are_byte_identical_to_kdq(script_text, name):
    source = (KDQ_DIR / name).read_text()
    section = extract_inlined(script_text, name)
    assert section == source.replace("from __future__ import annotations\n", "", 1)
    # and every function and class of the kdq module appears unchanged in predict.py
    tree, script_tree = ast.parse(source), ast.parse(script_text)
    script_defs = {n.name: ast.get_source_segment(script_text, n) for n in script_tree.body
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert len(defs) >= 4
    for node in defs:
        assert script_defs[node.name] == ast.get_source_segment(source, node), node.name


def test_script_is_standalone_python(script_text):
    assert kdq_imports(script_text) == []
    assert script_text.startswith("#!/usr/bin/env python3\n")
    tree = ast.parse(script_text)
    # `from __future__` must be the first statement after the docstring to be legal at all
    assert isinstance(tree.body[1], ast.ImportFrom) and tree.body[1].module == "__future__"
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - set(__import__("sys").stdlib_module_names) == {"torch", "transformers"}
    assert "gptq" in script_text.split('"""')[1]


def test_kdq_imports_are_detected():
    assert kdq_imports("import kdq.template\nfrom .x import y\nfrom kdq import export\nimport os\n") == [
        "line 1: import kdq.template", "line 2: from .x import ...", "line 3: from kdq import ..."]


@pytest.mark.parametrize("lengths, n", [([5] * 10, 2), ([100, 1, 1, 1, 1, 1], 2), ([3, 9, 4, 1, 7, 2, 8], 3),
                                        ([4], 2), ([2, 2], 5), ([1] * 7, 1)])
def test_shards_are_contiguous_balanced_and_cover_every_row(predict, lengths, n):
    bounds = predict.shard_bounds(lengths, n)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(lengths)
    assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    assert len(bounds) <= n
    loads = [sum(lengths[a:b]) for a, b in bounds]
    if len(bounds) == n:  # balanced to within one row's tokens
        assert max(loads) - min(loads) <= max(lengths)


def test_sharded_scoring_equals_single_device(predict, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir)).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(4, 300, (int(n),), generator=g).tolist() for n in torch.randint(5, 60, (23,), generator=g)]
    pad = model.config.pad_token_id
    one = predict.score_sharded([("cpu", model)], seqs, pad, batch_size=4)
    two = predict.score_sharded([("cpu", model), ("cpu", model)], seqs, pad, batch_size=4)
    assert two.shape == (23, 3)
    torch.testing.assert_close(two, one, atol=1e-5, rtol=0)


def _write_csv(path, rows, fields=("id", "prompt", "response_a", "response_b")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def _row(i, prompt='["hi"]'):
    return {"id": i, "prompt": prompt, "response_a": json.dumps(["a" * 200_000]), "response_b": '["b", null]'}


def test_read_rows_handles_huge_cells_and_null_turns(predict, tmp_path):
    ids, rows = predict.read_rows(_write_csv(tmp_path / "t.csv", [_row(1), _row(2)]))
    assert ids == ["1", "2"]
    assert rows[0][0] == ["hi"] and len(rows[0][1][0]) == 200_000 and rows[1][2] == ["b", ""]


@pytest.mark.parametrize("rows, fields, match", [
    ([_row(1)], ("id", "prompt", "response_a"), r"missing column\(s\) \['response_b'\]"),
    ([_row(1), _row(1)], ("id", "prompt", "response_a", "response_b"), "duplicate id '1'"),
    ([_row(7, prompt="not json")], ("id", "prompt", "response_a", "response_b"), "row '7', column 'prompt'"),
    ([], ("id", "prompt", "response_a", "response_b"), "no rows"),
])
def test_read_rows_names_the_bad_row_or_column(predict, tmp_path, rows, fields, match):
    path = _write_csv(tmp_path / "t.csv", [{k: r[k] for k in fields} for r in rows], fields)
    with pytest.raises(ValueError, match=match):
        predict.read_rows(path)


def test_submission_rows_sum_to_one_and_keep_ids(predict, tmp_path):
    probs = torch.softmax(torch.randn(5, 3, dtype=torch.float64), -1)
    out = predict.write_submission(tmp_path / "s.csv", ["10", "3", "7", "1", "2"], probs)
    table = list(csv.reader(open(out, newline="")))
    assert table[0] == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert [r[0] for r in table[1:]] == ["10", "3", "7", "1", "2"]
    back = torch.tensor([[float(x) for x in r[1:]] for r in table[1:]], dtype=torch.float64)
    assert torch.equal(back, probs)  # repr() round-trips floats exactly
    assert not (tmp_path / "s.csv.partial").exists()


def test_devices(predict):
    assert predict.pick_devices("cpu,cpu") == ["cpu", "cpu"]
    assert predict.pick_devices("auto") == (["cuda:%d" % i for i in range(torch.cuda.device_count())] or ["cpu"])
    with pytest.raises(ValueError, match="names no device"):
        predict.pick_devices(" , ")


def test_missing_backend_gives_the_offline_install_line(predict, tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    assert predict.check_backend(tmp_path) == "bitsandbytes"  # installed here
    # a backend this Python lacks (stands in for a Kaggle image without bitsandbytes)
    monkeypatch.setitem(predict.BACKEND_MODULES, "bitsandbytes", ("bitsandbytes", "kdq_no_such_backend_module"))
    with pytest.raises(RuntimeError, match=r"pip install --no-index --find-links \S+wheels kdq_no_such_backend_module"):
        predict.check_backend(tmp_path)


def test_settings_need_the_recorded_template(predict, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ValueError, match="kdq_template"):
        predict.read_settings(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"kdq_template": {"max_length": 64, "min_part_share": 0.1}}))
    (tmp_path / "kdq-predict.json").write_text(json.dumps({"tta": False, "batch_size": 3}))
    s = predict.read_settings(tmp_path)
    assert (s["template"].max_length, s["template"].min_part_share, s["tta"], s["batch_size"]) == (64, 0.1, False, 3)


def test_lone_surrogates_from_the_csv_do_not_crash_the_tokenizer(predict, tmp_path, tiny_tokenizer):
    # A JSON escape of half an emoji, as found in scraped arena text: the fast tokenizer
    # rejects such strings, so parse_turns (shared with training) replaces them with U+FFFD.
    row = {"id": 1, "prompt": '["hi \\ud83d there"]', "response_a": '["ok \\ud83d\\ude00"]', "response_b": '["b"]'}
    ids, rows = predict.read_rows(_write_csv(tmp_path / "t.csv", [row]))
    assert rows[0][0] == ["hi \ufffd there"] and rows[0][1] == ["ok \U0001F600"]
    seqs = predict.render(tiny_tokenizer, rows, predict.TemplateConfig(max_length=64))
    assert 0 < len(seqs[0]) <= 64
