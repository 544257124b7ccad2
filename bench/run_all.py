"""Run every benchmark's quick mode: each ``bench/bench_*.py --quick``, one after the other.

``make bench`` calls this. Each benchmark prints its own table; this script adds the wall time
and exit status of each and exits non-zero if any failed. ``--dry-run`` lists the commands.
Full (slow) runs: call a benchmark without ``--quick``; figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def benchmarks() -> list:
    """Every ``bench_*.py`` next to this script, sorted by name."""
    return sorted(BENCH_DIR.glob("bench_*.py"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = ap.parse_args(argv)
    results = []
    for script in benchmarks():
        cmd = [sys.executable, str(script), "--quick"]
        print(f"=== {script.name} --quick", flush=True)
        if args.dry_run:
            print(" ".join(cmd))
            continue
        start = time.perf_counter()
        rc = subprocess.run(cmd, cwd=BENCH_DIR.parent).returncode
        results.append((script.name, rc, time.perf_counter() - start))
    if results:
        print("\n| benchmark | exit | wall s |\n|---|---:|---:|")
        for name, rc, wall in results:
            print(f"| {name} | {rc} | {wall:.0f} |")
    return 1 if any(rc for _, rc, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
