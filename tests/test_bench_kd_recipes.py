"""bench/bench_kd_recipes.py's bookkeeping: which hard-label run a distilled run is measured against, and which
settings ``--set`` refuses. No training: the records are written here, in the bench's results format."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_kd_recipes.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kd_recipes", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_kd_recipes"] = module
    spec.loader.exec_module(module)
    return module


def _run(recipe: str, epochs: float, rows: np.ndarray, seed: int = 0) -> dict:
    return {
        "data": "d",
        "student": "width",
        "recipe": recipe,
        "seed": seed,
        "epochs": epochs,
        "eval": float(rows.mean()),
        "test": float(rows.mean()),
        "eval_rows": rows.tolist(),
        "test_rows": rows.tolist(),
        "steps": 10,
        "s_per_step": 1.0,
        "peak_rss_gb": 1.0,
        "plateau_exit_step": None,
        "curve": [],
        "eval_curve": [],
        "shape": {"kept_layers": [0], "source_layers": 2},
    }


def test_a_run_is_measured_against_the_hard_label_run_of_the_same_length(bench):
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, 200)
    rows = (0.6 + noise).tolist()
    teacher = {"data": "d", "role": "teacher", "eval": 0.6, "test": 0.6, "eval_rows": rows, "test_rows": rows}
    results = [
        teacher,
        _run("hard-labels", 2.0, 1.1 + noise),
        _run("cross-width-cached", 2.0, 0.85 + noise),  # gap closed 50% against the 2-epoch baseline
        _run("hard-labels", 3.0, 1.0 + noise),
        _run("cross-width-cached", 3.0, 0.8 + noise),  # 50% against the 3-epoch baseline (it would be 60% at 2)
    ]
    gaps = bench.gaps(results, "test")
    assert gaps[("d", "width", "cross-width-cached", 0, 2.0)]["gap"].value == pytest.approx(0.5)
    assert gaps[("d", "width", "cross-width-cached", 0, 3.0)]["gap"].value == pytest.approx(0.5)
    table = bench.markdown(results)
    assert "| width | cross-width-cached | 2 | 1 |" in table and "| width | cross-width-cached | 3 | 1 |" in table
    # resuming: a 3-epoch run is not the 2-epoch run already recorded
    assert len({bench._run_key(r) for r in results[1:]}) == 4


@pytest.mark.parametrize("field", ["training.epochs", "training.batch_size", "training.seed", "template.max_length"])
def test_set_refuses_the_runs_own_settings(bench, field, tmp_path):
    with pytest.raises(SystemExit, match=f"--set {field}: the run's own settings"):
        bench.main(["--set", f"{field}=3", "--out", str(tmp_path)])


def test_set_takes_the_dotted_names_and_refuses_the_flat_ones(bench, tmp_path):
    with pytest.raises(
        SystemExit, match=r"feature_weight is now loss\.feature_weight; write --set loss\.feature_weight=8"
    ):
        bench.main(["--set", "feature_weight=8", "--out", str(tmp_path)])
    assert bench._nested({"loss.feature_weight": 8, "training.learning_rate": 5e-4}) == {
        "loss": {"feature_weight": 8},
        "training": {"learning_rate": 5e-4},
    }


def test_a_transfer_set_of_another_size_is_a_run_of_its_own(bench):
    assert bench.run_label("cross-width-cached", {}, 800, 800) == "cross-width-cached"
    assert bench.run_label("cross-width-cached", {}, 2400, 800) == "cross-width-cached[transfer=2400]"
    assert (
        bench.run_label("logit-kd", {"loss.feature_weight": 8}, 2400, 800) == "logit-kd[feature_weight=8,transfer=2400]"
    )
    assert bench.run_label("logit-kd", {"lora.alpha": 8}, 800, 800) == "logit-kd[lora.alpha=8]"  # no short name
    assert bench.run_label("hard-labels", {}, 0, 800) == "hard-labels"  # no transfer set: the baseline stays one run


def test_seed_means_pool_rows_over_seeds_and_pair_a_variant_with_the_grid_recipe(bench):
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.01, 300)
    rows = (0.6 + noise).tolist()
    teacher = {"data": "d", "role": "teacher", "eval": 0.6, "test": 0.6, "eval_rows": rows, "test_rows": rows}
    results = [teacher]
    for seed, (grid, variant) in enumerate([(0.8, 0.7), (0.9, 0.7)]):
        results += [
            _run("hard-labels", 2.0, 1.1 + noise, seed=seed),
            _run("cross-width-cached", 2.0, grid + noise, seed=seed),
            _run("cross-width-cached[transfer=2400]", 2.0, variant + noise, seed=seed),
        ]
    results.append(_run("cross-width-cached", 2.0, 0.6 + noise, seed=5))  # no hard-label run for seed 5: left out
    pooled = bench.seed_means(results, "test")
    grid = pooled[("d", "width", "cross-width-cached", 2.0)]
    assert grid["seeds"] == [0, 1]
    assert grid["gap"].value == pytest.approx(0.5)  # rows averaged over seeds: 0.85 against 1.1, teacher 0.6
    assert grid["vs_base"] is None  # the grid's recipe is no variant
    variant = pooled[("d", "width", "cross-width-cached[transfer=2400]", 2.0)]
    assert variant["gap"].value == pytest.approx(0.8)
    assert variant["vs_base"].value == pytest.approx(-0.15)  # 0.7 against the grid's seed mean 0.85
    assert variant["vs_base"].high < 0
    table = bench.markdown(results)
    assert "| width | cross-width-cached[transfer=2400] | cross-width-cached | 2 | 0, 1 |" in table


def test_set_trains_the_hard_label_baseline_like_the_runs_it_measures(bench):
    # an optimisation setting is shared with the baseline; the teacher's own fields and the transfer size are not
    changes = {"training.learning_rate": 5e-4, "loss.feature_weight": 8.0}
    assert bench.baseline_changes(changes) == {"training.learning_rate": 5e-4}
    label = bench.run_label("cross-width-cached", changes, 2400, 800)
    assert bench.baseline_label(label) == "hard-labels[learning_rate=0.0005]"
    assert bench.baseline_label("cross-width-cached[transfer=2400]") == "hard-labels"
    assert bench.baseline_label("cross-width[hidden_layer_map=[0, 5, 10],alpha=0.3]") == "hard-labels"
    assert bench.baseline_label("hard-labels[learning_rate=0.0005]") == "hard-labels[learning_rate=0.0005]"

    rng = np.random.default_rng(2)
    noise = rng.normal(0, 0.01, 200)
    rows = (0.6 + noise).tolist()
    teacher = {"data": "d", "role": "teacher", "eval": 0.6, "test": 0.6, "eval_rows": rows, "test_rows": rows}
    fast = "cross-width-cached[learning_rate=0.0005]"
    results = [
        teacher,
        _run("hard-labels", 2.0, 1.1 + noise),
        _run("hard-labels[learning_rate=0.0005]", 2.0, 1.0 + noise),  # a faster rate helps hard labels too
        _run(fast, 2.0, 0.8 + noise),  # 50% against the baseline at its rate (it would be 60% at the default)
        _run("cross-width-cached[transfer=2400]", 2.0, 0.85 + noise),  # 50% against the default baseline
    ]
    for split in ("test", "eval"):
        assert bench.gaps(results, split)[("d", "width", fast, 0, 2.0)]["gap"].value == pytest.approx(0.5)
    pooled = bench.seed_means(results, "test")
    assert pooled[("d", "width", fast, 2.0)]["gap"].value == pytest.approx(0.5)
    assert pooled[("d", "width", "cross-width-cached[transfer=2400]", 2.0)]["gap"].value == pytest.approx(0.5)
    assert ("d", "width", "hard-labels[learning_rate=0.0005]", 2.0) not in pooled  # a baseline, not a variant
    # without its baseline, a run at another rate has no gap closed rather than one against the wrong baseline
    without = [r for r in results if r.get("recipe") != "hard-labels[learning_rate=0.0005]"]
    assert ("d", "width", fast, 0, 2.0) not in bench.gaps(without, "test")


def test_a_pretrained_student_comes_from_the_base_model_with_no_tie_to_the_teacher(bench, tmp_path):
    """``--students pretrained``: the ``width`` shape, pruned from the *base* model, with no ``kdq_shrink``
    record left for kdq to read, so its feature projection starts from nn.Linear's default init."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from kdq.distill.objective import _kept_channels
    from kdq.runtime.constants import SHRINK_KEY
    from kdq.testing import make_arena_rows, make_tiny_classifier, make_tokenizer

    tok = make_tokenizer()
    kw = dict(num_layers=4, hidden_size=64, intermediate_size=128)
    base = make_tiny_classifier(tmp_path / "base", tok, seed=1, **kw)
    make_tiny_classifier(tmp_path / "teacher", tok, seed=2, **kw)  # another model of the same shape
    train = make_arena_rows(32, seed=3, max_words=20)
    folder = bench._student("pretrained", tmp_path / "teacher", tmp_path / "base", train, tmp_path, "48,96,2,1,2", True)

    assert folder.name == "init-pretrained" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    config = json.loads((folder / "config.json").read_text())
    assert SHRINK_KEY not in config and config["hidden_size"] == 48 and config["num_hidden_layers"] == 2
    shape = bench._shape(folder)  # the record the bench reports, kept beside the config
    kept, channels = shape["kept_layers"], shape["width"]["kept_channels"]
    assert len(kept) == 2 and len(channels) == 48
    student, info = AutoModelForSequenceClassification.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info.values()), info  # stock transformers, no missing or unexpected keys
    # its weights are the base model's kept channels, not the teacher's
    emb = student.model.embed_tokens.weight
    torch.testing.assert_close(emb, base.model.embed_tokens.weight[:, channels])
    # and kdq sees no kept channels: its projection is nn.Linear's default init, not the kept-channel scatter
    with_record = AutoConfig.from_pretrained(str(folder))
    with_record.kdq_shrink = shape
    assert _kept_channels(with_record, 64) == channels
    assert _kept_channels(AutoConfig.from_pretrained(str(folder)), 64) is None
