"""The kdq CLI: help, configs from files and flags, exit codes, and every stage driven end to end."""

import json

import pytest
from _launch import run_python

import kdq
from kdq.cli.main import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, main
from kdq.config.io import build_config, load_config_dict


def test_help_lists_every_stage():
    proc = run_python("-m", "kdq.cli", "--help", timeout=120)
    for name in ("cache-teacher", "distill", "shrink", "quantize", "evaluate", "compare", "export", "verify", "run"):
        assert name in proc.stdout


def test_method_help_and_choices_come_from_the_registry():
    import argparse

    from kdq.cli.main import build_parser, variant_fields
    from kdq.quant_methods import variant_names, variants

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    method = next(a for a in commands.choices["quantize"]._actions if "--method" in a.option_strings)
    assert all(name in method.help for name in variant_names())
    for name in variant_names():
        assert variant_fields(name) == variants()[name]
    with pytest.raises(ValueError, match=r"--method 'gptq-3': choose one of \['"):
        variant_fields("gptq-3")
    # the same options reach QuantConfig through --set, as keywords, or as options.FIELD
    argv = ["quantize", "m", "--out", "o", "--method", "gptq-4", "--set", "options.group_size=32"]
    args = build_parser().parse_args(argv)
    assert args.command_spec.config_from(args).group_size == 32


def test_config_file_plus_set_flags_build_nested_dataclasses(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  epochs: 3\ntemplate:\n  max_length: 256\nlora:\n  r: 4\n")
    cfg = build_config(kdq.DistillConfig, load_config_dict(f, ["template.min_part_share=0.2", "loss.alpha=0.25"]))
    assert cfg.training.epochs == 3 and cfg.loss.alpha == 0.25
    assert cfg.template == kdq.TemplateConfig(max_length=256, min_part_share=0.2)
    assert cfg.lora == kdq.LoraSettings(r=4)
    with pytest.raises(ValueError, match=r"has no field\(s\) \['epoch'\]; valid fields"):
        build_config(kdq.DistillConfig, {"epoch": 1})


def test_bad_input_exits_2_with_the_field_named(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "bad.csv"
    bad.write_text('id,prompt,response_a\n1,"[""a""]","[""b""]"\n')
    rc = main(["distill", "--student", str(tiny_model_dir), "--train", str(bad), "--output-dir", str(tmp_path / "r")])
    assert rc == EXIT_BAD_INPUT
    assert "response_b" in capsys.readouterr().err
    assert (
        main(["distill", "--student", str(tiny_model_dir), "--train", str(bad), "--set", "loss.alpha=7"])
        == EXIT_BAD_INPUT
    )
    assert main([]) == EXIT_BAD_INPUT


def test_cli_drives_every_stage(tmp_path, tiny_model_dir, arena_csv, capsys):
    run = tmp_path / "run"
    common = ["--set", "template.max_length=64", "--set", "training.epochs=1", "--set", "training.batch_size=16"]
    assert (
        main(
            [
                "distill",
                "--student",
                str(tiny_model_dir),
                "--train",
                str(arena_csv),
                "--eval",
                str(arena_csv),
                "--output-dir",
                str(run / "teacher"),
                *common,
            ]
        )
        == 0
    )
    teacher = run / "teacher" / "student"
    assert main(["shrink", str(teacher), "--every", "2", "--out", str(run / "init")]) == 0
    assert (
        main(
            [
                "cache-teacher",
                "--teacher",
                str(teacher),
                "--data",
                str(arena_csv),
                "--cache-dir",
                str(run / "cache"),
                *common,
            ]
        )
        == 0
    )
    cached = json.loads(_last_json(capsys))
    assert cached["computed"] == 64
    assert (
        main(
            [
                "distill",
                "--student",
                str(run / "init"),
                "--teacher",
                str(teacher),
                "--train",
                str(arena_csv),
                "--output-dir",
                str(run / "kd"),
                "--set",
                f"teacher_pass.cache_dir={run / 'cache'}",
                *common,
            ]
        )
        == 0
    )
    student = run / "kd" / "student"
    assert (
        main(
            ["quantize", str(student), "--method", "bnb-int8", "--calibration", str(arena_csv), "--out", str(run / "q")]
        )
        == 0
    )
    assert (
        main(
            ["evaluate", str(run / "q"), "--data", str(arena_csv), "--json", str(run / "m.json"), "--set", "tta=false"]
        )
        == 0
    )
    assert json.loads((run / "m.json").read_text())["n_rows"] == 64
    assert (
        main(
            [
                "compare",
                "--variant",
                f"teacher={teacher}",
                "--variant",
                f"student={student}",
                "--variant",
                f"student-int8={run / 'q'}",
                "--data",
                str(arena_csv),
                "--out",
                str(run / "report"),
                "--teacher",
                "teacher",
            ]
        )
        == 0
    )
    assert (run / "report" / "report.png").is_file()
    assert (
        main(
            [
                "export",
                str(run / "q"),
                "--out",
                str(run / "export"),
                "--title",
                "kdq cli test export",
                "--id",
                "someone/kdq-cli-test",
                "--metrics",
                str(run / "m.json"),
                "--table",
                str(run / "report" / "report.md"),
            ]
        )
        == 0
    )
    assert main(["verify", str(run / "export")]) == 0
    weights = next((run / "export").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    assert main(["verify", str(run / "export")]) == EXIT_CHECK_FAILED


def _last_json(capsys):
    out = capsys.readouterr().out
    start = out.rfind("\n{")
    return out[start + 1 :] if start >= 0 else out[out.find("{") :]


def test_flags_beat_the_file_and_set_beats_both(tmp_path):
    from kdq.cli.main import build_parser

    data = load_config_dict(_yaml(tmp_path, "lora: null\n"), ["lora.r=4"])
    assert data["lora"] == {"r": "4"}  # a null parent becomes a mapping instead of a crash; text until typed
    assert build_config(kdq.DistillConfig, data).lora.r == 4

    def config(argv):
        args = build_parser().parse_args(argv)
        return args.command_spec.config_from(args)

    q = _yaml(tmp_path, "method: bnb-int8\ngroup_size: 64\nnum_samples: 7\n")
    base = ["quantize", "m", "--out", "o", "--config", str(q)]
    cfg = config(base + ["--method", "gptq-4", "--set", "group_size=32"])
    assert (cfg.method, cfg.bits, cfg.group_size, cfg.num_samples) == ("gptq", 4, 32, 7)
    assert config(base + ["--method", "gptq-4", "--set", "bits=8"]).bits == 8  # --set beats the flag
    # the same rule for every command: file < flags < --set
    d = _yaml(tmp_path, "output_dir: from-file\nteacher_pass:\n  cache_dir: from-file\ntraining:\n  epochs: 2\n")
    distill = ["distill", "--student", "s", "--train", "t", "--config", str(d)]
    assert config(distill).output_dir == "from-file"
    assert config(distill + ["--output-dir", "flag"]).output_dir == "flag"
    assert config(distill + ["--output-dir", "flag", "--set", "output_dir=set"]).output_dir == "set"
    teacher = ["cache-teacher", "--teacher", "t", "--data", "d", "--config", str(d)]
    assert config(teacher).teacher_pass.cache_dir == "from-file" and config(teacher).training.epochs == 2
    assert config(teacher + ["--cache-dir", "flag"]).teacher_pass.cache_dir == "flag"
    assert (
        config(teacher + ["--cache-dir", "flag", "--set", "teacher_pass.cache_dir=set"]).teacher_pass.cache_dir == "set"
    )
    e = _yaml(tmp_path, "title: title from the file\ndataset_id: me/file\ntta: false\n")
    export = ["export", "m", "--out", "o", "--config", str(e)]
    assert (config(export).title, config(export).tta) == ("title from the file", "none")  # tta: false → "none"
    assert config(export + ["--title", "title from a flag"]).title == "title from a flag"
    assert config(export + ["--title", "title from a flag", "--set", "title=title from set"]).title == "title from set"
    r = _yaml(tmp_path, "out_dir: from-file\nbaseline: false\n")
    run = ["run", "--teacher", "t", "--student", "s", "--train", "a", "--eval", "b", "--test", "c", "--config", str(r)]
    assert (config(run + ["--out", "flag"]).out_dir, config(run).baseline) == ("flag", False)
    assert config(run + ["--out", "flag", "--set", "out_dir=set"]).out_dir == "set"


def test_missing_required_fields_are_named_with_the_flag_to_pass(capsys, tmp_path):
    assert main(["quantize", str(tmp_path), "--out", str(tmp_path / "q")]) == EXIT_BAD_INPUT
    assert "QuantConfig needs field(s) ['method']: pass --method" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "e"), "--title", "a title"]) == EXIT_BAD_INPUT
    assert "ExportConfig needs field(s) ['dataset_id']: pass --title and --id" in capsys.readouterr().err


def _yaml(tmp_path, text):
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- numbers in scientific notation
def _numeric_fields(cls, prefix=""):
    """``(dotted name, declared type)`` for every int/float field of ``cls`` and of its nested configs,
    read from the dataclass (YAML 1.1 reads ``2e-5`` without a decimal point as text, for all of them)."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        nested = next((a for a in args if dataclasses.is_dataclass(a)), None)
        if nested is not None:
            yield from _numeric_fields(nested, f"{prefix}{f.name}.")
        elif {int, float} & set(args):
            yield prefix + f.name, next(a for a in args if a in (int, float))


def _sci(value) -> str:
    """``value`` written in scientific notation without a decimal point (what YAML 1.1 reads as text):
    0.05 -> 5e-2, 1024 -> 1024e0, 2000 -> 2e3."""
    from decimal import Decimal

    sign, digits, exp = Decimal(repr(value)).normalize().as_tuple()
    return f"{'-' if sign else ''}{''.join(map(str, digits))}e{exp}"


# The required fields a config cannot be built without (everything else is derived from the dataclasses).
_REQUIRED = {
    "QuantConfig": {"method": "gptq", "bits": 8},
    "ExportConfig": {"title": "a title", "dataset_id": "me/slug"},
}


def _config_commands():
    from kdq.cli.commands import COMMANDS
    from kdq.cli.spec import load_object

    seen = {}
    for c in COMMANDS:
        if c.config and c.config not in seen:
            seen[c.config] = (c.name, load_object(c.config))
    return list(seen.values())


def _nested_class(hint):
    """The config class in a field's type hint (``X`` or ``X | None``), or ``None``."""
    import dataclasses
    import types
    import typing

    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((a for a in args if dataclasses.is_dataclass(a)), None)


def _field(cls, dotted: str):
    """The dataclass field a dotted name reaches (through nested, possibly optional, configs)."""
    import dataclasses
    import typing

    *parents, leaf = dotted.split(".")
    for p in parents:
        cls = _nested_class(typing.get_type_hints(cls)[p])
    return next(f for f in dataclasses.fields(cls) if f.name == leaf)


def _all_fields(cls, prefix=""):
    """``(dotted name, field)`` for every field of ``cls`` and of its nested configs."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix + f.name, f
        nested = _nested_class(hints[f.name])
        if nested is not None:
            yield from _all_fields(nested, f"{prefix}{f.name}.")


def _valid_number(cls, base: dict, dotted: str, kind):
    """``(value, config)``: a value the field accepts (its default when that is a number, else the first
    candidate that builds) and the config built with it as a Python number."""
    default = base.get(dotted, _field(cls, dotted).default)
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    for v in ([default] if numeric else []) + [8, 1024, 0.5]:
        if kind is int and not float(v).is_integer():
            continue
        v = kind(v)
        try:
            return v, build_config(cls, _nested_set(dict(base), dotted, v))
        except ValueError:
            continue
    raise AssertionError(f"no candidate value builds {cls.__name__} with {dotted}")


def _nested_set(data: dict, dotted: str, value) -> dict:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return data


_SWEEP = [(name, cls, dotted, kind) for name, cls in _config_commands() for dotted, kind in _numeric_fields(cls)]


@pytest.mark.parametrize("command, cls, dotted, kind", _SWEEP, ids=[f"{c}:{d}" for c, _, d, _ in _SWEEP])
def test_every_numeric_field_takes_scientific_notation_through_set(command, cls, dotted, kind):
    from kdq.cli.main import build_parser

    base = dict(_REQUIRED.get(cls.__name__, {}))
    value, expected = _valid_number(cls, base, dotted, kind)
    text = _sci(value)
    text = text.upper() if len(dotted) % 2 else text  # 1E-3 as well as 1e-3
    argv = {
        "cache-teacher": ["cache-teacher", "--teacher", "t", "--data", "d"],
        "distill": ["distill", "--student", "s", "--train", "t"],
        "shrink": ["shrink", "m", "--out", "o"],
        "quantize": ["quantize", "m", "--out", "o", "--method", "gptq-8"],
        "evaluate": ["evaluate", "m", "--data", "d"],
        "compare": ["compare", "--variant", "a=b", "--data", "d", "--out", "o"],
        "export": ["export", "m", "--out", "o", "--title", "a title", "--id", "me/slug"],
        "run": ["run", "--teacher", "t", "--student", "s", "--train", "a", "--eval", "b", "--test", "c"],
    }[command]
    args = build_parser().parse_args([*argv, "--set", f"{dotted}={text}"])
    cfg = args.command_spec.config_from(args)
    assert cfg == expected, (dotted, text)
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    assert type(node) is kind and node == value, (dotted, text, node)


def test_scientific_notation_in_a_config_file_and_in_a_dict(tmp_path):
    from kdq.config.io import resolve_config

    fields = dict(_numeric_fields(kdq.DistillConfig))
    data = {}
    for dotted, kind in fields.items():
        if dotted.startswith("lora.") or dotted == "training.learning_rate":
            continue
        value, _ = _valid_number(kdq.DistillConfig, {}, dotted, kind)
        _nested_set(data, dotted, value)
    blocks = {section: [f"  {k}: {_sci(v)}" for k, v in values.items()] for section, values in data.items()}
    blocks["training"].append("  learning_rate: 2e-5")  # the spelling a YAML 1.1 reader leaves as text
    data["training"]["learning_rate"] = 2e-5
    path = tmp_path / "sci.yaml"
    path.write_text("".join(f"{section}:\n" + "\n".join(lines) + "\n" for section, lines in blocks.items()))
    # the file as a YAML 1.1 reader sees it: the numbers are text
    import yaml

    raw = yaml.safe_load(path.read_text())
    assert raw["training"]["learning_rate"] == "2e-5"
    expected = build_config(kdq.DistillConfig, data)
    assert resolve_config(kdq.DistillConfig, path) == expected  # --config
    assert kdq.DistillConfig(**raw) == expected  # DistillConfig(**dict) from a file
    assert kdq.DistillConfig(**raw).training.learning_rate == 2e-5


def test_text_values_follow_the_declared_type_and_bad_ones_name_the_field():
    from kdq.config.io import resolve_config

    sets = ["training.batch_size=5e2", "training.max_steps=1E3", "training.learning_rate=1E-3"]
    training = resolve_config(kdq.DistillConfig, overrides=sets).training
    assert (training.batch_size, training.max_steps, training.learning_rate) == (500, 1000, 1e-3)
    assert type(training.batch_size) is int and type(training.learning_rate) is float
    with pytest.raises(ValueError, match=r"TrainingSettings\.batch_size .*integer.*e\.g\. batch_size=8.*'25e-1'"):
        resolve_config(kdq.DistillConfig, overrides=["training.batch_size=25e-1"])
    with pytest.raises(ValueError, match=r"TrainingSettings\.learning_rate .*number.*e\.g\. learning_rate=.*'fast'"):
        resolve_config(kdq.DistillConfig, overrides=["training.learning_rate=fast"])
    # booleans given as text follow YAML's true/false; anything else is named
    cfg = kdq.DistillConfig(training={"deterministic": "false", "swap_augment": "yes"}, teacher_pass={"tta": "True"})
    assert cfg.training.deterministic is False and cfg.training.swap_augment is True
    assert kdq.DistillConfig(teacher_pass={"tta": "True"}).teacher_pass.tta is True
    assert kdq.TrainingSettings(swap_augment="false").swap_augment is False
    assert kdq.TrainingSettings(swap_augment="paired").swap_augment == "paired"
    with pytest.raises(ValueError, match=r"TrainingSettings\.deterministic .*true or false.*e\.g\. deterministic=true"):
        kdq.DistillConfig(training={"deterministic": "maybe"})
    # text for a tuple field is one entry, not its characters
    assert kdq.LoraSettings(target_modules="q_proj").target_modules == ("q_proj",)
    assert kdq.EvalConfig(template={"max_length": "5e2"}).template.max_length == 500


@pytest.mark.parametrize("command", [c for c, _ in _config_commands()])
def test_command_help_lists_every_config_field_with_its_default_and_loads_no_torch(command):
    """``kdq COMMAND --help`` lists what ``--set`` accepts (nested fields dotted) with each field's default and
    its metadata help, read from the config class without importing torch."""
    import dataclasses

    code = (
        "import contextlib, io, sys\nfrom kdq.cli.main import main\nout = io.StringIO()\n"
        f"with contextlib.redirect_stdout(out):\n    try:\n        main([{command!r}, '--help'])\n"
        "    except SystemExit as e:\n        assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(heavy)\nprint(out.getvalue())"
    )
    heavy, text = run_python("-c", code, timeout=120, env={"COLUMNS": "100"}).stdout.split("\n", 1)
    assert heavy == "[]", heavy
    section = text.split("config fields of", 1)[-1]
    listed = [ln.split()[0] for ln in section.splitlines() if ln.startswith("  ") and not ln.startswith("   ")]
    fields = list(_all_fields(dict(_config_commands())[command]))
    assert len(fields) >= 10
    for name, f in fields:
        entry = next((e for e in listed if e.split("=")[0] in (name, name + ".*")), None)
        assert entry is not None, f"{name} is not listed"
        if f.default is not dataclasses.MISSING and isinstance(f.default, (int, float, str)):
            if isinstance(f.default, bool):
                want = "true" if f.default else "false"
            else:
                want = str(f.default) if f.default != "" else '""'
            assert entry.split("=", 1)[1] == want, (name, entry)
        help_text = f.metadata.get("help", "")
        after = section.split("\n  " + entry, 1)[1][:200]
        assert help_text and help_text.split()[0] in after, (name, help_text)
    if command == "distill":
        assert "  training.learning_rate=5e-05" in text and "  template.max_length=1024" in text
        assert "  lora.r=16" in text and "  loss.temperature=2.0" in text and "  teacher_pass.tta=false" in text
        assert "  training.report_to=none" in text
