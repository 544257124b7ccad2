"""Command line of the export stage: ``export`` and ``verify``.

Written to plug into ``kdq/cli.py``'s registry (same exit codes: 0 ok, 1 a check failed,
2 bad input)::

    for name, (help_text, run, add_arguments) in kdq.export.cli.COMMANDS.items(): ...

Until then, and always: ``python -m kdq.export verify DIR`` / ``python -m kdq.export export ...``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_verify_arguments(p) -> None:
    p.add_argument("folder", help="folder written by kdq export")
    p.add_argument("--no-probe", action="store_true", help="checksums only: do not load the model")
    p.add_argument("--atol", type=float, default=None, help="allowed |Δp| on the probe (default: as exported)")
    p.add_argument("--device", default="cpu", help="device for the probe batch (default: %(default)s)")


def run_verify(args) -> int:
    from .verify import VerificationError, verify

    with warnings.catch_warnings():
        # verify's own notes are printed below from the report, once
        warnings.filterwarnings("ignore", message=re.escape(str(Path(args.folder))), category=UserWarning)
        try:
            report = verify(args.folder, probe=not args.no_probe, atol=args.atol, device=args.device)
        except VerificationError as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return EXIT_CHECK_FAILED
    for note in report.warnings:
        print(f"warning: {note}", file=sys.stderr)
    probe = (f"; probe: {report.probe_rows} rows, max |Δp| = {report.probe_max_abs_diff:.2g}"
             if report.probe_max_abs_diff is not None else "")
    print(f"OK: {report.folder}: {report.files_checked} files, {report.bytes_checked / 1e6:.1f} MB verified{probe}")
    return EXIT_OK


def add_export_arguments(p) -> None:
    p.add_argument("model", help="model folder (full, quantized or PEFT adapter)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--title", help="Kaggle dataset title, 6 to 50 characters (config field title)")
    p.add_argument("--id", dest="dataset_id", help="Kaggle dataset id owner/slug (config field dataset_id)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--wheels", action="store_true", help="pip download what the notebook needs into wheels/")
    p.add_argument("--metrics", help="JSON file with kdq.evaluate's Metrics.to_dict() (e.g. from report.json)")
    p.add_argument("--table", help="markdown file with the trade-off table (e.g. kdq compare's report.md)")
    p.add_argument("--record", action="append", default=[], metavar="NAME=JSON_FILE",
                   help="a config to record in the manifest, e.g. quantize=runs/q/kdq-quantize.json (repeatable)")
    p.add_argument("--config", help="YAML or JSON file with ExportConfig fields")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one ExportConfig field (repeatable), e.g. --set tta=false")


def _read_json_arg(path, what):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path!r}: {err}") from None


def run_export(args) -> int:
    from ..cli import build_config, load_config_dict
    from .build import ExportError, export
    from .config import ExportConfig

    data = load_config_dict(args.config, args.overrides)
    for flag in ("title", "dataset_id"):
        if getattr(args, flag):
            data[flag] = getattr(args, flag)
    if args.overwrite:
        data["overwrite"] = True
    if args.wheels:
        data["wheels"] = True
    configs = dict(data.get("configs") or {})
    for item in args.record:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--record {item!r}: write NAME=JSON_FILE, e.g. quantize=kdq-quantize.json")
        configs[name] = _read_json_arg(path, f"--record {name}")
    data["configs"] = configs
    missing = [f for f in ("title", "dataset_id") if not data.get(f)]
    if missing:
        raise ValueError(f"ExportConfig needs {missing}: pass --title and --id (or set them in --config).")
    config = build_config(ExportConfig, data)
    metrics = _read_json_arg(args.metrics, "--metrics") if args.metrics else None
    table = Path(args.table).read_text(encoding="utf-8") if args.table else None
    try:
        out = export(args.model, args.out, config, metrics=metrics, table_md=table)
    except ExportError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"exported {out}\nnext: kdq verify {out} && kaggle datasets create -p {out} --dir-mode zip")
    return EXIT_OK


COMMANDS = {
    "export": ("write a Kaggle dataset folder: weights, predict.py, manifest, model card, wheels",
               run_export, add_export_arguments),
    "verify": ("check an exported folder's checksums and re-run its probe batch", run_verify, add_verify_arguments),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdq.export", description="kdq export stage")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, run, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=run)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
