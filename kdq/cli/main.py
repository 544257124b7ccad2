"""The ``kdq`` command line: one subcommand per stage, mirroring the Python API.

Every subcommand that takes a config reads the same frozen dataclass as the API, from a
YAML/JSON file (``--config``), the command's own flags and ``--set field=value`` (dotted
names reach nested configs: ``--set template.max_length=512``), in that order: file < flags
< ``--set``, for every command (:mod:`kdq.config.io`). Commands are declared as data in
:mod:`kdq.cli.commands`; their code, below, imports torch only when it runs, so ``kdq --help`` is quick.

Exit codes: 0 success; 1 a check failed (verification, tolerance); 2 bad input or
configuration (the message says which field or row, and the fix); 3 a missing optional
dependency (the message names the pip extra); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..utils.errors import CheckFailed
from .commands import COMMANDS
from .spec import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_INTERRUPTED, EXIT_MISSING_DEP, EXIT_OK


def _print_json(obj):
    print(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------- stages (run when chosen)
def teacher_of(values):
    """``--teacher`` values (repeatable; ``PATH:WEIGHT``) as what ``kdq.distill(teacher=...)`` takes: ``None``,
    one teacher, or a list of ``(path, weight)`` pairs (an ensemble)."""
    values = [values] if isinstance(values, str) else list(values or [])
    if not values:
        return None
    members = []
    for text in values:
        head, sep, tail = text.rpartition(":")
        try:
            weight = float(tail) if sep and head else None
        except ValueError:
            weight = None
        if weight is not None and not Path(text).exists():
            if not weight > 0:
                raise ValueError(f"--teacher {text!r}: the weight after the colon must be a positive number")
            members.append((head, weight))
        else:
            members.append((text, 1.0))
    if len(members) == 1:
        return members[0][0]
    return members


def run_cache_teacher(args, cfg) -> int:
    from ..distill.needs import teacher_needs
    from ..distill.teacher_pass import teacher_pass

    # the same teacher pass as kdq.distill: same cache key, same cache folder, teacher freed after
    features = teacher_needs(cfg, has_teacher=True).cached_features
    cache = teacher_pass(
        teacher_of(args.teacher), args.data, cfg.teacher_pass, template=cfg.template, features=features
    )
    _print_json(
        {
            "cache": str(cache.path) if cache.path else None,
            "rows": len(cache.ids),
            "reused": cache.reused,
            "computed": cache.computed,
            **cache.stats,
        }
    )
    return EXIT_OK


def run_distill(args, cfg) -> int:
    from ..distill import distill

    result = distill(
        args.student,
        args.train,
        eval_data=args.eval,
        teacher=teacher_of(args.teacher),
        config=cfg,
        transfer_data=args.transfer,
    )
    _print_json(
        {
            "student_dir": str(result.student_dir),
            "cache": str(result.cache_path) if result.cache_path else None,
            "best_eval_log_loss": result.metrics.get("best_eval_log_loss"),
            "best_eval_accuracy": result.metrics.get("best_eval_accuracy"),
        }
    )
    return EXIT_OK


def run_shrink(args, cfg) -> int:
    from ..distill import shrink

    print(shrink(args.model, args.out, cfg, calibration=args.calibration, overwrite=args.overwrite))
    return EXIT_OK


def variant_fields(name: str) -> dict:
    """``--method gptq-4`` → ``{"method": "gptq", "bits": 4}`` (the method registry's variants)."""
    from ..quant_methods import variants

    table = variants()
    if name not in table:
        raise ValueError(f"--method {name!r}: choose one of {list(table)}")
    return dict(table[name])


def run_quantize(args, cfg) -> int:
    from ..quantize import quantize

    print(quantize(args.model, cfg, calibration=args.calibration, out_dir=args.out, overwrite=args.overwrite))
    return EXIT_OK


def run_evaluate(args, cfg) -> int:
    from ..evaluate import evaluate

    metrics = evaluate(args.model, args.data, cfg)
    _print_json(metrics.to_dict())
    if args.json:
        Path(args.json).write_text(json.dumps(metrics.to_dict(), indent=2, default=str))
    return EXIT_OK


def run_compare(args, cfg) -> int:
    from ..evaluate import compare

    variants = {}
    for item in args.variant:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--variant {item!r}: write NAME=FOLDER, e.g. --variant teacher=runs/teacher")
        variants[name] = path
    result = compare(
        variants,
        args.data,
        cfg,
        out_dir=args.out,
        teacher=args.teacher,
        baseline=args.baseline,
        student=args.student,
        overwrite=args.overwrite,
    )
    print(Path(result.paths["md"]).read_text())
    print(f"report: {result.paths['md']}\nplot: {result.paths['png']}")
    return EXIT_OK


def run_run(args, cfg) -> int:
    from ..data import load_arena
    from ..pipeline import run_pipeline

    result = run_pipeline(
        args.teacher,
        args.student,
        load_arena(args.train),
        load_arena(args.eval),
        load_arena(args.test),
        cfg,
        transfer=load_arena(args.transfer, unlabelled=True) if args.transfer else None,
    )
    print(result.summary())
    return EXIT_OK


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="kdq",
        description="Distil, quantize, measure and export LLM arena classifiers for offline Kaggle notebooks.",
        epilog="Typical flow: kdq distill (teacher=None) → kdq cache-teacher → kdq distill → kdq quantize → "
        "kdq compare → kdq export → kdq verify. Each subcommand has --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kdq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in COMMANDS:
        spec.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command_spec", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.command_spec.invoke(args)
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
