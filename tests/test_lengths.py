"""The max_length trade-off: kdq.sweep_lengths on tiny models, ExportConfig.max_length through predict.py,
the kdq sweep-lengths command and the demo's curve."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import kdq
from kdq.cli.main import main as cli_main
from kdq.costs.budget import load_budget
from kdq.data import load_arena
from kdq.evaluate.lengths import check_lengths, suggest_lengths, sweep_lengths
from kdq.evaluate.render import SWAP_COLUMN, assemble_rows, tokenize_rows
from kdq.runtime.constants import EVAL_REPORT_FILE, SETTINGS_FILE, TEMPLATE_KEY
from kdq.runtime.template import MIN_MAX_LENGTH, TemplateConfig, assemble, encode_row
from kdq.testing import make_arena_rows, make_tiny_classifier, make_wsdm_rows, write_arena_csv

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LENGTHS = (48, 64, 96, 2048, 4096)  # 2048 and 4096: above the longest row, one rendering
TEMPLATE = TemplateConfig(max_length=160)


def _eval(**kw):
    return kdq.EvalConfig(**{"batch_size": 8, "device": "cpu", "progress": False, "bootstrap_samples": 300, **kw})


def _busy_profile(**kw):
    """The shipped profile with so many rows that the tiny model's compute shows in the hours."""
    return dataclasses.replace(load_budget("lmsys-2xt4"), rows=2_000_000, peak_tflops=0.05, **kw)


@pytest.fixture(scope="module")
def rows():
    return load_arena(make_arena_rows(20, seed=5, max_words=60))


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "lengths"
    return sweep_lengths(
        {"a": str(tiny_model_dir), "b": str(tiny_model_dir)},
        rows,
        lengths=LENGTHS,
        config=_eval(budget=_busy_profile()),
        out_dir=out,
    )


def test_sequences_at_each_length_are_encode_row_at_that_length(tiny_tokenizer):
    rows = load_arena(make_arena_rows(30, seed=3, max_words=80))  # multi-turn rows and a null turn among them
    assert any(len(p) > 1 for p in rows["prompt"])
    tokens = tokenize_rows(rows, tiny_tokenizer, TEMPLATE)
    triples = list(zip(rows["prompt"], rows["response_a"], rows["response_b"]))
    for n in (48, 64, 100, 4096):
        config = TEMPLATE.replace(max_length=n)
        rendered = assemble_rows(rows, tokens, config, both_orders=True)
        seqs = rendered["input_ids"]
        assert seqs == [encode_row(tiny_tokenizer, p, a, b, config) for p, a, b in triples]
        assert rendered[SWAP_COLUMN] == [encode_row(tiny_tokenizer, p, b, a, config) for p, a, b in triples]
        assert all(len(s) <= n for s in seqs)
        cut = [assemble(t, config)[1].cut for t in tokens]
        assert cut == [len(s) < t.uncut_length for s, t in zip(seqs, tokens)]
    # uncut_length is the uncut length; min_max_length the shortest max_length that leaves room for text
    uncut = assemble_rows(rows, tokens, TEMPLATE.replace(max_length=100_000), both_orders=False)["input_ids"]
    assert [len(s) for s in uncut] == [t.uncut_length for t in tokens]
    for t in tokens:
        assemble(t, TEMPLATE.replace(max_length=max(t.min_max_length, MIN_MAX_LENGTH)))
        if t.min_max_length - 1 >= MIN_MAX_LENGTH:
            with pytest.raises(ValueError, match="no room for text"):
                assemble(t, TEMPLATE.replace(max_length=t.min_max_length - 1))


def test_suggested_lengths_are_fractions_of_the_longest_row_never_below_the_floor():
    assert suggest_lengths([96, 110, 128]) == (48, 64, 96, 128)
    assert suggest_lengths([97]) == (48, 64, 96, 112)  # the top rounds up: nothing cut at the longest length
    assert suggest_lengths([40]) == (MIN_MAX_LENGTH, 48)
    assert suggest_lengths([40], floor=48) == (48,)
    assert check_lengths([1024, 512, 512]) == (512, 1024)
    for bad in ([16], [512.0], ["512"], [], "512", [True]):
        with pytest.raises(ValueError, match="lengths"):
            check_lengths(bad)


def test_sweep_table_has_every_variant_length_and_tta_with_its_verdict(sweep):
    assert sweep.lengths == LENGTHS and sweep.headline == "log_loss" and sweep.tta_mode == "full"
    keys = [(r["variant"], r["max_length"], r["tta"]) for r in sweep.table]
    assert keys == [(v, n, t) for v in ("a", "b") for n in LENGTHS for t in (False, True)]
    for r in sweep.table:
        assert r["hours"] > 0 and r["verdict"].startswith("fits") and r["fits"] is True
        assert r["basis"] == "flops-estimate" and r["limit_hours"] == 9
        assert r["value"] == (r["log_loss"] if r["headline"] == "log_loss" else r["accuracy"])
    m48 = sweep.metrics["a"][48]
    assert m48.max_length == 48 and m48.lengths.max() == 48 and m48.budget["max_length"] == 48
    assert sweep.row("a", 48)["rows_cut"] > 0 and sweep.row("a", 4096)["rows_cut"] == 0
    assert sweep.row("a", 48)["cut_share"] >= sweep.row("a", 96)["cut_share"]


def test_a_length_above_the_longest_row_reuses_the_longest_result(sweep):
    assert sweep.row("a", 2048)["reused_from"] == 4096 and sweep.row("a", 4096)["reused_from"] is None
    assert sweep.row("a", 96)["reused_from"] is None
    np.testing.assert_array_equal(sweep.metrics["a"][2048].probs, sweep.metrics["a"][4096].probs)
    np.testing.assert_array_equal(sweep.metrics["a"][2048].probs_tta, sweep.metrics["a"][4096].probs_tta)
    assert not np.array_equal(sweep.metrics["a"][48].probs, sweep.metrics["a"][4096].probs)
    assert any("max_length 2048 renders every row as 4096 does" in n for n in sweep.notes)
    assert "2048 (= 4096)" in sweep.to_markdown()


def test_the_longest_length_against_itself_is_a_zero_width_interval(sweep):
    for v in ("a", "b"):
        for tta in (False, True):
            for n in (4096, 2048):
                r = sweep.row(v, n, tta)
                assert r["delta"] == 0.0 and r["delta_ci"] == [0.0, 0.0], r
            r = sweep.row(v, 48, tta)
            assert r["delta"] == pytest.approx(r["value"] - sweep.row(v, 4096, tta)["value"], abs=1e-12)
            assert r["delta_ci"][0] <= r["delta"] <= r["delta_ci"][1] and r["delta_ci"][0] < r["delta_ci"][1]


def test_hours_grow_with_length_and_with_tta(sweep):
    for v in ("a", "b"):
        for tta in (False, True):
            hours = [sweep.row(v, n, tta)["hours"] for n in LENGTHS]
            assert hours == sorted(hours) and hours[0] < hours[-1], hours
        for n in LENGTHS:
            assert sweep.row(v, n, True)["hours"] > sweep.row(v, n, False)["hours"]


def test_the_sweep_matches_evaluate_at_the_same_max_length(sweep, tiny_model_dir, rows):
    m = kdq.evaluate(str(tiny_model_dir), rows, _eval(budget=_busy_profile(), template=TemplateConfig(max_length=64)))
    np.testing.assert_allclose(sweep.metrics["a"][64].probs, m.probs, atol=1e-6)
    np.testing.assert_allclose(sweep.metrics["a"][64].probs_tta, m.probs_tta, atol=1e-6)
    assert sweep.row("a", 64, True)["hours"] == pytest.approx(m.budget["projected_hours"])


def test_report_files_are_written(sweep):
    out = Path(sweep.paths["json"]).parent
    assert sorted(p.name for p in out.iterdir()) == sorted([EVAL_REPORT_FILE, "report.md", "report.png"])
    data = json.loads((out / EVAL_REPORT_FILE).read_text())
    assert data["lengths"] == list(LENGTHS) and len(data["table"]) == len(sweep.table)
    assert data["metrics"]["a"]["48"]["max_length"] == 48 and data["profile"]["name"] == "lmsys-2xt4"
    assert (out / "report.md").read_text() == sweep.to_markdown()
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="overwrite"):
        sweep_lengths({"a": "unused"}, [], out_dir=out)


def test_verdict_flips_for_a_tiny_time_limit(tiny_model_dir, rows, tmp_path):
    profile = _busy_profile(time_limit_hours=0.01, name="tiny-limit")
    path = tmp_path / "tiny-limit.json"
    path.write_text(json.dumps(profile.to_dict()))
    result = sweep_lengths(
        {"a": str(tiny_model_dir)}, rows, lengths=(48, 64), config=_eval(budget=str(path), tta=False)
    )
    assert [(r["max_length"], r["tta"]) for r in result.table] == [(48, False), (64, False)]
    for r in result.table:
        assert r["fits"] is False and r["fits_time"] is False
        assert r["verdict"].startswith("does not fit (time") and r["margin_hours"] < 0
    assert "fits tiny-limit" in result.to_markdown() and result.paths == {}
    free = sweep_lengths({"a": str(tiny_model_dir)}, rows, lengths=(48,), config=_eval(budget=None, tta=False))
    assert free.table[0]["hours"] is None and free.table[0]["verdict"] is None
    free.plot(tmp_path / "no-budget.png")  # without hours, the x axis is tokens per row
    assert (tmp_path / "no-budget.png").stat().st_size > 0


def test_accuracy_is_the_headline_of_wsdm_rows(tmp_path, tiny_tokenizer):
    make_tiny_classifier(tmp_path / "wsdm", tiny_tokenizer, seed=3, scheme="wsdm")
    rows = make_wsdm_rows(16, seed=1, max_words=60)
    result = sweep_lengths({"w": str(tmp_path / "wsdm")}, rows, lengths=(48, 512), config=_eval(budget=None))
    assert result.headline == "accuracy" and "accuracy" in result.to_markdown()
    for tta in (False, True):
        short, long = result.row("w", 48, tta), result.row("w", 512, tta)
        assert short["value"] == short["accuracy"] and long["delta_ci"] == [0.0, 0.0]
        assert short["delta"] == pytest.approx(short["value"] - long["value"], abs=1e-12)  # accuracy, not its cost


def test_bad_inputs_are_named(tiny_model_dir, rows):
    m = kdq.evaluate(str(tiny_model_dir), rows, _eval(budget=None, tta=False))
    with pytest.raises(ValueError, match="'a' is a Metrics"):
        sweep_lengths({"a": m}, rows)
    with pytest.raises(ValueError, match="lengths: 8 is not a max_length"):
        sweep_lengths({"a": str(tiny_model_dir)}, rows, lengths=(8, 64))
    unlabelled = make_arena_rows(4, seed=1, max_words=20, labelled=False)
    with pytest.raises(ValueError, match="has no label"):
        sweep_lengths({"a": str(tiny_model_dir)}, unlabelled, lengths=(64,))


def test_cli_sweep_lengths(tiny_model_dir, tmp_path, capsys):
    csv = write_arena_csv(tmp_path / "rows.csv", 12, seed=2, max_words=40)
    out = tmp_path / "report"
    argv = ["sweep-lengths", f"tiny={tiny_model_dir}", "--data", str(csv), "--lengths", "48,64", "--out", str(out)]
    code = cli_main([*argv, "--set", "device=cpu", "--set", "progress=false", "--set", "tta=false"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| tiny | 48 | none |" in text and "| tiny | 64 | none |" in text
    assert (out / "report.png").is_file() and json.loads((out / EVAL_REPORT_FILE).read_text())["lengths"] == [48, 64]
    assert cli_main([*argv[:-1], str(tmp_path / "other"), "--lengths", "48,x"]) == 2
    assert "--lengths '48,x'" in capsys.readouterr().err


# --------------------------------------------------------------------------- ExportConfig.max_length
def _load_demo():
    spec = importlib.util.spec_from_file_location("demo", EXAMPLES / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo"] = module
    spec.loader.exec_module(module)
    return module


def test_export_records_an_inference_max_length_predict_py_renders_at(tiny_model_dir, tmp_path):
    from kdq.export.script import load_predict_module

    with pytest.raises(ValueError, match=r"ExportConfig\.max_length must be a int in \[32"):
        kdq.ExportConfig(title="Tiny arena classifier", dataset_id="kdq-tests/tiny", max_length=16)
    config = kdq.ExportConfig(
        title="Tiny arena classifier",
        dataset_id="kdq-tests/tiny",
        template=TEMPLATE,
        max_length=64,
        probe_rows=3,
        arena_like_rows=0,
        batch_size=4,
    )
    folder = kdq.export(tiny_model_dir, tmp_path / "export", config)
    assert json.loads((folder / SETTINGS_FILE).read_text())["max_length"] == 64
    assert json.loads((folder / "config.json").read_text())[TEMPLATE_KEY]["max_length"] == 160  # as trained
    assert "max_length=64 (trained at 160)" in (folder / "README.md").read_text()
    predict = load_predict_module(folder / "predict.py")
    settings = predict.read_settings(folder)
    assert settings["max_length"] == 64 and settings["template"].to_dict() == TEMPLATE.replace(max_length=64).to_dict()

    turns = [
        tuple(r[c] for c in ("prompt", "response_a", "response_b")) for r in load_arena(make_arena_rows(8, seed=4))
    ]
    seqs = predict.render_rows(predict.load_tokenizer(folder), turns, settings["template"])
    assert max(len(s) for s in seqs) == 64  # long rows are cut at the recorded length, not the template's 160
    got = predict.predict_probs(folder, turns, tta="none", batch_size=4)
    at_160 = predict.predict_probs(folder, turns, tta="none", batch_size=4, max_length=160)
    rows = load_arena(make_arena_rows(8, seed=4))
    ref = kdq.evaluate(str(folder), rows, _eval(budget=None, tta=False, template=TEMPLATE.replace(max_length=64)))
    np.testing.assert_allclose(got.numpy(), ref.probs, atol=1e-5)
    # with no template of its own, kdq.evaluate scores an export as its predict.py does: at the recorded 64
    as_shipped = kdq.evaluate(str(folder), rows, _eval(budget=None, tta=False, template=None))
    assert as_shipped.max_length == 64 and as_shipped.lengths.max() == 64
    np.testing.assert_allclose(as_shipped.probs, ref.probs, atol=1e-6)
    assert not np.allclose(got.numpy(), at_160.numpy(), atol=1e-5)
    kdq.verify(folder)  # the probe was scored at 64 and re-scores so

    csv = write_arena_csv(tmp_path / "test.csv", 4, seed=1, max_words=20)
    argv = ["--test-csv", str(csv), "--out", str(tmp_path / "sub.csv"), "--quiet", "--devices", "cpu"]
    assert predict.main([*argv, "--max-length", "8"], default_model_dir=folder) == 1
    assert predict.main([*argv, "--max-length", "96"], default_model_dir=folder) == 0

    settings_file = folder / SETTINGS_FILE
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), "max_length": 10}))
    with pytest.raises(ValueError, match=f"{SETTINGS_FILE} max_length: 10 is not a max_length"):
        predict.read_settings(folder)


# --------------------------------------------------------------------------- the demo's curve
def test_demo_length_curve_covers_the_lengths_its_rows_reach(tiny_model_dir, tiny_tokenizer, tmp_path):
    demo = _load_demo()
    short = load_arena(make_arena_rows(16, seed=8, max_words=12, long_tail=False))
    curve = demo.length_curve("student", tiny_model_dir, short, tmp_path / "lengths", progress=False)
    tokens = tokenize_rows(short, tiny_tokenizer, TemplateConfig())
    floor = max(MIN_MAX_LENGTH, max(t.min_max_length for t in tokens))
    assert curve.lengths == suggest_lengths([t.uncut_length for t in tokens], floor=floor)
    assert len(curve.lengths) >= 3 and max(curve.lengths) >= max(t.uncut_length for t in tokens)
    assert [(r["variant"], r["max_length"], r["tta"]) for r in curve.table] == [
        ("student", n, t) for n in curve.lengths for t in (False, True)
    ]
    assert curve.row("student", min(curve.lengths))["rows_cut"] > 0
    assert curve.row("student", max(curve.lengths))["rows_cut"] == 0
    assert (tmp_path / "lengths" / "report.png").is_file() and curve.paths["png"] == tmp_path / "lengths" / "report.png"


def test_the_report_names_its_resample_unit_and_a_too_short_length_the_usable_one(
    sweep, tiny_model_dir, rows, tiny_tokenizer
):
    saved = sweep.to_dict()["intervals"]
    assert saved and all(v["unit"] == "rows" and v["n_units"] == len(rows) for v in saved.values())
    assert "over the rows;" in sweep.to_markdown()
    tokens = tokenize_rows(rows, tiny_tokenizer, TEMPLATE)
    floor = max(t.min_max_length for t in tokens)
    lengths = (max(MIN_MAX_LENGTH, floor - 1), floor + 32) if floor - 1 >= MIN_MAX_LENGTH else (floor + 32,)
    if len(lengths) == 1:
        pytest.skip("every row leaves room for text at the template's minimum")
    with pytest.raises(ValueError, match=rf"shortest usable length is {floor}"):
        sweep_lengths({"tiny": str(tiny_model_dir)}, rows, lengths=lengths, config=_eval(budget=None))
