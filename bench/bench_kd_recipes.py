"""Which distillation recipe pays off on real weights, for which student? Side by side, same teacher, same seeds.

On real arena pairs (``--data``: the VADER human ratings the demo uses, and Rotten Tomatoes critics'
verdicts, a second data set built independently) with a SmolLM2-135M teacher fine-tuned by
``kdq.recipe("teacher")``, every student of a kind starts from the same ``kdq.shrink`` of that teacher
and trains with each recipe of :mod:`kdq.recipes`, for every seed:

* students (``--students``): ``width``: narrower *and* shallower (block-influence layers plus Minitron
  width pruning, ``--shape``), the shape of Danube3-500M under Danube3-4B; ``layer``: layers dropped by
  block influence, the teacher's width; ``pretrained``: the ``width`` shape pruned from the *pretrained base
  model* instead of the fine-tuned teacher, its ``kdq_shrink`` record removed (:func:`_student`), so it starts
  task-naive, with a zero score head, and its feature projection starts from ``nn.Linear``'s default
  initialisation: the bench's stand-in for a separately pretrained student such as Danube3-500M;
* recipes (``--recipes``, names in ``kdq.recipes.RECIPES``): ``hard-labels`` (the baseline gap closed is
  measured against), ``logit-kd`` (cached swap-TTA logits + transfer set), ``cross-width`` (+ the
  hidden-state term through learned projections, live teacher), ``cross-width-cached`` (+ the pooled
  feature term from the cache, no live teacher), ``layer-dropped`` (+ the hidden-state term, identity map).

Recipes are chosen on the **eval** rows and reported on the **test** rows. For each run: log loss on
eval and test, gap closed and the distilled-vs-hard difference with 95% paired-bootstrap intervals
(against the hard-label student of the same kind and seed; 2000 resamples, seed 0), when the training
CE leaves the ln 3 plateau (a moving average of the labelled rows' training CE, and the eval log loss at
the half-way evaluation), seconds per optimizer step and the process's peak RSS during training; and
over seeds, the mean and range of gap closed, and the seed mean (each row's log loss averaged over the seeds,
then the same paired bootstrap: :func:`seed_means`), also for each variant ``recipe[...]`` against the grid's
recipe over the seeds both ran.

Usage::

    python bench/bench_kd_recipes.py                       # the grid in BENCHMARKS.md (hours on 2 cores)
    python bench/bench_kd_recipes.py --data vader --seeds 0 --students width --recipes hard-labels,logit-kd
    python bench/bench_kd_recipes.py --quick               # tiny random models, synthetic rows: a smoke run
    python bench/bench_kd_recipes.py --data vader --seeds 0 --students width --recipes cross-width-cached \
        --set loss.feature_weight=8                        # a setting swept: recorded as cross-width-cached[...]
    python bench/bench_kd_recipes.py --data vader --seeds 0 --students width --recipes cross-width-cached \
        --transfer 2400                                    # 3x the transfer pairs: cross-width-cached[transfer=2400]

Runs already in ``<out>/results.jsonl`` are kept (the grid resumes); a run is its data set, student, recipe
(with its ``--set`` changes, labelled by the fields' short names from before DistillConfig had sections, e.g.
``feature_weight=8`` for ``--set loss.feature_weight=8``, so runs recorded earlier keep their labels, and a
``--transfer`` size other than 800), seed and ``--epochs``, and gap closed
compares it with the hard-label run of the same data set, student, seed and epochs, trained with the same
``--set`` changes outside the teacher's own fields (:func:`baseline_label`). Writes ``results.jsonl``,
``recipes.md`` and ``curves.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import kdq
from kdq.config.io import merge
from kdq.distill.config import MOVED_FIELDS, TEACHER_FIELDS
from kdq.evaluate.evaluate import PeakMemory
from kdq.evaluate.metrics import row_log_losses
from kdq.evaluate.stats import Interval, paired_intervals
from kdq.recipes import RECIPES
from kdq.runtime.constants import SHRINK_KEY
from kdq.utils.versions import library_versions

ROOT = Path(__file__).resolve().parents[1]
LN3 = math.log(3)
PLATEAU = LN3 - 0.05  # training CE below this (moving average) = the student left the chance plateau
SIZES = {  # rows and the row template per data set (Rotten Tomatoes snippets are longer than VADER's)
    "vader": dict(n_train=800, n_eval=400, n_test=400, n_transfer=800, max_length=96),
    "rotten-tomatoes": dict(n_train=800, n_eval=400, n_test=400, n_transfer=800, max_length=128),
    "quick": dict(n_train=64, n_eval=32, n_test=32, n_transfer=64, max_length=64),
}
DEFAULT_RECIPES = {
    "width": "hard-labels,logit-kd,cross-width,cross-width-cached",
    "layer": "hard-labels,layer-dropped",
    "pretrained": "hard-labels,cross-width-cached",
}
SHAPE_FILE = "kdq_bench_shape.json"  # a ``pretrained`` student's shrink record, kept beside its folder's config
RUN = dict(batch_size=16, eval_batch_size=32, logging_steps=10)  # the run's size, the same for every recipe
# DistillConfig fields (dotted) the bench sets for every run: --set cannot change them per recipe
RUN_FIELDS = {
    *(f"training.{k}" for k in (*RUN, "epochs", "seed")),
    "output_dir",
    "template",
    "overwrite",
    "teacher_pass.cache_dir",
}
SHORT_NAMES = {new: old for old, new in MOVED_FIELDS.items()}  # a field's label: its name from before the sections
TEACHER_EPOCHS = 1  # the demo teacher's
BOOTSTRAP = dict(n_resamples=2000, seed=0)  # every interval of the bench's tables


def plateau_exit(history, window: int = 3):
    """First logged step whose moving-average training CE is below :data:`PLATEAU` (``None``: never)."""
    pts = [(h["step"], h["ce"]) for h in history if "ce" in h]
    for k in range(len(pts)):
        chunk = [c for _, c in pts[max(0, k - window + 1) : k + 1]]
        if sum(chunk) / len(chunk) < PLATEAU:
            return pts[k][0]
    return None


def _inputs(name, size, cache: Path, seed: int, quick: bool):
    """``(base model folder, train, eval, test, transfer, info)``."""
    if quick:
        from kdq.testing import make_arena_rows, make_tiny_classifier, make_tokenizer

        base = cache / "tiny-base"
        if not base.exists():
            make_tiny_classifier(base, make_tokenizer(), seed=seed, num_layers=6, hidden_size=64, intermediate_size=128)
        rows = [
            make_arena_rows(size[k], seed=seed + i, max_words=40, id_offset=i * 10**6)
            for i, k in enumerate(("n_train", "n_eval", "n_test"))
        ]
        transfer = make_arena_rows(size["n_transfer"], seed=seed + 3, max_words=40, labelled=False, id_offset=3 * 10**6)
        return (base, *rows, transfer, {"name": "synthetic"})
    sys.path.insert(0, str(ROOT / "examples"))
    from demo_assets.datasets import arena_data
    from demo_assets.smollm2 import smollm2_classifier

    counts = {k: v for k, v in size.items() if k.startswith("n_")}
    train, ev, test, transfer, info = arena_data(name, cache, seed=seed, **counts)
    return (smollm2_classifier(cache / "smollm2-135m-cls"), train, ev, test, transfer, info)


def _student(kind: str, teacher: Path, base: Path, train, out: Path, shape: str, quick: bool) -> Path:
    """The student's starting point, made once per data set and kind.

    ``width`` and ``layer`` shrink the fine-tuned ``teacher``. ``pretrained`` shrinks the pretrained ``base``
    to the ``width`` shape and then removes ``config.kdq_shrink`` (kept in ``SHAPE_FILE`` for the report):
    without it kdq sees a student with no tie to the teacher, as Danube3-500M has none to Danube3-4B, so the
    feature projection starts from ``nn.Linear``'s default initialisation instead of the kept-channel scatter
    (:func:`kdq.distill.objective.projection`), and the student has none of the teacher's fine-tuning.
    """
    folder = out / f"init-{kind}"
    if (folder / "config.json").is_file():
        return folder
    hidden, inter, heads, kv, layers = map(int, shape.split(","))
    calib = {k: v[:128] for k, v in train.items()}
    width = (
        dict(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv)
        if kind in ("width", "pretrained")
        else {}
    )
    how = kdq.ShrinkConfig(num_layers=layers, strategy="block-influence", **width)
    if kind != "pretrained":
        kdq.shrink(str(teacher), folder, how, calibration=calib)
        return folder
    staged = out / f".{folder.name}.staged"  # gets the final name once the record is out of its config
    kdq.shrink(str(base), staged, how, calibration=calib, overwrite=True)
    config = json.loads((staged / "config.json").read_text())
    (staged / SHAPE_FILE).write_text(json.dumps(config.pop(SHRINK_KEY), indent=1))
    (staged / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(staged, folder)
    return folder


def _shape(init: Path) -> dict:
    """The student's shrink record: from its config.json, or from ``SHAPE_FILE`` for a ``pretrained`` one."""
    config = json.loads((init / "config.json").read_text())
    return config.get(SHRINK_KEY) or json.loads((init / SHAPE_FILE).read_text())


def _row_losses(model, rows, cfg) -> tuple:
    m = kdq.evaluate(str(model), rows, cfg)
    return m.log_loss, row_log_losses(m.probs, kdq.load_arena(rows)["label"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random models and synthetic rows (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-kd-recipes"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "kdq"), help="downloads and the base model")
    ap.add_argument("--data", default="vader,rotten-tomatoes")
    ap.add_argument("--students", default="width,layer")
    ap.add_argument("--recipes", default=None, help="comma-separated recipe names (default: per student kind)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--shape", default="384,1024,6,2,11", help="width student: hidden,intermediate,heads,kv,layers")
    ap.add_argument("--layers", type=int, default=11, help="layer-dropped student: layers kept")
    ap.add_argument("--epochs", type=float, default=2.0, help="student epochs (labelled + transfer rows, swap copies)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a DistillConfig field (dotted) in every recipe (e.g. loss.feature_weight=8); the run is "
        "recorded as <recipe>[FIELD=VALUE], by the field's short name (feature_weight=8). hard-labels takes the "
        "fields that are not the teacher's own (training.learning_rate=5e-4 gives hard-labels[learning_rate=0.0005], "
        "the baseline such runs are measured against; loss.feature_weight leaves it alone). The run's own "
        "settings, such as training.epochs or training.batch_size, are refused: --epochs sets the length",
    )
    ap.add_argument(
        "--transfer",
        type=int,
        default=None,
        metavar="N",
        help="transfer pairs per data set (default: 800, the grid's); a recipe with a transfer set run at another "
        "count is recorded as <recipe>[transfer=N] (the first N pairs: the grid's 800 are a prefix of them)",
    )
    args = ap.parse_args(argv)
    out, cache = Path(args.out), Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = {_run_key(r) for r in _read(results_file) if "recipe" in r}
    datasets = ["quick"] if args.quick else args.data.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    shape = "48,96,2,1,3" if args.quick else args.shape
    overrides = dict(_field_value(item) for item in args.set)
    if clash := sorted(k for k in overrides if any(k == f or k.startswith(f + ".") for f in RUN_FIELDS)):
        raise SystemExit(
            f"--set {', '.join(clash)}: the run's own settings, the same for every recipe, cannot be set per "
            "recipe; --epochs sets the length of every run"
        )
    ev_cfg = kdq.EvalConfig(batch_size=32, tta=False, budget=None, progress=False)
    started = time.perf_counter()
    for name in datasets:
        size = {**SIZES[name], **({"n_transfer": args.transfer} if args.transfer is not None else {})}
        base, train, ev, test, transfer, info = _inputs(name, size, cache, 0, args.quick)
        d = out / name
        template = kdq.TemplateConfig(max_length=size["max_length"])
        teacher_dir = d / "teacher"
        if not (teacher_dir / "student" / "config.json").exists():  # one teacher per data set, kept between runs
            kdq.distill(
                str(base),
                train,
                ev,
                teacher=None,
                config=RECIPES["teacher"].config(
                    output_dir=str(teacher_dir),
                    template=template,
                    overwrite=True,
                    training={"epochs": TEACHER_EPOCHS, **RUN},
                ),
            )
        teacher = teacher_dir / "student"
        if (name, "teacher") not in {(r["data"], r.get("role")) for r in _read(results_file)}:
            record = {"data": name, "role": "teacher", "info": {k: v for k, v in info.items() if k != "citation"}}
            for split, rows in (("eval", ev), ("test", test)):
                ll, losses = _row_losses(teacher, rows, ev_cfg)
                record[split], record[split + "_rows"] = ll, [round(float(x), 6) for x in losses]
            _append(results_file, record)
        for kind in args.students.split(","):
            layers = shape if kind != "layer" else f"0,0,0,0,{3 if args.quick else args.layers}"
            init = _student(kind, teacher, base, train, d, layers, args.quick)
            init_shape = _shape(init)  # the same for every run of this kind
            for seed in seeds:
                for recipe_name in (args.recipes or DEFAULT_RECIPES[kind]).split(","):
                    recipe = RECIPES[recipe_name]
                    changes = overrides if recipe.teacher else baseline_changes(overrides)
                    run_transfer = transfer if recipe.teacher and recipe.transfer else None
                    n_transfer = len(run_transfer["id"]) if run_transfer else 0
                    label = run_label(recipe_name, changes, n_transfer, SIZES[name]["n_transfer"])
                    if (name, kind, label, seed, args.epochs) in done:
                        continue
                    run = dict(
                        output_dir=str(d / _folder_name(f"{kind}-{label}-s{seed}")),
                        template=template,
                        overwrite=True,
                        training={"seed": seed, "epochs": args.epochs, **RUN},
                        teacher_pass={"cache_dir": str(d / "teacher-cache")},
                    )
                    cfg = recipe.config(**merge(run, _nested(changes)))
                    t0 = time.perf_counter()
                    with PeakMemory("cpu") as peak:
                        r = kdq.distill(
                            str(init),
                            train,
                            ev,
                            teacher=str(teacher) if recipe.teacher else None,
                            transfer_data=run_transfer,
                            config=cfg,
                        )
                    wall = time.perf_counter() - t0
                    steps = max((h.get("step", 0) for h in r.metrics["history"]), default=0)
                    record = {
                        "data": name,
                        "student": kind,
                        "recipe": label,
                        "seed": seed,
                        "epochs": args.epochs,
                        "transfer_rows": n_transfer,
                        "wall_s": wall,
                        "steps": steps,
                        "s_per_step": r.metrics["train_seconds"] / max(steps, 1),
                        "peak_rss_gb": peak.peak / 1e9,
                        "peak_kind": peak.kind,
                        "teacher_pass": r.metrics.get("teacher_pass"),
                        "projections": r.metrics.get("projections"),
                        "plateau_exit_step": plateau_exit(r.metrics["history"]),
                        "curve": [
                            {k: h[k] for k in ("step", "ce", "kd", "hidden", "feature") if k in h}
                            for h in r.metrics["history"]
                            if "ce" in h
                        ],
                        "eval_curve": [
                            {"step": h["step"], "log_loss": h["eval_log_loss"]}
                            for h in r.metrics["history"]
                            if "eval_log_loss" in h
                        ],
                        "shape": init_shape,
                    }
                    for split, rows in (("eval", ev), ("test", test)):
                        ll, losses = _row_losses(r.student_dir, rows, ev_cfg)
                        record[split], record[split + "_rows"] = ll, [round(float(x), 6) for x in losses]
                    _append(results_file, record)
                    # the run is recorded and its student saved: its checkpoints (840 MB a run on the width
                    # grid) only served resumption, and a grid of dozens of runs filled the disk with them
                    shutil.rmtree(Path(cfg.output_dir) / "checkpoints", ignore_errors=True)
                    print(
                        f"{name}/{kind}/{label}/seed {seed}: eval {record['eval']:.4f} test {record['test']:.4f},"
                        f" {wall:.0f} s",
                        flush=True,
                    )
    results = _read(results_file)
    md = markdown(results, environment={**library_versions(), "cpu": _cpu()})
    (out / "recipes.md").write_text(md)
    plot(results, out / "curves.png")
    print("\n" + md + f"\n(this invocation: {time.perf_counter() - started:.0f} s)")
    return results


def run_label(recipe: str, changes: dict, n_transfer: int, default_transfer: int) -> str:
    """A run's recipe label: the recipe's name, then in brackets the ``--set`` changes (dotted names, labelled by
    their short names: :data:`SHORT_NAMES`) and a transfer-set size other than the grid's
    (``cross-width-cached[feature_weight=8,transfer=2400]`` for ``--set loss.feature_weight=8 --transfer 2400``)."""
    tags = {SHORT_NAMES.get(k, k): v for k, v in changes.items()}
    tags.update({"transfer": n_transfer} if n_transfer and n_transfer != default_transfer else {})
    return recipe + ("[" + ",".join(f"{k}={v}" for k, v in tags.items()) + "]" if tags else "")


def baseline_changes(changes: dict) -> dict:
    """The ``--set`` changes (dotted) the hard-label baseline shares with the distillation runs: all but the
    teacher's own fields (:data:`kdq.distill.config.TEACHER_FIELDS`). A run at ``training.learning_rate=5e-4`` is
    measured against hard labels at ``5e-4``, not at the recipe's own rate; ``loss.feature_weight=8`` leaves the
    baseline as it is."""
    return {k: v for k, v in changes.items() if k not in TEACHER_FIELDS}


def baseline_label(recipe: str) -> str:
    """The label of the hard-label run that ``recipe``'s label is measured against (transfer sets and the
    teacher's fields do not touch the baseline)::

        "cross-width-cached[feature_weight=8,learning_rate=0.0005,transfer=2400]" → "hard-labels[learning_rate=0.0005]"
    """
    tags = recipe.partition("[")[2].removesuffix("]")
    pairs = [t.split("=", 1) for t in re.split(r",(?=[\w.]+=)", tags)] if tags else []
    changes = {MOVED_FIELDS.get(k, k): v for k, v in pairs if k != "transfer"}  # labels -> dotted names
    return run_label("hard-labels", baseline_changes(changes), 0, 0)


def _run_key(run: dict) -> tuple:
    """What makes a run itself: data set, student, recipe label, seed and epochs (a run at 3 epochs is not the
    run at 2; its baseline is the hard-label run of the same length)."""
    return run["data"], run["student"], run["recipe"], run["seed"], float(run["epochs"])


def _folder_name(run: str) -> str:
    """A run's folder: its label without brackets, commas or equals signs."""
    return run.translate(str.maketrans({"[": "-", "]": "", ",": "-", "=": "-"}))


def _field_value(item: str) -> tuple:
    """``"loss.feature_weight=8"`` → ``("loss.feature_weight", 8.0)`` (JSON values; anything else stays text). A
    name from before DistillConfig had sections is refused with its dotted spelling."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {item!r}: write FIELD=VALUE, e.g. --set loss.feature_weight=8")
    if key in MOVED_FIELDS:
        new = MOVED_FIELDS[key]
        raise SystemExit(f"--set {key}=...: DistillConfig's {key} is now {new}; write --set {new}={value}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _nested(dotted: dict) -> dict:
    """``{"loss.feature_weight": 8}`` → ``{"loss": {"feature_weight": 8}}`` (what ``Recipe.config`` merges)."""
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _read(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _cpu() -> str:
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import torch

    return f"{model}, {torch.get_num_threads()} threads"


def _half_way(run: dict) -> str:
    """The eval log loss at the end of the first half of training (the first of the per-epoch evals, when the
    run has two or more), or "–"."""
    curve = run.get("eval_curve") or []
    mid = [c for c in curve if c["step"] <= run["steps"] / 2]
    return f"{mid[-1]['log_loss']:.4f}" if len(curve) >= 2 and mid else "–"


def gaps(results: list, split: str) -> dict:
    """``{(data, student, recipe, seed, epochs): {"gap": Interval, "vs_hard": Interval}}`` on ``split``'s rows,
    each against the hard-label run of the same data set, student, seed and epochs."""
    teacher = {r["data"]: r for r in results if r.get("role") == "teacher"}
    runs = {_run_key(r): r for r in results if "recipe" in r}
    out = {}
    for (data, kind, recipe, seed, epochs), r in runs.items():
        hard = runs.get((data, kind, baseline_label(recipe), seed, epochs))
        if hard is None or base_recipe(recipe) == "hard-labels" or data not in teacher:
            continue
        iv = _against_hard(teacher[data][split + "_rows"], hard[split + "_rows"], r[split + "_rows"])
        out[(data, kind, recipe, seed, epochs)] = {"gap": iv["gap_closed"], "vs_hard": iv["student_vs_baseline"]}
    return out


def _against_hard(teacher_rows, hard_rows, rows) -> dict:
    """:func:`paired_intervals` of a run's per-row log losses against the hard-label run's, the teacher's as the
    reference: its ``gap_closed`` and ``student_vs_baseline``."""
    losses = {"teacher": teacher_rows, "hard": hard_rows, "x": rows}
    return paired_intervals(losses, "teacher", baseline="hard", student="x", **BOOTSTRAP)


def base_recipe(recipe: str) -> str:
    """The grid's recipe a variant changes: ``"cross-width-cached[transfer=2400]"`` → ``"cross-width-cached"``."""
    return recipe.split("[", 1)[0]


def seed_means(results: list, split: str) -> dict:
    """Figures over seeds, on ``split``'s rows: each row's log loss averaged over the seeds of an arm, then the
    same paired bootstrap over rows (2000 resamples, seed 0). The interval holds the rows' noise, not the seeds'.

    Returns ``{(data, student, recipe, epochs): {"seeds": [...], "gap": Interval, "vs_base": Interval | None,
    "base_seeds": [...]}}``: ``gap`` is gap closed against the hard-label runs of the same seeds and length;
    ``vs_base`` (variants ``recipe[...]`` only) is the variant's log loss minus the grid's recipe's
    (:func:`base_recipe`), over the seeds both have. Groups with no hard-label run of a matching seed are left out.
    """
    teacher = {r["data"]: r[split + "_rows"] for r in results if r.get("role") == "teacher"}
    runs = {_run_key(r): r for r in results if "recipe" in r}
    groups: dict = {}
    for data, kind, recipe, seed, epochs in runs:
        groups.setdefault((data, kind, recipe, epochs), []).append(seed)

    def mean_rows(data, kind, recipe, epochs, seeds):
        return np.mean([runs[(data, kind, recipe, s, epochs)][split + "_rows"] for s in seeds], axis=0)

    out = {}
    for (data, kind, recipe, epochs), seeds in groups.items():
        hard_label = baseline_label(recipe)
        seeds = sorted(s for s in seeds if (data, kind, hard_label, s, epochs) in runs)
        if base_recipe(recipe) == "hard-labels" or data not in teacher or not seeds:
            continue
        hard, rows = mean_rows(data, kind, hard_label, epochs, seeds), mean_rows(data, kind, recipe, epochs, seeds)
        entry = {"seeds": seeds, "vs_base": None, "base_seeds": []}
        entry["gap"] = _against_hard(teacher[data], hard, rows)["gap_closed"]
        base = base_recipe(recipe)
        both = sorted(set(seeds) & set(groups.get((data, kind, base, epochs), [])))
        if base != recipe and both:
            pair = {"base": mean_rows(data, kind, base, epochs, both), "x": mean_rows(data, kind, recipe, epochs, both)}
            entry["vs_base"] = paired_intervals(pair, "base", **BOOTSTRAP)["delta"]["x"]
            entry["base_seeds"] = both
        out[(data, kind, recipe, epochs)] = entry
    return out


def markdown(results: list, environment: dict | None = None) -> str:
    """One table per data set: every (student, recipe) with its seeds' figures, then the environment."""
    test, ev = gaps(results, "test"), gaps(results, "eval")
    pooled, pooled_ev = seed_means(results, "test"), seed_means(results, "eval")
    teacher = {r["data"]: r for r in results if r.get("role") == "teacher"}
    lines = []
    for data in dict.fromkeys(r["data"] for r in results):
        if data not in teacher:
            continue
        t = teacher[data]
        lines += [
            f"### {data}",
            "",
            f"Teacher log loss: eval {t['eval']:.4f}, test {t['test']:.4f} (chance ln 3 = {LN3:.4f}); "
            f"{len(t['test_rows'])} test rows; 95% paired-bootstrap intervals ({BOOTSTRAP['n_resamples']} resamples, "
            f"seed {BOOTSTRAP['seed']}).",
            "",
            "| student | recipe | epochs | seeds | test log loss (mean) | gap closed, test: mean [range] "
            "| per seed [95% CI] | gap closed, test: seed mean [95% CI] | gap closed, eval: mean "
            "| vs hard labels (first seed) | CE leaves plateau at step | eval log loss half-way | s/step "
            "| peak RSS GB |",
            "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        runs = [r for r in results if r.get("data") == data and "recipe" in r]
        rows = {}  # one table row per student, recipe and length, over seeds (in the order first run)
        for r in runs:
            _, kind, recipe, _, epochs = _run_key(r)
            rows.setdefault((kind, recipe, epochs), []).append(r)
        for (kind, recipe, epochs), group in rows.items():
            group.sort(key=lambda r: r["seed"])
            keys = [_run_key(r) for r in group]
            g = [test[k]["gap"] for k in keys if k in test]
            ge = [ev[k]["gap"].value for k in keys if k in ev]
            vs = test.get(keys[0], {}).get("vs_hard")
            exits = [r["plateau_exit_step"] for r in group]
            gap_cell = (
                f"{statistics.mean(x.value for x in g):.0%} [{min(x.value for x in g):.0%}, "
                f"{max(x.value for x in g):.0%}]"
                if g
                else "–"
            )
            per_seed = "; ".join(Interval(**x.to_dict()).fmt(".0%") for x in g) or "–"
            mean_gap = pooled.get((data, kind, recipe, epochs))
            mean_cell = f"{mean_gap['gap'].fmt('.0%')} ({len(mean_gap['seeds'])})" if mean_gap else "–"
            ge_cell = f"{statistics.mean(ge):.0%}" if ge else "–"
            lines.append(
                f"| {kind} | {recipe} | {epochs:g} | {len(group)} | {statistics.mean(r['test'] for r in group):.4f} "
                f"| {gap_cell} "
                f"| {per_seed} | {mean_cell} | {ge_cell} | {vs.fmt('+.4f') if vs else '–'} "
                f"| {', '.join(str(e) if e else 'never' for e in exits)} "
                f"| {', '.join(_half_way(r) for r in group)} "
                f"| {statistics.mean(r['s_per_step'] for r in group):.2f} "
                f"| {max(r['peak_rss_gb'] for r in group):.1f} |"
            )
        variants = [(k, v) for k, v in pooled.items() if k[0] == data and v["vs_base"] is not None]
        if variants:
            lines += [
                "",
                "Each variant against the grid's recipe, over the seeds both ran (seed mean: each row's log loss "
                "averaged over those seeds, then the paired bootstrap; negative = the variant is better):",
                "",
                "| student | recipe | against | epochs | seeds | Δ log loss, eval [95% CI] "
                "| Δ log loss, test [95% CI] |",
                "|---|---|---|---:|---|---:|---:|",
            ]
            for (_, kind, recipe, epochs), v in variants:
                e = pooled_ev.get((data, kind, recipe, epochs), {}).get("vs_base")
                lines.append(
                    f"| {kind} | {recipe} | {base_recipe(recipe)} | {epochs:g} "
                    f"| {', '.join(map(str, v['base_seeds']))} | {e.fmt('+.4f') if e else '–'} "
                    f"| {v['vs_base'].fmt('+.4f')} |"
                )
        shapes = {r["student"]: r["shape"] for r in runs}
        for kind, s in shapes.items():
            w = s.get("width", {})
            lines.append("")
            lines.append(
                f"{kind} student: layers {s['kept_layers']} of {s['source_layers']}"
                + (f"; width {w['source']} → {w['sizes']}" if w else " (teacher's width)")
            )
        lines.append("")
    if environment:
        lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in environment.items())]
    return "\n".join(lines) + "\n"


def plot(results: list, path: Path) -> None:
    """Training CE per optimizer step (seed 0), one panel per data set and student kind."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [r for r in results if "recipe" in r and r["seed"] == min(x["seed"] for x in results if "seed" in x)]
    panels = list(dict.fromkeys((r["data"], r["student"]) for r in runs))
    if not panels:
        return
    teacher = {r["data"]: r for r in results if r.get("role") == "teacher"}
    fig = Figure(figsize=(5.5 * len(panels), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (data, kind) in zip(axes, panels):
        for r in runs:
            if (r["data"], r["student"]) != (data, kind) or not r["curve"]:
                continue
            ax.plot(
                [c["step"] for c in r["curve"]],
                [c["ce"] for c in r["curve"]],
                lw=1.2,
                label=f"{r['recipe']}, {r['epochs']:g} ep → test {r['test']:.3f}",
            )
        ax.axhline(LN3, color="k", ls="--", lw=0.8)
        if data in teacher:
            ax.axhline(teacher[data]["test"], color="tab:green", ls=":", lw=0.8)
        ax.set_title(f"{data}, {kind} student: training CE (labelled rows)", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("CE")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


if __name__ == "__main__":
    main()
