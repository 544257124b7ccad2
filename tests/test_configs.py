"""One config convention: every config accepts dicts for nested configs, has replace and to_dict,
round-trips through to_dict, and imports no torch."""

from __future__ import annotations

import pytest
from _launch import run_python

import kdq
from kdq.config.io import build_config
from kdq.pipeline import PipelineConfig

T128 = kdq.TemplateConfig(max_length=128)
# (config class, fields with dicts for nested configs, the nested configs they must become, a bad change)
CONFIGS = [
    (kdq.TemplateConfig, {"max_length": 128}, {}, {"max_length": 8}),
    (kdq.LoraSettings, {"r": 4}, {}, {"r": 0}),
    (
        kdq.DistillConfig,
        {"template": {"max_length": 128}, "lora": {"r": 4}, "loss": {"alpha": 0.25}, "training": {"epochs": 2}},
        {
            "template": T128,
            "lora": kdq.LoraSettings(r=4),
            "loss": kdq.LossSettings(alpha=0.25),
            "training": kdq.TrainingSettings(epochs=2),
        },
        {"training": kdq.LossSettings()},
    ),
    (kdq.LossSettings, {"temperature": 1.0}, {}, {"temperature": 0.0}),
    (kdq.TeacherPassSettings, {"tta": True}, {}, {"batch_size": 0}),
    (kdq.TrainingSettings, {"epochs": 2}, {}, {"report_to": "mlflow"}),
    (kdq.QuantConfig, {"method": "gptq", "bits": 4, "template": {"max_length": 128}}, {"template": T128}, {"bits": 3}),
    (
        kdq.EvalConfig,
        {"template": {"max_length": 128}, "device": "cuda:1", "tta": False},
        {"template": T128},
        {"device": "gpu"},
    ),
    (
        kdq.ExportConfig,
        {"title": "a dataset title", "dataset_id": "me/slug", "template": {"max_length": 128}},
        {"template": T128},
        {"dataset_id": "no-slash"},
    ),
    (
        PipelineConfig,
        {
            "distill": {"training": {"epochs": 2}, "template": {"max_length": 128}},
            "eval": {"tta": False},
            "quant_methods": ["bnb-int8"],
        },
        {
            "distill": kdq.DistillConfig(training=kdq.TrainingSettings(epochs=2), template=T128),
            "eval": kdq.EvalConfig(tta=False),
        },
        {"quant_methods": ("gptq-3",)},
    ),
]


@pytest.mark.parametrize("cls, data, nested, bad", CONFIGS, ids=[c[0].__name__ for c in CONFIGS])
def test_dicts_for_nested_configs_replace_and_to_dict(cls, data, nested, bad):
    cfg = cls(**data)
    for name, expected in nested.items():
        assert getattr(cfg, name) == expected
    assert isinstance(cfg.to_dict(), dict)
    if cls is not kdq.ExportConfig:  # ExportConfig.to_dict is the manifest summary (configs recorded apart)
        assert build_config(cls, cfg.to_dict()) == cfg
    name = next(iter(data))
    changed = cfg.replace(**{name: getattr(cfg, name)})
    assert changed == cfg and changed is not cfg
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{next(iter(bad))}"):  # replace validates again
        cfg.replace(**bad)


def test_nested_dict_errors_name_the_nested_field():
    with pytest.raises(ValueError, match=r"TemplateConfig.max_length must be an int >= 32"):
        kdq.EvalConfig(template={"max_length": 8})
    with pytest.raises(ValueError, match=r"EvalConfig has no field\(s\) \['ttaa'\]"):
        PipelineConfig(eval={"ttaa": False})
    with pytest.raises(ValueError, match=r"EvalConfig.device must be None, 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        kdq.EvalConfig(device="gpu")


def test_configs_import_no_torch():
    # EvalConfig once imported torch to check a device string. (DistillConfig validates against
    # the divergence registry in kdq/distill/losses.py, which is torch code; ExportConfig's package
    # imports the exporter.) The config modules themselves never import torch:
    import ast
    from pathlib import Path

    kdq_dir = Path(kdq.__file__).parent
    for rel in (
        "runtime/template.py",
        "config/base.py",
        "config/io.py",
        "config/fields.py",
        "config/validate.py",
        "cli/spec.py",
        "distill/config.py",
        "distill/needs.py",
        "quantize/config.py",
        "evaluate/config.py",
        "export/config.py",
    ):
        tree = ast.parse((kdq_dir / rel).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(n.split(".")[0] == "torch" for n in names), rel
    code = (
        "import sys\nimport kdq\n"
        "kdq.QuantConfig(method='bnb-nf4', template={'max_length': 64}, device='cuda:0')\n"
        "kdq.EvalConfig(template={'max_length': 64}, device='cuda:1')\n"
        "print('torch' in sys.modules)"
    )
    assert run_python("-c", code).stdout.strip() == "False"


def test_load_arena_reads_a_list_of_row_dicts():
    rows = [
        {
            "id": "1",
            "prompt": '["hi"]',
            "response_a": '["a"]',
            "response_b": '["b"]',
            "winner_model_a": 1,
            "winner_model_b": 0,
            "winner_tie": 0,
        },
        {
            "id": "2",
            "prompt": ["hello"],
            "response_a": ["x"],
            "response_b": ["y"],
            "winner_model_a": 0,
            "winner_model_b": 0,
            "winner_tie": 1,
        },
    ]
    table = kdq.load_arena(rows)
    assert table["id"] == ["1", "2"] and table["label"] == [0, 2] and table["prompt"] == [["hi"], ["hello"]]
    with pytest.raises(ValueError, match=r"row 1 \(id '2'\) lacks \['winner_tie'\]"):
        kdq.load_arena([rows[0], {k: v for k, v in rows[1].items() if k != "winner_tie"}])
    with pytest.raises(ValueError, match=r"arena data row 0: expected a dict"):
        kdq.load_arena(["not a row"])
    with pytest.raises(ValueError, match="empty list"):
        kdq.load_arena([])


def _all_configs() -> set:
    """Every config class: those the commands read, every config nested in them, and every ``Config``."""
    import dataclasses

    from kdq.cli.commands import COMMANDS
    from kdq.cli.spec import load_object
    from kdq.config.base import Config
    from kdq.config.fields import dataclass_in, declared_types

    todo = [load_object(c.config) for c in COMMANDS if c.config]
    found = set()
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.add(cls)
        todo += [t for t in map(dataclass_in, declared_types(cls).values()) if t is not None]
        todo += Config.__subclasses__()
    assert all(dataclasses.is_dataclass(c) for c in found)
    return found


def test_every_config_field_carries_a_one_line_help():
    import dataclasses

    classes = _all_configs()
    names = {c.__name__ for c in classes}
    assert {
        "TemplateConfig",
        "LoraSettings",
        "DistillConfig",
        "QuantConfig",
        "EvalConfig",
        "ExportConfig",
        "PipelineConfig",
    } <= names, names
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in classes
        for f in dataclasses.fields(cls)
        if not str(f.metadata.get("help", "")).strip() or "\n" in f.metadata["help"]
    ]
    assert not missing, f"fields without a one-line metadata help: {missing}"


def test_teacher_fields_are_the_distillconfig_fields_of_the_loss_and_the_teacher_pass():
    import dataclasses

    from kdq.config.fields import field_rows
    from kdq.distill.config import RESUMABLE_FIELDS, TEACHER_FIELDS

    dotted = {name for name, _, _ in field_rows(kdq.DistillConfig)}
    sections = {f"{s}.{f.name}" for s in ("loss", "teacher_pass") for f in dataclasses.fields(getattr(kdq, _CLASS[s]))}
    assert TEACHER_FIELDS == sections  # every field of the two sections, so a new one there is listed
    assert TEACHER_FIELDS <= dotted and RESUMABLE_FIELDS <= dotted | {"lora.save_dtype", "lora.merge_atol"}
    assert not {"training.learning_rate", "training.epochs", "training.swap_augment", "training.seed"} & TEACHER_FIELDS


_CLASS = {"loss": "LossSettings", "teacher_pass": "TeacherPassSettings", "training": "TrainingSettings"}


def test_every_flat_name_from_before_the_sections_names_its_new_spelling(tmp_path):
    """One table (MOVED_FIELDS) of the old flat names; each is refused in Python, in --set and in a config file,
    with its new spelling, and each new spelling is a real field."""
    import dataclasses

    from kdq.config.io import build_config, resolve_config
    from kdq.distill.config import MOVED_FIELDS

    assert len(MOVED_FIELDS) == 33
    for old, new in MOVED_FIELDS.items():
        section, leaf = new.split(".")
        assert leaf in {f.name for f in dataclasses.fields(getattr(kdq, _CLASS[section]))}, new
        assert old not in {f.name for f in dataclasses.fields(kdq.DistillConfig)}, old
    message = (
        r"DistillConfig\(temperature=\.\.\.\) moved to DistillConfig\(loss=LossSettings\(temperature=\.\.\.\)\); "
        r"on the command line --set loss\.temperature=\.\.\."
    )
    with pytest.raises(ValueError, match=message):
        kdq.DistillConfig(temperature=2.0)
    with pytest.raises(
        ValueError, match=r"DistillConfig\(teacher_logits=\.\.\.\) moved to .*TeacherPassSettings\(logits="
    ):
        kdq.DistillConfig().replace(teacher_logits="live")
    with pytest.raises(ValueError, match=r"--set loss\.temperature=\.\.\."):
        resolve_config(kdq.DistillConfig, overrides=["temperature=2"])
    path = tmp_path / "old.yaml"
    path.write_text("epochs: 2\nteacher_tta: true\n")
    with pytest.raises(
        ValueError, match=r"in a config file training: \{epochs: \.\.\.\}.*teacher_pass: \{tta: \.\.\.\}"
    ):
        resolve_config(kdq.DistillConfig, path)
    with pytest.raises(ValueError, match=r"--set training\.seed=\.\.\."):  # nested in another config's file
        build_config(PipelineConfig, {"distill": {"seed": 3}})
    with pytest.raises(ValueError, match=r"DistillConfig has no field\(s\) \['epoch'\]"):  # a typo stays a typo
        build_config(kdq.DistillConfig, {"epoch": 1})


def test_docs_table_of_moved_names_is_moved_fields():
    """docs/distill.md's old -> new table (two pairs a line) holds exactly MOVED_FIELDS, in both directions."""
    import re
    from pathlib import Path

    from kdq.distill.config import MOVED_FIELDS

    text = (Path(__file__).resolve().parents[1] / "docs" / "distill.md").read_text()
    start = text.index("| old | new | old | new |")
    lines = text[start:].split("\n\n", 1)[0].splitlines()[2:]  # past the header and the |---| line
    documented = {}
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4, line
        for old, new in (cells[:2], cells[2:]):
            if not old and not new:
                continue
            names = [re.fullmatch(r"`([\w.]+)`", c) for c in (old, new)]
            assert all(names), f"docs/distill.md: not two `name` cells: {line}"
            old, new = (m.group(1) for m in names)
            assert old not in documented, f"docs/distill.md lists {old!r} twice"
            documented[old] = new
    assert set(documented) - set(MOVED_FIELDS) == set(), "in docs/distill.md, not in MOVED_FIELDS"
    assert set(MOVED_FIELDS) - set(documented) == set(), "in MOVED_FIELDS, not in docs/distill.md"
    assert documented == dict(MOVED_FIELDS)


def test_nested_set_reaches_every_section():
    from kdq.config.io import resolve_config

    sets = [
        "loss.temperature=1",
        "loss.hidden_layer_map=[0, null]",
        "teacher_pass.logits=live",
        "teacher_pass.quantize=nf4",
        "training.epochs=3",
        "training.swap_augment=paired",
        "training.report_to=tensorboard",
        "lora.r=4",
    ]
    cfg = resolve_config(kdq.DistillConfig, overrides=sets)
    assert (cfg.loss.temperature, cfg.loss.hidden_layer_map) == (1.0, (0, None))
    assert (cfg.teacher_pass.logits, cfg.teacher_pass.quantize) == ("live", "nf4")
    assert (cfg.training.epochs, cfg.training.swap_augment, cfg.training.report_to) == (3.0, "paired", "tensorboard")
    assert cfg.lora == kdq.LoraSettings(r=4)
    # each section checks its own fields, DistillConfig what spans them
    with pytest.raises(ValueError, match=r"TeacherPassSettings: logits='live' .* no swap TTA"):
        resolve_config(kdq.DistillConfig, overrides=["teacher_pass.logits=live", "teacher_pass.tta=true"])
    with pytest.raises(ValueError, match=r"TrainingSettings.report_to must be one of"):
        resolve_config(kdq.DistillConfig, overrides=["training.report_to=mlflow"])
    with pytest.raises(ValueError, match=r"DistillConfig: loss.feature_weight > 0 with training.swap_augment"):
        kdq.DistillConfig(loss={"feature_weight": 1.0}, training={"swap_augment": True})
    with pytest.raises(ValueError, match=r"DistillConfig.training must be a TrainingSettings"):
        kdq.DistillConfig(training=kdq.LossSettings())
