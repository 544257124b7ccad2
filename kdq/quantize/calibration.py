"""Calibration and probe rows, rendered exactly as training and inference render them."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

log = logging.getLogger("kdq.quantize")


@dataclass
class CalibrationSet:
    """Rendered token-id rows.

    Attributes:
        calibration: ``list[list[int]]``, up to ``num_samples`` rows for GPTQ (empty when the
            method needs none).
        probe: ``list[list[int]]``, ``probe_rows`` rows for verification.
        probe_source: ``"held-out"`` (not in ``calibration``), ``"overlaps-calibration"`` (too
            few rows to hold any out) or ``"synthetic"`` (no calibration given).
    """

    calibration: list
    probe: list
    probe_source: str


def _as_rows(calibration):
    """Arena rows (anything ``kdq.load_arena`` reads: a path, DataFrame, Dataset, dict of columns or
    list of row dicts) or ``list[str]``."""
    if isinstance(calibration, (list, tuple)) and calibration and all(isinstance(r, dict) for r in calibration):
        from ..data import load_arena

        return load_arena(calibration, unlabelled=True)
    if isinstance(calibration, (list, tuple)):
        if not calibration:
            raise ValueError("calibration is an empty list; pass arena rows or a non-empty list of strings.")
        bad = next((i for i, t in enumerate(calibration) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(
                f"calibration[{bad}] is a {type(calibration[bad]).__name__}; a calibration list "
                "must hold strings (or pass arena rows: a CSV/parquet path, DataFrame, Dataset or row dicts)."
            )
        return list(calibration)
    from ..data import load_arena

    return load_arena(calibration, unlabelled=True)  # calibration reads text only: labels are never needed


def _render(rows, indices, tokenizer, template):
    if not indices:
        return []
    if isinstance(rows, list):  # plain strings: same BOS and length cap as the row template
        bos = [tokenizer.bos_token_id] if template.add_bos and tokenizer.bos_token_id is not None else []
        out = []
        for i in indices:
            ids = (bos + tokenizer(rows[i], add_special_tokens=False)["input_ids"])[: template.max_length]
            if not ids:
                raise ValueError(f"calibration[{i}] renders to no tokens; drop empty strings.")
            out.append(ids)
        return out
    from ..data import encode

    return list(encode(rows.select(indices), tokenizer, template, desc="render calibration rows")["input_ids"])


def synthetic_probe(tokenizer, template, n: int) -> list:
    """The probe when no calibration is given: :func:`kdq.data.probe.probe_rows`, rendered."""
    from ..data import encode, load_arena
    from ..data.probe import probe_rows

    rows = load_arena(probe_rows(n))
    return list(encode(rows, tokenizer, template, desc="render probe rows")["input_ids"])


def prepare_calibration(
    calibration, tokenizer, template, *, num_samples: int, probe_rows: int, seed: int, needs_calibration: bool
) -> CalibrationSet:
    """Draw calibration and probe rows with a seeded shuffle and render only those.

    Probe rows come from the rows left after the calibration draw, so the KL to the
    source is measured on rows GPTQ did not fit; with too few rows they overlap.
    """
    if calibration is None:
        if needs_calibration:
            raise ValueError(
                "this method needs calibration data: pass calibration= arena rows (CSV/parquet "
                "path, DataFrame, Dataset) or a list of strings, ideally >= 128 training rows."
            )
        return CalibrationSet([], synthetic_probe(tokenizer, template, probe_rows), "synthetic")
    rows = _as_rows(calibration)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_cal = min(num_samples, len(order)) if needs_calibration else 0
    if needs_calibration and n_cal < num_samples:
        log.warning("calibration has %d rows, fewer than num_samples=%d; using all of them.", n_cal, num_samples)
    cal_idx = order[:n_cal]
    probe_idx = order[n_cal : n_cal + probe_rows]
    source = "held-out"
    if len(probe_idx) < probe_rows:
        # Not enough rows to hold the probe out: reuse calibration rows (recorded in the report).
        extra = [i for i in order if i not in probe_idx][: probe_rows - len(probe_idx)]
        probe_idx = probe_idx + extra
        source = "overlaps-calibration"
    return CalibrationSet(
        _render(rows, cal_idx, tokenizer, template), _render(rows, probe_idx, tokenizer, template), source
    )
