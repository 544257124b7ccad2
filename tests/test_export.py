"""Export stage end to end: a tiny model exported, predicted through its own predict.py with kdq
out of reach, compared with kdq.evaluate; verify catches tampering; failures leave nothing behind."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import kdq
from kdq.cli.main import main as cli_main
from kdq.export import ExportConfig, ExportError, VerificationError, dataset_metadata_problems, export, verify
from kdq.export.script import load_predict_module
from kdq.quant_methods import registered_methods
from kdq.runtime.constants import LABELS, TEMPLATE_KEY
from kdq.runtime.template import TemplateConfig
from kdq.testing import make_tiny_classifier, write_arena_csv

TEMPLATE = TemplateConfig(max_length=160)
RUNTIME_SRC = Path(kdq.__file__).parent / "runtime"
N_FILES = 8 + len(list(RUNTIME_SRC.glob("*.py")))  # files the manifest lists
NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "kaggle_notebook.py"


def _config(**kw):
    base = dict(title="Tiny arena classifier", dataset_id="kdq-tests/tiny-arena", template=TEMPLATE, batch_size=4)
    base.update(kw)
    return ExportConfig(**base)


def _isolated_python(args, cwd, timeout=300):
    """Run this venv's interpreter with site processing off (-S): the editable install's
    finder (a .pth hook) never runs, so kdq cannot be imported; site-packages is put back on
    the path as a plain directory so torch and transformers still import."""
    paths = sysconfig.get_paths()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    env["PYTHONNOUSERSITE"] = "1"
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name != name and (name in p.name or p.name.startswith(".kdq-export"))]


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory):
    # Labelled so kdq.evaluate accepts the same file; predict.py ignores the winner columns.
    return write_arena_csv(tmp_path_factory.mktemp("csv") / "test.csv", 12, seed=7, max_words=150)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("export") / "tiny-arena"
    metrics = {"log_loss": 1.05, "accuracy": 0.41, "n_rows": 12, "budget": {"fits": True, "projected_hours": 1.5}}
    return export(
        tiny_model_dir,
        out,
        _config(configs={"template": TEMPLATE}),
        metrics=metrics,
        table_md="| variant | log loss |\n|---|---|\n| tiny | 1.05 |",
    )


@pytest.fixture
def exported_copy(exported, tmp_path):
    return Path(shutil.copytree(exported, tmp_path / "copy"))


def test_folder_holds_what_the_notebook_needs_and_nothing_else(exported, tiny_model_dir):
    names = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    runtime = sorted(f"kdq_runtime/{p.name}" for p in RUNTIME_SRC.glob("*.py"))
    assert names == sorted(
        [
            "README.md",
            "config.json",
            "dataset-metadata.json",
            "kdq-manifest.json",
            "kdq-predict.json",
            "model.safetensors",
            "predict.py",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
        + runtime
    )
    manifest = json.loads((exported / "kdq-manifest.json").read_text())
    assert set(manifest["files"]) == set(names) - {"kdq-manifest.json"}
    assert manifest["files"]["model.safetensors"]["role"] == "weights"
    # the runtime is kdq's own, copied whole (no second copy of the code to drift)
    for rel in runtime:
        assert manifest["files"][rel]["role"] == "runtime"
        assert (exported / rel).read_bytes() == (RUNTIME_SRC / Path(rel).name).read_bytes()
    # the tiny source is fp32 on disk; the export stores fp16 (half the bytes) after the fp16 check
    from safetensors import safe_open

    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    src_bytes = (tiny_model_dir / "model.safetensors").stat().st_size
    assert manifest["files"]["model.safetensors"]["size"] < 0.6 * src_bytes
    # the folder's bytes against the budget's dataset limit and working disk (issue 30)
    disk = manifest["disk"]
    assert disk["bytes"] == sum(f["size"] for f in manifest["files"].values())
    assert disk["fits_dataset"] and disk["fits_working_disk"] and not disk["notes"]
    assert 0 <= manifest["fp16_check"]["max_abs_diff_vs_fp32"] <= manifest["fp16_check"]["atol"] == 2e-3
    src_sha = manifest["sources"]["model"]["weights_sha256"]["model.safetensors"]
    assert src_sha != manifest["files"]["model.safetensors"]["sha256"]
    assert manifest["sources"]["model"]["fingerprint"].startswith("path:")
    # no local absolute path is published, in the card or the metadata
    for name in ("README.md", "kdq-manifest.json", "dataset-metadata.json"):
        text = (exported / name).read_text()
        assert str(tiny_model_dir) not in text and str(Path.home()) not in text and "/tmp/" not in text, name
    assert manifest["sources"]["model"]["path"] == tiny_model_dir.name
    assert manifest["configs"]["template"] == TEMPLATE.to_dict()
    assert manifest["metrics"]["log_loss"] == 1.05 and manifest["budget"]["fits"] is True
    assert manifest["versions"]["transformers"] and manifest["versions"]["torch"]
    assert json.loads((exported / "config.json").read_text())[TEMPLATE_KEY] == TEMPLATE.to_dict()
    card = (exported / "README.md").read_text()
    assert "| tiny | 1.05 |" in card and "kaggle datasets create -p" in card and "fits" in card
    mb = manifest["files"]["model.safetensors"]["size"] / 1e6
    assert f"weights in this folder: **{mb:.1f} MB** (fp16 on disk" in card


def test_records_carry_their_format_and_predict_py_takes_the_budget_from_the_export(exported, exported_copy):
    """Every JSON record says its format; kdq-predict.json carries the budget profile's time limit and rows,
    which predict.py's ETA checks (one source: kdq/budgets/lmsys-2xt4.json)."""
    from kdq.costs.budget import load_budget
    from kdq.runtime.checksums import read_manifest
    from kdq.runtime.constants import FORMAT_KEY, MANIFEST_FORMAT, SETTINGS_FORMAT

    manifest = json.loads((exported / "kdq-manifest.json").read_text())
    settings = json.loads((exported / "kdq-predict.json").read_text())
    assert manifest[FORMAT_KEY] == MANIFEST_FORMAT == 1 and "kdq_manifest_version" not in manifest
    assert settings[FORMAT_KEY] == SETTINGS_FORMAT == 1
    profile = load_budget("lmsys-2xt4")
    assert settings["budget"] == {"name": profile.name, "time_limit_hours": profile.time_limit_hours, "rows": 25_000}
    module = load_predict_module(exported / "predict.py")
    assert module.read_settings(exported)["budget"] == settings["budget"]
    # a folder exported before these keys: no budget (predict.py copies no profile's numbers); the old manifest reads
    old = json.loads((exported_copy / "kdq-predict.json").read_text())
    del old["budget"], old[FORMAT_KEY]
    (exported_copy / "kdq-predict.json").write_text(json.dumps(old))
    assert module.read_settings(exported_copy)["budget"] is None
    m = dict(manifest)
    m["kdq_manifest_version"] = m.pop(FORMAT_KEY)
    (exported_copy / "kdq-manifest.json").write_text(json.dumps(m))
    assert read_manifest(exported_copy)["files"] == manifest["files"]
    # an unknown (newer) format says what to do
    (exported_copy / "kdq-predict.json").write_text(json.dumps({**old, FORMAT_KEY: 99}))
    with pytest.raises(ValueError, match=r"kdq-predict.json has format 99; .*re-export the model"):
        module.read_settings(exported_copy)
    (exported_copy / "kdq-manifest.json").write_text(json.dumps({**manifest, FORMAT_KEY: 2}))
    with pytest.raises(VerificationError, match=r"kdq-manifest.json has format 2; .*pip install -U kdq"):
        verify(exported_copy, probe=False)


def test_dataset_metadata_is_valid_for_the_kaggle_cli(exported):
    meta = json.loads((exported / "dataset-metadata.json").read_text())
    assert 6 <= len(meta["title"]) <= 50
    owner, slug = meta["id"].split("/")
    assert owner == "kdq-tests" and 3 <= len(slug) <= 50 and slug == slug.lower()
    assert meta["licenses"] == [{"name": "apache-2.0"}]
    assert dataset_metadata_problems(meta) == []
    assert dataset_metadata_problems({**meta, "title": "short"})  # 5 characters
    assert dataset_metadata_problems({**meta, "id": "no-owner"})
    assert dataset_metadata_problems({**meta, "licenses": [{"name": "MIT-ish"}]})
    assert dataset_metadata_problems({**meta, "licenses": [{"name": "CC0-1.0"}, {"name": "MIT"}]})


def test_predict_py_runs_without_kdq_and_matches_evaluate(exported, test_csv, tmp_path):
    # The interpreter configuration used below really cannot import kdq.
    probe = _isolated_python(["-c", "import kdq"], cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'kdq'" in probe.stderr

    out = tmp_path / "submission.csv"
    run = _isolated_python(
        [
            str(exported / "predict.py"),
            "--test-csv",
            str(test_csv),
            "--out",
            str(out),
            "--devices",
            "cpu,cpu",
            "--quiet",
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on cpu,cpu; tta=full" in run.stderr

    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", *LABELS]
    with open(test_csv, newline="") as f:
        assert [r[0] for r in table[1:]] == [r["id"] for r in csv.DictReader(f)]
    probs = np.array([[float(x) for x in r[1:]] for r in table[1:]])
    assert probs.shape == (12, 3) and (probs > 0).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)

    metrics = kdq.evaluate(
        str(exported),
        kdq.load_arena(test_csv),
        kdq.EvalConfig(tta=True, device="cpu", budget=None, progress=False, batch_size=4),
    )
    np.testing.assert_allclose(probs, metrics.probs_tta, atol=1e-5)
    assert not np.allclose(probs, metrics.probs, atol=1e-5)  # TTA really changed something


def test_verify_passes_on_the_fresh_export(exported):
    report = verify(exported)
    assert report.files_checked == N_FILES and report.probe_rows == 6
    assert report.probe_max_abs_diff <= 1e-6


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("flip", "model.safetensors: sha256 mismatch"),
        ("truncate", "tokenizer.json: size mismatch"),
        ("delete", "predict.py: missing"),
    ],
)
def test_verify_names_the_altered_file(exported_copy, damage, expected):
    if damage == "flip":
        path = exported_copy / "model.safetensors"
        data = bytearray(path.read_bytes())
        data[-10] ^= 0xFF  # same size, different bytes
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path = exported_copy / "tokenizer.json"
        path.write_bytes(path.read_bytes()[:-5])
    else:
        (exported_copy / "predict.py").unlink()
    with pytest.raises(kdq.export.VerificationError) as err:
        verify(exported_copy)
    assert expected in str(err.value)
    assert err.value.problems[0][0] in str(err.value)
    # the CLI says the same and exits non-zero
    assert cli_main(["verify", str(exported_copy), "--no-probe"]) == 1


def test_predict_py_refuses_altered_weights_before_inference(exported_copy):
    path = exported_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    module = load_predict_module(exported_copy / "predict.py")
    with pytest.raises(RuntimeError, match="model.safetensors: sha256 mismatch: .*re-upload the dataset"):
        module.check_files(exported_copy)


def test_verify_probe_catches_consistent_but_wrong_weights(exported_copy):
    """Weights changed *and* the manifest updated to match: only the probe batch can tell."""
    from safetensors.torch import load_file, save_file

    from kdq.export.files import sha256_file

    path = exported_copy / "model.safetensors"
    tensors = load_file(str(path))
    tensors["score.weight"] = tensors["score.weight"] * 3.0
    save_file(tensors, str(path), metadata={"format": "pt"})
    manifest_path = exported_copy / "kdq-manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.safetensors"].update(sha256=sha256_file(path), size=path.stat().st_size)
    manifest_path.write_text(json.dumps(manifest))
    assert verify(exported_copy, probe=False).files_checked == N_FILES
    with pytest.raises(VerificationError, match="probe: probabilities differ"):
        verify(exported_copy)


def test_extra_file_and_missing_kaggle_metadata_only_warn(exported_copy, capsys):
    (exported_copy / "notes.txt").write_text("scratch")
    (exported_copy / "dataset-metadata.json").unlink()  # the Kaggle CLI never uploads it
    with pytest.warns(UserWarning) as caught:
        report = verify(exported_copy, probe=False)
    messages = sorted(str(w.message) for w in caught)
    assert "dataset-metadata.json: missing" in messages[0] and "notes.txt: not listed" in messages[1]
    assert len(report.warnings) == 2
    assert cli_main(["verify", str(exported_copy)]) == 0
    assert "OK:" in capsys.readouterr().out


def test_cli_export_then_verify(tmp_path, tiny_model_dir, capsys):
    record = tmp_path / "quantize.json"
    record.write_text(json.dumps({"method": "bnb-int8"}))
    out = tmp_path / "cli-out"
    args = [
        "export",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--title",
        "Tiny arena via CLI",
        "--id",
        "kdq-tests/cli-x",
        "--set",
        "template.max_length=96",
        "--set",
        "tta=false",
        "--set",
        "probe_rows=2",
        "--record",
        f"quantize={record}",
    ]
    assert cli_main(args) == 0
    manifest = json.loads((out / "kdq-manifest.json").read_text())
    assert manifest["configs"]["quantize"] == {"method": "bnb-int8"} and manifest["probe"]["tta"] == "none"
    assert cli_main(["verify", str(out)]) == 0 and "OK:" in capsys.readouterr().out
    assert cli_main(args) == 2  # exists: bad input, says how to overwrite
    assert "overwrite" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "export",
                str(tiny_model_dir),
                "--out",
                str(tmp_path / "x"),
                "--title",
                "Tiny arena via CLI",
                "--id",
                "Bad Id",
            ]
        )
        == 2
    )
    assert "ExportConfig.dataset_id" in capsys.readouterr().err


def test_existing_folder_is_refused_then_replaced_on_request(exported, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(tiny_model_dir, out, _config())
    assert (out / "keep.txt").read_text() == "mine"
    export(tiny_model_dir, out, _config(overwrite=True, tta=False))
    assert not (out / "keep.txt").exists() and (out / "predict.py").is_file()
    assert json.loads((out / "kdq-predict.json").read_text())["tta"] == "none"
    assert _leftovers(tmp_path, "out") == []


def test_interrupted_export_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch):
    import importlib

    build = importlib.import_module("kdq.export.build")  # kdq.export itself is the function

    def interrupt(*a, **k):  # Ctrl-C after the weights, predict.py and the probe are written
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_write_card_and_manifest", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(tiny_model_dir, tmp_path / "out", _config())
    assert list(tmp_path.iterdir()) == []


def test_reload_that_differs_from_memory_fails_the_export(tmp_path, tiny_tokenizer):
    """A model whose in-memory state is not in its saved files (here a non-persistent rotary
    buffer, as with bnb nf4's post-forward state) must not be exported."""
    model = make_tiny_classifier(tokenizer=tiny_tokenizer, seed=3)
    good = export(model, tmp_path / "good", _config(probe_rows=2), tokenizer=tiny_tokenizer)  # saved as safetensors
    assert json.loads((good / "kdq-manifest.json").read_text())["sources"]["model"]["fingerprint"].startswith(
        "weights:"
    )
    model.model.rotary_emb.inv_freq.mul_(7.0)  # not saved by save_pretrained
    with pytest.raises(ExportError, match="differ from the source model"):
        export(model, tmp_path / "out", _config(probe_rows=2), tokenizer=tiny_tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]


def test_template_conflicting_with_the_recorded_one_is_refused(exported, tmp_path):
    with pytest.raises(ValueError, match="differs from the template recorded"):
        export(exported, tmp_path / "again", _config(template=TemplateConfig(max_length=512)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", registered_methods())
def test_quantized_student_exports_and_predicts_without_kdq(method, tmp_path, tiny_model_dir):
    """The issue's scenario, for every registered method (its first variant): a tiny quantized
    student, exported, verified, scored by its own predict.py with kdq out of reach.

    nf4 is also the format whose reload can go wrong on AVX512-BF16 CPUs: export's probe
    compares the folder's predict.py with the model loaded by kdq."""
    from kdq.quant_methods import get_quantizer, runtime_settings, variants

    quantizer = get_quantizer(method)
    variant = next(v for v, fields in variants().items() if fields["method"] == method)
    template = TemplateConfig(max_length=96)  # short rows: bitsandbytes is slow on CPU
    calibration = write_arena_csv(tmp_path / "calibration.csv", 24, seed=3, max_words=60)
    qdir = kdq.quantize(
        str(tiny_model_dir),
        kdq.QuantConfig.from_name(variant, template=template, num_samples=16, device="cpu"),
        calibration=calibration,
        out_dir=tmp_path / "q",
    )
    # no template given: the one quantize recorded in config.json is used
    out = export(
        qdir, tmp_path / "export", _config(tta=False, title="Tiny arena quantized", template=None, probe_rows=3)
    )
    manifest = json.loads((out / "kdq-manifest.json").read_text())
    assert manifest["model"]["quant_method"] == quantizer.quant_method
    assert manifest["model"]["template"] == template.to_dict()
    assert all(p in manifest["versions"] for p in quantizer.wheels)  # the backend's versions are recorded
    # provenance from kdq.quantize's report: the variant and the model it was quantized from
    assert manifest["configs"]["quantize_report"]["variant"] == variant
    assert manifest["sources"]["quantized_from"]["path"] == tiny_model_dir.name  # a name, not this machine's path
    assert quantizer.quant_method in (out / "predict.py").read_text().split('"""')[1]  # header names the backend
    # what predict.py needs to load it is recorded, so the runtime never names a method
    settings = json.loads((out / "kdq-predict.json").read_text())
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    recorded = ("backend_modules", "backend_packages", "load", "cuda_kernels")
    assert {k: settings[k] for k in recorded} == runtime_settings(qc)
    assert verify(out).probe_rows == 3

    test_csv = write_arena_csv(tmp_path / "test.csv", 6, seed=11, max_words=60)
    sub = tmp_path / "submission.csv"
    # through the notebook example, which runs the folder's predict.py in-process (still no kdq)
    run = _isolated_python(
        [str(NOTEBOOK), "--dataset-dir", str(out), "--test-csv", str(test_csv), "--out", str(sub), "--", "--quiet"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"quantization={quantizer.quant_method}" in run.stderr and "submission ok: 6 rows" in run.stdout
    with open(sub, newline="") as f:
        probs = np.array([[float(x) for x in r[1:]] for r in list(csv.reader(f))[1:]])
    metrics = kdq.evaluate(
        str(out),
        kdq.load_arena(test_csv),
        kdq.EvalConfig(tta=False, device="cpu", budget=None, progress=False, batch_size=4),
    )
    assert probs.shape == (6, 3)
    np.testing.assert_allclose(probs, metrics.probs, atol=1e-4)
