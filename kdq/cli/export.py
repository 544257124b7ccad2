"""The code of ``kdq export`` and ``kdq verify``.

Their arguments are declared with every other command's in :mod:`kdq.cli.commands`, and
:func:`kdq.cli.main.main` runs them with the same exit codes (the ``EXIT_*`` constants of :mod:`kdq.cli.spec`).
Config precedence is kdq's one rule (:mod:`kdq.config.io`): ``--config`` file < flags
(``--title``, ``--id``, ``--record`` ...) < ``--set``.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

from .spec import EXIT_CHECK_FAILED, EXIT_OK


def run_verify(args) -> int:
    from ..export.verify import VerificationError, verify

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
    probe = (
        f"; probe: {report.probe_rows} rows, max |Δp| = {report.probe_max_abs_diff:.2g}"
        if report.probe_max_abs_diff is not None
        else ""
    )
    print(f"OK: {report.folder}: {report.files_checked} files, {report.bytes_checked / 1e6:.1f} MB verified{probe}")
    return EXIT_OK


def _read_json_arg(path, what):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path!r}: {err}") from None


def records_field(items) -> dict:
    """``--record NAME=JSON_FILE`` (repeatable) → the ``configs`` field (merged into the file's)."""
    configs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--record {item!r}: write NAME=JSON_FILE, e.g. quantize=kdq-quantize.json")
        configs[name] = _read_json_arg(path, f"--record {name}")
    return {"configs": configs}


def run_export(args, config) -> int:
    from ..export.build import ExportError, export

    metrics = _read_json_arg(args.metrics, "--metrics") if args.metrics else None
    table = Path(args.table).read_text(encoding="utf-8") if args.table else None
    try:
        out = export(args.model, args.out, config, metrics=metrics, table_md=table)
    except ExportError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"exported {out}\nnext: kdq verify {out} && kaggle datasets create -p {out} --dir-mode zip")
    return EXIT_OK
