"""The ``kdq`` command line: one subcommand per stage, mirroring the Python API.

Every subcommand that takes a config reads the same frozen dataclass as the API, from a
YAML/JSON file (``--config``) and/or ``--set field=value`` flags (dotted names reach
nested configs: ``--set template.max_length=512``). Flags win over the file.

Exit codes: 0 success; 1 a check failed (verification, tolerance); 2 bad input or
configuration (the message says which field or row, and the fix); 3 a missing optional
dependency (the message names the pip extra); 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

from .errors import CheckFailed

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_MISSING_DEP, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

COMMANDS: dict = {}


def command(name: str, help: str):
    """Register ``fn(args) -> int`` as subcommand ``name``; its ``add_arguments`` attribute fills the parser."""
    def deco(fn):
        COMMANDS[name] = (help, fn)
        return fn
    return deco


# ---------------------------------------------------------------- config files and --set
def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def load_config_dict(path=None, overrides=(), *, base=None) -> dict:
    """Merge a YAML/JSON file (or ``base``) with ``field=value`` overrides into a (nested) dict."""
    data = dict(base or {})
    if path:
        import yaml

        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: expected a mapping of field: value, got {type(data).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected field=value, e.g. --set epochs=2")
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):  # absent, or null in the file (e.g. lora: null)
                node[p] = {}
            node = node[p]
        node[leaf] = _parse_value(value)
    return data


def build_config(cls, data: dict):
    """Instantiate dataclass ``cls`` from a nested dict, converting nested dataclass fields.

    Unknown keys are an error that lists the valid field names.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        target = _dataclass_in(hints.get(key))
        if isinstance(value, dict) and target is not None:
            value = build_config(target, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _dataclass_in(hint):
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def _config_args(p):
    p.add_argument("--config", help="YAML or JSON file with config fields")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one config field (repeatable; dotted for nested: template.max_length=512)")


def _print_json(obj):
    print(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------- stages
@command("cache-teacher", "score rows with the teacher and cache its logits (Arrow, keyed by id)")
def cmd_cache_teacher(args) -> int:
    from .data import load_arena
    from .distill import DistillConfig
    from .distill.cache import cache_teacher_logits
    from .models import LazyClassifier, default_device, model_dtype_for

    cfg = build_config(DistillConfig, load_config_dict(args.config, args.overrides))
    device = default_device()
    teacher = LazyClassifier(args.teacher, dtype=model_dtype_for(device), device=device)
    cache = cache_teacher_logits(teacher, load_arena(args.data), cache_dir=args.cache_dir or cfg.cache_dir or
                                 Path(cfg.output_dir) / "teacher-cache", template=cfg.template, tta=cfg.teacher_tta,
                                 batch_size=cfg.teacher_batch_size, device=device)
    _print_json({"cache": str(cache.path), "rows": len(cache.ids), "reused": cache.reused,
                 "computed": cache.computed, **cache.stats})
    return EXIT_OK


def _cache_teacher_args(p):
    p.add_argument("--teacher", required=True, help="teacher folder or PEFT adapter folder")
    p.add_argument("--data", required=True, help="arena CSV/parquet")
    p.add_argument("--cache-dir", help="cache root (default: <output_dir>/teacher-cache)")
    _config_args(p)


cmd_cache_teacher.add_arguments = _cache_teacher_args


@command("distill", "train a student on arena rows, distilling from a teacher (or on hard labels alone)")
def cmd_distill(args) -> int:
    from .distill import DistillConfig, distill

    data = load_config_dict(args.config, args.overrides)
    if args.output_dir:
        data["output_dir"] = args.output_dir
    cfg = build_config(DistillConfig, data)
    result = distill(args.student, args.train, eval_data=args.eval, teacher=args.teacher, config=cfg,
                     transfer_data=args.transfer)
    _print_json({"student_dir": str(result.student_dir), "cache": str(result.cache_path) if result.cache_path else None,
                 "best_eval_log_loss": result.metrics.get("best_eval_log_loss"),
                 "best_eval_accuracy": result.metrics.get("best_eval_accuracy")})
    return EXIT_OK


def _distill_args(p):
    p.add_argument("--student", required=True, help="student folder (or PEFT adapter folder)")
    p.add_argument("--train", required=True, help="training rows: CSV or parquet in the competition format")
    p.add_argument("--eval", help="held-out rows for per-epoch log loss and best-checkpoint selection")
    p.add_argument("--teacher", help="teacher folder; omit to train on hard labels alone")
    p.add_argument("--transfer", help="unlabelled arena rows (a transfer set) the teacher labels; needs --teacher")
    p.add_argument("--output-dir", help="run folder (config field output_dir)")
    _config_args(p)


cmd_distill.add_arguments = _distill_args


@command("shrink", "make a student by keeping some decoder layers of a model (uniform or block-influence)")
def cmd_shrink(args) -> int:
    from .distill import shrink

    keep = [int(i) for i in args.keep.split(",")] if args.keep else None
    out = shrink(args.model, keep=keep, every=args.every, strategy=args.strategy, num_layers=args.num_layers,
                 calibration=args.calibration, out_dir=args.out, overwrite=args.overwrite)
    print(out)
    return EXIT_OK


def _shrink_args(p):
    p.add_argument("model", help="source folder")
    p.add_argument("--out", required=True, help="student folder to write")
    p.add_argument("--every", type=int, default=3, help="keep every N-th layer plus the last (default 3)")
    p.add_argument("--keep", help="explicit comma-separated layer indices, e.g. 0,4,8,11")
    p.add_argument("--strategy", default="uniform", choices=("uniform", "block-influence"),
                   help="which layers to keep: uniform (every N-th) or block-influence (needs --calibration)")
    p.add_argument("--num-layers", type=int, help="layers to keep (default: as many as --every gives)")
    p.add_argument("--calibration", help="arena rows to score layers on (block-influence)")
    p.add_argument("--overwrite", action="store_true")


cmd_shrink.add_arguments = _shrink_args


@command("quantize", "quantize a classifier (GPTQ 8/4-bit, bitsandbytes int8/nf4/fp4) and verify the reload")
def cmd_quantize(args) -> int:
    from .quantize import QuantConfig, quantize

    data = _quantize_fields(args)
    if "method" not in data:
        raise ValueError("quantize needs --method (e.g. gptq-8, gptq-4, bnb-int8, bnb-nf4) or method: in --config")
    cfg = build_config(QuantConfig, data)
    out = quantize(args.model, cfg, calibration=args.calibration, out_dir=args.out, overwrite=args.overwrite)
    print(out)
    return EXIT_OK


def _quantize_fields(args) -> dict:
    data = load_config_dict(args.config)
    if args.method:  # the flag wins over the file; --set wins over both
        data.update(_variant_fields(args.method))
    return load_config_dict(None, args.overrides, base=data)


def _variant_fields(name: str) -> dict:
    from .quantize.config import VARIANTS

    if name not in VARIANTS:
        raise ValueError(f"--method {name!r}: choose one of {sorted(VARIANTS)}")
    return dict(VARIANTS[name])


def _quantize_args(p):
    p.add_argument("model", help="classifier folder (or PEFT adapter folder: merged first)")
    p.add_argument("--method", help="gptq-8 | gptq-4 | bnb-int8 | bnb-nf4 | bnb-fp4")
    p.add_argument("--calibration", help="arena CSV/parquet for GPTQ calibration and the probe batch")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--overwrite", action="store_true")
    _config_args(p)


cmd_quantize.add_arguments = _quantize_args


@command("evaluate", "score one model on labelled rows: log loss, accuracy, ECE (± TTA), size, memory, speed, budget")
def cmd_evaluate(args) -> int:
    from .evaluate import EvalConfig, evaluate

    cfg = build_config(EvalConfig, load_config_dict(args.config, args.overrides))
    metrics = evaluate(args.model, args.data, cfg)
    _print_json(metrics.to_dict())
    if args.json:
        Path(args.json).write_text(json.dumps(metrics.to_dict(), indent=2, default=str))
    return EXIT_OK


def _evaluate_args(p):
    p.add_argument("model", help="model folder (fp, GPTQ, bitsandbytes or PEFT adapter)")
    p.add_argument("--data", required=True, help="labelled arena CSV/parquet")
    p.add_argument("--json", help="also write the metrics to this file")
    _config_args(p)


cmd_evaluate.add_arguments = _evaluate_args


@command("compare", "evaluate several variants on the same rows; write report.md/json/png with budget verdicts")
def cmd_compare(args) -> int:
    from .evaluate import EvalConfig, compare

    variants = {}
    for item in args.variant:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--variant {item!r}: write NAME=FOLDER, e.g. --variant teacher=runs/teacher")
        variants[name] = path
    cfg = build_config(EvalConfig, load_config_dict(args.config, args.overrides))
    result = compare(variants, args.data, cfg, out_dir=args.out, teacher=args.teacher, baseline=args.baseline,
                     student=args.student, budget=cfg.budget, overwrite=args.overwrite)
    print(Path(result.paths["md"]).read_text())
    print(f"report: {result.paths['md']}\nplot: {result.paths['png']}")
    return EXIT_OK


def _compare_args(p):
    p.add_argument("--variant", action="append", required=True, metavar="NAME=FOLDER",
                   help="a model to compare (repeatable)")
    p.add_argument("--data", required=True, help="labelled held-out arena CSV/parquet")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--teacher", help="variant the deltas are measured against (default: the first)")
    p.add_argument("--baseline", help="the hard-label student variant (for 'gap closed')")
    p.add_argument("--student", help="the distilled student variant (for 'gap closed')")
    p.add_argument("--overwrite", action="store_true")
    _config_args(p)


cmd_compare.add_arguments = _compare_args


def _register_export_commands():
    from .export import cli as export_cli

    for name, (help_text, run, add_arguments) in export_cli.COMMANDS.items():
        run.add_arguments = add_arguments
        command(name, help_text)(run)


_register_export_commands()


@command("run", "the whole job from a fine-tuned teacher: distil, baseline, quantize, compare, export, verify")
def cmd_run(args) -> int:
    from .data import load_arena
    from .pipeline import PipelineConfig, run_pipeline

    data = load_config_dict(args.config, args.overrides)
    if args.out:
        data["out_dir"] = args.out
    cfg = build_config(PipelineConfig, data)
    result = run_pipeline(args.teacher, args.student, load_arena(args.train), load_arena(args.eval),
                          load_arena(args.test), cfg, transfer=load_arena(args.transfer) if args.transfer else None)
    print(result.summary())
    return EXIT_OK


def _run_args(p):
    p.add_argument("--teacher", required=True, help="fine-tuned teacher folder (or adapter folder / Hub id)")
    p.add_argument("--student", required=True, help="student starting point (e.g. from kdq shrink, or a Hub id)")
    p.add_argument("--train", required=True)
    p.add_argument("--eval", required=True, help="rows for checkpoint selection")
    p.add_argument("--test", required=True, help="held-out rows for the trade-off table")
    p.add_argument("--transfer", help="unlabelled arena rows (a transfer set) for the distilled student")
    p.add_argument("--out", help="run folder (config field out_dir)")
    _config_args(p)


cmd_run.add_arguments = _run_args


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="kdq",
        description="Distil, quantize, measure and export LLM arena classifiers for offline Kaggle notebooks.",
        epilog="Typical flow: kdq distill (teacher=None) → kdq cache-teacher → kdq distill → kdq quantize → "
               "kdq compare → kdq export → kdq verify. Each subcommand has --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kdq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        fn.add_arguments(p)
        p.set_defaults(func=fn)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("kdq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CheckFailed as err:
        print(f"kdq {args.command}: FAILED: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except ImportError as err:
        print(f"kdq: {err}", file=sys.stderr)
        return EXIT_MISSING_DEP
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"kdq {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
