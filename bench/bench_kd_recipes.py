"""Which distillation recipe pays off on real weights? One shared teacher, the same seeds, side by side.

On VADER arena pairs (real human ratings) with the SmolLM2-135M teacher that ``make demo``
trains, each student starts from the same shrunk copy of the teacher and trains for the same
epochs with one of these recipes:

* ``hard``: hard labels only (the no-distillation baseline; ``gap closed`` is measured against it);
* ``kd``: cached teacher logits (swap TTA) mixed with CE;
* ``kd+transfer``: plus a transfer set of unlabelled pairs the teacher labels;
* ``kd+transfer+paired``: plus both answer orders of a row in the same batch;
* ``kd+transfer+hidden``: plus the hidden-state term against the live teacher;
* ``live+transfer+hidden``: the same terms, but the KD logits come from the live teacher forward
  (no cache pass, no TTA) and without swap copies: half the steps (the demo's recipe); it is
  compared with ``hard/no-swap``, the hard-label run without swap copies.

Every recipe but ``hard`` / ``hard/no-swap`` uses swap augmentation (``True``) unless it says otherwise.

for each shrink strategy (``uniform``, ``block-influence``) and temperature. It records the
log loss of each student right after shrinking, the training curves (when does CE leave the
ln 3 plateau?), and on the held-out test pairs: log loss, Δ vs teacher, gap closed and the
distilled-vs-hard difference, each with a 95% paired-bootstrap interval, and wall time.

Usage::

    python bench/bench_kd_recipes.py                      # the grid in BENCHMARKS.md (about 1.5-2 h on 2 cores)
    python bench/bench_kd_recipes.py --strategies block-influence --temperatures 1   # a slice
    python bench/bench_kd_recipes.py --quick              # tiny random models, synthetic rows: a smoke run

Writes ``<out>/recipes.json``, ``recipes.md`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import kdq
from kdq.evaluate.metrics import row_log_losses
from kdq.evaluate.stats import Interval, paired_intervals
from kdq.runtime.constants import SHRINK_KEY

ROOT = Path(__file__).resolve().parents[1]

LN3 = math.log(3)
PLATEAU = LN3 - 0.05  # training CE below this (smoothed) = the student left the chance plateau
RECIPES = {  # each compared with the hard-label run of the same strategy and the same swap setting
    "hard": dict(teacher=False, swap_augment=True),
    "kd": dict(swap_augment=True, baseline="hard"),
    "kd+transfer": dict(transfer=True, swap_augment=True, baseline="hard"),
    "kd+transfer+paired": dict(transfer=True, swap_augment="paired", baseline="hard"),
    "kd+transfer+hidden": dict(transfer=True, hidden=True, swap_augment=True, baseline="hard"),
    # the demo's time-boxed recipe: KD logits from the live teacher forward that the hidden term needs
    # anyway (no cache pass, no TTA), and no swap copies (half the steps); its baseline has no swap copies either
    "hard/no-swap": dict(teacher=False, swap_augment=False),
    "live+transfer+hidden": dict(
        transfer=True,
        hidden=True,
        teacher_logits="live",
        teacher_tta=False,
        swap_augment=False,
        baseline="hard/no-swap",
    ),
}


def plateau_exit(history, window: int = 3):
    """First logged step whose moving-average training CE is below :data:`PLATEAU` (``None``: never)."""
    pts = [(h["step"], h["ce"]) for h in history if "ce" in h]
    for k in range(len(pts)):
        chunk = [c for _, c in pts[max(0, k - window + 1) : k + 1]]
        if sum(chunk) / len(chunk) < PLATEAU:
            return pts[k][0]
    return None


def main(argv=None):
    sys.path.insert(0, str(ROOT / "examples"))
    import demo  # examples/demo.py: the data, the teacher recipe and the student recipe live there, once

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random models and synthetic rows (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-kd-recipes"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "kdq"), help="downloads, base model, bench teacher")
    ap.add_argument("--strategies", default="uniform,block-influence")
    ap.add_argument("--temperatures", default="1,2")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--transfer", type=int, help="transfer pairs (default: the demo's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep students already trained in --out (the grid resumes; wall time read from their record)",
    )
    args = ap.parse_args(argv)
    size = dict(demo.SIZES["tiny" if args.quick else "default"])
    if args.transfer is not None:
        size["transfer"] = args.transfer
    out, cache = Path(args.out), Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipes {unknown}; choose from {list(RECIPES)}")

    t0 = time.perf_counter()
    base, train, ev, test, transfer, info = (demo.tiny_inputs if args.quick else demo.real_inputs)(
        size, cache, args.seed
    )
    teacher_dir = out / "teacher"
    if not (teacher_dir / "student" / "config.json").exists():  # one teacher for every recipe (kept between runs)
        demo.train_teacher(base, train, ev, size, teacher_dir, args.seed)
    teacher = teacher_dir / "student"
    teacher_s = time.perf_counter() - t0
    ev_cfg = kdq.EvalConfig(batch_size=32, tta=False, budget=None, progress=False)
    labels = kdq.load_arena(test)["label"]
    t_metrics = kdq.evaluate(str(teacher), test, ev_cfg)
    losses = {"teacher": row_log_losses(t_metrics.probs, labels)}
    results = {"teacher": {"log_loss": t_metrics.log_loss}, "runs": [], "init": {}, "sizes": size, "data": info}
    print(f"teacher: test log loss {t_metrics.log_loss:.4f} ({teacher_s:.0f} s incl. data)", flush=True)

    for strategy in args.strategies.split(","):
        init = out / f"init-{strategy}"
        if not (args.reuse and (init / "config.json").is_file()):
            init = demo.shrink_student(teacher, train, init, strategy, overwrite=True)
        m = kdq.evaluate(str(init), test, ev_cfg)
        results["init"][strategy] = {
            "log_loss": m.log_loss,
            "kept_layers": json.loads((init / "config.json").read_text())[SHRINK_KEY]["kept_layers"],
        }
        print(f"{strategy}: student right after shrinking: test log loss {m.log_loss:.4f}", flush=True)
        for recipe in recipes:
            spec = RECIPES[recipe]
            temps = [None] if spec.get("teacher") is False else [float(t) for t in args.temperatures.split(",")]
            for T in temps:
                name = f"{strategy}/{recipe}" + (f"/T={T:g}" if T is not None else "")
                cfg = demo.student_config(size, args.seed).replace(
                    output_dir=str(out / name.replace("/", "_")),
                    overwrite=True,
                    cache_dir=str(out / "teacher-cache"),
                    **({"temperature": T} if T is not None else {}),
                    **{k: spec[k] for k in ("swap_augment", "teacher_logits", "teacher_tta") if k in spec},
                    hidden_weight=demo.HIDDEN_WEIGHT if spec.get("hidden") else 0.0,
                )
                done = Path(cfg.output_dir) / "student" / "kdq-distill.json"
                if args.reuse and done.is_file():
                    record = json.loads(done.read_text())
                    r = kdq.DistillResult(student_dir=done.parent, metrics=record["metrics"])
                    wall = record["metrics"].get("wall_seconds") or (  # runs from before wall_seconds was recorded
                        record["metrics"]["train_seconds"]
                        + (record["metrics"].get("teacher_pass") or {}).get("seconds", 0)
                    )
                else:
                    start = time.perf_counter()
                    r = kdq.distill(
                        str(init),
                        train,
                        ev,
                        teacher=None if spec.get("teacher") is False else str(teacher),
                        transfer_data=transfer if spec.get("transfer") else None,
                        config=cfg,
                    )
                    wall = time.perf_counter() - start
                m = kdq.evaluate(str(r.student_dir), test, ev_cfg)
                losses[name] = row_log_losses(m.probs, labels)
                results["runs"].append(
                    {
                        "name": name,
                        "strategy": strategy,
                        "recipe": recipe,
                        "temperature": T,
                        "log_loss": m.log_loss,
                        "wall_s": wall,
                        "teacher_pass": r.metrics.get("teacher_pass"),
                        "plateau_exit_step": plateau_exit(r.metrics["history"]),
                        "steps": max((h.get("step", 0) for h in r.metrics["history"]), default=0),
                        "curve": [
                            {k: h[k] for k in ("step", "ce", "kd", "hidden") if k in h}
                            for h in r.metrics["history"]
                            if "ce" in h
                        ],
                    }
                )
                print(f"{name}: test log loss {m.log_loss:.4f}, {wall:.0f} s", flush=True)
    results["wall_s"] = time.perf_counter() - t0
    _intervals(results, losses)
    results["row_losses"] = {k: [round(float(x), 6) for x in v] for k, v in losses.items()}  # to recombine runs
    (out / "recipes.json").write_text(json.dumps(results, indent=2, default=str))
    md = _markdown(results)
    (out / "recipes.md").write_text(md)
    _plot(results, out / "curves.png")
    print("\n" + md)
    return results


def _intervals(results, losses):
    for run in results["runs"]:
        hard = f"{run['strategy']}/{RECIPES[run['recipe']].get('baseline', run['recipe'])}"
        if hard not in losses:
            continue
        iv = paired_intervals(
            {"teacher": losses["teacher"], "hard": losses[hard], "x": losses[run["name"]]},
            "teacher",
            baseline="hard",
            student="x",
            n_resamples=2000,
            seed=0,
        )
        run["delta_vs_teacher"] = iv["delta"]["x"].to_dict()
        if "baseline" in RECIPES[run["recipe"]]:
            run["gap_closed"] = iv["gap_closed"].to_dict()
            run["vs_hard"] = iv["student_vs_baseline"].to_dict()


def _ci(d, spec):
    return Interval(**d).fmt(spec) if d else "–"


def _markdown(results) -> str:
    lines = [
        f"Teacher test log loss {results['teacher']['log_loss']:.4f} (chance ln 3 = {LN3:.4f}); "
        f"{results['sizes']['test']} test pairs; 95% paired-bootstrap intervals (2000 resamples, seed 0).",
        "",
        "| strategy | recipe | T | log loss (init → trained) | Δ vs teacher | gap closed | vs hard labels | "
        "CE leaves plateau at step | steps | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        vs = r.get("vs_hard")
        iv = Interval(**vs) if vs else None
        verdict = (
            ""
            if iv is None
            else " (no measurable difference)"
            if not iv.excludes_zero
            else " (better)"
            if iv.high < 0
            else " (worse)"
        )
        init = results["init"][r["strategy"]]["log_loss"]
        lines.append(
            f"| {r['strategy']} | {r['recipe']} | {'' if r['temperature'] is None else format(r['temperature'], 'g')} "
            f"| {init:.4f} → {r['log_loss']:.4f} | {_ci(r.get('delta_vs_teacher'), '+.4f')} "
            f"| {_ci(r.get('gap_closed'), '.0%')} | {_ci(vs, '+.4f')}{verdict} "
            f"| {r['plateau_exit_step'] if r['plateau_exit_step'] is not None else 'never'} | {r['steps']} "
            f"| {r['wall_s']:.0f} |"
        )
    lines += ["", "Kept layers: " + "; ".join(f"{k}: {v['kept_layers']}" for k, v in results["init"].items())]
    return "\n".join(lines) + "\n"


def _plot(results, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    strategies = list(results["init"])
    fig = Figure(figsize=(6 * len(strategies), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(strategies), squeeze=False)[0]
    for ax, strategy in zip(axes, strategies):
        for r in results["runs"]:
            if r["strategy"] != strategy:
                continue
            pts = [(c["step"], c["ce"]) for c in r["curve"]]
            if pts:
                label = r["recipe"] + (f" T={r['temperature']:g}" if r["temperature"] is not None else "")
                ax.plot(*zip(*pts), label=f"{label} → {r['log_loss']:.3f}", lw=1.2)
        ax.axhline(LN3, color="k", ls="--", lw=0.8)
        ax.axhline(results["teacher"]["log_loss"], color="tab:green", ls=":", lw=0.8)
        ax.set_title(f"{strategy} shrink: training CE (labelled rows)", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("CE")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


if __name__ == "__main__":
    main()
