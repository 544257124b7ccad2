"""fp16 overflow that only some inputs trigger: the export's check, its choice and predict.py's record.

The tiny model below is a real LlamaForSequenceClassification whose layer-0 MLP multiplies two ~320
activations (about 1e5, over fp16's 65504) for one token only, through a hidden channel no other token
touches. fp32 stays finite; fp16 turns that token's position into inf and, through the next layer's
attention, every later position (the pooled one included) into NaN. The token is '^' (maths), which the
old probe rows (lowercase words) never contain, as a real model's outlier tokens live in code, maths,
markup and non-English text.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import kdq
from kdq.data.probe import probe_turns
from kdq.export import ExportConfig, ExportError, export
from kdq.export.build import kdq_probs
from kdq.export.script import load_predict_module
from kdq.models import LoadedModel, load_classifier
from kdq.runtime.template import TemplateConfig, render
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = TemplateConfig(max_length=160)
FP16_MAX = 65504.0
ATOL = 2e-3  # ExportConfig.fp16_atol's default


def _config(**kw):
    base = dict(title="Tiny fp16 overflow", dataset_id="kdq-tests/fp16-overflow", template=TEMPLATE, batch_size=4)
    base.update(kw)
    return ExportConfig(**base)


def _token(tokenizer, char) -> int:
    ids = tokenizer(char, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (char, ids)
    return ids[0]


def _overflow_model(tokenizer, trigger: str):
    """A tiny classifier whose fp16 activations overflow on ``trigger``'s token only (fp32 stays finite)."""
    model = make_tiny_classifier(None, tokenizer, seed=3)
    hidden = model.config.hidden_size - 1  # a channel only the trigger token writes
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, hidden] = 0.0
        emb[_token(tokenizer, trigger), hidden] = 4.0  # huge next to the 0.02-scale init: ~8 after RMSNorm
        for layer in model.model.layers:  # nothing else writes the channel, so other tokens keep it at 0
            layer.self_attn.o_proj.weight[hidden, :] = 0.0
            layer.mlp.down_proj.weight[hidden, :] = 0.0
        mlp = model.model.layers[0].mlp
        mlp.gate_proj.weight[:4, hidden] = 40.0  # silu(~320) * ~320 ~ 1e5 > 65504 on that token only
        mlp.up_proj.weight[:4, hidden] = 40.0
        mlp.down_proj.weight[:, :4] *= 0.05  # keeps fp32 well scaled downstream
    return model


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def caret_dir(tmp_path_factory, tiny_tokenizer):
    return _save(_overflow_model(tiny_tokenizer, "^"), tiny_tokenizer, tmp_path_factory.mktemp("caret"))


@pytest.fixture(scope="module")
def at_dir(tmp_path_factory, tiny_tokenizer):
    return _save(_overflow_model(tiny_tokenizer, "@"), tiny_tokenizer, tmp_path_factory.mktemp("at"))


def _probs(model, tokenizer, rows, dtype):
    loaded = LoadedModel(model.to(dtype), tokenizer, None, "test")
    return kdq_probs(loaded, rows, TEMPLATE, tta="full", batch_size=4)


def _rows_holding(tokenizer, rows, char) -> list:
    """Indices of the rows whose rendered tokens (either order) hold ``char``'s token."""
    tok = _token(tokenizer, char)
    plain, swapped = render(tokenizer, rows, TEMPLATE), render(tokenizer, rows, TEMPLATE, swap=True)
    return [i for i, (a, b) in enumerate(zip(plain, swapped)) if tok in a or tok in b]


def test_the_model_overflows_fp16_only_on_arena_like_rows_and_the_old_probe_cannot_see_it(caret_dir):
    from kdq.data.probe import arena_like_turns

    loaded = load_classifier(caret_dir)
    tok, model = loaded.tokenizer, loaded.model
    _, old_rows = probe_turns(6)  # the rows the fp16 check used before
    ids, rows = arena_like_turns()
    assert _rows_holding(tok, old_rows, "^") == []
    hits = _rows_holding(tok, rows, "^")
    assert [ids[i] for i in hits] == ["arena-like-1-maths", "arena-like-11-maths", "arena-like-16-maths"]

    peak = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, inp, out: peak.append(float(inp[0].abs().max()))
    )
    fp32 = _probs(model, tok, rows, torch.float32)
    hook.remove()
    assert max(peak) > FP16_MAX and torch.isfinite(fp32).all()  # fp32 holds what fp16 cannot
    fp16 = _probs(load_classifier(caret_dir).model, tok, rows, torch.float16)
    bad = (~torch.isfinite(fp16).all(-1)).nonzero().flatten().tolist()
    assert bad == hits  # NaN on exactly the rows with the token, fine elsewhere
    good = [i for i in range(len(rows)) if i not in hits]
    assert float((fp16[good] - fp32[good]).abs().max()) < ATOL
    # the old check's rows: fp16 within its tolerance of fp32, so the old export stored fp16 and passed
    old32 = _probs(load_classifier(caret_dir).model, tok, old_rows, torch.float32)
    old16 = _probs(load_classifier(caret_dir).model, tok, old_rows, torch.float16)
    assert torch.isfinite(old16).all() and float((old16 - old32).abs().max()) < ATOL


def test_export_refuses_fp16_naming_the_first_bad_row_and_the_options(caret_dir, tmp_path):
    out = tmp_path / "export"
    with pytest.raises(ExportError) as err:
        export(caret_dir, out, _config())
    msg = str(err.value)
    assert "3 of 26 rows" in msg  # 6 probe rows + 20 arena-like rows; 3 hold the token
    assert "the first is id 'arena-like-1-maths' (arena-like row: '\\\\int_0^{\\\\infty} e^{-x^2}" in msg
    assert "not finite in fp16" in msg
    for option in ("fp16_fallback='fp32-compute'", "weights_dtype='float32'", "quantized variant"):
        assert option in msg
    assert "Nothing was written" in msg and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_fp32_weights_alone_are_checked_too_since_a_t4_computes_them_in_fp16(caret_dir, tmp_path):
    """predict.py loads fp32 weights as fp16 on CUDA: storing fp32 is no escape from the check."""
    with pytest.raises(ExportError, match=r"the first is id 'arena-like-1-maths'"):
        export(caret_dir, tmp_path / "export", _config(weights_dtype="float32"))


@pytest.fixture(scope="module")
def fp32_record(caret_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32-record") / "export"
    with pytest.warns(UserWarning, match=r"cuda_compute_dtype='float32'.*fp32 on CUDA"):
        return export(caret_dir, out, _config(fp16_fallback="fp32-compute"))


def test_fp32_compute_choice_is_recorded_for_predict_py(fp32_record):
    settings = json.loads((fp32_record / "kdq-predict.json").read_text())
    assert settings["cuda_compute_dtype"] == "float32"
    assert "first: id 'arena-like-1-maths'" in settings["cuda_compute_dtype_reason"]
    assert settings["format"] == 1 and settings["tta"] == "full" and "budget" in settings  # other keys kept
    check = json.loads((fp32_record / "kdq-manifest.json").read_text())["fp16_check"]
    assert check["cuda_compute_dtype"] == "float32" and check["fallback"] == "fp32-compute"
    assert (check["rows"], check["bad_rows"]) == (26, 3)
    assert check["row_sources"] == {"probe": 6, "arena_like": 20, "check_rows": None}
    first = check["first_bad_row"]
    assert first["id"] == "arena-like-1-maths" and first["origin"] == "arena-like"
    assert first["finite_in_fp16"] is False and first["max_abs_diff_vs_fp32"] is None
    # fp32 compute on the fp16-rounded weights reproduces the source
    assert 0 <= check["fp32_compute_max_abs_diff_vs_source"] <= ATOL
    from safetensors import safe_open

    with safe_open(str(fp32_record / "model.safetensors"), "pt") as f:  # still half the bytes on disk
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    card = (fp32_record / "README.md").read_text()
    assert "compute on CUDA: **fp32**" in card and "`arena-like-1-maths`" in card
    assert kdq.verify(fp32_record).probe_max_abs_diff <= 1e-4


def test_predict_py_honours_the_record_on_cuda_and_matches_fp32(fp32_record, caret_dir, tmp_path):
    from kdq.data.probe import arena_like_turns

    module = load_predict_module(fp32_record / "predict.py")
    settings = module.read_settings(fp32_record)
    # the device logic, decided without a GPU: fp32 on CUDA for this folder, fp32 on CPU as always
    assert module.model_dtype(settings, "cuda:0") == torch.float32
    assert module.model_dtype(settings, "cpu") == torch.float32
    assert module.model_dtype({}, "cuda:1") == torch.float16  # folders exported before the record
    assert module.model_dtype({"cuda_compute_dtype": "float16"}, "cuda") == torch.float16
    with pytest.raises(ValueError, match=r"cuda_compute_dtype 'bfloat16' is not one of"):
        module.model_dtype({"cuda_compute_dtype": "bfloat16"}, "cuda")
    kwargs = module.load_kwargs(fp32_record, "cuda:0")
    assert kwargs["dtype"] == torch.float32 and kwargs["device_map"] == {"": "cuda:0"}
    note = module.compute_note(settings, ["cuda:0", "cuda:1"])
    assert note.startswith("computing in fp32 on cuda:0,cuda:1, not fp16") and "arena-like-1-maths" in note
    assert module.compute_note(settings, ["cpu"]) is None

    _, rows = arena_like_turns()
    expected = kdq_probs(load_classifier(caret_dir), rows, TEMPLATE, tta="full", batch_size=4)
    # predict.py on CPU: the fp32 path, finite and equal to the fp32 source within the tolerance
    got = module.predict_probs(fp32_record, rows, tta="full", batch_size=4, devices=["cpu"])
    assert torch.isfinite(got).all() and float((got - expected).abs().max()) <= ATOL
    # what it loads on CUDA (load_kwargs' dtype), run here on CPU: finite and equal to fp32 too ...
    from transformers import AutoModelForSequenceClassification

    def score_as_on_cuda(folder):
        dtype = module.load_kwargs(folder, "cuda:0")["dtype"]
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype).eval()
        seqs = render(module.load_tokenizer(folder), rows, TEMPLATE)
        swapped = render(module.load_tokenizer(folder), rows, TEMPLATE, swap=True)
        both = module.score_sharded([("cpu", model)], seqs + swapped, model.config.pad_token_id, 4).double()
        from kdq.runtime.batching import combine_swap_tta

        return combine_swap_tta(both[: len(rows)], both[len(rows) :]).exp()

    on_cuda = score_as_on_cuda(fp32_record)
    assert torch.isfinite(on_cuda).all() and float((on_cuda - expected).abs().max()) <= ATOL
    # ... where the same folder without the record computes fp16 and gives those rows NaN
    plain = shutil.copytree(fp32_record, tmp_path / "no-record")
    record = json.loads((plain / "kdq-predict.json").read_text())
    record["cuda_compute_dtype"] = "float16"
    (plain / "kdq-predict.json").write_text(json.dumps(record))
    assert not torch.isfinite(score_as_on_cuda(plain)).all()


def test_predict_py_says_on_stderr_that_it_computes_in_fp32(fp32_record, monkeypatch, capsys):
    module = load_predict_module(fp32_record / "predict.py")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # main() sets them; keep them to this test
        monkeypatch.setenv(name, "1")

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before loading (no GPU here)")

    monkeypatch.setattr(module, "check_files", lambda d: 0)
    monkeypatch.setattr(module, "read_rows", lambda path: (["1"], [(["q"], ["a"], ["b"])]))
    monkeypatch.setattr(module, "predict_probs", stop)
    assert module.main(["--devices", "cuda:0", "--quiet"], default_model_dir=fp32_record) == 1
    err = capsys.readouterr().err
    assert "predict.py: computing in fp32 on cuda:0, not fp16, as kdq-predict.json records" in err
    assert module.main(["--devices", "cpu", "--quiet"], default_model_dir=fp32_record) == 1
    assert "computing in fp32" not in capsys.readouterr().err


def test_the_users_check_rows_are_computed_when_given(at_dir, tiny_tokenizer, tmp_path):
    from kdq.data.probe import arena_like_turns

    # '@' is in neither the probe rows nor kdq's arena-like rows: only the user's rows can catch it
    assert _rows_holding(tiny_tokenizer, probe_turns(6)[1] + arena_like_turns()[1], "@") == []
    user = pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(8)],
            "prompt": [json.dumps([f"question {i}"]) for i in range(8)],
            "response_a": [json.dumps(["mail me at bob@example.com" if i == 6 else "an answer"]) for i in range(8)],
            "response_b": [json.dumps(["another answer"]) for _ in range(8)],
        }
    )
    csv = tmp_path / "check.csv"
    user.to_csv(csv, index=False)
    with pytest.raises(ExportError, match=r"the first is id 'u6' \(check_rows row: 'question 6'\)"):
        export(at_dir, tmp_path / "refused", _config(check_rows=csv))
    # check_rows_max keeps evenly spaced rows: 4 of 8 are u0, u2, u4, u6 (the bad one among them)
    with pytest.raises(ExportError, match=r"1 of 30 rows .* id 'u6'"):
        export(at_dir, tmp_path / "refused", _config(check_rows=csv, check_rows_max=4))
    # without '@' among the checked rows (kdq's own, and u0, u2, u5 of 8) the same model exports in fp16
    out = export(at_dir, tmp_path / "recorded", _config(check_rows=csv, check_rows_max=3))
    manifest = json.loads((out / "kdq-manifest.json").read_text())
    # where they came from and how many (the file's name, never this machine's path), not the rows
    assert manifest["export_config"]["check_rows"] == "check.csv"
    assert manifest["fp16_check"]["row_sources"]["check_rows"] == {"source": "check.csv", "rows": 3, "of": 8}
    assert manifest["fp16_check"]["rows"] == 29 and manifest["fp16_check"]["bad_rows"] == 0
    assert manifest["fp16_check"]["cuda_compute_dtype"] == "float16"
    assert json.loads((out / "kdq-predict.json").read_text())["cuda_compute_dtype"] == "float16"
    assert str(tmp_path) not in (out / "kdq-manifest.json").read_text()


def test_check_rows_config_is_torch_free_json_able_and_validated():
    from kdq.export.build import fp16_check_rows

    rows = [{"id": f"r{i}", "prompt": '["p"]', "response_a": '["a"]', "response_b": '["b"]'} for i in range(10)]
    cfg = _config(check_rows=rows, check_rows_max=4)
    assert cfg.to_dict()["check_rows"] == {"in_memory": "tuple", "rows": 10}
    json.dumps(cfg.to_dict())
    check = fp16_check_rows(cfg)
    assert check.ids[-4:] == ["r0", "r2", "r5", "r7"] and check.origins[-4:] == ["check_rows"] * 4
    assert check.ids[:6] == probe_turns(6)[0] and check.origins[6:26] == ["arena-like"] * 20
    frame = _config(check_rows=pd.DataFrame(rows), check_rows_max=64)
    assert frame.to_dict()["check_rows"] == {"in_memory": "DataFrame", "rows": 10}
    assert fp16_check_rows(frame).ids[-10:] == [f"r{i}" for i in range(10)]
    assert fp16_check_rows(frame).record["check_rows"] == {
        "source": {"in_memory": "DataFrame", "rows": 10},
        "rows": 10,
        "of": 10,
    }
    assert _config().to_dict()["check_rows"] is None and _config().fp16_fallback == "refuse"
    with pytest.raises(ValueError, match=r"ExportConfig.fp16_fallback must be one of"):
        _config(fp16_fallback="fp32")
    with pytest.raises(ValueError, match=r"ExportConfig.check_rows must be None or arena rows"):
        _config(check_rows=42)
    with pytest.raises(ValueError, match=r"ExportConfig.check_rows: arena data file .*missing.csv"):
        fp16_check_rows(_config(check_rows="missing.csv"))


def test_arena_like_rows_are_fixed_and_look_like_the_arena():
    from kdq.data.probe import ARENA_LIKE_KINDS, arena_like_rows, arena_like_turns

    assert arena_like_rows() == arena_like_rows()
    ids, rows = arena_like_turns()
    assert arena_like_turns(7) == (ids[:7], rows[:7])  # a prefix does not depend on n
    assert ARENA_LIKE_KINDS == ("code", "maths", "markup", "numbers", "multilingual")
    assert [i.rsplit("-", 1)[1] for i in ids] == list(ARENA_LIKE_KINDS) * 4
    text = "\n".join(t for row in rows for part in row for t in part)
    for needle in ("def ", "{", "\\frac", "∑", "<div", "|---|", "3.14159265358979", "中文", "Напишите", "😀"):
        assert needle in text, needle


def test_evaluate_names_the_row_id_of_non_finite_probabilities(caret_dir):
    rows = pd.DataFrame(
        {
            "id": ["r-a", "r-b", "r-c"],
            "prompt": [json.dumps(["plain words"]), json.dumps(["so x^2 is"]), json.dumps(["also x^3"])],
            "response_a": [json.dumps(["an answer"])] * 3,
            "response_b": [json.dumps(["another answer"])] * 3,
            "winner_model_a": [1, 0, 0],
            "winner_model_b": [0, 1, 0],
            "winner_tie": [0, 0, 1],
        }
    )
    config = kdq.EvalConfig(template=TEMPLATE, batch_size=4, progress=False, dtype="float16", device="cpu", budget=None)
    with pytest.raises(ValueError, match=r"2 of 3 row\(s\) have non-finite probabilities, the first is id 'r-b'"):
        kdq.evaluate(caret_dir, rows, config)
    fine = kdq.evaluate(caret_dir, rows, config.replace(dtype="float32"))
    assert np.isfinite(fine.probs).all()


def test_run_pipeline_passes_its_eval_rows_to_the_export_check(tmp_path, monkeypatch, tiny_model_dir):
    """The pipeline's export computes its eval rows in fp16 too (stages replaced by stand-ins: only the
    wiring is under test)."""
    import importlib
    import sys
    from types import SimpleNamespace

    pipeline = importlib.import_module("kdq.pipeline")
    md = tmp_path / "report.md"
    md.write_text("| variant |\n|---|\n")
    seen = {}

    def fake_export(model, out, config, **kwargs):
        seen["config"] = config
        return out

    monkeypatch.setattr(pipeline, "_teacher_pass_outside_group", lambda *a, **k: {"live": True})
    monkeypatch.setattr(
        sys.modules["kdq.distill"], "distill", lambda *a, **k: SimpleNamespace(student_dir=tiny_model_dir, metrics={})
    )
    report = SimpleNamespace(
        metrics={"teacher": {}, "student-kd": {}},
        paths={"md": md},
        gap_closed=None,
        gap_closed_tta=None,
        intervals=None,
        intervals_tta=None,
    )
    monkeypatch.setattr(sys.modules["kdq.evaluate"], "compare", lambda *a, **k: report)
    monkeypatch.setattr(sys.modules["kdq.export"], "export", fake_export)
    monkeypatch.setattr(sys.modules["kdq.export"], "verify", lambda folder: None)
    eval_rows = make_arena_rows(5, seed=4, id_offset=1000)
    config = pipeline.PipelineConfig(
        out_dir=str(tmp_path / "run"), baseline=False, quant_methods=(), export_variants=("student-kd",)
    )
    pipeline.run_pipeline(str(tiny_model_dir), str(tiny_model_dir), eval_rows, eval_rows, eval_rows, config)
    assert seen["config"].check_rows is eval_rows
    assert seen["config"].to_dict()["check_rows"] == {"in_memory": "dict", "rows": 5}
