"""The README model card of an exported folder (markdown)."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.constants import LMSYS, WHEELS_DIR, LabelScheme

# Metrics worth a line on the card, in order: (key in Metrics.to_dict(), label, format).
_CARD_METRICS = (
    ("log_loss", "log loss", "{:.4f}"),
    ("log_loss_tta", "log loss (swap TTA)", "{:.4f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("ece", "ECE", "{:.4f}"),
    ("size_bytes", "size on disk (MB)", "{:.1f}"),
    ("peak_memory_bytes", "peak memory (MB)", "{:.0f}"),
    ("rows_per_s", "rows/s", "{:.1f}"),
    ("device", "measured on", "{}"),
    ("n_rows", "held-out rows", "{}"),
)


def _fmt(key, fmt, value):
    if value is None:
        return "n/a"
    if key.endswith("_bytes"):
        value = value / 1e6
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def metrics_table(metrics: dict, headline: str = "log_loss") -> str:
    """The card's metrics, the label scheme's ``headline`` metric (and its TTA value) first."""
    first = [m for m in _CARD_METRICS if m[0] in (headline, headline + "_tta")]
    ordered = first + [m for m in _CARD_METRICS if m not in first]
    rows = [(label, _fmt(key, fmt, metrics.get(key))) for key, label, fmt in ordered if key in metrics]
    if not rows:
        return ""
    return "\n".join(["| metric | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def budget_lines(budget: dict) -> str:
    if not budget:
        return ""
    fits = budget.get("fits")
    verdict = "fits" if fits else ("does NOT fit" if fits is not None else "unknown")
    details = ", ".join(f"{k}: {v}" for k, v in budget.items() if k != "fits" and not isinstance(v, (dict, list)))
    return f"**Kaggle budget: {verdict}.** {details}"


def _weights_mb(files: dict) -> float:
    return sum(e["size"] for e in files.values() if e["role"] == "weights") / 1e6


def install_line(slug: str, wheels: dict | None) -> str | None:
    if not wheels:
        return None
    return f"pip install --no-index --find-links /kaggle/input/{slug}/{WHEELS_DIR} " + " ".join(
        f"'{a}'" if any(c in a for c in "<>") else a for a in wheels["install_args"]
    )


@dataclass(frozen=True)
class CardFacts:
    """What the card says about one exported folder, besides its :class:`~kdq.export.config.ExportConfig`.

    ``files``: the folder's files (:func:`kdq.export.files.list_files`); ``template``: the row template as
    a dict; ``versions``: library versions; ``sources``: name → ``"path (fingerprint)"``; ``scheme``: the
    model's :class:`~kdq.runtime.constants.LabelScheme` (its competition, classes, headline metric and
    submission); ``metrics`` / ``budget``: kdq.evaluate's record and its verdict; ``table_md``: the
    trade-off table; ``wheels``: the ``wheels/`` record; ``fp16_check``: the export's fp16 check record.
    """

    quant_method: str | None
    template: dict
    files: dict
    versions: dict
    sources: dict
    scheme: LabelScheme = LMSYS
    metrics: dict | None = None
    budget: dict | None = None
    table_md: str | None = None
    wheels: dict | None = None
    fp16_check: dict | None = None


def render_card(config, facts: CardFacts) -> str:
    """README.md: what the model is, how it scores, how to upload it and run it offline."""
    lines = _summary_lines(config, facts)
    if facts.table_md:
        lines += ["## Trade-offs", "", facts.table_md.strip(), ""]
    if facts.metrics:
        lines += ["## This model", "", metrics_table(facts.metrics, facts.scheme.headline), ""]
    if facts.budget:
        lines += [budget_lines(facts.budget), ""]
    lines += _UPLOAD_LINES + _notebook_lines(config, facts) + _wheels_lines(config, facts) + _files_lines(facts)
    return "\n".join(lines)


def _summary_lines(config, facts: CardFacts) -> list:
    """The title, the description and what the folder holds."""
    scheme, quant_method, check = facts.scheme, facts.quant_method, facts.fp16_check or {}
    lines = [f"# {config.title}", ""]
    if config.description:
        lines += [config.description, ""]
    lines += [
        f"A sequence classifier for the {scheme.competition} competition ({' / '.join(scheme.labels)}; "
        f"scored by {scheme.headline.replace('_', ' ')}), packed by kdq for an offline Kaggle notebook.",
        "",
        f"- quantization: **{quant_method or 'none'}**",
        f"- weights in this folder: **{_weights_mb(facts.files):.1f} MB** "
        f"({quant_method or config.weights_dtype.replace('float', 'fp')} on disk; the metrics below were "
        "measured on the source variant)",
    ]
    if check.get("cuda_compute_dtype") == "float32":
        lines += [
            "- compute on CUDA: **fp32** (fp16 was not finite or off on "
            f"{check['bad_rows']} of {check['rows']} check rows at export, the first id "
            f"`{check['first_bad_row']['id']}`): slower on a T4 than the fp16 speed the budget verdict assumes"
        ]
    return lines + [
        f"- row template: `{facts.template}`",
        f"- predict.py defaults: tta={config.tta}"
        + (f" ({config.tta_fraction:g})" if config.tta == "gated" else "")
        + f", batch_size={config.batch_size}"
        + (
            f", max_length={config.max_length} (trained at {facts.template.get('max_length')})"
            if config.max_length
            else ""
        ),
        "- exported with: " + ", ".join(f"{k} {v}" for k, v in facts.versions.items() if k != "platform"),
        "",
    ]


_UPLOAD_LINES = [
    "## Upload to Kaggle",
    "",
    "```bash",
    "pip install kaggle            # and put your API token in ~/.kaggle/kaggle.json",
    "kdq verify THIS_FOLDER        # or: python -m kdq.cli verify THIS_FOLDER",
    "kaggle datasets create -p THIS_FOLDER --dir-mode zip",
    "kaggle datasets version -p THIS_FOLDER --dir-mode zip -m 'notes'   # later versions",
    "```",
    "",
    "`--dir-mode zip` uploads the `wheels/` folder (Kaggle unpacks it); without it the CLI skips folders. "
    "The CLI reads `dataset-metadata.json` but does not upload it.",
    "",
]


def _notebook_lines(config, facts: CardFacts) -> list:
    """How to run the folder in a notebook with the internet off: install, convert the test file, predict."""
    scheme, slug = facts.scheme, config.slug
    install = install_line(slug, facts.wheels)
    lines = [
        "## Use it in the notebook (internet off)",
        "",
        f"Add the dataset `{config.dataset_id}` to the notebook, then:",
        "",
        "```python",
    ]
    if install:
        lines += [f"!{install}"]
    elif facts.quant_method:
        lines += [
            f"# this {facts.quant_method} model needs its backend in the notebook: export with "
            "ExportConfig(wheels=True),",
            "# or attach a dataset holding the wheels and pip install --no-index --find-links from it",
        ]
    test = scheme.test_path
    if test.endswith(".parquet"):  # predict.py reads CSV (standard library only)
        lines += [
            f"!python -c \"import pandas as pd; pd.read_parquet('{test}').to_csv('/kaggle/working/test.csv', "
            'index=False)"'
        ]
        test = "/kaggle/working/test.csv"
    written = (
        f"`{', '.join(scheme.submission_columns)}`, rows summing to 1"
        if scheme.submission == "probabilities"
        else f"`{', '.join(scheme.submission_columns)}`, the most probable of {' / '.join(scheme.labels)} per row"
    )
    return lines + [
        f"!python /kaggle/input/{slug}/predict.py --test-csv {test} --out /kaggle/working/submission.csv",
        "```",
        "",
        "predict.py checks the model files against `kdq-manifest.json`, splits the rows over the visible GPUs "
        f"(one thread per GPU, falls back to CPU) and writes `submission.csv`: {written}.",
        "",
    ]


def _wheels_lines(config, facts: CardFacts) -> list:
    """The ``wheels/`` section (none without wheels)."""
    wheels = facts.wheels
    if not wheels:
        return []
    return [
        "## Wheels",
        "",
        f"`{WHEELS_DIR}/` holds wheels for CPython {', '.join(wheels['python_versions'])} on Linux x86_64 "
        "(torch is not included: the Kaggle image provides it). Install line:",
        "",
        "```bash",
        install_line(config.slug, wheels),
        "```",
        "",
    ]


def _files_lines(facts: CardFacts) -> list:
    """The sources and every file with its role, size and checksum prefix."""
    lines = []
    if facts.sources:
        lines += ["## Sources", "", "| source | path (fingerprint) |", "|---|---|"]
        lines += [f"| `{k}` | `{v}` |" for k, v in facts.sources.items()] + [""]
    lines += ["## Files", "", "| file | role | bytes | sha256 |", "|---|---|---|---|"]
    lines += [f"| `{rel}` | {e['role']} | {e['size']} | `{e['sha256'][:16]}…` |" for rel, e in facts.files.items()]
    return lines + ["", "Full checksums, configs and metrics: `kdq-manifest.json`.", ""]
