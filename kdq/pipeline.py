"""The whole job after the teacher exists: distil, baseline, quantize, compare, export, verify.

``run_pipeline`` is what ``examples/demo.py`` (SmolLM2 on VADER pairs) and
``examples/lmsys_danube3.py`` (Danube3-4B → 500M on the competition data) share, and what
``kdq run`` drives from a config file. Each step is a public kdq verb; this module only
wires their outputs together and names the variants consistently:

* ``teacher`` and ``teacher-<method>`` for each quantization method;
* ``student-kd`` (distilled) and ``student-kd-<method>``;
* ``student-hard`` (same init, same rows, hard labels only: the no-distillation baseline).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config.base import Config
from .config.validate import check_range
from .distill.config import DistillConfig
from .evaluate.config import EvalConfig
from .export.config import ExportConfig
from .quant_methods import get_quantizer, settings_fields, variant_fields, variant_names
from .quantize.config import QuantConfig
from .runtime.constants import PIPELINE_SUMMARY_FILE, SHRINK_KEY
from .utils.atomic import atomic_dir
from .utils.distributed import process_group, run_on_rank0, single_process
from .utils.errors import CheckFailed
from .utils.jsonable import jsonable


@dataclass(frozen=True)
class PipelineConfig(Config):
    """What to run after the teacher exists: the student runs, the quantized variants, the comparison
    and the exports. ``export_variants=("recommended",)`` ranks on the **eval** rows (never the test
    rows it reports) by log loss with the TTA the export ships (``eval.tta``), among the variants
    that fit the budget; variants within the 95% interval of the best count as tied, and a tie goes
    to the faster, then smaller one. The teacher pass and the single-process stages (quantize,
    compare, export) run outside the process group, so ``ddp_timeout`` never counts them. Each
    field's help is in its metadata (``kdq run --help`` lists them).
    """

    out_dir: str = field(default="runs/pipeline", metadata={"help": "run folder; every stage writes a subfolder"})
    distill: DistillConfig = field(
        default_factory=DistillConfig,
        metadata={"help": "base DistillConfig of the student runs (output_dir is set per run)"},
    )
    baseline: bool = field(
        default=True, metadata={"help": "also train the hard-label student (needed for 'gap closed')"}
    )
    quant_methods: tuple = field(
        default=("gptq-8", "gptq-4", "bnb-int8", "bnb-nf4"),
        metadata={"help": "short variant names (QuantConfig.from_name) applied to teacher and student"},
    )
    quantize_teacher: bool = field(default=True, metadata={"help": "quantize the teacher too (the student always is)"})
    calibration_samples: int | None = field(
        default=None,
        metadata={
            "help": "calibration rows of the methods that calibrate (GPTQ); null: QuantConfig.num_samples' default"
        },
    )
    gptq_group_size: int | None = field(
        default=None,
        metadata={"help": "columns sharing one scale, for the methods with groups (GPTQ); null: the method's default"},
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "EvalConfig used for every variant"})
    export_variants: tuple = field(
        default=("recommended",),
        metadata={"help": "variant names to export, or recommended: the best on the eval rows that fits the budget"},
    )
    dataset_owner: str = field(
        default="your-kaggle-name", metadata={"help": "Kaggle user or organisation of the dataset ids"}
    )
    wheels: bool = field(default=False, metadata={"help": "put the pip wheels the notebook needs into each export"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing stage folders"})
    ddp_timeout: int = field(
        default=3 * 3600,
        metadata={"help": "seconds a process may wait at a collective under accelerate launch (training only)"},
    )

    def __post_init__(self):
        self._accept_dicts()
        unknown = [m for m in self.quant_methods if m not in variant_names()]
        if unknown:
            raise ValueError(f"PipelineConfig.quant_methods: unknown {unknown}; choose from {variant_names()}")
        object.__setattr__(self, "quant_methods", tuple(self.quant_methods))
        object.__setattr__(self, "export_variants", tuple(self.export_variants))
        if self.calibration_samples is not None:
            check_range("PipelineConfig", "calibration_samples", self.calibration_samples, 1, kind=int)
        check_range("PipelineConfig", "ddp_timeout", self.ddp_timeout, 1, kind=int)
        # Everything that would only fail after hours of training is checked now.
        for method in self.quant_methods:
            self.quant_config(method)
        names = set(self.variant_names()) | {"recommended"}
        bad = [v for v in self.export_variants if v not in names]
        if bad:
            raise ValueError(f"PipelineConfig.export_variants: {bad} will not exist; choose from {sorted(names)}")

    def quant_config(self, method: str) -> QuantConfig:
        quantizer = get_quantizer(variant_fields(method)["method"])
        overrides = {}  # only what is set here: QuantConfig and the method own their defaults
        if quantizer.needs_calibration and self.calibration_samples is not None:
            overrides["num_samples"] = self.calibration_samples
        if "group_size" in settings_fields(quantizer.settings) and self.gptq_group_size is not None:
            overrides["group_size"] = self.gptq_group_size  # GPTQ's, and any method with groups
        return QuantConfig.from_name(method, **overrides)

    def variant_names(self) -> list:
        names = ["teacher", "student-kd"] + (["student-hard"] if self.baseline else [])
        sources = ["teacher", "student-kd"] if self.quantize_teacher else ["student-kd"]
        return names + [f"{src}-{m}" for src in sources for m in self.quant_methods]


@dataclass
class PipelineResult:
    variants: dict  # name -> model folder
    report: object  # kdq.evaluate.CompareResult
    exports: dict  # name -> export folder
    distill_metrics: dict
    recommendation: dict | None = None  # kdq.evaluate.recommend's ranking on the eval rows, when one was asked for

    def summary(self) -> str:
        r = self.report
        if r is None:
            return "(not the main process: the report is written by rank 0)"
        lines = [Path(r.paths["md"]).read_text(), "", f"plot: {r.paths['png']}"]
        if r.gap_closed is not None:
            g = (r.intervals or {}).get("gap_closed")
            ci = f" (95% CI {g.low:.1%} to {g.high:.1%})" if g is not None else ""
            lines.append(
                f"gap closed by distillation: {r.gap_closed:.1%}{ci} of the teacher-vs-hard-label log-loss gap"
            )
        shrink = _shrink_map(self.variants.get("student-kd"))
        if shrink:
            lines.append(
                f"student layers: {shrink['strategy']} shrink kept teacher layers {shrink['kept_layers']} "
                f"of {shrink['source_layers']}"
            )
        sel = self.recommendation
        if sel is not None:
            ranked = ", ".join(sel["ranking"])
            lines.append(
                f"recommended on {sel['rows']} eval rows ({sel['metric']}, tta={sel['tta']}), best first: {ranked}"
            )
            lines += [f"note: {note}" for note in sel.get("notes", ())]
        lines += [f"export: {name} -> {path}" for name, path in self.exports.items()]
        return "\n".join(lines)


def run_pipeline(
    teacher, student_init, train, eval_rows, test_rows, config: PipelineConfig, *, transfer=None
) -> PipelineResult:
    """Distil ``student_init`` from ``teacher`` and ship the best artifact.

    Args:
        teacher: fine-tuned teacher folder (or PEFT adapter folder / Hub id).
        student_init: student starting point (folder, e.g. from :func:`kdq.shrink`, or Hub id).
        train, eval_rows, test_rows: arena rows; ``eval_rows`` selects checkpoints (and the
            export's fp16 check computes them: ``ExportConfig.check_rows``), ``test_rows`` only
            measures (never seen by training or calibration).
        transfer: unlabelled arena rows (a transfer set) for the distilled student; the
            hard-label baseline never sees them (they have no labels).
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(config.distill, overwrite=config.overwrite or config.distill.overwrite)
    kd_config = dataclasses.replace(base, output_dir=str(out / "student-kd"))
    # Before any process group exists: rank 0 copies a Hub teacher while the other ranks wait on a file;
    # then every rank scores its share of the training rows the teacher cache lacks (filling the cache
    # distill reads), the ranks waiting on each other's done-files: no collective, so no timeout.
    # Distill then finds the cache on every rank.
    # the stages (torch) load when the pipeline runs: kdq run --help reads only the config
    from .distill import distill
    from .models import is_hub_id

    if is_hub_id(teacher):  # quantize and export work on folders: keep a local copy of a Hub teacher
        teacher = run_on_rank0(
            out, "teacher-local", lambda: _save_local(teacher, out / "teacher-local", config.overwrite)
        )
    teacher_pass = _teacher_pass_outside_group(teacher, train, transfer, kd_config)
    state = process_group(config.ddp_timeout)
    variants = {"teacher": str(teacher)}
    metrics = {"teacher-pass": teacher_pass}  # distill then reuses this cache on every rank

    kd = distill(student_init, train, eval_rows, teacher=teacher, transfer_data=transfer, config=kd_config)
    variants["student-kd"] = str(kd.student_dir)
    metrics["student-kd"] = kd.metrics
    if config.baseline:
        # the baseline: same init, same labelled rows, hard labels only (no teacher terms)
        hard = distill(
            student_init,
            train,
            eval_rows,
            teacher=None,
            config=base.hard_labels_only(output_dir=str(out / "student-hard")),
        )
        variants["student-hard"] = str(hard.student_dir)
        metrics["student-hard"] = hard.metrics

    # Training ran on every process (DDP); the rest runs once, on the main process, outside the
    # group: the other processes return now instead of waiting at a barrier for hours.
    if not state.is_main_process:
        return PipelineResult(variants=variants, report=None, exports={}, distill_metrics=metrics)
    with single_process():  # the other ranks have returned: rank 0 neither splits rows with nor waits for them
        return _single_process_stages(config, out, base, train, eval_rows, test_rows, variants, metrics)


def _single_process_stages(config, out, base, train, eval_rows, test_rows, variants, metrics) -> PipelineResult:
    """Quantize, compare, recommend, export and verify: rank 0 alone (every GPU of its process)."""
    from .evaluate import compare
    from .evaluate.recommend import recommend
    from .export import export, verify
    from .quantize import quantize

    sources = ["teacher", "student-kd"] if config.quantize_teacher else ["student-kd"]
    for src in sources:
        for method in config.quant_methods:
            qcfg = config.quant_config(method)
            name = f"{src}-{method}"
            variants[name] = str(
                quantize(
                    variants[src], qcfg, calibration=train, out_dir=out / "quantized" / name, overwrite=config.overwrite
                )
            )

    report = compare(
        variants,
        test_rows,
        config.eval,
        out_dir=out / "report",
        teacher="teacher",
        baseline="student-hard" if config.baseline else None,
        student="student-kd",
        overwrite=True,
    )
    selection = None
    if "recommended" in config.export_variants:
        # Chosen on the eval rows, scored with the TTA the export ships; the test rows only report.
        chosen_on = compare(
            dict(variants), eval_rows, config.eval, out_dir=out / "report-eval", teacher="teacher", overwrite=True
        )
        selection = recommend(
            chosen_on.metrics,
            eval_rows,
            config.eval.tta_mode,
            n_resamples=config.eval.bootstrap_samples,
            seed=config.eval.bootstrap_seed,
        )
    exports, failures = {}, {}
    for candidates in _export_names(config.export_variants, report, selection):
        # "recommended" walks down the ranking: the best variant that also passes its own export
        # checks is shipped; a named variant has one candidate, and its failure is raised.
        for name in candidates:
            try:
                folder = export(
                    variants[name],
                    out / "export" / name,
                    ExportConfig(
                        title=_title(name),
                        dataset_id=f"{config.dataset_owner}/kdq-{name}",
                        overwrite=config.overwrite,
                        wheels=config.wheels,
                        tta=config.eval.tta_mode,
                        tta_fraction=config.eval.tta_fraction,
                        batch_size=config.eval.batch_size,
                        check_rows=eval_rows,  # the fp16 check computes them too, besides kdq's arena-like rows
                        configs={"distill": base.to_dict(), "eval": config.eval},
                    ),
                    metrics=report.metrics[name],
                    table_md=Path(report.paths["md"]).read_text(),
                )
                verify(folder)
            except CheckFailed as err:
                if len(candidates) == 1:
                    raise
                failures[name] = str(err)
                print(f"kdq: export of {name} failed its checks, trying the next variant: {err}")
                continue
            exports[name] = str(folder)
            break
    with atomic_dir(out / "pipeline", overwrite=True) as tmp:
        (tmp / PIPELINE_SUMMARY_FILE).write_text(
            json.dumps(
                jsonable(
                    {
                        "variants": variants,
                        "exports": exports,
                        "export_failures": failures,
                        "gap_closed": report.gap_closed,
                        "gap_closed_tta": report.gap_closed_tta,
                        "gap_closed_ci": _ci((report.intervals or {}).get("gap_closed")),
                        "gap_closed_tta_ci": _ci((report.intervals_tta or {}).get("gap_closed")),
                        "student_vs_baseline_ci": _ci((report.intervals or {}).get("student_vs_baseline")),
                        "student_layers": _shrink_map(variants.get("student-kd")),
                        "recommendation": selection,
                        "report": {k: str(v) for k, v in report.paths.items()},
                    }
                ),
                indent=2,
            )
        )
    return PipelineResult(
        variants=variants, report=report, exports=exports, distill_metrics=metrics, recommendation=selection
    )


def _shrink_map(folder) -> dict | None:
    """The ``kdq_shrink`` layer map recorded in a student's config.json (``None`` for other students)."""
    cfg = Path(folder, "config.json") if folder else None
    if cfg is None or not cfg.is_file():
        return None
    info = json.loads(cfg.read_text()).get(SHRINK_KEY)
    return {"strategy": info.get("strategy", "uniform"), **info} if info else None


def _teacher_pass_outside_group(teacher, train, transfer, kd_config: DistillConfig):
    """Fill the teacher cache the distill run will read (same rows, transfer rows included, template, TTA,
    cache folder, features: :func:`~kdq.distill.needs.teacher_needs`). Nothing to fill when the student takes
    its teacher logits live."""
    from .distill.needs import teacher_needs
    from .distill.teacher_pass import teacher_pass

    needs = teacher_needs(kd_config, has_teacher=True)
    if not needs.cached_logits:
        return {"computed": 0, "reused": 0, "live": True}
    cache = teacher_pass(
        teacher,
        train,
        kd_config.teacher_pass,
        template=kd_config.template,
        transfer=transfer,
        features=needs.cached_features,
    )
    return cache.summary()


def _save_local(repo_id: str, folder: Path, overwrite: bool) -> str:
    from .models import load_classifier

    if folder.exists() and not overwrite:
        return str(folder)
    loaded = load_classifier(repo_id)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        loaded.model.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
    return str(folder)


def _export_names(wanted, report, selection) -> list:
    """One list of candidates per wanted export: ``"recommended"`` is :func:`recommend`'s ranking
    (on the eval rows); a name stands for itself."""
    out = []
    for w in wanted:
        if w == "recommended":
            out.append(list(selection["ranking"]))
        elif w not in report.metrics:
            raise ValueError(f"export variant {w!r} is not among {sorted(report.metrics)}")
        else:
            out.append([w])
    return out


def _ci(interval):
    return [interval.low, interval.high] if interval is not None else None


def _title(name: str) -> str:
    return f"kdq arena classifier {name}"[:50]
