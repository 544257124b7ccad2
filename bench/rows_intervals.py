"""Paired-bootstrap intervals of a compare report, recomputed from its per-row table (``rows.csv``): no rescoring.

    .venv/bin/python bench/rows_intervals.py runs/demo/report/rows.csv --teacher teacher \
        --baseline student-hard --student student-kd

Prints each variant's mean log loss and Δ vs the teacher with its 95% interval, the gap closed and distilled −
hard-label, without and with TTA, from :func:`kdq.evaluate.stats.paired_intervals`. The table holds no text, so
rows are the resample unit unless ``--groups`` names a CSV of ``id,group`` (e.g. :func:`kdq.data.group_ids` of
the rows).
"""

from __future__ import annotations

import argparse

import pandas as pd

from kdq.evaluate.metrics import row_log_losses
from kdq.evaluate.stats import paired_intervals
from kdq.runtime.constants import label_scheme


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows_csv")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--baseline")
    ap.add_argument("--student")
    ap.add_argument("--scheme", default="lmsys")
    ap.add_argument("--groups", help="CSV of id,group: resample groups instead of rows")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = pd.read_csv(args.rows_csv, dtype={"id": str})
    classes = list(label_scheme(args.scheme).labels)
    for kind in ("p", "p_tta"):
        losses, ids = {}, None
        for variant, g in rows.groupby("variant", sort=False):
            labels = g["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
            losses[variant] = row_log_losses(g[[f"{kind}_{c}" for c in classes]].to_numpy(), labels)
            ids = g["id"].tolist()
        groups = None
        if args.groups:
            table = pd.read_csv(args.groups, dtype={"id": str}).set_index("id")["group"]
            groups = [table[i] for i in ids]
        iv = paired_intervals(
            losses,
            args.teacher,
            baseline=args.baseline,
            student=args.student,
            n_resamples=args.resamples,
            seed=args.seed,
            groups=groups,
        )
        print(f"{kind}: {iv['n_resamples']} resamples of {iv['n_units']} {iv['unit']} (seed {iv['seed']})")
        for variant, d in iv["delta"].items():
            print(f"  {variant}: {losses[variant].mean():.4f}, Δ {d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}]")
        if iv["gap_closed"] is not None:
            g, s = iv["gap_closed"], iv["student_vs_baseline"]
            print(
                f"  gap closed {g.value:.1%} [{g.low:.1%}, {g.high:.1%}]; student − baseline {s.value:+.4f} "
                f"[{s.low:+.4f}, {s.high:+.4f}]"
            )


if __name__ == "__main__":
    main()
