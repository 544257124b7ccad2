"""``kdq.compare``: every variant on the same rows, one trade-off table, a plot and a budget verdict."""
from __future__ import annotations

import dataclasses
import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .config import EvalConfig, Metrics

MB = 1e6
GAP_EPS = 1e-6  # a teacher-vs-baseline gap below this is noise: "gap closed" is undefined


@dataclass
class CompareResult:
    """What :func:`compare` produced.

    ``rows``: one dict per variant (the table's cells, unformatted); ``metrics``: name ->
    :class:`Metrics`; ``paths``: ``{"md", "json", "png"}`` -> file; ``gap_closed`` /
    ``gap_closed_tta``: fraction of the teacher-vs-baseline log-loss gap the student closed
    (``None`` when undefined, see ``notes``).
    """

    rows: list
    metrics: dict
    paths: dict
    gap_closed: float | None
    gap_closed_tta: float | None
    notes: list


def gap_closed(ll_teacher: float, ll_baseline: float, ll_student: float) -> tuple:
    """``(LL_baseline - LL_student) / (LL_baseline - LL_teacher)`` and a note when undefined.

    1.0 means the student matches the teacher; 0.0 means distillation did no better than
    training on hard labels; above 1 the student beats the teacher.
    """
    gap = ll_baseline - ll_teacher
    if gap <= GAP_EPS:
        return None, (f"gap closed is undefined: the hard-label baseline ({ll_baseline:.4f}) is not worse than "
                      f"the teacher ({ll_teacher:.4f}), so there is no gap for distillation to close")
    return (ll_baseline - ll_student) / gap, None


def _fmt(x, spec=".4f", none="–"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _fits_cell(v: dict | None) -> str:
    if v is None:
        return "–"
    parts = [f"{v['margin_hours']:+.1f} h", f"{v['margin_gb']:+.1f} GB"]
    if v["fits"]:
        return "✓ " + " / ".join(parts)
    why = [k for k, ok in (("time", v["fits_time"]), ("GPU memory", v["fits_gpu_memory"]),
                           ("RAM", v["fits_ram"])) if not ok]
    return "✗ " + " / ".join(parts) + f" ({', '.join(why)})"


def _table_rows(metrics: dict, teacher: str, roles: dict) -> list:
    t = metrics[teacher]
    out = []
    for name, m in metrics.items():
        v = m.budget
        out.append({
            "variant": name, "role": roles.get(name, ""), "log_loss": m.log_loss,
            "delta_vs_teacher": m.log_loss - t.log_loss, "accuracy": m.accuracy, "ece": m.ece,
            "log_loss_tta": m.log_loss_tta,
            "delta_tta_vs_teacher": (m.log_loss_tta - t.log_loss_tta) if m.log_loss_tta is not None
            and t.log_loss_tta is not None else None,
            "size_mb": m.size_bytes / MB, "size_source": m.size_source, "peak_memory_mb": m.peak_memory_bytes / MB,
            "peak_memory_kind": m.peak_memory_kind, "rows_per_s": m.rows_per_s, "device": m.device,
            "weight_format": m.weight_format, "n_params": m.n_params,
            "t4_hours": v["projected_hours"] if v else None, "basis": v["basis"] if v else None,
            "fits": v["fits"] if v else None, "fits_cell": _fits_cell(v),
        })
    return out


def markdown_table(rows: list, profile_name: str | None, profile_rows: int | None) -> str:
    """The trade-off table as GitHub markdown (one line per variant)."""
    hours = f"T4 h ({profile_rows / 1000:g}k rows)" if profile_rows else "T4 h"
    head = ["variant", "format", "log loss", "Δ vs teacher", "accuracy", "ECE", "log loss (TTA)", "size MB",
            "peak mem MB", "rows/s", "device", hours, "fits " + (profile_name or "")]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 9 + ["---", "---:", "---"]) + "|"]
    for r in rows:
        name = f"{r['variant']} ({r['role']})" if r["role"] and r["role"] != r["variant"] else r["variant"]
        basis = {"measured-cuda": " (meas.)", "flops-estimate": " (est.)"}.get(r["basis"], "")
        cells = [name, r["weight_format"], _fmt(r["log_loss"]), _fmt(r["delta_vs_teacher"], "+.4f"),
                 _fmt(r["accuracy"], ".3f"), _fmt(r["ece"], ".3f"), _fmt(r["log_loss_tta"]),
                 _fmt(r["size_mb"], ".1f") + ("" if r["size_source"] == "disk" else " (mem)"),
                 _fmt(r["peak_memory_mb"], ".0f"), _fmt(r["rows_per_s"], ".1f"), r["device"].split(" (")[0],
                 _fmt(r["t4_hours"], ".2f") + basis, r["fits_cell"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list, path: Path, title: str) -> None:
    """Two panels, one labelled point per variant: log loss vs size, log loss vs rows/s."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(11, 4.5), dpi=110)
    FigureCanvasAgg(fig)  # a private canvas: no pyplot, no global backend switch
    for ax, key, label in zip(fig.subplots(1, 2), ("size_mb", "rows_per_s"), ("size on disk (MB)", "rows/s (measured)")):
        points = {}  # variants on the same spot share one label instead of overprinting
        for r in rows:
            colour = {True: "tab:green", False: "tab:red"}.get(r["fits"], "tab:gray")
            ax.scatter(r[key], r["log_loss"], color=colour, s=40, zorder=3)
            points.setdefault((round(r[key], 6), round(r["log_loss"], 6)), []).append(r["variant"])
        for (x, y), names in points.items():
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if min(r[key] for r in rows) > 0:
            ax.set_xscale("log")
            # 1-2-5 ticks: a range inside one decade (100-600 MB) would otherwise get no labels
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("log loss (lower is better)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title + "   (green: fits the budget, red: does not)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def compare(variants: dict, rows, config: EvalConfig = EvalConfig(), *, out_dir, teacher: str | None = None,
            baseline: str | None = None, student: str | None = None, budget="lmsys-2xt4",
            overwrite: bool = False) -> CompareResult:
    """Evaluate every variant on the same rows and write the trade-off report.

    Args:
        variants: name -> model folder, model object, ``LoadedModel`` or a :class:`Metrics`
            already measured on these rows (checked by the rows' fingerprint).
        rows: labelled held-out rows (anything :func:`kdq.load_arena` accepts).
        out_dir: folder for ``report.md``, ``report.json`` and ``report.png`` (written
            atomically; an existing folder needs ``overwrite=True``).
        teacher: the reference for the Δ column (default: the first variant).
        baseline, student: the hard-label student and the distilled one; with both, the
            report gives the fraction of the teacher-vs-baseline gap that distillation closed.
        budget: profile for the verdicts (overrides ``config.budget``); ``None`` for none.
    Returns:
        :class:`CompareResult`.
    """
    from tqdm.auto import tqdm

    from ..atomic import atomic_dir
    from ..data import load_arena
    from .budget import load_budget, project
    from .modelspec import ModelSpec, WeightFormat
    from .evaluate import evaluate, rows_fingerprint

    if not isinstance(variants, dict) or not variants:
        raise ValueError("variants must be a non-empty dict of name -> model folder, model object or Metrics.")
    teacher = next(iter(variants)) if teacher is None else teacher
    for role, name in (("teacher", teacher), ("baseline", baseline), ("student", student)):
        if name is not None and name not in variants:
            raise ValueError(f"{role}={name!r} is not a variant; choose one of {list(variants)}.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # fail now, not after an hour of scoring
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True or choose another out_dir.")
    rows = load_arena(rows)
    fingerprint = rows_fingerprint(rows)
    profile = load_budget(budget) if budget is not None else None
    config = dataclasses.replace(config, budget=profile)

    metrics = {}
    for name, v in tqdm(list(variants.items()), desc="variants", unit="variant", disable=not config.progress):
        if isinstance(v, Metrics):
            if v.rows_fingerprint != fingerprint:
                raise ValueError(f"variant {name!r}: its Metrics were measured on other rows ({v.rows_fingerprint}, "
                                 f"these are {fingerprint}); every variant must see the same held-out rows. "
                                 "Pass the model instead so it is re-scored.")
            # re-project on this comparison's profile (cheap arithmetic), so every row answers the same budget
            verdict = None
            if profile is not None:
                measured = ({"device": v.device, "tokens_per_s": v.tokens_per_s}
                            if v.device.startswith("cuda") else None)
                verdict = project(ModelSpec(**v.spec), WeightFormat(**v.weight_format_spec), v.lengths, profile,
                                  max_length=v.max_length, tta=v.log_loss_tta is not None, measured=measured)
            v = dataclasses.replace(v, budget=verdict)
            metrics[name] = v
        else:
            metrics[name] = evaluate(v, rows, config)
            gc.collect()  # free a loaded variant before the next one loads

    roles = {teacher: "teacher"}
    if baseline:
        roles[baseline] = "baseline"
    if student:
        roles[student] = "student"
    table = _table_rows(metrics, teacher, roles)
    notes, gap, gap_tta = [], None, None
    if baseline and student:
        gap, note = gap_closed(metrics[teacher].log_loss, metrics[baseline].log_loss, metrics[student].log_loss)
        if note:
            notes.append(note)
        if all(metrics[n].log_loss_tta is not None for n in (teacher, baseline, student)):
            gap_tta, note = gap_closed(metrics[teacher].log_loss_tta, metrics[baseline].log_loss_tta,
                                       metrics[student].log_loss_tta)
            if note:
                notes.append("TTA: " + note)
    devices = sorted({m.device for m in metrics.values()})
    if len(devices) > 1:
        notes.append(f"variants were measured on different devices ({devices}): compare rows/s with care")
    by_note = {}  # one line per distinct budget note, naming every variant it concerns
    for name, m in metrics.items():
        for n in (m.budget or {}).get("notes", []):
            by_note.setdefault(n, []).append(name)
    notes += [f"{', '.join(names)}: {n}" for n, names in by_note.items()]

    md = _markdown(table, metrics, profile, teacher, baseline, student, gap, gap_tta, notes, len(rows))
    report = _json_safe({
        "rows": len(rows), "rows_fingerprint": fingerprint, "teacher": teacher, "baseline": baseline,
        "student": student, "gap_closed": gap, "gap_closed_tta": gap_tta, "notes": notes,
        "profile": profile.to_dict() if profile else None,
        "variants": [{**r, "metrics": metrics[r["variant"]].to_dict()} for r in table],
    })
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "report.md").write_text(md)
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        _plot(table, tmp / "report.png", f"{len(rows)} held-out rows" + (f", budget {profile.name}" if profile else ""))
    paths = {k: out_dir / f"report.{k}" for k in ("md", "json", "png")}
    return CompareResult(rows=table, metrics=metrics, paths=paths, gap_closed=gap, gap_closed_tta=gap_tta, notes=notes)


def _markdown(table, metrics, profile, teacher, baseline, student, gap, gap_tta, notes, n_rows) -> str:
    lines = [f"# Variant trade-offs on {n_rows} held-out rows", ""]
    if profile is not None:
        lines += [f"Budget **{profile.name}**: {profile.description}. Projected hours are for "
                  f"{profile.rows} rows at batch {profile.batch_size}"
                  + (f", with swap TTA (x{profile.tta_factor:g})" if any(m.log_loss_tta is not None
                                                                         for m in metrics.values()) else "")
                  + "; (est.) = FLOP/bandwidth estimate, (meas.) = CUDA measurement scaled by peak FLOP/s. "
                  "Fits shows the time margin / GPU-memory margin per GPU.", ""]
    lines += [markdown_table(table, profile.name if profile else None, profile.rows if profile else None), ""]
    if baseline and student:
        t, b, s = (metrics[n].log_loss for n in (teacher, baseline, student))
        if gap is not None:
            lines.append(f"**Gap closed: {gap:.0%}** of the teacher-vs-baseline log-loss gap "
                         f"(baseline {b:.4f} → student {s:.4f}; teacher {t:.4f})"
                         + (f"; with TTA {gap_tta:.0%}." if gap_tta is not None else "."))
        else:
            lines.append("**Gap closed: undefined** (see notes).")
        lines.append("")
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    lines.append("Peak memory is process RSS on CPU (everything the process holds, tokenizer and data included) "
                 "and max allocated tensor memory on CUDA. Size is the weight files on disk, or parameter bytes "
                 "in memory for in-memory models (marked mem).")
    return "\n".join(lines) + "\n"
