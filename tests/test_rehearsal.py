"""bench/rehearsal.py at a small fraction of the mission's widths: every stage's code path stays alive.

The full-size run (Danube3-4B and -500M shapes, 32,000-entry vocabulary, rows past 2,048 tokens) takes
about an hour on 2 cores and is recorded in BENCHMARKS.md; this runs the same stages, in their own
processes, on 1/16 of the width and a quarter of the depth. Its memory ratios mean nothing at this size
(the interpreter alone is 0.5 GB): what it checks is that each stage completes and reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_rehearsal_runs_every_ci_stage_at_a_small_width(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import rehearsal

    out = tmp_path / "rehearsal"
    cmd = [sys.executable, str(ROOT / "bench" / "rehearsal.py"), "--out", str(out)]
    cmd += ["--width", "0.0625", "--layers", "0.25", "--vocab", "2000", "--rows", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "rehearsal.json").read_text())
    stages = {s["stage"]: s for s in record["stages"]}
    assert set(stages) == set(rehearsal.CI_STAGES)
    for name, s in stages.items():
        assert "error" not in s, (name, s)
        assert s["seconds"] > 0 and s["peak_rss_gb"] > 0.1 and s["model_gb"] > 0, (name, s)
        assert s["ratio"] == pytest.approx(s["peak_rss_gb"] / s["model_gb"], rel=1e-6)
    assert stages["distill-full"]["plan"]["peak"] > 0  # the training-memory plan is recorded beside the peak
    assert stages["export-4b"]["disk_gb"] > 0 and (out / "submission-4b.csv").is_file()
    # the 4B export stored fp16 weights and says what the conversion changed
    manifest = json.loads((out / "export" / "4b" / "kdq-manifest.json").read_text())
    assert manifest["fp16_check"]["conversion"]["source_dtypes"] == ["bfloat16"]
    assert "| stage |" in proc.stdout and record["environment"]["commit"]
