"""bench/gpu_check.py --dry-run (tiny shapes, CPU): every check runs or says why not, one JSON,
and the budget profile takes its measured efficiencies from it. No GPU is needed (none is used)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from _launch import run_python

from kdq.costs.budget import load_budget, measured_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "check.json"
    run_python(ROOT / "bench" / "gpu_check.py", "--dry-run", "--out", out, timeout=900)
    return out, json.loads(out.read_text())


def test_dry_run_runs_every_check_and_writes_one_json(check):
    _, data = check
    assert data["env"]["dry_run"] is True
    for name in ("tiny-4b", "tiny-500m"):
        shape = data["scoring"]["shapes"][name]
        for mode in ("none", "full", "gated"):
            assert shape[mode]["rows_per_s"] > 0 and shape[mode]["finite"]
        n = shape["none"]["rows"]
        assert (shape["full"]["sequences"], shape["gated"]["sequences"]) == (2 * n, n + -(-n * 33 // 100))
    assert max(data["scoring"]["lengths"]) == data["scoring"]["max_length"]  # the long tail reaches the budget
    assert data["kd_train_step"]["loss_finite"] and data["kd_train_step"]["seconds_per_step"] > 0
    # bench/gpu_check_train.py's dry run: one training step per setting, measured beside its projection
    train = data["train"]
    assert train["status"] == "ok", train  # the module is in this checkout and imports: it ran, not skipped
    assert train["dry_run"] is True and len(train["steps"]) == 2, train
    for step in train["steps"]:
        assert step["step_s"] > 0 and step["peak_gb"] > 0 and step["projected_gb"] > 0, step
        assert math.isfinite(step["loss"]), step
    assert data["methods"]["status"] == "ok" and data["methods"]["fp16-small"]["tokens_per_s"] > 0
    for method in ("gptq-8", "gptq-4", "bnb-int8", "bnb-nf4", "torchao-int8"):  # each format, the same rows
        r = data["methods"][method]
        assert r["status"] in ("ok", "skipped"), (method, r)  # skipped only where a package is missing
        if r["status"] == "ok":
            assert r["tokens_per_s"] > 0 and r["finite"] and r["rows"] == data["methods"]["fp16-small"]["rows"]
            assert data["budget_inputs"]["slowdown"][method] >= 1.0
    assert data["predict"]["status"] in ("ok", "skipped"), data["predict"]
    if data["predict"]["status"] == "ok":
        assert data["predict"]["predict_returncode"] == 0 and data["predict"]["submission_written"]
    assert data["total_seconds"] < 900


def test_budget_takes_measured_efficiencies_with_their_sources(check, tmp_path):
    path, data = check
    base = load_budget("lmsys-2xt4")
    with pytest.raises(ValueError, match="does not list"):  # a CPU is not in _gpu_peaks.json
        measured_profile(base, path)
    data["budget_inputs"]["device"] = "NVIDIA H200"  # as the GPU run records it
    data["budget_inputs"]["slowdown"]["bnb-int8"] = 2.5
    gpu = tmp_path / "h200.json"
    gpu.write_text(json.dumps(data))
    profile, sources = measured_profile(base, gpu)
    assert profile.name == "lmsys-2xt4+measured" and 0 < profile.compute_efficiency <= 1
    measured = data["budget_inputs"]["slowdown"]
    assert profile.compute_slowdown["bnb-int8"] == 2.5
    for fmt, factor in profile.compute_slowdown.items():  # every measured format replaced, the others kept
        assert factor == (max(1.0, measured[fmt]) if fmt in measured else base.compute_slowdown[fmt]), fmt
    assert "on H200" in sources["compute_efficiency"] and "989 peak" in sources["compute_efficiency"]
    assert "h200.json" in sources["compute_slowdown[bnb-int8]"]
    # what the GPU run writes beside its JSON: a profile file kdq.compare's budget= takes
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import write_profile

    written = write_profile(data, gpu)
    assert written.name == "h200.profile.json" and load_budget(written).compute_slowdown["bnb-int8"] == 2.5
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(ValueError, match="no budget_inputs"):
        measured_profile(base, tmp_path / "empty.json")


def test_bench_tta_quick_reports_paired_intervals_against_full_tta(tmp_path):
    """bench/bench_tta.py --quick: no/full/gated TTA per model, Δ vs full TTA with a paired-bootstrap
    interval that holds its point, and the gated verdict line (the figures in BENCHMARKS.md come from this)."""
    out = tmp_path / "tta.json"
    proc = run_python(ROOT / "bench" / "bench_tta.py", "--quick", "--json", out, timeout=600)
    table = json.loads(out.read_text())
    assert [(r["model"], r["tta"]) for r in table] == [
        (m, t) for m in ("tiny-teacher", "tiny-student") for t in ("none", "full", "gated 0.33")
    ]
    for r in table:
        lo, hi = r["delta_vs_full_ci"]
        assert lo <= r["delta_vs_full"] <= hi and r["rows_per_s"] > 0
        if r["tta"] == "full":
            assert r["delta_vs_full"] == 0 and lo == hi == 0 and r["speed_vs_full"] == 1
    assert proc.stdout.count("gated") >= 4 and "paired bootstrap" in proc.stdout
