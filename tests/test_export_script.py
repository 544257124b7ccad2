"""The exported predict.py: a launcher for kdq's runtime copied whole (no kdq import), its
CSV reading, sharding, start-up checks and submission writing."""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch

import kdq
from kdq.export.script import bad_imports, copy_runtime, kdq_imports, load_predict_module, render_script, runtime_files
from kdq.quant_methods import get_quantizer, variant_names
from kdq.quantize import QuantConfig
from kdq.runtime.constants import TEMPLATE_KEY

KDQ_DIR = Path(kdq.__file__).parent


@pytest.fixture(scope="module")
def script_text():
    return render_script(
        title="Tiny arena classifier", slug="tiny-arena", kdq_version=kdq.__version__, quant_method="gptq"
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory, script_text):
    folder = tmp_path_factory.mktemp("script")
    (folder / "predict.py").write_text(script_text)
    copy_runtime(folder)
    return folder


@pytest.fixture(scope="module")
def predict(folder):
    return load_predict_module(folder / "predict.py")


def test_runtime_is_copied_whole_and_is_what_predict_runs(folder, predict):
    names = sorted(p.name for p in runtime_files())
    assert {"template.py", "batching.py", "tta.py", "checksums.py", "constants.py", "predict.py"} <= set(names)
    for name in names:
        assert (folder / "kdq_runtime" / name).read_bytes() == (KDQ_DIR / "runtime" / name).read_bytes()
    # the launcher's namespace holds the folder's runtime, not kdq's modules
    assert predict.render.__module__.endswith(".template") and not predict.render.__module__.startswith("kdq.")
    assert predict.score_tta.__module__.endswith(".tta")
    assert not (folder / "kdq_runtime" / "__pycache__").exists()  # no bytecode lands in the dataset folder
    # kdq's public TemplateConfig is the runtime's object (one implementation)
    from kdq.runtime import template as rt

    assert kdq.TemplateConfig is rt.TemplateConfig


def test_script_is_standalone_python(script_text):
    assert kdq_imports(script_text) == []
    assert script_text.startswith("#!/usr/bin/env python3\n")
    stdlib = set(__import__("sys").stdlib_module_names)
    imported = set()
    for text in [script_text] + [p.read_text() for p in runtime_files()]:
        tree = ast.parse(text)
        assert bad_imports(text, relative_ok=True) == []
        imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {
            n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level
        }
    assert imported - stdlib == {"torch", "transformers"}
    assert "gptq" in script_text.split('"""')[1]


def test_kdq_imports_are_detected():
    assert kdq_imports("import kdq.template\nfrom .x import y\nfrom kdq import export\nimport os\n") == [
        "line 1: import kdq.template",
        "line 2: from .x import ...",
        "line 3: from kdq import ...",
    ]


@pytest.mark.parametrize(
    "lengths, n",
    [([5] * 10, 2), ([100, 1, 1, 1, 1, 1], 2), ([3, 9, 4, 1, 7, 2, 8], 3), ([4], 2), ([2, 2], 5), ([1] * 7, 1)],
)
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


@pytest.mark.parametrize(
    "rows, fields, match",
    [
        ([_row(1)], ("id", "prompt", "response_a"), r"missing column\(s\) \['response_b'\]"),
        ([_row(1), _row(1)], ("id", "prompt", "response_a", "response_b"), "duplicate id '1'"),
        ([_row(7, prompt="not json")], ("id", "prompt", "response_a", "response_b"), "row '7', column 'prompt'"),
        ([], ("id", "prompt", "response_a", "response_b"), "no rows"),
    ],
)
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
    assert predict.pick_devices("auto") == ([f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"])
    with pytest.raises(ValueError, match="names no device"):
        predict.pick_devices(" , ")


def test_missing_backend_gives_the_offline_install_line(predict, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    (tmp_path / "kdq-predict.json").write_text(json.dumps({"backend_modules": ["bitsandbytes"]}))
    assert predict.check_backend(tmp_path) == "bitsandbytes"  # installed here
    # a backend this Python lacks (stands in for a Kaggle image without bitsandbytes)
    (tmp_path / "kdq-predict.json").write_text(json.dumps({"backend_modules": ["bitsandbytes", "kdq_no_such_module"]}))
    with pytest.raises(RuntimeError, match=r"pip install --no-index --find-links \S+wheels kdq_no_such_module"):
        predict.check_backend(tmp_path)


def test_version_mismatch_is_one_line_with_the_offline_install(predict, tmp_path):
    import transformers

    have = transformers.__version__
    major = int(have.split(".")[0])
    (tmp_path / "config.json").write_text(json.dumps({}))
    manifest = {"versions": {"transformers": have, "torch": torch.__version__}}
    (tmp_path / "kdq-manifest.json").write_text(json.dumps(manifest))
    assert predict.check_versions(tmp_path) == []  # exported with what is installed: silent
    manifest["versions"]["transformers"] = f"{major}.999.0"  # another minor: a warning with the exact pin
    (tmp_path / "kdq-manifest.json").write_text(json.dumps(manifest))
    (line,) = predict.check_versions(tmp_path)
    assert line.startswith(f"transformers {have} is installed") and "\n" not in line
    assert line.endswith(f"pip install --no-index --find-links {tmp_path / 'wheels'} transformers=={major}.999.0")
    manifest["versions"]["transformers"] = f"{major + 1}.0.0"  # config written by a newer major: refuse
    (tmp_path / "kdq-manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match=rf"needs transformers >= {major + 1}\): pip install --no-index"):
        predict.check_versions(tmp_path)
    # the backend's packages are whatever the export recorded (kdq-predict.json), not a list in the runtime
    manifest["versions"] = {"transformers": have, "safetensors": "0.1.0"}
    (tmp_path / "kdq-manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "kdq-predict.json").write_text(json.dumps({"backend_packages": ["safetensors"]}))
    assert predict.check_versions(tmp_path) == []  # not quantized: no backend to compare
    (line,) = predict.check_versions(tmp_path, "some-method")
    assert line.startswith("safetensors ") and line.endswith("safetensors==0.1.0")


def test_non_finite_probabilities_are_refused_naming_the_row(predict, tmp_path):
    probs = torch.softmax(torch.randn(4, 3, dtype=torch.float64), -1)
    probs[2, 1] = float("nan")
    probs[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 row\(s\) have non-finite probabilities, the first is id 'c'"):
        predict.write_submission(tmp_path / "s.csv", ["a", "b", "c", "d"], probs)
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "s.csv.partial").exists()


def test_throughput_prints_rows_per_s_and_an_eta_early():
    from kdq.runtime.predict import Throughput

    out = io.StringIO()
    budget = {"time_limit_hours": 9.0, "rows": 25_000}  # what the export records from its profile
    sink = Throughput(200, 100, budget=budget, report_after_s=1e9, report_after_frac=0.05, stream=out)
    sink.start -= 10.0  # 10 s spent
    for _ in range(10):
        sink.update(1)
    text = out.getvalue()
    assert text.count("\n") == 1  # printed once, after 5% of the sequences
    assert "10/200 sequences" in text and "1.0 sequences/s (0.5 rows/s)" in text
    assert "ETA 0.05 h for these 100 rows" in text and "within the 9 h limit" in text
    assert "25000 rows: ~13.9 h" in text
    slow = Throughput(2_000_000, 1_000_000, budget=budget, report_after_s=0.0, stream=io.StringIO())
    slow.start -= 100.0
    slow.update(1)
    assert "WILL NOT FINISH in the 9 h notebook limit" in slow.reported
    # the limit and the hidden rows come from the export's budget (kdq-predict.json), not from predict.py
    tight = Throughput(
        200, 100, budget={"time_limit_hours": 0.01, "rows": 1000}, report_after_s=0.0, stream=io.StringIO()
    )
    tight.start -= 100.0
    tight.update(1)
    assert "WILL NOT FINISH in the 0.01 h notebook limit" in tight.reported and "1000 rows: ~" in tight.reported
    # a folder exported before kdq recorded a budget: the ETA without a verdict (predict.py copies no budget numbers)
    unknown = Throughput(200, 100, budget=None, report_after_s=0.0, stream=io.StringIO())
    unknown.start -= 100.0
    unknown.update(1)
    assert "ETA" in unknown.reported and "no notebook budget recorded in kdq-predict.json" in unknown.reported
    assert "limit" not in unknown.reported


def _recorded_folder(folder, model_dir, qc, **export_fields):
    """``folder`` with ``model_dir``'s config.json carrying ``qc`` and the kdq-predict.json the export writes for it."""
    from kdq.export.build import settings_record
    from kdq.export.config import ExportConfig

    folder.mkdir(exist_ok=True)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": qc}))
    record = settings_record(ExportConfig(title="a tiny export", dataset_id="me/tiny", **export_fields), qc)
    (folder / "kdq-predict.json").write_text(json.dumps(record))
    return record


@pytest.mark.parametrize("variant", variant_names())
def test_predict_py_loads_every_variant_as_the_export_recorded_it(
    variant, predict, tmp_path, tiny_model_dir, monkeypatch
):
    """What predict.py does with a folder comes from kdq-predict.json (the registry's answers at export
    time), never from method names in the runtime: environment, overrides per device type, checks."""
    cfg = QuantConfig.from_name(variant)
    method = get_quantizer(cfg.method)
    qc = method.quantization_config_for(cfg)
    record = _recorded_folder(tmp_path / variant, tiny_model_dir, qc)
    folder = tmp_path / variant
    assert record["backend_modules"] == list(method.runtime_modules)
    assert record["backend_packages"] == list(method.wheels)
    assert predict.check_backend(folder) == method.quant_method  # the backends are installed here
    for device in ("cpu", "cuda:1"):
        kind = device.split(":")[0]
        kw = predict.load_kwargs(folder, device)  # arguments only: nothing is loaded
        assert kw["dtype"] == (torch.float16 if kind == "cuda" else torch.float32)
        assert kw.get("device_map") == ({"": device} if kind == "cuda" else None)
        overrides = method.load_overrides(qc).get(kind)
        if overrides:  # merged into config.json's quantization_config, passed as config=
            assert kw["config"].quantization_config == {**qc, **overrides}
        else:
            assert "config" not in kw
    env = {k: str(v) for k, v in method.load_env.get("cpu", {}).items()}
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *env):
        monkeypatch.setenv(key, "x")  # recorded, so the test's end restores the environment
        monkeypatch.delenv(key)
    assert predict._set_env(["cpu"], record["load"]) == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}


def test_bnb_4bit_computes_in_fp16_and_gptq_picks_its_kernel_on_cuda(predict, tmp_path, tiny_model_dir):
    qc = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_use_double_quant": True,
    }
    _recorded_folder(tmp_path / "nf4", tiny_model_dir, qc)
    kw = predict.load_kwargs(tmp_path / "nf4", "cuda:1")  # arguments only: nothing is loaded
    assert kw["dtype"] == torch.float16 and kw["device_map"] == {"": "cuda:1"}
    assert kw["config"].quantization_config["bnb_4bit_compute_dtype"] == "float16"
    assert kw["config"].quantization_config["bnb_4bit_use_double_quant"] is True
    assert predict.load_kwargs(tmp_path / "nf4", "cpu") == {"dtype": torch.float32}
    qc = {"quant_method": "gptq", "bits": 8, "backend": "torch"}
    record = _recorded_folder(tmp_path / "gptq", tiny_model_dir, qc)
    assert "cuda" not in record["load"]  # the recorded kernels alone say what runs on CUDA
    assert predict.pick_kernel(record["cuda_kernels"], (7, 5), "float16")["quantization_config"] == {
        "backend": "marlin"
    }
    kw = predict.load_kwargs(tmp_path / "gptq", "cuda:0")
    if torch.cuda.is_available():  # the card's kernel replaces the CPU-quantized folder's torch backend
        chosen = predict.cuda_kernel(tmp_path / "gptq", "cuda:0")["quantization_config"]
        assert kw["config"].quantization_config == {**qc, **chosen}
    else:  # no card to choose for: config.json's backend stands
        assert "config" not in kw
    # a backend chosen at quantization time is kept
    _recorded_folder(tmp_path / "exllama", tiny_model_dir, {"quant_method": "gptq", "bits": 4, "backend": "exllama_v2"})
    assert "config" not in predict.load_kwargs(tmp_path / "exllama", "cuda:0")


def test_recorded_overrides_take_effect_where_a_quantization_config_argument_does_not(
    predict, tmp_path, tiny_model_dir
):
    """Trap (transformers 5.x): ``from_pretrained(folder, quantization_config=...)`` on a pre-quantized
    folder keeps the folder's own config, except a few "loading attributes" of some methods (GPTQ's
    backend); bitsandbytes' compute dtype, say, is silently ignored. predict.py merges the recorded
    overrides into config.json's quantization_config instead, and they take effect."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    folder = tmp_path / "nf4"
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["score"],
    )
    AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), quantization_config=bnb, dtype=torch.float32, device_map={"": "cpu"}
    ).save_pretrained(str(folder))
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    ignored = AutoModelForSequenceClassification.from_pretrained(
        str(folder),
        dtype=torch.float32,
        device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig.from_dict(dict(qc, bnb_4bit_compute_dtype="float16")),
    )
    assert ignored.model.layers[0].self_attn.q_proj.compute_dtype == torch.float32  # the argument did nothing
    # predict.py's way, exercised on CPU by recording the override for "cpu"
    (folder / "kdq-predict.json").write_text(
        json.dumps({"load": {"cpu": {"quantization_config": {"bnb_4bit_compute_dtype": "float16"}}}})
    )
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), **predict.load_kwargs(folder, "cpu"))
    assert model.model.layers[0].self_attn.q_proj.compute_dtype == torch.float16


def test_settings_need_the_recorded_template(predict, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ValueError, match=TEMPLATE_KEY):
        predict.read_settings(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({TEMPLATE_KEY: {"max_length": 64, "min_part_share": 0.1}}))
    (tmp_path / "kdq-predict.json").write_text(json.dumps({"tta": False, "batch_size": 3}))
    s = predict.read_settings(tmp_path)
    assert (s["template"].max_length, s["template"].min_part_share, s["tta"], s["batch_size"]) == (64, 0.1, "none", 3)


def test_lone_surrogates_from_the_csv_do_not_crash_the_tokenizer(predict, tmp_path, tiny_tokenizer):
    # A JSON escape of half an emoji, as found in scraped arena text: the fast tokenizer
    # rejects such strings, so parse_turns (shared with training) replaces them with U+FFFD.
    row = {"id": 1, "prompt": '["hi \\ud83d there"]', "response_a": '["ok \\ud83d\\ude00"]', "response_b": '["b"]'}
    ids, rows = predict.read_rows(_write_csv(tmp_path / "t.csv", [row]))
    assert rows[0][0] == ["hi \ufffd there"] and rows[0][1] == ["ok \U0001f600"]
    seqs = predict.render(tiny_tokenizer, rows, predict.TemplateConfig(max_length=64))
    assert 0 < len(seqs[0]) <= 64


def test_one_dtype_rule_in_the_runtime_that_kdq_asks():
    """fp16 on CUDA (a T4 has no bf16; bf16 only where training asks and the GPU has it), fp32 on CPU: written
    once in kdq/runtime/dtypes.py, asked by predict.py, loading, evaluation, quantization and training."""
    from kdq.distill.lora import base_dtype
    from kdq.models import model_dtype_for
    from kdq.runtime.dtypes import compute_dtype, resolve_dtype

    assert compute_dtype("cpu") == torch.float32 and compute_dtype("cuda:1") == torch.float16
    assert model_dtype_for("cuda") == torch.float16 and model_dtype_for("cpu") == torch.float32
    assert resolve_dtype("auto", "cpu", bf16=True) == torch.float32 == base_dtype(kdq.LoraSettings(), "cpu")
    assert resolve_dtype(None, "cuda") == torch.float16 and resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp16", "cpu") == torch.float16 == base_dtype(kdq.LoraSettings(base_dtype="fp16"), "cpu")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")
    # no other module picks a half dtype by device for itself (`torch.float16 if cuda else torch.float32`)
    dtype = r"(torch\.(b?float16|float32)|\"(bf16|fp16|fp32)\")"
    choice = re.compile(dtype + " if .+ else " + dtype)
    files = [
        *KDQ_DIR.rglob("*.py"),
        *(KDQ_DIR.parent / "bench").glob("*.py"),
        *(KDQ_DIR.parent / "examples").glob("*.py"),
    ]
    deciders = sorted(str(p.relative_to(KDQ_DIR.parent)) for p in files if choice.search(p.read_text()))
    assert deciders == [], deciders
