"""The kdq CLI: help, configs from files and flags, exit codes, and every stage driven end to end."""

import json
import subprocess
import sys

import pytest

import kdq
from kdq.cli.main import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, main
from kdq.config.io import build_config, load_config_dict


def test_help_lists_every_stage():
    proc = subprocess.run([sys.executable, "-m", "kdq.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
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
    f.write_text("epochs: 3\ntemplate:\n  max_length: 256\nlora:\n  r: 4\n")
    cfg = build_config(kdq.DistillConfig, load_config_dict(f, ["template.min_part_share=0.2", "alpha=0.25"]))
    assert cfg.epochs == 3 and cfg.alpha == 0.25
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
        main(["distill", "--student", str(tiny_model_dir), "--train", str(bad), "--set", "alpha=7"]) == EXIT_BAD_INPUT
    )
    assert main([]) == EXIT_BAD_INPUT


def test_cli_drives_every_stage(tmp_path, tiny_model_dir, arena_csv, capsys):
    run = tmp_path / "run"
    common = ["--set", "template.max_length=64", "--set", "epochs=1", "--set", "batch_size=16"]
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
                f"cache_dir={run / 'cache'}",
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
    assert data["lora"] == {"r": 4}  # a null parent becomes a mapping instead of a crash

    def config(argv):
        args = build_parser().parse_args(argv)
        return args.command_spec.config_from(args)

    q = _yaml(tmp_path, "method: bnb-int8\ngroup_size: 64\nnum_samples: 7\n")
    base = ["quantize", "m", "--out", "o", "--config", str(q)]
    cfg = config(base + ["--method", "gptq-4", "--set", "group_size=32"])
    assert (cfg.method, cfg.bits, cfg.group_size, cfg.num_samples) == ("gptq", 4, 32, 7)
    assert config(base + ["--method", "gptq-4", "--set", "bits=8"]).bits == 8  # --set beats the flag
    # the same rule for every command: file < flags < --set
    d = _yaml(tmp_path, "output_dir: from-file\ncache_dir: from-file\nepochs: 2\n")
    distill = ["distill", "--student", "s", "--train", "t", "--config", str(d)]
    assert config(distill).output_dir == "from-file"
    assert config(distill + ["--output-dir", "flag"]).output_dir == "flag"
    assert config(distill + ["--output-dir", "flag", "--set", "output_dir=set"]).output_dir == "set"
    teacher = ["cache-teacher", "--teacher", "t", "--data", "d", "--config", str(d)]
    assert config(teacher + ["--cache-dir", "flag"]).cache_dir == "flag"
    assert config(teacher + ["--cache-dir", "flag", "--set", "cache_dir=set"]).cache_dir == "set"
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
