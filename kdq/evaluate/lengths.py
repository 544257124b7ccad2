"""``kdq.sweep_lengths``: the max_length trade-off, the headline metric against projected notebook hours.

On a T4 the row budget decides a notebook's hours more than the weight format does: attention and the MLPs
both grow with the tokens kept, and 25k test rows at 2,000 tokens fill most of the 9 hours (the LMSYS 1st
place ran Gemma2-9B GPTQ-8 at max_length 2000). :func:`sweep_lengths` scores every variant at several
max_lengths and projects each onto the budget profile, so the choice is a measured trade-off: what a shorter
row costs in log loss (a paired-bootstrap interval against the longest length), what it saves in hours.

Every row is tokenized once per tokenizer (:func:`kdq.runtime.template.tokenize_row`) and rendered at each
length by the runtime's own rule (:func:`kdq.runtime.template.assemble`), so the sequences at a length are
exactly those ``predict.py`` scores at that ``max_length`` (``ExportConfig.max_length``, ``--max-length``).
A length at which every row renders as at a longer one (no row that long) is scored once and reused.
Hours come from the cost model (:func:`kdq.evaluate.evaluate.project_metrics` over
:func:`kdq.costs.budget.project`), from the token lengths at that max_length, as :func:`kdq.compare` projects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.constants import EVAL_REPORT_FILE, EVAL_REPORT_MD_FILE, EVAL_REPORT_PLOT_FILE, FORMAT_KEY
from ..runtime.template import MIN_MAX_LENGTH, TemplateConfig, assemble
from ..utils.jsonable import jsonable
from .config import EvalConfig, Metrics
from .metrics import HEADLINES, headline_of
from .report import _fmt, _shown, budget_notes, shortfalls
from .stats import paired_intervals

SWEEP_FORMAT = 1  # report.json's format version (under FORMAT_KEY), written by sweep_lengths
DEFAULT_LENGTHS = (512, 1024, 1536, 2048)
# lengths="auto": these fractions of the longest row, rounded up to a multiple of LENGTH_STEP tokens
AUTO_FRACTIONS = (3 / 8, 1 / 2, 3 / 4, 1)
LENGTH_STEP = 16


# --------------------------------------------------------------------------- rendering at a length
def check_lengths(lengths) -> tuple:
    """``lengths`` as sorted, distinct ints; ``ValueError`` naming the bad value when one is not a max_length
    (an int >= :data:`~kdq.runtime.template.MIN_MAX_LENGTH`, the template's minimum)."""
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
        raise ValueError(f"lengths must be a sequence of ints such as (512, 1024, 2048) or 'auto', got {lengths!r}")
    out = []
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_MAX_LENGTH:
            raise ValueError(
                f"lengths: {n!r} is not a max_length; every length must be an int >= {MIN_MAX_LENGTH} (the "
                "template's minimum), e.g. lengths=(512, 1024, 2048)."
            )
        out.append(int(n))
    if not out:
        raise ValueError("lengths is empty; give at least one max_length, e.g. lengths=(512, 1024).")
    return tuple(sorted(set(out)))


def suggest_lengths(
    full_lengths, *, fractions=AUTO_FRACTIONS, step: int = LENGTH_STEP, floor: int = MIN_MAX_LENGTH
) -> tuple:
    """max_lengths the rows actually reach: ``fractions`` of the longest row (``full_lengths``: tokens per row
    uncut, ``RowTokens.uncut_length``), rounded up to a multiple of ``step``, none below ``floor`` (the template's
    minimum). Rows of 96 to 128 tokens give ``(48, 64, 96, 128)``. Sorted, distinct."""
    lengths = [int(n) for n in full_lengths]
    if not lengths:
        raise ValueError("suggest_lengths needs the token lengths of at least one row.")
    top = math.ceil(max(lengths) / step) * step
    return tuple(sorted({max(floor, math.ceil(top * f / step) * step) for f in fractions}))


def _verdict_sentence(v: dict | None) -> str | None:
    """A budget verdict in a few words: ``fits (+x h)`` or ``does not fit (time, ...; -x h)``."""
    if v is None:
        return None
    if v["fits"]:
        return f"fits ({v['margin_hours']:+.1f} h)"
    return f"does not fit ({', '.join(shortfalls(v))}; {v['margin_hours']:+.1f} h)"


def _signature(*sequence_lists) -> str:
    """A hash of token sequences: equal sequences at two lengths score the same."""
    h = hashlib.sha256()
    for seqs in sequence_lists:
        for s in seqs:
            h.update(array("q", s).tobytes())
            h.update(b"|")
        h.update(b"#")
    return h.hexdigest()


def _tokenizer_key(tokenizer, template: TemplateConfig):
    """Variants whose tokenizers serialize alike share one tokenization (``None``: not comparable, no sharing)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    text = backend.to_str()
    return (hashlib.sha256(text.encode()).hexdigest(), getattr(tokenizer, "bos_token_id", None), template.add_bos)


# --------------------------------------------------------------------------- the result
@dataclass
class LengthSweep:
    """What :func:`sweep_lengths` measured.

    ``table``: one dict per (variant, max_length, TTA), in that order (lengths ascending, TTA off first): the
    headline metric ``value`` (``headline``: log loss for LMSYS rows, accuracy for WSDM), ``delta`` against
    the variant's longest length with ``delta_ci`` (95% paired bootstrap, :func:`kdq.evaluate.stats.
    paired_intervals`), ``rows_cut`` / ``cut_share`` (rows the length cut), ``mean_tokens``, ``hours``
    (projected notebook hours for the profile's test rows; ``None`` without a budget), ``fits`` /
    ``fits_time`` and ``verdict``, and ``reused_from`` (the longer length whose scores it reuses, or ``None``).
    ``metrics``: variant -> max_length -> :class:`~kdq.evaluate.Metrics` (with TTA's numbers when TTA was on).
    ``paths``: ``{"json", "md", "png"}`` when written to a folder.
    """

    table: list
    lengths: tuple
    metrics: dict
    headline: str
    scheme: str
    n_rows: int
    rows_fingerprint: str
    profile: object  # BudgetProfile | None
    tta_mode: str
    notes: list
    intervals: dict = field(repr=False, default_factory=dict)  # "variant" / "variant (TTA)" -> paired_intervals
    paths: dict = field(default_factory=dict)

    def row(self, variant: str, max_length: int, tta: bool = False) -> dict:
        """The table's entry for one (variant, max_length, TTA); ``KeyError`` when there is none."""
        for r in self.table:
            if (r["variant"], r["max_length"], r["tta"]) == (variant, max_length, tta):
                return r
        raise KeyError(f"no entry for variant {variant!r} at max_length {max_length} with tta={tta}")

    def to_markdown(self) -> str:
        """The trade-off as GitHub markdown: a sentence on what was measured, the table, the notes."""
        h = HEADLINES[self.headline]
        p = self.profile
        hours = f"T4 h ({p.rows / 1000:g}k rows)" if p is not None else "T4 h"
        lines = [
            f"# The max_length trade-off on {self.n_rows} held-out rows",
            "",
            f"Every variant scored at max_length {', '.join(map(str, self.lengths))} (rows tokenized once, rendered "
            f"at each length by predict.py's rule), ranked by **{h.title}** "
            f"({'higher' if h.higher_is_better else 'lower'} is better). Δ is against the variant's longest length "
            f"(95% paired-bootstrap interval over {self._resample_unit()}; one that contains 0 is no measurable "
            "difference).",
            "",
        ]
        if p is not None:
            lines += [
                f"Hours are the cost model's projection (kdq.costs) on budget **{p.name}**: {p.description}; "
                f"{p.rows} rows at batch {p.batch_size}, time limit {p.time_limit_hours:g} h; (est.) = FLOP/bandwidth "
                "estimate, (meas.) = CUDA measurement scaled by peak FLOP/s.",
                "",
            ]
        head = ["variant", "max_length", "TTA", h.title, "Δ vs longest [95% CI]", "rows cut", "mean tokens", hours]
        head.append("fits " + (p.name if p is not None else ""))
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---:", "---"] + ["---:"] * 5 + ["---"]) + "|"]
        signed = "+" + h.fmt
        for r in self.table:
            delta = _fmt(r["delta"], signed)
            if r["delta_ci"] is not None and r["max_length"] != r["reference_length"]:
                delta += f" [{_fmt(r['delta_ci'][0], signed)}, {_fmt(r['delta_ci'][1], signed)}]"
            basis = {"measured-cuda": " (meas.)", "flops-estimate": " (est.)"}.get(r["basis"], "")
            length = str(r["max_length"]) + (f" (= {r['reused_from']})" if r["reused_from"] else "")
            cells = [
                r["variant"],
                length,
                r["tta_mode"] if r["tta"] else "none",
                _fmt(r["value"], h.fmt),
                delta,
                f"{r['rows_cut']} ({r['cut_share']:.0%})",
                _fmt(r["mean_tokens"], ".0f"),
                _fmt(r["hours"], ".3g") + basis,
                r["verdict"] or "–",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if self.notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in self.notes] + [""]
        lines.append(
            "Record the chosen length with kdq.ExportConfig(max_length=...): kdq-predict.json carries it and "
            "predict.py renders rows at it (--max-length overrides it in the notebook)."
        )
        return "\n".join(lines) + "\n"

    def _resample_unit(self) -> str:
        """What the bootstrap drew: the rows, or the groups of rows sharing a prompt or a response pair."""
        iv = next(iter(self.intervals.values()), None)
        if iv and iv.get("unit") == "groups":
            return f"the {iv['n_units']} groups of rows sharing a prompt or a response pair"
        return "the rows"

    def to_dict(self) -> dict:
        """JSON-able: the table, the intervals, the profile and every (variant, length)'s scalar metrics."""
        return jsonable(
            {
                FORMAT_KEY: SWEEP_FORMAT,
                "kind": "max_length sweep",
                "scheme": self.scheme,
                "headline": self.headline,
                "rows": self.n_rows,
                "rows_fingerprint": self.rows_fingerprint,
                "lengths": list(self.lengths),
                "tta_mode": self.tta_mode,
                "profile": self.profile.to_dict() if self.profile is not None else None,
                "notes": self.notes,
                "table": self.table,
                "intervals": {
                    k: {
                        "delta": {n: iv.to_dict() for n, iv in v["delta"].items()},
                        **{key: v[key] for key in ("n_resamples", "seed", "unit", "n_units")},
                    }
                    for k, v in self.intervals.items()
                },
                "metrics": {v: {str(n): m.to_dict() for n, m in by.items()} for v, by in self.metrics.items()},
            }
        )

    def plot(self, path) -> Path:
        """A PNG of the headline metric (y) against projected notebook hours (x; measured mean tokens per row
        without a budget): one point per (variant, max_length, TTA) labelled with its length, a line per
        (variant, TTA), the profile's time limit as a dashed vertical line. Returns ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        h = HEADLINES[self.headline]
        path = Path(path)
        have_hours = all(r["hours"] is not None for r in self.table)
        xkey = "hours" if have_hours else "mean_tokens"
        fig = Figure(figsize=(9, 5.5), dpi=110)
        FigureCanvasAgg(fig)  # a private canvas: no pyplot, no global backend switch
        ax = fig.subplots()
        colours = {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(r["variant"] for r in self.table))}
        for (variant, tta), pts in _groups(self.table).items():
            xs, ys = [r[xkey] for r in pts], [r["value"] for r in pts]
            label = f"{variant}, " + (f"TTA ({pts[0]['tta_mode']})" if tta else "no TTA")
            ax.plot(
                xs,
                ys,
                color=colours[variant],
                ls="--" if tta else "-",
                marker="s" if tta else "o",
                ms=6,
                lw=1.6,
                label=label,
            )
            labels = {}  # lengths that render alike share a point: one label, "512/1024"
            for r in pts:
                labels.setdefault((r[xkey], r["value"]), []).append(str(r["max_length"]))
            for (x, y), names in labels.items():
                ax.annotate(
                    "/".join(names),
                    (x, y),
                    textcoords="offset points",
                    xytext=(5, 5 if not tta else -12),
                    fontsize=8,
                    color=colours[variant],
                )
        if have_hours and self.profile is not None:
            limit = self.profile.time_limit_hours
            hours = [r["hours"] for r in self.table]
            where = self.profile.name
            if max(hours) >= limit / 3:  # the limit is on the chart, with the points
                ax.axvline(limit, color="tab:red", ls="--", lw=1.2, label=f"{limit:g} h limit ({where})")
                ax.set_xlim(0, max(max(hours), limit) * 1.08)
            else:  # far below the limit: the points keep the width, the limit is named in the label
                where += f"; the {limit:g} h limit is far to the right"
            ax.set_xlabel(f"projected notebook hours for {self.profile.rows} rows (kdq.costs, {where})")
        else:
            ax.set_xlabel("mean tokens per row (no budget profile: no hours)")
        better = "higher" if h.higher_is_better else "lower"
        ax.set_ylabel(f"{h.title} ({better} is better)")
        ax.ticklabel_format(axis="both", useOffset=False)  # hours as hours, never "1e-5 + 2.5e-1"
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        ax.set_title(
            f"max_length trade-off on {self.n_rows} held-out rows (points labelled with max_length)", fontsize=10
        )
        fig.tight_layout()
        fig.savefig(path, format="png")
        return path


def _groups(table) -> dict:
    """``(variant, tta)`` -> its rows, lengths ascending."""
    out = {}
    for r in table:
        out.setdefault((r["variant"], r["tta"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["max_length"]) for k, v in out.items()}


# --------------------------------------------------------------------------- the sweep
def sweep_lengths(
    variants: dict,
    rows,
    *,
    lengths=DEFAULT_LENGTHS,
    config: EvalConfig | None = None,
    out_dir=None,
    overwrite: bool = False,
) -> LengthSweep:
    """Score every variant at several max_lengths and project each onto the notebook budget.

    Args:
        variants: name -> model folder, model object or ``LoadedModel``, as :func:`kdq.compare` takes them
            (not a ``Metrics``: it cannot be re-scored at another length).
        rows: labelled held-out rows (anything :func:`kdq.load_arena` accepts).
        lengths: max_lengths to render rows at (ints >= 32), or ``"auto"``: :func:`suggest_lengths` of the first
            variant's rows (fractions of the longest row), for rows far shorter than the defaults.
        config: :class:`EvalConfig`: batching, device, TTA (``tta``: each length is also reported with swap TTA
            unless it is off), the budget profile behind the hours (``budget``: default the shipped
            profile; ``None``: no hours), the bootstrap; ``template``: the row template whose ``max_length``
            the sweep replaces (default: each model's recorded one).
        out_dir: when given, ``report.json`` (:data:`kdq.runtime.constants.EVAL_REPORT_FILE`), ``report.md`` and
            ``report.png`` are written there atomically; an existing folder needs ``overwrite=True``.

    Each row is tokenized once per tokenizer and assembled at every length (never re-tokenized); a length at
    which every row (and its swapped copy) renders as at a longer one is not scored again: its entry reuses
    that length's scores (``reused_from``) and the notes say so. Intervals are per variant, against its longest
    length, on the per-row costs of the headline metric (log loss for LMSYS rows, 1 − correct for WSDM).
    Memory: the tokenized rows are held in full (rows × tokens Python ints).

    Returns:
        :class:`LengthSweep`. ``ValueError`` for a bad length, a ``Metrics`` variant, unlabelled rows or a
        variant of another label scheme; ``FileExistsError`` for an existing ``out_dir``.
    """
    from ..costs.budget import load_budget
    from ..data import group_ids
    from .evaluate import _labelled_rows, rows_fingerprint

    config = EvalConfig() if config is None else config
    wanted = _check_arguments(variants, lengths, config)
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None and out_dir.exists() and not overwrite:  # fail now, not after the scoring
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True or choose another out_dir.")
    rows, labels, scheme = _labelled_rows(rows)  # ValueError naming the first row without a label
    headline = headline_of(scheme)
    profile = load_budget(config.budget) if config.budget is not None else None  # fail before the long part
    config = dataclasses.replace(config, budget=profile)
    state = _SweepState(
        rows=rows, labels=labels, scheme=scheme, config=config, profile=profile, fp=rows_fingerprint(rows)
    )
    metrics, extras, notes, wanted = _score_every_variant(variants, state, wanted)
    table, intervals, metrics = _table(metrics, extras, wanted, labels, headline, config, group_ids(rows))
    notes += budget_notes((name, m) for name, by_len in metrics.items() for m in by_len.values())
    result = LengthSweep(
        table=table,
        lengths=wanted,
        metrics=metrics,
        headline=headline.key,
        scheme=scheme.name,
        n_rows=len(rows),
        rows_fingerprint=state.fp,
        profile=profile,
        tta_mode=config.tta_mode,
        notes=notes,
        intervals=intervals,
    )
    if out_dir is not None:
        _write(result, out_dir, overwrite)
    return result


def _check_arguments(variants, lengths, config) -> tuple | None:
    """The lengths to sweep (``None`` for ``"auto"``: chosen from the rows once tokenized); ``ValueError`` for a
    config, variant or length that cannot be swept."""
    if not isinstance(config, EvalConfig):
        raise ValueError(f"config must be a kdq.EvalConfig, got {type(config).__name__}")
    if not isinstance(variants, dict) or not variants:
        raise ValueError("variants must be a non-empty dict of name -> model folder or model object.")
    for name, v in variants.items():
        if isinstance(v, Metrics):
            raise ValueError(
                f"variant {name!r} is a Metrics: a sweep re-scores every variant at each max_length, so pass its "
                "model folder or model object instead."
            )
    return None if isinstance(lengths, str) and lengths == "auto" else check_lengths(lengths)


def _score_every_variant(variants: dict, state: _SweepState, wanted) -> tuple:
    """``(metrics, extras, notes, lengths)``: each variant checked against the rows it was trained on
    (:func:`kdq.evaluate.evaluate._check_overlap`), loaded once and scored at every length; ``wanted=None``
    ("auto") takes the lengths from the first variant's tokenized rows, none too short for their markers."""
    from tqdm.auto import tqdm

    from ..utils.distributed import rank
    from .evaluate import _check_overlap
    from .report import overlap_note

    metrics, extras, notes, bar = {}, {}, [], None
    try:
        for name, model in variants.items():
            overlap = _check_overlap(model, state.rows, state.config)
            if overlap and overlap["leaked"]:
                notes.append(overlap_note(name, overlap))
            with _Variant(name, model, state) as var:
                floor = max(MIN_MAX_LENGTH, max(t.min_max_length for t in var.tokens))  # room for text in every row
                if wanted is None:
                    wanted = suggest_lengths([t.uncut_length for t in var.tokens], floor=floor)
                elif min(wanted) < floor:
                    raise ValueError(
                        f"lengths: max_length {min(wanted)} leaves no room for text in some rows of variant {name!r} "
                        f"(their template markers alone take more); the shortest usable length is {floor}."
                    )
                if bar is None:
                    bar = tqdm(
                        total=len(variants) * len(wanted),
                        desc="max_length sweep",
                        unit="length",
                        disable=not state.config.progress or rank() != 0,
                    )
                metrics[name], extras[name] = var.sweep(wanted, bar, notes)
    finally:
        if bar is not None:
            bar.close()
    return metrics, extras, notes, wanted


def _write(result: LengthSweep, out_dir: Path, overwrite: bool) -> None:
    """report.json, report.md and report.png in ``out_dir``, atomically (the first process alone under a
    launcher: every process holds the same table); sets ``result.paths``."""
    from ..utils.atomic import atomic_dir
    from ..utils.distributed import exchange, rank, world_size
    from .evaluate import sync_dir

    if rank() == 0:
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            (tmp / EVAL_REPORT_FILE).write_text(json.dumps(result.to_dict(), indent=2))
            (tmp / EVAL_REPORT_MD_FILE).write_text(result.to_markdown())
            result.plot(tmp / EVAL_REPORT_PLOT_FILE)
    if world_size() > 1:  # the others return once the report is written (a file, not a barrier)
        exchange(sync_dir(), "sweep-report", out_dir.name)
    result.paths = {
        "json": out_dir / EVAL_REPORT_FILE,
        "md": out_dir / EVAL_REPORT_MD_FILE,
        "png": out_dir / EVAL_REPORT_PLOT_FILE,
    }


@dataclass
class _SweepState:
    rows: object
    labels: np.ndarray
    scheme: object
    config: EvalConfig
    profile: object
    fp: str
    tokenized: dict = field(default_factory=dict)  # tokenizer key -> RowTokens list (shared by variants)


class _Variant:
    """One variant loaded on the evaluation devices, its rows tokenized; :meth:`sweep` scores it at each length.

    Loading, scoring and the metrics are :mod:`kdq.evaluate.evaluate`'s (:func:`~kdq.evaluate.evaluate.
    load_variant`, :func:`~kdq.evaluate.evaluate.score_rendered`, the same :class:`Metrics` as :func:`kdq.evaluate`);
    only the rendering differs: assembled per length (:func:`~kdq.evaluate.render.assemble_rows`), not
    re-tokenized."""

    def __init__(self, name, model, state: _SweepState):
        self.name, self.model, self.state = name, model, state

    def __enter__(self):
        from .evaluate import load_variant
        from .render import tokenize_rows

        s = self.state
        try:
            self.variant = load_variant(self.model, s.scheme, s.config)
        except ValueError as err:
            raise ValueError(f"variant {self.name!r}: {err}") from None
        self.template = self.variant.template
        tokenizer = self.variant.loaded.tokenizer
        key = _tokenizer_key(tokenizer, self.template)
        tokens = s.tokenized.get(key) if key is not None else None
        if tokens is None:
            tokens = tokenize_rows(s.rows, tokenizer, self.template, progress=s.config.progress)
            if key is not None:
                s.tokenized[key] = tokens
        self.tokens = tokens
        return self

    def __exit__(self, *exc):
        self.variant.release()  # free this variant before the next one loads
        return False

    def sweep(self, lengths, bar, notes) -> tuple:
        """``({max_length: Metrics}, {max_length: extra})``, scoring each distinct rendering once, longest first."""
        from .evaluate import warm_up
        from .render import SWAP_COLUMN, assemble_rows

        s = self.state
        both = s.config.tta_mode != "none"
        scored, out, extra = {}, {}, {}
        shortest = min(self.tokens, key=lambda t: t.uncut_length)
        warm_up(self.variant.models, self.variant.loaded.tokenizer, [assemble(shortest, self.template)[0]])
        for n in sorted(lengths, reverse=True):
            bar.set_postfix_str(f"{self.name} @ {n}")
            template = self.template.replace(max_length=n)
            rendered = assemble_rows(s.rows, self.tokens, template, both_orders=both)
            sig = _signature(rendered["input_ids"], rendered[SWAP_COLUMN] if both else [])
            if sig in scored:
                base = scored[sig]
                truncation = {**base.truncation, "max_length": n}  # the same rows, cut alike
                out[n] = dataclasses.replace(base, max_length=n, budget=None, truncation=truncation)
                longest = max(t.uncut_length for t in self.tokens)
                notes.append(
                    f"{self.name}: max_length {n} renders every row as {base.max_length} does (its longest row has "
                    f"{longest} tokens): scored once, the {base.max_length} scores reused"
                )
                extra[n] = {"reused_from": base.max_length}
            else:
                out[n] = self._score(rendered, template)
                scored[sig] = out[n]
                extra[n] = {"reused_from": None}
            lost = int(out[n].lost.sum())
            total = sum(sum(r.text_lengths) for r in self.tokens)
            extra[n].update(rows_cut=int(out[n].cut.sum()), tokens_lost_share=lost / max(total, 1))
            bar.update(1)
        return {n: out[n] for n in sorted(out)}, extra

    def _score(self, rendered, template) -> Metrics:
        from .evaluate import PeakMemory, _metrics_of, score_rendered, scoring_of

        s = self.state
        with PeakMemory(self.variant.devices) as peak:
            scored = score_rendered(self.variant, rendered, s.config)
        scoring = scoring_of(self.variant, rendered, template, scored, peak)
        return _metrics_of(scoring, s.rows, s.labels, s.scheme, s.config)


def _table(metrics: dict, extras: dict, lengths, labels, headline, config: EvalConfig, groups) -> tuple:
    """``(table, intervals, metrics)``: per variant and TTA setting, every length against the longest (the
    bootstrap draws whole ``groups``: rows sharing a prompt or a response pair); the metrics with their budget
    verdicts (each for the TTA setting it was scored with)."""
    from .evaluate import project_metrics

    profile = config.budget
    longest = max(lengths)
    tta_on = config.tta_mode != "none"
    table, intervals, projected = [], {}, {}
    for name, by_len in metrics.items():
        for tta in (False, True) if tta_on else (False,):
            key = headline.key + ("_tta" if tta else "")
            costs = {str(n): headline.row_costs(m.probs_tta if tta else m.probs, labels) for n, m in by_len.items()}
            iv = paired_intervals(
                costs, str(longest), n_resamples=config.bootstrap_samples, seed=config.bootstrap_seed, groups=groups
            )
            intervals[name + (" (TTA)" if tta else "")] = iv
            for n, m in by_len.items():
                run = m if tta else dataclasses.replace(m, tta_mode="none")
                verdict = project_metrics(run, profile)
                ci = _shown(iv["delta"][str(n)], headline)
                value = getattr(m, key)
                table.append(
                    {
                        "variant": name,
                        "max_length": n,
                        "tta": tta,
                        "tta_mode": config.tta_mode if tta else "none",
                        "headline": headline.key,
                        "value": value,
                        "log_loss": m.log_loss_tta if tta else m.log_loss,
                        "accuracy": m.accuracy_tta if tta else m.accuracy,
                        "reference_length": longest,
                        "delta": ci.value,
                        "delta_ci": [ci.low, ci.high],
                        "rows_cut": int(extras[name][n]["rows_cut"]),
                        "cut_share": extras[name][n]["rows_cut"] / max(m.n_rows, 1),
                        "tokens_lost_share": extras[name][n]["tokens_lost_share"],
                        "mean_tokens": m.mean_tokens,
                        "longest_tokens": int(m.lengths.max()) if len(m.lengths) else 0,
                        "hours": verdict["projected_hours"] if verdict else None,
                        "basis": verdict["basis"] if verdict else None,
                        "limit_hours": verdict["limit_hours"] if verdict else None,
                        "margin_hours": verdict["margin_hours"] if verdict else None,
                        "fits": verdict["fits"] if verdict else None,
                        "fits_time": verdict["fits_time"] if verdict else None,
                        "verdict": _verdict_sentence(verdict),
                        "reused_from": extras[name][n]["reused_from"],
                    }
                )
        projected[name] = {n: dataclasses.replace(m, budget=project_metrics(m, profile)) for n, m in by_len.items()}
    table.sort(key=lambda r: (list(metrics).index(r["variant"]), r["max_length"], r["tta"]))
    return table, intervals, projected
