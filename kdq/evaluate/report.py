"""``kdq.compare``: every variant on the same rows, one trade-off table, a plot and a budget verdict."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..runtime.constants import (
    EVAL_REPORT_FILE,
    EVAL_REPORT_MD_FILE,
    EVAL_REPORT_PLOT_FILE,
    EVAL_ROWS_FILE,
    FORMAT_KEY,
)
from ..utils.jsonable import jsonable
from .config import EvalConfig, Metrics
from .diagnostics import describe_position_bias, describe_truncation, in_headline
from .metrics import HEADLINES, Headline, headline_of
from .stats import Interval, gap_closed_value, paired_intervals

MB = 1e6
REPORT_FORMAT = 1  # report.json's format version (under FORMAT_KEY), written by compare


@dataclass
class CompareResult:
    """What :func:`compare` produced.

    ``rows``: one dict per variant (the table's cells, unformatted); ``metrics``: name ->
    :class:`Metrics`; ``paths``: ``{"md", "json", "png"}`` -> file; ``gap_closed`` /
    ``gap_closed_tta``: fraction of the teacher-vs-baseline gap in the headline metric the student
    closed (``None`` when undefined, see ``notes``); ``intervals`` / ``intervals_tta``: the paired
    bootstrap 95% intervals (:func:`kdq.evaluate.stats.paired_intervals`) of the headline's per-row
    costs (log loss, or 1 − correct for accuracy: lower is better). ``headline``: the metric that
    ranks (the rows' label scheme's: log loss for LMSYS, accuracy for WSDM).
    """

    rows: list
    metrics: dict
    paths: dict
    gap_closed: float | None
    gap_closed_tta: float | None
    notes: list
    intervals: dict | None = None
    intervals_tta: dict | None = None
    headline: str = "log_loss"


def gap_closed(ll_teacher: float, ll_baseline: float, ll_student: float, headline: Headline | None = None) -> tuple:
    """``(LL_baseline - LL_student) / (LL_baseline - LL_teacher)`` and a note when undefined.

    1.0 means the student matches the teacher; 0.0 means distillation did no better than
    training on hard labels; above 1 the student beats the teacher. ``headline`` (default log
    loss): the metric the three values are in; a higher-is-better one (accuracy) is turned into its
    cost first, so the baseline must be *worse* than the teacher either way.
    """
    h = headline or HEADLINES["log_loss"]
    # the formula lives once, in stats.py
    value = gap_closed_value(h.cost(ll_teacher), h.cost(ll_baseline), h.cost(ll_student))
    if math.isnan(value):
        return None, (
            f"gap closed is undefined: the hard-label baseline ({format(ll_baseline, h.fmt)}) is not worse than "
            f"the teacher ({format(ll_teacher, h.fmt)}) in {h.title}, so there is no gap for distillation to close"
        )
    return value, None


def _shown(iv: Interval | None, headline: Headline) -> Interval | None:
    """An interval of Δ cost as an interval of Δ ``headline`` (accuracy: the sign flips)."""
    return in_headline(iv, headline, difference=True)


def _fmt(x, spec=".4f", none="–"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def shortfalls(v: dict) -> list:
    """What a budget verdict (:func:`kdq.costs.budget.project`'s dict) does not fit, in words: ``[]`` when it fits."""
    return [
        k
        for k, ok in (
            ("no kernel on the GPU", v.get("has_kernel", True)),
            ("time", v["fits_time"]),
            ("GPU memory", v["fits_gpu_memory"]),
            ("host RAM", v["fits_ram"]),
            ("dataset size", v.get("fits_dataset", True)),
        )
        if not ok
    ]


def _fits_cell(v: dict | None) -> str:
    if v is None:
        return "–"
    parts = [f"{v['margin_hours']:+.1f} h", f"{v['margin_gb']:+.1f} GB"]
    if v["fits"]:
        return "✓ " + " / ".join(parts)
    return "✗ " + " / ".join(parts) + f" ({', '.join(shortfalls(v))})"


@dataclass(frozen=True)
class Roles:
    """Which variant plays which part in a comparison: the ``teacher`` (the Δ column's reference), and the
    hard-label ``baseline`` and distilled ``student`` whose pair gives the gap closed (both or neither)."""

    teacher: str
    baseline: str | None = None
    student: str | None = None

    @classmethod
    def of(cls, variants: dict, teacher=None, baseline=None, student=None) -> Roles:
        """The roles among ``variants`` (teacher: the first by default); ``ValueError`` naming a role whose
        variant is not there."""
        roles = cls(next(iter(variants)) if teacher is None else teacher, baseline, student)
        for role, name in (("teacher", roles.teacher), ("baseline", baseline), ("student", student)):
            if name is not None and name not in variants:
                raise ValueError(f"{role}={name!r} is not a variant; choose one of {list(variants)}.")
        return roles

    @property
    def by_name(self) -> dict:
        """variant name -> role (``"teacher"``, ``"baseline"``, ``"student"``)."""
        out = {self.teacher: "teacher"}
        if self.baseline:
            out[self.baseline] = "baseline"
        if self.student:
            out[self.student] = "student"
        return out

    @property
    def gap_trio(self) -> tuple | None:
        """``(teacher, baseline, student)`` when the gap closed is asked for, else ``None``."""
        return (self.teacher, self.baseline, self.student) if self.baseline and self.student else None


@dataclass
class _Report:
    """Everything report.md, report.json and the plot say (built by :func:`_build_report`)."""

    table: list
    metrics: dict
    roles: Roles
    profile: object  # BudgetProfile or None
    scheme: str
    headline: Headline
    n_rows: int
    fingerprint: str
    gap: float | None
    gap_tta: float | None
    notes: list
    intervals: dict | None
    intervals_tta: dict | None


def _diagnostic_cells(m: Metrics) -> dict:
    """A variant's truncation and position-bias figures for its table row (``None`` where not measured)."""
    t, b = m.truncation, m.position_bias
    diff = t["difference"] if t else None
    return {
        "cut_share": t["cut_share"] if t else None,
        "rows_cut": t["rows_cut"] if t else None,
        "cut_minus_uncut": diff["value"] if diff else None,
        "cut_minus_uncut_ci": [diff["low"], diff["high"]] if diff else None,
        "flip_rate": b["flip_rate"] if b else None,
        "swap_disagreement": b["mean_disagreement"] if b else None,
        "swap_rows": b["rows"] if b else None,
        "swap_over": b["over"] if b else None,
    }


def _table_row(name: str, m: Metrics, t: Metrics, role: str, h: Headline, ci, ci_tta) -> dict:
    """One variant's table row; ``t``: the teacher's Metrics; ``ci`` / ``ci_tta``: its Δ intervals (cost)."""
    v = m.budget
    ci, ci_tta = _shown(ci, h), _shown(ci_tta, h)
    key, key_tta = h.key, h.key + "_tta"
    value, value_tta, t_tta = getattr(m, key), getattr(m, key_tta), getattr(t, key_tta)
    return {
        "delta_ci": [ci.low, ci.high] if ci else None,
        "delta_tta_ci": [ci_tta.low, ci_tta.high] if ci_tta else None,
        "variant": name,
        "role": role,
        "headline": key,
        "log_loss": m.log_loss,
        "delta_vs_teacher": value - getattr(t, key),
        "accuracy": m.accuracy,
        "ece": m.ece,
        "log_loss_tta": m.log_loss_tta,
        "accuracy_tta": m.accuracy_tta,
        "delta_tta_vs_teacher": (value_tta - t_tta) if value_tta is not None and t_tta is not None else None,
        "size_mb": m.size_bytes / MB,
        "size_source": m.size_source,
        "peak_memory_mb": m.peak_memory_bytes / MB,
        "peak_memory_kind": m.peak_memory_kind,
        "rows_per_s": m.rows_per_s,
        "device": m.device,
        "weight_format": m.weight_format,
        "n_params": m.n_params,
        "t4_hours": v["projected_hours"] if v else None,
        "basis": v["basis"] if v else None,
        "fits": v["fits"] if v else None,
        "fits_cell": _fits_cell(v),
        **_diagnostic_cells(m),
    }


def _table_rows(
    metrics: dict, teacher: str, roles: dict, intervals=None, intervals_tta=None, headline: Headline | None = None
) -> list:
    """One dict per variant; ``delta_vs_teacher`` / ``delta_ci`` are in the ``headline`` metric (default log loss)."""
    h = headline or HEADLINES["log_loss"]
    return [
        _table_row(
            name,
            m,
            metrics[teacher],
            roles.get(name, ""),
            h,
            intervals["delta"][name] if intervals else None,
            intervals_tta["delta"][name] if intervals_tta else None,
        )
        for name, m in metrics.items()
    ]


def _flip_cell(r: dict) -> str:
    if r.get("flip_rate") is None:
        return "–"
    gated = r.get("swap_over") not in (None, "all rows")
    return _fmt(r["flip_rate"], ".2f") + (f" ({r['swap_rows']} gated)" if gated else "")


def _cut_cell(r: dict) -> str:
    return "–" if r.get("cut_share") is None else f"{r['cut_share']:.0%}"


def markdown_table(rows: list, profile_name: str | None, profile_rows: int | None, headline: str = "log_loss") -> str:
    """The trade-off table as GitHub markdown (one line per variant); the ``headline`` metric's column
    comes first, with its Δ vs the teacher (log loss: then accuracy; accuracy: then log loss). ``rows cut``:
    the share of rows ``max_length`` cut; ``swap flips``: the swap flip rate (gated TTA: over its rows only)."""
    h = HEADLINES[headline]
    other = HEADLINES["accuracy" if headline == "log_loss" else "log_loss"]
    hours = f"T4 h ({profile_rows / 1000:g}k rows)" if profile_rows else "T4 h"
    head = [
        "variant",
        "format",
        h.title,
        "Δ vs teacher [95% CI]",
        other.title,
        "ECE",
        f"{h.title} (TTA)",
        "rows cut",
        "swap flips",
        "size MB",
        "peak mem MB",
        "rows/s",
        "device",
        hours,
        "fits " + (profile_name or ""),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 11 + ["---", "---:", "---"]) + "|"]
    for r in rows:
        name = f"{r['variant']} ({r['role']})" if r["role"] and r["role"] != r["variant"] else r["variant"]
        basis = {"measured-cuda": " (meas.)", "flops-estimate": " (est.)"}.get(r["basis"], "")
        signed = "+" + h.fmt
        delta = _fmt(r["delta_vs_teacher"], signed)
        if r.get("delta_ci") and r["role"] != "teacher":
            delta += f" [{_fmt(r['delta_ci'][0], signed)}, {_fmt(r['delta_ci'][1], signed)}]"
        cells = [
            name,
            r["weight_format"],
            _fmt(r[h.key], h.fmt),
            delta,
            _fmt(r[other.key], other.fmt),
            _fmt(r["ece"], ".3f"),
            _fmt(r.get(h.key + "_tta"), h.fmt),
            _cut_cell(r),
            _flip_cell(r),
            _fmt(r["size_mb"], ".1f") + ("" if r["size_source"] == "disk" else " (mem)"),
            _fmt(r["peak_memory_mb"], ".0f"),
            _fmt(r["rows_per_s"], ".1f"),
            r["device"].split(" (")[0],
            _fmt(r["t4_hours"], ".2f") + basis,
            r["fits_cell"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list, path: Path, title: str, headline: str = "log_loss") -> None:
    """A forest plot, one line per variant (names on the y axis, so labels never overlap).

    Left: the ``headline`` metric (log loss, or accuracy) with its 95% paired-bootstrap interval
    (the teacher's value + Δ interval);
    middle: size on disk; right: projected T4 hours for the budget's rows (or measured rows/s
    when no budget was given). Green fits the budget, red does not, grey: no verdict.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = HEADLINES[headline]
    rows = sorted(rows, key=lambda r: h.cost(r[h.key]), reverse=True)  # best at the top
    names = [f"{r['variant']} ({r['role']})" if r["role"] and r["role"] != r["variant"] else r["variant"] for r in rows]
    colours = [{True: "tab:green", False: "tab:red"}.get(r["fits"], "tab:gray") for r in rows]
    y = list(range(len(rows)))
    fig = Figure(figsize=(12, 1.2 + 0.38 * len(rows)), dpi=110)
    FigureCanvasAgg(fig)  # a private canvas: no pyplot, no global backend switch
    ax_ll, ax_size, ax_time = fig.subplots(1, 3, sharey=True, gridspec_kw={"width_ratios": [2.2, 1, 1]})
    for yi, r, c in zip(y, rows, colours):
        ci = r.get("delta_ci")
        if ci and all(v is not None and math.isfinite(v) for v in ci):
            base = r[h.key] - r["delta_vs_teacher"]  # the teacher's value
            ax_ll.plot([base + ci[0], base + ci[1]], [yi, yi], color=c, lw=2, alpha=0.6)
        ax_ll.scatter([r[h.key]], [yi], color=c, s=30, zorder=3)
    teacher = next((r for r in rows if r["role"] == "teacher"), None)
    if teacher is not None:
        ax_ll.axvline(teacher[h.key], color="k", lw=0.8, ls="--", alpha=0.6)
    better = "higher" if h.higher_is_better else "lower"
    ax_ll.set_xlabel(f"{h.title}, 95% paired-bootstrap CI ({better} is better)")
    ax_size.barh(y, [r["size_mb"] for r in rows], color=colours, alpha=0.7)
    ax_size.set_xlabel("size on disk (MB)")
    if all(r.get("t4_hours") is not None for r in rows):
        ax_time.barh(y, [r["t4_hours"] for r in rows], color=colours, alpha=0.7)
        ax_time.set_xlabel("projected T4 hours (budget rows)")
    else:
        ax_time.barh(y, [r["rows_per_s"] for r in rows], color=colours, alpha=0.7)
        ax_time.set_xlabel("rows/s (measured here)")
    ax_ll.set_yticks(y)
    ax_ll.set_yticklabels(names, fontsize=8)
    for ax in (ax_ll, ax_size, ax_time):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title + "   (green: fits the budget, red: does not)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")


def compare(
    variants: dict,
    rows,
    config: EvalConfig | None = None,
    *,
    out_dir,
    teacher: str | None = None,
    baseline: str | None = None,
    student: str | None = None,
    overwrite: bool = False,
) -> CompareResult:
    """Evaluate every variant on the same rows and write the trade-off report.

    Args:
        variants: name -> model folder, model object, ``LoadedModel`` or a :class:`Metrics`
            already measured on these rows (checked by the rows' fingerprint).
        rows: labelled held-out rows (anything :func:`kdq.load_arena` accepts).
        out_dir: folder for ``report.md``, ``report.json``, ``report.png`` and ``rows.csv`` (one line per
            variant and row: probabilities and what ``max_length`` cut; written atomically; an existing
            folder needs ``overwrite=True``).
        teacher: the reference for the Δ column (default: the first variant).
        baseline, student: the hard-label student and the distilled one; with both, the
            report gives the fraction of the teacher-vs-baseline gap that distillation closed.

    Every variant is scored on every device of the process (several GPUs: one thread each, as predict.py
    splits rows); under ``accelerate launch`` / ``torchrun`` the processes split the rows too, exchange their
    logits through files (no collective) and each returns the same table, which the first process writes.

    Every variant must be a classifier for the rows' label scheme; the scheme's headline metric
    (log loss for LMSYS, accuracy for WSDM) is the Δ column, the intervals and the gap closed, and
    the report says so. Each variant's truncation diagnostics and swap flip rate (with TTA) are in the
    table, the report's diagnostics section and report.json (:mod:`kdq.evaluate.diagnostics`).

    Steps: check the roles and the folder, measure every variant (:func:`_measure`), build the report
    (:func:`_build_report`), write it (:func:`_write_report`).
    Returns:
        :class:`CompareResult`.
    """
    from ..costs.budget import load_budget
    from ..data import load_arena
    from .evaluate import rows_fingerprint

    config = EvalConfig() if config is None else config
    if not isinstance(variants, dict) or not variants:
        raise ValueError("variants must be a non-empty dict of name -> model folder, model object or Metrics.")
    roles = Roles.of(variants, teacher, baseline, student)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # fail now, not after an hour of scoring
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True or choose another out_dir.")
    rows = load_arena(rows)
    profile = load_budget(config.budget) if config.budget is not None else None  # one place: EvalConfig.budget
    config = dataclasses.replace(config, budget=profile)
    metrics = _measure(variants, rows, rows_fingerprint(rows), config)
    report = _build_report(metrics, rows, roles, config)
    paths = _write_report(report, rows, out_dir, overwrite)
    return CompareResult(
        rows=report.table,
        metrics=metrics,
        paths=paths,
        gap_closed=report.gap,
        gap_closed_tta=report.gap_tta,
        notes=report.notes,
        intervals=report.intervals,
        intervals_tta=report.intervals_tta,
        headline=report.headline.key,
    )


def _measure(variants: dict, rows, fingerprint: str, config: EvalConfig) -> dict:
    """name -> :class:`Metrics` of every variant on ``rows``: a model is evaluated, stored Metrics are checked to be
    of these rows and re-projected onto ``config.budget`` (a ``BudgetProfile`` or ``None``)."""
    from tqdm.auto import tqdm

    from ..utils.distributed import rank
    from .evaluate import evaluate, project_metrics

    metrics = {}
    bar = tqdm(list(variants.items()), desc="variants", unit="variant", disable=not config.progress or rank() != 0)
    for name, v in bar:
        if isinstance(v, Metrics):
            if v.rows_fingerprint != fingerprint:
                raise ValueError(
                    f"variant {name!r}: its Metrics were measured on other rows ({v.rows_fingerprint}, "
                    f"these are {fingerprint}); every variant must see the same held-out rows. "
                    "Pass the model instead so it is re-scored."
                )
            # re-project on this comparison's profile (cheap arithmetic), so every row answers the same budget
            metrics[name] = dataclasses.replace(v, budget=project_metrics(v, config.budget))
        else:
            metrics[name] = evaluate(v, rows, config)
            gc.collect()  # free a loaded variant before the next one loads
    return metrics


def _one_scheme(metrics: dict) -> str:
    """The label scheme every variant shares; ``ValueError`` listing them when they differ."""
    schemes = {m.scheme for m in metrics.values()}
    if len(schemes) > 1:
        raise ValueError(
            f"variants are classifiers for different label schemes ({sorted(schemes)}: "
            f"{ {n: m.scheme for n, m in metrics.items()} }); compare variants of one scheme on its rows."
        )
    return next(iter(schemes))


def _gaps(metrics: dict, roles: Roles, headline: Headline) -> tuple:
    """``(gap, gap_tta, notes)``: the gap closed without and with TTA (``None`` when not asked or undefined)."""
    trio = roles.gap_trio
    if trio is None:
        return None, None, []
    key, key_tta = headline.key, headline.key + "_tta"
    notes = []
    gap, note = gap_closed(*(getattr(metrics[n], key) for n in trio), headline)
    if note:
        notes.append(note)
    gap_tta = None
    if all(getattr(metrics[n], key_tta) is not None for n in trio):
        gap_tta, note = gap_closed(*(getattr(metrics[n], key_tta) for n in trio), headline)
        if note:
            notes.append("TTA: " + note)
    return gap, gap_tta, notes


def budget_notes(measured) -> list:
    """Each distinct budget note of ``measured`` (``(name, Metrics)`` pairs; a name may repeat), one line naming
    every variant it concerns."""
    by_note = {}
    for name, m in measured:
        for n in (m.budget or {}).get("notes", []):
            names = by_note.setdefault(n, [])
            if name not in names:
                names.append(name)
    return [f"{', '.join(names)}: {n}" for n, names in by_note.items()]


def _measurement_notes(metrics: dict) -> list:
    """Notes on the measurements: several devices, training-row overlap, and each distinct budget note with the
    variants it concerns."""
    notes = []
    devices = sorted({m.device for m in metrics.values()})
    if len(devices) > 1:
        notes.append(f"variants were measured on different devices ({devices}): compare rows/s with care")
    notes += [overlap_note(name, m.overlap) for name, m in metrics.items() if m.overlap and m.overlap.get("leaked")]
    return notes + budget_notes(metrics.items())


def overlap_note(name: str, overlap: dict) -> str:
    """A report's note on a variant whose held-out rows share prompts or response pairs with its training rows
    (``overlap``: :class:`kdq.data.OverlapReport` as a dict)."""
    o = overlap
    return (
        f"{name}: {o['leaked']} of {o['n_heldout']} held-out rows share a prompt ({o['shared_prompt']}) or a "
        f"response pair ({o['shared_pair']}) with its training rows; its figures may be optimistic "
        "(split with kdq.data.grouped_split)"
    )


def _build_report(metrics: dict, rows, roles: Roles, config: EvalConfig) -> _Report:
    """The table, intervals, gap closed and notes of a comparison (``config.budget``: its ``BudgetProfile``)."""
    from .evaluate import rows_fingerprint

    scheme = _one_scheme(metrics)
    headline = headline_of(scheme)
    intervals, intervals_tta = _intervals(metrics, rows, roles, config, headline)
    table = _table_rows(metrics, roles.teacher, roles.by_name, intervals, intervals_tta, headline)
    gap, gap_tta, notes = _gaps(metrics, roles, headline)
    return _Report(
        table=table,
        metrics=metrics,
        roles=roles,
        profile=config.budget,
        scheme=scheme,
        headline=headline,
        n_rows=len(rows),
        fingerprint=rows_fingerprint(rows),
        gap=gap,
        gap_tta=gap_tta,
        notes=notes + _measurement_notes(metrics),
        intervals=intervals,
        intervals_tta=intervals_tta,
    )


def _report_json(report: _Report) -> dict:
    """report.json's content (JSON-able)."""
    profile = report.profile
    return jsonable(
        {
            FORMAT_KEY: REPORT_FORMAT,
            "scheme": report.scheme,
            "headline": report.headline.key,
            "rows": report.n_rows,
            "rows_fingerprint": report.fingerprint,
            "teacher": report.roles.teacher,
            "baseline": report.roles.baseline,
            "student": report.roles.student,
            "gap_closed": report.gap,
            "gap_closed_tta": report.gap_tta,
            "notes": report.notes,
            "intervals": _intervals_dict(report.intervals),
            "intervals_tta": _intervals_dict(report.intervals_tta),
            "profile": profile.to_dict() if profile else None,
            "variants": [{**r, "metrics": report.metrics[r["variant"]].to_dict()} for r in report.table],
        }
    )


def _write_report(report: _Report, rows, out_dir: Path, overwrite: bool) -> dict:
    """Write report.md, report.json, report.png and rows.csv into ``out_dir`` atomically (the first process
    alone under a launcher; the others wait for it). Returns the paths: ``{"md", "json", "png", "rows"}``."""
    from ..utils.atomic import atomic_dir
    from ..utils.distributed import exchange, rank, world_size
    from .evaluate import sync_dir
    from .per_row import write_row_table

    if rank() == 0:  # under a launcher every process holds the same table; the first writes it
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            (tmp / EVAL_REPORT_MD_FILE).write_text(_markdown(report))
            (tmp / EVAL_REPORT_FILE).write_text(json.dumps(_report_json(report), indent=2))
            write_row_table(tmp / EVAL_ROWS_FILE, report.metrics, rows)
            profile = report.profile
            title = f"{report.n_rows} held-out rows" + (f", budget {profile.name}" if profile else "")
            _plot(report.table, tmp / EVAL_REPORT_PLOT_FILE, title, report.headline.key)
    if world_size() > 1:  # the others return once the report is written (a file, not a barrier)
        exchange(sync_dir(), "compare-report", out_dir.name)
    names = {"md": EVAL_REPORT_MD_FILE, "json": EVAL_REPORT_FILE, "png": EVAL_REPORT_PLOT_FILE, "rows": EVAL_ROWS_FILE}
    return {k: out_dir / name for k, name in names.items()}


def _intervals(metrics: dict, rows, roles: Roles, config: EvalConfig, headline: Headline | None = None):
    """Paired-bootstrap intervals of the ``headline``'s per-row costs (default log loss), without and (when
    every variant has it) with TTA."""
    from ..data import group_ids, labels_of

    cost = (headline or HEADLINES["log_loss"]).row_costs
    labels = labels_of(rows)
    if (labels < 0).any():
        return None, None
    kw = dict(
        baseline=roles.baseline,
        student=roles.student,
        n_resamples=config.bootstrap_samples,
        seed=config.bootstrap_seed,
        groups=group_ids(rows),  # rows sharing a prompt or a response pair resample together
    )
    plain = paired_intervals({n: cost(m.probs, labels) for n, m in metrics.items()}, roles.teacher, **kw)
    tta = None
    if all(m.probs_tta is not None for m in metrics.values()):
        tta = paired_intervals({n: cost(m.probs_tta, labels) for n, m in metrics.items()}, roles.teacher, **kw)
    return plain, tta


def _intervals_dict(iv):
    if iv is None:
        return None
    return {
        "delta": {k: v.to_dict() for k, v in iv["delta"].items()},
        **{k: (v.to_dict() if isinstance(v, Interval) else v) for k, v in iv.items() if k != "delta"},
    }


def _difference_sentence(iv: Interval, what: str, headline: Headline | None = None) -> str:
    """``iv``: an interval of Δ cost (lower is better), said in the ``headline`` metric (default log loss)."""
    h = headline or HEADLINES["log_loss"]
    verdict = (
        "no measurable difference"
        if not iv.excludes_zero
        else "measurably better"
        if iv.high < 0
        else "measurably worse"
    )
    return f"{what}: Δ {h.title} {_shown(iv, h).fmt('+' + h.fmt)} (95% paired bootstrap): {verdict}."


def _md_intro(report: _Report) -> list:
    """The title, the sentence naming the headline metric, and the budget paragraph."""
    from ..runtime.constants import label_scheme

    s, h, profile = label_scheme(report.scheme), report.headline, report.profile
    better = "higher" if h.higher_is_better else "lower"
    lines = [
        f"# Variant trade-offs on {report.n_rows} held-out rows",
        "",
        f"Ranked by **{h.title}** ({better} is better), the headline metric of the {s.competition} rows "
        f"({s.describe()}): the Δ column, its intervals, the gap closed and the export recommendation use it.",
        "",
    ]
    budgets = [m.budget for m in report.metrics.values() if m.budget]
    factors = sorted({v["tta_factor"] for v in budgets if v["tta_factor"] > 1})
    if profile is not None:
        lines += [
            f"Budget **{profile.name}**: {profile.description}. Projected hours are for "
            f"{profile.rows} rows at batch {profile.batch_size}"
            + (f", with swap TTA (x{', x'.join(f'{f:g}' for f in factors)} passes per row)" if factors else "")
            + "; (est.) = FLOP/bandwidth estimate, (meas.) = CUDA measurement scaled by peak FLOP/s. "
            "Fits shows the time margin / GPU-memory margin per GPU.",
            "",
        ]
    return lines


def _md_gap(report: _Report) -> list:
    """The gap closed and the distilled-vs-hard-label sentence (only with a baseline and a student)."""
    trio = report.roles.gap_trio
    if trio is None:
        return []
    h, intervals = report.headline, report.intervals
    t, b, st = (format(getattr(report.metrics[n], h.key), h.fmt) for n in trio)

    def ci(iv):
        g = iv["gap_closed"] if iv else None
        return f" [95% CI {g.low:.0%}, {g.high:.0%}]" if g is not None and math.isfinite(g.low) else ""

    gap, gap_tta = report.gap, report.gap_tta
    if gap is not None:
        lines = [
            f"**Gap closed: {gap:.0%}**{ci(intervals)} of the teacher-vs-baseline "
            f"{h.title.replace(' ', '-')} gap (baseline {b} → student {st}; teacher {t})"
            + (f"; with TTA {gap_tta:.0%}{ci(report.intervals_tta)}." if gap_tta is not None else ".")
        ]
    else:
        lines = ["**Gap closed: undefined** (see notes)."]
    if intervals and intervals.get("student_vs_baseline") is not None:
        what = f"Distilled student ({report.roles.student}) vs hard-label baseline ({report.roles.baseline})"
        lines += ["", _difference_sentence(intervals["student_vs_baseline"], what, h)]
    return lines + [""]


def _md_diagnostics(report: _Report) -> list:
    """One line per variant: what ``max_length`` cut (headline on cut vs uncut rows) and its swap flip rate."""
    lines = []
    for name, m in report.metrics.items():
        if m.truncation is None and m.position_bias is None:
            continue
        cut = describe_truncation(m.truncation, report.headline) if m.truncation else "truncation not recorded"
        swap = describe_position_bias(m.position_bias)
        lines.append(f"- **{name}**: {cut}. Position: {swap}.")
    if not lines:
        return []
    head = (
        "Diagnostics (docs/evaluate.md, *Truncation diagnostics* and *Position bias*): what max_length cut, "
        f"with the {report.headline.title} on cut and uncut rows (95% bootstrap intervals), and how often "
        "scoring with A and B exchanged changes the arg-max class. Per row: rows.csv."
    )
    return [head, ""] + lines + [""]


def _markdown(report: _Report) -> str:
    """report.md: the intro, the table, the gap closed, the intervals, the diagnostics, notes and caveats."""
    profile, intervals = report.profile, report.intervals
    lines = _md_intro(report)
    table = markdown_table(
        report.table, profile.name if profile else None, profile.rows if profile else None, report.headline.key
    )
    lines += [table, ""]
    lines += _md_gap(report)
    if intervals:
        if intervals.get("unit") == "groups":
            units = (
                f"the {intervals['n_units']} groups of the {report.n_rows} rows (rows sharing a prompt or a "
                "response pair are drawn together: kdq.data.group_ids)"
            )
        else:
            units = f"the {report.n_rows} rows (no two share a prompt or a response pair)"
        lines += [
            f"Intervals: {intervals['n_resamples']} paired bootstrap resamples of {units} "
            f"(seed {intervals['seed']}), the same resample for every variant; an interval that contains 0 "
            "is no measurable difference.",
            "",
        ]
    lines += _md_diagnostics(report)
    if report.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in report.notes] + [""]
    lines.append(
        "Peak memory is process RSS on CPU (everything the process holds, tokenizer and data included) "
        "and max allocated tensor memory on CUDA. Size is the weight files on disk, or parameter bytes "
        "in memory for in-memory models (marked mem)."
    )
    return "\n".join(lines) + "\n"
