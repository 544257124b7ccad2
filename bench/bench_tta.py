"""Uncertainty-gated swap TTA against full TTA and no TTA, side by side in one run.

Every row is scored once; gated TTA then swap-scores only the ``--fraction`` least confident
rows (lowest top probability). For each model the three modes are measured through
``kdq.evaluate`` on the same rows, interleaved ``--repeats`` times (medians), and the table
reports log loss and *rows* per second (a row scored twice still counts once).

Targets: gated rows/s >= 1.4x full TTA's, log loss within 0.002 of full TTA's.

Usage:
    python bench/bench_tta.py --quick                  # tiny random models, synthetic rows (seconds)
    python bench/bench_tta.py --run-dir runs/demo      # the demo's teacher and student on its held-out pairs
Options: --fraction 0.33, --repeats 3, --batch-size 16, --device cpu|cuda, --data CSV (labelled rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import kdq
from kdq.data import labels_of
from kdq.evaluate.metrics import row_log_losses
from kdq.evaluate.stats import Interval, paired_intervals
from kdq.runtime.constants import TEMPLATE_KEY

ROOT = Path(__file__).resolve().parents[1]

MODES = ("none", "full", "gated")


def measure(models: dict, rows, *, fraction: float, repeats: int, batch_size: int, device) -> list:
    labels = labels_of(rows)
    table = []
    for name, model in models.items():
        runs = {m: [] for m in MODES}
        for _ in range(repeats):  # interleaved, so machine noise hits every mode alike
            for mode in MODES:
                cfg = kdq.EvalConfig(
                    tta=mode, tta_fraction=fraction, batch_size=batch_size, device=device, budget=None, progress=False
                )
                runs[mode].append(kdq.evaluate(model, rows, cfg))
        full_ll = runs["full"][0].log_loss_tta
        full_rs = statistics.median(m.n_rows / m.seconds for m in runs["full"])
        # log loss is deterministic (repeat 0 stands for all); its Δ vs full TTA gets a paired-bootstrap interval
        losses = {
            mode: row_log_losses(runs[mode][0].probs if mode == "none" else runs[mode][0].probs_tta, labels)
            for mode in MODES
        }
        delta = paired_intervals(losses, "full")["delta"]
        for mode in MODES:
            m = runs[mode][0]
            ll = m.log_loss if mode == "none" else m.log_loss_tta
            rs = statistics.median(r.n_rows / r.seconds for r in runs[mode])  # speed is the median
            table.append(
                {
                    "model": name,
                    "tta": mode if mode != "gated" else f"gated {fraction:g}",
                    "log_loss": ll,
                    "delta_vs_full": ll - full_ll,
                    "delta_vs_full_ci": [delta[mode].low, delta[mode].high],
                    "rows_per_s": rs,
                    "speed_vs_full": rs / full_rs,
                    "n_rows": m.n_rows,
                    "device": m.device,
                    "repeats": repeats,
                }
            )
    return table


def markdown(table: list) -> str:
    lines = [
        "| model | TTA | log loss | Δ vs full TTA [95% paired bootstrap] | rows/s | x full TTA |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in table:
        ci = "—" if r["tta"] == "full" else Interval(r["delta_vs_full"], *r["delta_vs_full_ci"]).fmt()
        lines.append(
            f"| {r['model']} | {r['tta']} | {r['log_loss']:.4f} | {ci} | "
            f"{r['rows_per_s']:.1f} | {r['speed_vs_full']:.2f}x |"
        )
    return "\n".join(lines)


def verdict(table: list) -> list:
    out = []
    for r in table:
        if r["tta"].startswith("gated"):
            ok = r["speed_vs_full"] >= 1.4 and abs(r["delta_vs_full"]) <= 0.002
            iv = Interval(r["delta_vs_full"], *r["delta_vs_full_ci"])
            noise = "a measurable difference" if iv.excludes_zero else "no measurable difference"
            out.append(
                f"{r['model']}: gated {r['speed_vs_full']:.2f}x full TTA's rows/s (target >= 1.4x), "
                f"log loss {iv.fmt()} vs full ({noise}; target within "
                f"0.002): {'MET' if ok else 'NOT met'}"
            )
    return out


def quick_inputs(tmp: Path):
    from kdq.testing import make_arena_rows, make_tiny_classifier, make_tokenizer

    tok = make_tokenizer()
    template = kdq.TemplateConfig(max_length=128)
    models = {}
    for name, layers in (("tiny-teacher", 2), ("tiny-student", 1)):
        folder = tmp / name
        make_tiny_classifier(folder, tok, seed=layers, num_layers=layers)
        cfg = json.loads((folder / "config.json").read_text())
        cfg[TEMPLATE_KEY] = template.to_dict()
        (folder / "config.json").write_text(json.dumps(cfg))
        models[name] = str(folder)
    return models, kdq.load_arena(make_arena_rows(48, seed=3, max_words=100))


def demo_inputs(run_dir: Path, data, seed: int):
    models = {"teacher": run_dir / "teacher" / "student", "student-kd": run_dir / "student-kd" / "student"}
    missing = [str(p) for p in models.values() if not p.is_dir()]
    if missing:
        raise SystemExit(f"bench_tta: {missing} not found; run `make demo` first or pass --run-dir.")
    if data is None:  # the demo's held-out pairs, rebuilt from the same VADER archive and seed
        sys.path.insert(0, str(ROOT / "examples"))
        from demo_assets.vader import arena_pairs, fetch_sdist

        info = json.loads((run_dir / "demo.json").read_text())
        size = info["sizes"]
        cache = Path(os.environ.get("KDQ_CACHE", ROOT / ".cache" / "kdq"))  # as examples/demo.py
        _, _, data, _ = arena_pairs(
            fetch_sdist(cache), n_train=size["train"], n_eval=size["eval"], n_test=size["test"], seed=seed
        )
    return {k: str(v) for k, v in models.items()}, kdq.load_arena(data)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random models on synthetic rows")
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "demo"), help="a finished `make demo` run")
    ap.add_argument("--data", default=None, help="labelled rows to score (default: the demo's held-out pairs)")
    ap.add_argument("--seed", type=int, default=0, help="the demo's --seed (to rebuild its held-out pairs)")
    ap.add_argument("--fraction", type=float, default=0.33)
    ap.add_argument("--repeats", type=int, default=None, help="default: 1 quick, 3 otherwise")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        models, rows = quick_inputs(Path(tmp)) if args.quick else demo_inputs(Path(args.run_dir), args.data, args.seed)
        table = measure(
            models, rows, fraction=args.fraction, repeats=repeats, batch_size=args.batch_size, device=args.device
        )
    print(markdown(table))
    print("\n".join(verdict(table)))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    main()
