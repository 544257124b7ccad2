"""ShrinkConfig and ``kdq shrink``: every depth and width option from Python, a config file, flags and ``--set``,
and the README's width-pruned student cut from the command line."""

import ast
import inspect
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

import kdq
from kdq.cli.main import EXIT_BAD_INPUT, build_parser, main
from kdq.distill.shrink import choose_layers
from kdq.testing import make_arena_rows, make_tiny_classifier

SHAPE = dict(num_layers=4, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("shrink") / "teacher"
    make_tiny_classifier(d, tiny_tokenizer, seed=5, **SHAPE)
    return d


def _config(argv):
    args = build_parser().parse_args(argv)
    return args.command_spec.config_from(args)


def test_shrink_config_validates_each_field_by_name():
    cfg = kdq.ShrinkConfig(keep="0, 2,3", hidden_size="48", reload_tolerance="1e-3")
    assert cfg.keep == (0, 2, 3) and cfg.hidden_size == 48 and cfg.reload_tolerance == 1e-3
    assert kdq.ShrinkConfig(keep=range(3)).keep == (0, 1, 2) and kdq.ShrinkConfig(keep=["1", "3"]).keep == (1, 3)
    assert cfg.narrows and not kdq.ShrinkConfig().narrows
    for bad, field in [
        (dict(keep=[0, 1.5]), "keep"),
        (dict(keep=[]), "keep"),
        (dict(every=0), "every"),
        (dict(strategy="random"), "strategy"),
        (dict(num_layers=0), "num_layers"),
        (dict(num_key_value_heads=-1), "num_key_value_heads"),
        (dict(calibration_rows=0), "calibration_rows"),
        (dict(calibration_batch_size=0), "calibration_batch_size"),
    ]:
        with pytest.raises(ValueError, match=rf"ShrinkConfig\.{field}"):
            kdq.ShrinkConfig(**bad)
    assert kdq.ShrinkConfig(template={"max_length": "5e2"}).template.max_length == 500


def test_layer_choice_follows_the_config():
    assert choose_layers(kdq.ShrinkConfig(every=3), 7) == ([0, 3, 6], "uniform")
    assert choose_layers(kdq.ShrinkConfig(num_layers=3), 9) == ([0, 4, 8], "uniform")
    assert choose_layers(kdq.ShrinkConfig(keep=(4, 0)), 5) == ([0, 4], "explicit")
    scores = [0.9, 0.1, 0.5, 0.2, 0.8]
    assert choose_layers(kdq.ShrinkConfig(strategy="block-influence", num_layers=3), 5, scores) == (
        [0, 2, 4],
        "block-influence",
    )
    with pytest.raises(ValueError, match=r"keep=\[0, 5\]: layer indices must be unique and in \[0, 4\]"):
        choose_layers(kdq.ShrinkConfig(keep=(0, 5)), 5)


def test_config_fields_as_keywords_are_refused_with_the_config_call(tiny_model_dir):
    """The options live in ShrinkConfig only: a field given as a keyword is never applied, and the error gives the
    call to write instead; an unknown keyword lists the fields."""
    student = kdq.shrink(str(tiny_model_dir), config=kdq.ShrinkConfig(keep=(1,)), verbose=False)
    assert student.config.kdq_shrink["kept_layers"] == [1] and student.config.num_hidden_layers == 1
    moved = r"kdq\.shrink\(\.\.\., every=3\) moved to kdq\.shrink\(\.\.\., config=ShrinkConfig\(every=3\)\)"
    with pytest.raises(TypeError, match=moved):
        kdq.shrink(str(tiny_model_dir), every=3)
    with pytest.raises(TypeError, match=r"keep=\[1\], hidden_size=48\) moved to .*config=config\.replace\(keep="):
        kdq.shrink(str(tiny_model_dir), config=kdq.ShrinkConfig(), keep=[1], hidden_size=48)
    with pytest.raises(
        TypeError, match=r"unexpected keyword \['layers'\].*'calibration'.*ShrinkConfig's fields.*'every'"
    ):
        kdq.shrink(str(tiny_model_dir), layers=1, every=2)
    with pytest.raises(ValueError, match="config must be a kdq.ShrinkConfig, got dict"):
        kdq.shrink(str(tiny_model_dir), config={"keep": [0]})


def test_docs_call_shrink_with_its_own_keywords_only():
    """Every ``kdq.shrink(...)`` in the README's and docs' Python blocks passes options through ShrinkConfig: a
    keyword that is a ShrinkConfig field would be refused (the test above)."""
    own = {n for n, p in inspect.signature(kdq.shrink).parameters.items() if p.kind is not p.VAR_KEYWORD}
    root = Path(__file__).resolve().parents[1]
    calls = []
    for doc in [root / "README.md", root / "BENCHMARKS.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            if "shrink(" not in block:
                continue
            for node in ast.walk(ast.parse(textwrap.dedent(block))):
                func = getattr(node, "func", None)
                if isinstance(node, ast.Call) and getattr(func, "attr", getattr(func, "id", None)) == "shrink":
                    calls.append((doc.name, {k.arg for k in node.keywords}))
    assert len(calls) >= 5, calls
    assert all(keywords <= own for _, keywords in calls), [(d, k - own) for d, k in calls if not k <= own]


def test_flags_file_and_set_reach_every_shrink_field(tmp_path):
    f = tmp_path / "shrink.yaml"
    f.write_text("strategy: block-influence\nhidden_size: 32\nkeep: [0, 2]\ntemplate:\n  max_length: 128\n")
    base = ["shrink", "m", "--out", "o", "--config", str(f)]
    cfg = _config(base)
    assert (cfg.strategy, cfg.hidden_size, cfg.keep, cfg.template.max_length) == ("block-influence", 32, (0, 2), 128)
    cfg = _config(base + ["--hidden-size", "48", "--keep", "0,1,3", "--num-attention-heads", "2"])
    assert (cfg.hidden_size, cfg.keep, cfg.num_attention_heads) == (48, (0, 1, 3), 2)
    cfg = _config(base + ["--hidden-size", "48", "--set", "hidden_size=40", "--set", "calibration_rows=5e1"])
    assert (cfg.hidden_size, cfg.calibration_rows) == (40, 50)
    assert _config(["shrink", "m", "--out", "o"]) == kdq.ShrinkConfig()


def test_cli_cuts_the_readme_width_pruned_student(tmp_path, teacher, arena_csv):
    """The README's recommended student (fewer layers by block influence, narrower by Minitron importance) from
    the command line, at tiny scale: 4 → 3 layers, hidden 64 → 48, MLP 128 → 96, 4 → 2 query and 2 → 1 KV heads."""
    out = tmp_path / "init"
    argv = ["shrink", str(teacher), "--out", str(out), "--calibration", str(arena_csv), "--strategy", "block-influence"]
    argv += ["--num-layers", "3", "--hidden-size", "48", "--intermediate-size", "96"]
    argv += ["--num-attention-heads", "2", "--num-key-value-heads", "1", "--set", "calibration_rows=16"]
    argv += ["--set", "template.max_length=64"]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    sizes = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
    assert tuple(cfg[k] for k in sizes) == (48, 96, 2, 1, 3)
    record = cfg["kdq_shrink"]
    assert record["strategy"] == "block-influence" and len(record["kept_layers"]) == 3
    assert record["kept_layers"][0] == 0 and record["kept_layers"][-1] == 3 and len(record["scores"]) == 4
    assert record["width"]["sizes"]["hidden_size"] == 48 and len(record["width"]["kept_channels"]) == 48
    student = kdq.models.load_classifier(out).model
    assert student(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3)
    # the same command without rows to measure importance on names the missing input; nothing is written
    assert main(argv[:4] + ["--hidden-size", "48", "--out", str(tmp_path / "none")]) == EXIT_BAD_INPUT
    assert not (tmp_path / "none").exists()


def test_calibration_rows_takes_the_first_rows(teacher):
    rows = make_arena_rows(12, seed=3, max_words=20)
    first = {k: v[:4] for k, v in rows.items()}
    cfg = kdq.ShrinkConfig(strategy="block-influence", num_layers=3)
    few = kdq.shrink(str(teacher), config=cfg.replace(calibration_rows=4), calibration=rows, verbose=False)
    scores = few.config.kdq_shrink["scores"]
    assert scores == kdq.shrink(str(teacher), config=cfg, calibration=first, verbose=False).config.kdq_shrink["scores"]
    assert scores != kdq.shrink(str(teacher), config=cfg, calibration=rows, verbose=False).config.kdq_shrink["scores"]
