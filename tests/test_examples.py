"""The example scripts run end to end: the Danube3 recipe and the demo, on tiny local models."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

import kdq
from kdq.testing import make_arena_rows, make_tiny_classifier

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_lmsys_danube3_recipe_runs_on_tiny_local_models(tmp_path, tiny_tokenizer):
    # as Danube3-500M under Danube3-4B: a student narrower and shallower than the teacher, same tokenizer
    make_tiny_classifier(tmp_path / "teacher-base", tiny_tokenizer, seed=1, num_layers=2, hidden_size=64)
    make_tiny_classifier(tmp_path / "student", tiny_tokenizer, seed=2, num_layers=1, hidden_size=32)
    pd.DataFrame(make_arena_rows(120, seed=11, max_words=40)).to_csv(tmp_path / "train.csv", index=False)
    transfer = make_arena_rows(40, seed=12, max_words=40, labelled=False, id_offset=10_000)
    pd.DataFrame(transfer).to_csv(tmp_path / "transfer.csv", index=False)
    recipe = _load("lmsys_danube3")
    result = recipe.main(
        [
            "--train",
            str(tmp_path / "train.csv"),
            "--teacher",
            str(tmp_path / "teacher-base"),
            "--fine-tune-teacher",
            "--student",
            str(tmp_path / "student"),
            "--out",
            str(tmp_path / "run"),
            "--max-length",
            "64",
            "--batch-size",
            "8",
            "--grad-accum",
            "1",
            "--lora-r",
            "4",
            "--eval-frac",
            "0.15",
            "--test-frac",
            "0.2",
            "--quant",
            "bnb-int8",
            "--calibration-samples",
            "8",
            "--transfer",
            str(tmp_path / "transfer.csv"),
        ]
    )
    assert set(result.variants) == {"teacher", "student-kd", "student-hard", "teacher-bnb-int8", "student-kd-bnb-int8"}
    assert Path(result.report.paths["png"]).is_file()
    ((name, folder),) = result.exports.items()
    assert (Path(folder) / "predict.py").is_file() and (Path(folder) / "kdq-manifest.json").is_file()
    summary = json.loads((tmp_path / "run" / "pipeline" / "summary.json").read_text())
    assert summary["exports"] == result.exports
    # every export attempted passed its checks: a fallback past a failed variant is a failure here
    assert summary["export_failures"] == {}, summary["export_failures"]
    assert summary["recommendation"]["ranking"][0] == name  # chosen on the eval rows, with the shipped TTA
    kd = result.distill_metrics["student-kd"]
    assert kd["n_transfer"] == 40 and kd["projections"]["params"] > 0  # the transfer set, through projections


def test_demo_tiny_mode_runs_every_stage(tmp_path):
    demo = _load("demo")
    result = demo.main(
        [
            "--tiny",
            "--out",
            str(tmp_path / "demo"),
            "--cache",
            str(tmp_path / "cache"),
            "--quant",
            "gptq-8",
            "--quantize-teacher",
            "--precision",
            "bf16",
            "--transfer",
            "64",
        ]
    )
    assert "student-kd-gptq-8" in result.variants and "teacher-gptq-8" in result.variants
    for variant in ("teacher", "student-kd", "student-hard"):  # --precision reaches every training run
        record = json.loads((Path(result.variants[variant]) / "kdq-distill.json").read_text())
        assert record["config"]["training"]["precision"] == "bf16", variant
    assert result.distill_metrics["student-kd"]["n_transfer"] == 64  # the demo's recipe: a transfer set ...
    assert any("feature" in h for h in result.distill_metrics["student-kd"]["history"])  # ... and pooled features
    text = result.summary()
    assert "| student-kd" in text and "export:" in text
    demo_record = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert (demo_record["mode"], demo_record["precision"], demo_record["sizes"]["transfer"]) == ("tiny", "bf16", 64)
    summary = json.loads((tmp_path / "demo" / "pipeline" / "summary.json").read_text())
    assert summary["exports"] and summary["export_failures"] == {}, summary["export_failures"]


def test_lmsys_recipe_picks_qlora_when_half_precision_lora_does_not_fit(tmp_path):
    from transformers import LlamaConfig

    import kdq
    from kdq.costs.train_memory import known_models, train_device

    LlamaConfig(**known_models()["danube3-4b"]["config"]).save_pretrained(tmp_path / "danube3-4b")  # config only
    recipe = _load("lmsys_danube3")
    cfg = kdq.DistillConfig(
        training=kdq.TrainingSettings(batch_size=8),
        template=kdq.TemplateConfig(max_length=2048),
        lora=kdq.LoraSettings(r=16),
    )
    lora, why = recipe.teacher_lora(str(tmp_path / "danube3-4b"), cfg, train_device("t4-16gb"))
    assert lora.quantize == "nf4" and lora.r == 16 and "using QLoRA" in why and "t4-16gb" in why
    lora, why = recipe.teacher_lora(str(tmp_path / "danube3-4b"), cfg, train_device("a100-80gb"))
    assert lora.quantize == "none" and "fits a100-80gb" in why
    lora, why = recipe.teacher_lora("h2oai/h2o-danube3-4b-base", cfg, None)  # CPU: nothing to plan for
    assert lora == cfg.lora and "no GPU" in why


def test_lmsys_student_recipe_fits_a_t4_live_teacher_quantized_or_cached(tmp_path):
    from transformers import LlamaConfig

    from kdq.costs.train_memory import known_models, train_device

    for name in ("danube3-4b", "danube3-500m"):  # configs only
        LlamaConfig(**known_models()[name]["config"]).save_pretrained(tmp_path / name)
    recipe = _load("lmsys_danube3")
    teacher, student = str(tmp_path / "danube3-4b"), str(tmp_path / "danube3-500m")
    t4 = train_device("t4-16gb")

    def plan(batch, tokens, device=t4, name="cross-width"):
        run = dict(
            training={"batch_size": batch}, template=kdq.TemplateConfig(max_length=tokens), lora=kdq.LoraSettings(r=16)
        )
        return recipe.student_config(name, run, teacher, student, device)

    cfg, why = plan(4, 1024)  # the fp16 teacher (7.5 GB) fits beside a LoRA student at batch 4
    assert cfg.loss.hidden_weight > 0 and cfg.teacher_pass.quantize == "none" and "fits t4-16gb" in why
    cfg, why = plan(8, 1024)  # at batch 8 it does not: the live teacher goes int8
    assert cfg.loss.hidden_weight > 0 and cfg.teacher_pass.quantize == "int8" and "fits t4-16gb" in why
    cfg, why = plan(8, 1024, device=train_device("a100-80gb"))
    assert cfg.teacher_pass.quantize == "none"
    cfg, why = plan(16, 1024)  # not even in nf4: the cached-feature recipe, no live teacher
    assert cfg.loss.feature_weight > 0 and cfg.loss.hidden_weight == 0 and "cross-width-cached" in why
    cfg, why = plan(16, 1024, name="cross-width-cached")
    assert cfg.loss.feature_weight > 0 and cfg.loss.hidden_weight == 0  # nothing to fit beside the student


def test_make_bench_runs_every_benchmark_quick_mode():
    root = Path(__file__).resolve().parents[1]
    scripts = sorted(p.name for p in (root / "bench").glob("bench_*.py"))
    assert len(scripts) >= 2
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "run_all.py"), "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("===")] == scripts
    assert all(ln.endswith("--quick") for ln in proc.stdout.splitlines() if ln.startswith(sys.executable))
    for name in scripts:  # every benchmark accepts --quick
        text = (root / "bench" / name).read_text()
        assert '"--quick"' in text, name
    assert "bench/run_all.py" in (root / "Makefile").read_text()
