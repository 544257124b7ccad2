"""Every ``kdq`` subcommand, declared as data: its arguments, config class and code.

Pure data (standard library and :mod:`kdq.cli.spec` only), so ``kdq --help`` lists every
command without importing torch; :mod:`kdq.cli.main` builds the parser from it. Code and
configs are named ``"module:name"`` and imported when the command runs. An ``Arg`` with a
``field`` feeds that config field: ``--config`` file < flags < ``--set`` (see :mod:`kdq.config.io`).
"""

from __future__ import annotations

from ..distill.shrink_config import WIDTH_FIELDS  # standard library only at import
from ..quant_methods import variant_names  # the method registry: standard library only at import
from .spec import Arg, Command

_OVERWRITE = Arg(("--overwrite",), "replace an existing output folder", switch=True)
_DISTILL_CONFIG = "kdq.distill.config:DistillConfig"
_TEACHER_HELP = (
    "teacher folder (or PEFT adapter folder), or a CSV/parquet table of id plus one probability column per "
    "class; repeat for an ensemble averaged in probability space, a weight after a colon (runs/t1:2)"
)

COMMANDS = (
    Command(
        "cache-teacher",
        "score rows with the teacher and cache its logits (shared cache, keyed by fingerprint)",
        "kdq.cli.main:run_cache_teacher",
        config=_DISTILL_CONFIG,
        args=(
            Arg(("--teacher",), _TEACHER_HELP, required=True, repeat=True, metavar="TEACHER[:WEIGHT]"),
            Arg(("--data",), "arena CSV/parquet (winner columns, if any, are ignored)", required=True),
            Arg(
                ("--cache-dir",),
                "cache root (config field teacher_pass.cache_dir; default $KDQ_CACHE or ~/.cache/kdq/teacher-logits)",
                field="teacher_pass.cache_dir",
            ),
        ),
    ),
    Command(
        "distill",
        "train a student on arena rows, distilling from a teacher (or on hard labels alone)",
        "kdq.cli.main:run_distill",
        config=_DISTILL_CONFIG,
        args=(
            Arg(("--student",), "student folder (or PEFT adapter folder)", required=True),
            Arg(("--train",), "training rows: CSV or parquet in the competition format", required=True),
            Arg(("--eval",), "held-out rows for per-epoch log loss and best-checkpoint selection"),
            Arg(
                ("--teacher",),
                _TEACHER_HELP + "; omit to train on hard labels alone",
                repeat=True,
                metavar="TEACHER[:WEIGHT]",
            ),
            Arg(
                ("--transfer",),
                "unlabelled arena rows (a transfer set) the teacher labels; winner columns, if any, are ignored; "
                "needs --teacher",
            ),
            Arg(("--output-dir",), "run folder (config field output_dir)", field="output_dir"),
        ),
    ),
    Command(
        "shrink",
        "make a student from a model: keep some decoder layers (uniform or block-influence) and/or narrow them "
        "(Minitron width pruning)",
        "kdq.cli.main:run_shrink",
        config="kdq.distill.shrink_config:ShrinkConfig",
        args=(
            Arg(("model",), "source folder (or PEFT adapter folder: merged first)"),
            Arg(("--out",), "student folder to write", required=True),
            Arg(("--calibration",), "arena rows to measure block influence and width importance on"),
            Arg(
                ("--every",),
                "keep every N-th layer plus the last (config field every)",
                field="every",
                type=int,
            ),
            Arg(("--keep",), "explicit comma-separated layer indices, e.g. 0,4,8,11 (config field keep)", field="keep"),
            Arg(
                ("--strategy",),
                "uniform (every N-th) or block-influence (needs --calibration) (config field strategy)",
                field="strategy",
            ),
            Arg(("--num-layers",), "layers to keep (config field num_layers)", field="num_layers", type=int),
            *(
                Arg(
                    (f"--{name.replace('_', '-')}",),
                    f"narrow to this {name} (config field {name}; needs --calibration)",
                    field=name,
                    type=int,
                )
                for name in WIDTH_FIELDS
            ),
            _OVERWRITE,
        ),
    ),
    Command(
        "quantize",
        "quantize a classifier with a registered method (see --method) and verify the reload",
        "kdq.cli.main:run_quantize",
        config="kdq.quantize.config:QuantConfig",
        hint=f": pass --method ({', '.join(variant_names())}) or method: in --config",
        args=(
            Arg(("model",), "classifier folder (or PEFT adapter folder: merged first)"),
            Arg(
                ("--method",),
                f"{' | '.join(variant_names())} (config fields method, bits; a method's own fields "
                "with --set, e.g. --set group_size=64)",
                to_fields="kdq.cli.main:variant_fields",
            ),
            Arg(("--calibration",), "arena CSV/parquet for GPTQ calibration and the probe batch"),
            Arg(("--out",), "folder to write", required=True),
            _OVERWRITE,
        ),
    ),
    Command(
        "evaluate",
        "score one model on labelled rows: log loss, accuracy, ECE (± TTA), size, memory, speed, budget",
        "kdq.cli.main:run_evaluate",
        config="kdq.evaluate.config:EvalConfig",
        args=(
            Arg(("model",), "model folder (fp, GPTQ, bitsandbytes or PEFT adapter)"),
            Arg(("--data",), "labelled arena CSV/parquet", required=True),
            Arg(("--json",), "also write the metrics to this file"),
        ),
    ),
    Command(
        "compare",
        "evaluate several variants on the same rows; write report.md/json/png with budget verdicts",
        "kdq.cli.main:run_compare",
        config="kdq.evaluate.config:EvalConfig",
        args=(
            Arg(("--variant",), "a model to compare (repeatable)", repeat=True, metavar="NAME=FOLDER", required=True),
            Arg(("--data",), "labelled held-out arena CSV/parquet", required=True),
            Arg(("--out",), "report folder", required=True),
            Arg(("--teacher",), "variant the deltas are measured against (default: the first)"),
            Arg(("--baseline",), "the hard-label student variant (for 'gap closed')"),
            Arg(("--student",), "the distilled student variant (for 'gap closed')"),
            _OVERWRITE,
        ),
    ),
    Command(
        "sweep-lengths",
        "score variants at several max_lengths: the headline metric against projected notebook hours, with and "
        "without TTA; writes report.md/json/png",
        "kdq.cli.lengths:run_sweep_lengths",
        config="kdq.evaluate.config:EvalConfig",
        args=(
            Arg(("variant",), "a model folder, or NAME=FOLDER (one or more)", nargs="+", metavar="VARIANT"),
            Arg(("--data",), "labelled held-out arena CSV/parquet", required=True),
            Arg(
                ("--lengths",),
                "comma-separated max_lengths (default 512,1024,1536,2048), or auto: fractions of the longest row",
            ),
            Arg(("--out",), "report folder", required=True),
            Arg(
                ("--budget",),
                "budget profile behind the hours: a shipped name or JSON path (config field budget)",
                field="budget",
            ),
            _OVERWRITE,
        ),
    ),
    Command(
        "export",
        "write a Kaggle dataset folder: weights, predict.py, manifest, model card, wheels",
        "kdq.cli.export:run_export",
        config="kdq.export.config:ExportConfig",
        hint=": pass --title and --id (or set them in --config)",
        args=(
            Arg(("model",), "model folder (full, quantized or PEFT adapter)"),
            Arg(("--out",), "output folder (must not exist unless --overwrite)", required=True),
            Arg(("--title",), "Kaggle dataset title, 6 to 50 characters (config field title)", field="title"),
            Arg(
                ("--id",),
                "Kaggle dataset id owner/slug (config field dataset_id)",
                field="dataset_id",
                dest="dataset_id",
            ),
            Arg(
                ("--overwrite",), "replace an existing folder (config field overwrite)", field="overwrite", switch=True
            ),
            Arg(
                ("--wheels",),
                "pip download what the notebook needs into wheels/ (config field wheels)",
                field="wheels",
                switch=True,
            ),
            Arg(("--metrics",), "JSON file with kdq.evaluate's Metrics.to_dict() (e.g. from report.json)"),
            Arg(("--table",), "markdown file with the trade-off table (e.g. kdq compare's report.md)"),
            Arg(
                ("--record",),
                "a config to record in the manifest, e.g. quantize=runs/q/kdq-quantize.json "
                "(repeatable; config field configs)",
                to_fields="kdq.cli.export:records_field",
                repeat=True,
                metavar="NAME=JSON_FILE",
            ),
        ),
    ),
    Command(
        "verify",
        "check an exported folder's checksums and re-run its probe batch",
        "kdq.cli.export:run_verify",
        args=(
            Arg(("folder",), "folder written by kdq export"),
            Arg(("--no-probe",), "checksums only: do not load the model", switch=True),
            Arg(("--atol",), "allowed |Δp| on the probe (default: as exported)", type=float),
            Arg(("--device",), "device for the probe batch (default: %(default)s)", default="cpu"),
        ),
    ),
    Command(
        "run",
        "the whole job from a fine-tuned teacher: distil, baseline, quantize, compare, export, verify",
        "kdq.cli.main:run_run",
        config="kdq.pipeline:PipelineConfig",
        args=(
            Arg(("--teacher",), "fine-tuned teacher folder (or adapter folder / Hub id)", required=True),
            Arg(("--student",), "student starting point (e.g. from kdq shrink, or a Hub id)", required=True),
            Arg(("--train",), "training rows", required=True),
            Arg(("--eval",), "rows for checkpoint selection", required=True),
            Arg(("--test",), "held-out rows for the trade-off table", required=True),
            Arg(("--transfer",), "unlabelled arena rows (a transfer set) for the distilled student"),
            Arg(("--out",), "run folder (config field out_dir)", field="out_dir"),
        ),
    ),
)


def by_name(name: str) -> Command:
    return next(c for c in COMMANDS if c.name == name)
