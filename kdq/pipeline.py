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

from ._config import Config
from ._validate import check_range
from .atomic import atomic_dir
from .distill import DistillConfig, distill
from .errors import CheckFailed
from .evaluate import EvalConfig, compare
from .export import ExportConfig, export, verify
from .models import is_hub_id
from .quantize import QuantConfig, quantize
from .quantize.config import VARIANTS


@dataclass(frozen=True)
class PipelineConfig(Config):
    """What to run after the teacher exists.

    Args:
        out_dir: run folder; every stage writes a subfolder of it.
        distill: base :class:`DistillConfig` of the student runs (``output_dir`` is set per run).
        baseline: also train the hard-label student (needed for "gap closed").
        quant_methods: short variant names (``QuantConfig.from_name``) applied to teacher and student.
        quantize_teacher: quantize the teacher too (the student always is).
        calibration_samples, gptq_group_size: GPTQ settings (rows rendered with the model's template).
        eval: :class:`EvalConfig` used for every variant.
        export_variants: variant names to export, or ``"recommended"``: the lowest log loss
            among the variants that fit the budget.
        dataset_owner: Kaggle user or organisation for ``dataset-metadata.json`` ids.
        wheels: put the pip wheels the notebook needs into each export (``pip download``).
    """

    out_dir: str = "runs/pipeline"
    distill: DistillConfig = field(default_factory=DistillConfig)
    baseline: bool = True
    quant_methods: tuple = ("gptq-8", "gptq-4", "bnb-int8", "bnb-nf4")
    quantize_teacher: bool = True
    calibration_samples: int = 128
    gptq_group_size: int = 128
    eval: EvalConfig = field(default_factory=EvalConfig)
    export_variants: tuple = ("recommended",)
    dataset_owner: str = "your-kaggle-name"
    wheels: bool = False
    overwrite: bool = False

    def __post_init__(self):
        self._accept_dicts()
        unknown = [m for m in self.quant_methods if m not in VARIANTS]
        if unknown:
            raise ValueError(f"PipelineConfig.quant_methods: unknown {unknown}; choose from {sorted(VARIANTS)}")
        object.__setattr__(self, "quant_methods", tuple(self.quant_methods))
        object.__setattr__(self, "export_variants", tuple(self.export_variants))
        check_range("PipelineConfig", "calibration_samples", self.calibration_samples, 1, kind=int)
        # Everything that would only fail after hours of training is checked now.
        for method in self.quant_methods:
            self.quant_config(method)
        names = set(self.variant_names()) | {"recommended"}
        bad = [v for v in self.export_variants if v not in names]
        if bad:
            raise ValueError(f"PipelineConfig.export_variants: {bad} will not exist; choose from {sorted(names)}")

    def quant_config(self, method: str) -> QuantConfig:
        overrides = {}
        if VARIANTS[method]["method"] == "gptq":
            overrides = {"num_samples": self.calibration_samples, "group_size": self.gptq_group_size}
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

    def summary(self) -> str:
        r = self.report
        if r is None:
            return "(not the main process: the report is written by rank 0)"
        lines = [Path(r.paths["md"]).read_text(), "", f"plot: {r.paths['png']}"]
        if r.gap_closed is not None:
            lines.append(f"gap closed by distillation: {r.gap_closed:.1%} of the teacher-vs-hard-label log-loss gap")
        lines += [f"export: {name} -> {path}" for name, path in self.exports.items()]
        return "\n".join(lines)


def run_pipeline(teacher, student_init, train, eval_rows, test_rows, config: PipelineConfig) -> PipelineResult:
    """Distil ``student_init`` from ``teacher`` and ship the best artifact.

    Args:
        teacher: fine-tuned teacher folder (or PEFT adapter folder / Hub id).
        student_init: student starting point (folder, e.g. from :func:`kdq.shrink`, or Hub id).
        train, eval_rows, test_rows: arena rows; ``eval_rows`` selects checkpoints,
            ``test_rows`` only measures (never seen by training or calibration).
    """
    from accelerate import PartialState

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_hub_id(teacher):  # quantize and export work on folders: keep a local copy of a Hub teacher
        state = PartialState()
        with state.main_process_first():  # rank 0 writes it, the others then find it
            teacher = _save_local(teacher, out / "teacher-local", config.overwrite and state.is_main_process)
    base = dataclasses.replace(config.distill, overwrite=config.overwrite or config.distill.overwrite)
    variants = {"teacher": str(teacher)}
    metrics = {}

    kd = distill(student_init, train, eval_rows, teacher=teacher,
                 config=dataclasses.replace(base, output_dir=str(out / "student-kd")))
    variants["student-kd"] = str(kd.student_dir)
    metrics["student-kd"] = kd.metrics
    if config.baseline:
        hard = distill(student_init, train, eval_rows, teacher=None,
                       config=dataclasses.replace(base, output_dir=str(out / "student-hard")))
        variants["student-hard"] = str(hard.student_dir)
        metrics["student-hard"] = hard.metrics

    # Training ran on every process (DDP); the rest runs once, on the main process.
    state = PartialState()
    if not state.is_main_process:
        state.wait_for_everyone()
        return PipelineResult(variants=variants, report=None, exports={}, distill_metrics=metrics)

    sources = ["teacher", "student-kd"] if config.quantize_teacher else ["student-kd"]
    for src in sources:
        for method in config.quant_methods:
            qcfg = config.quant_config(method)
            name = f"{src}-{method}"
            variants[name] = str(quantize(variants[src], qcfg, calibration=train, out_dir=out / "quantized" / name,
                                          overwrite=config.overwrite))

    report = compare(variants, test_rows, config.eval, out_dir=out / "report", teacher="teacher",
                     baseline="student-hard" if config.baseline else None, student="student-kd",
                     budget=config.eval.budget, overwrite=True)
    exports, failures = {}, {}
    for candidates in _export_names(config.export_variants, report):
        # "recommended" walks down the ranking: the best variant that also passes its own export
        # checks is shipped; a named variant has one candidate, and its failure is raised.
        for name in candidates:
            try:
                folder = export(variants[name], out / "export" / name,
                                ExportConfig(title=_title(name), dataset_id=f"{config.dataset_owner}/kdq-{name}",
                                             overwrite=config.overwrite, wheels=config.wheels,
                                             configs={"distill": base.to_dict(), "eval": config.eval}),
                                metrics=report.metrics[name], table_md=Path(report.paths["md"]).read_text())
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
        (tmp / "summary.json").write_text(json.dumps(
            {"variants": variants, "exports": exports, "export_failures": failures, "gap_closed": report.gap_closed,
             "gap_closed_tta": report.gap_closed_tta, "report": {k: str(v) for k, v in report.paths.items()}},
            indent=2))
    state.wait_for_everyone()
    return PipelineResult(variants=variants, report=report, exports=exports, distill_metrics=metrics)


def _save_local(repo_id: str, folder: Path, overwrite: bool) -> str:
    from .models import load_classifier

    if folder.exists() and not overwrite:
        return str(folder)
    loaded = load_classifier(repo_id)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        loaded.model.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
    return str(folder)


def _export_names(wanted, report) -> list:
    """One list of candidates per wanted export: ``"recommended"`` ranks the variants that fit the
    budget by log loss (all variants when none fits); a name stands for itself."""
    out = []
    for w in wanted:
        if w == "recommended":
            pool = [r for r in report.rows if r.get("fits")] or report.rows
            out.append([r["variant"] for r in sorted(pool, key=lambda r: r["log_loss"])])
        elif w not in report.metrics:
            raise ValueError(f"export variant {w!r} is not among {sorted(report.metrics)}")
        else:
            out.append([w])
    return out


def _title(name: str) -> str:
    return f"kdq arena classifier {name}"[:50]
