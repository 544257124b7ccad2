"""The offline inference program of an exported folder (``predict.py`` runs :func:`main`).

Standalone: it imports the standard library, torch, transformers and its sibling modules
only, never kdq. ``kdq.export`` copies this package whole into the folder as ``kdq_runtime/``;
the folder's ``predict.py`` is a launcher that loads it from there.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .batching import predict_logits
from .checksums import check_files
from .constants import (
    DEFAULT_TTA_FRACTION,
    FORMAT_KEY,
    LMSYS,
    MANIFEST_FILE,
    SETTINGS_FILE,
    SETTINGS_FORMAT,
    TEMPLATE_KEY,
    TTA_MODES,
    WHEELS_DIR,
    check_format,
    scheme_of_config,
    tta_mode,
)
from .csvfile import iter_rows, missing_columns
from .dtypes import compute_dtype, compute_in
from .template import MIN_MAX_LENGTH, PARTS, TemplateConfig, parse_cell, render
from .tta import gated_count, score_tta
from .versions import installed_version

DEFAULT_TEST_CSV = LMSYS.test_path  # an LMSYS model's; a model's own label scheme names its competition's test file
TEXT_COLUMNS = PARTS  # the competition's text columns, in the template's order
# What the model is loaded and computed in on CUDA (kdq-predict.json ``cuda_compute_dtype``): fp16, or fp32 where
# the export's fp16 check found rows whose fp16 activations overflow (ExportConfig.fp16_fallback="fp32-compute").
CUDA_COMPUTE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def read_settings(model_dir) -> dict:
    """Inference settings of an exported folder.

    The template comes from ``config.json`` (key ``kdq_template``), where kdq recorded it for
    training; ``kdq-predict.json`` holds the defaults (``tta``, ``tta_fraction``, ``batch_size``,
    ``max_batch_tokens``, ``max_length``: the inference max_length rows are rendered at, when the export chose one
    other than the training template's), what loading the quantized weights needs, as the export recorded it
    from kdq's method registry: ``backend_modules`` (imported by transformers), ``backend_packages``
    (versions to compare) and ``load`` (per device type: ``env`` defaults and ``quantization_config``
    overrides), the notebook budget the ETA is checked against (``budget``: ``name``,
    ``time_limit_hours``, ``rows``), and ``cuda_compute_dtype`` (``"float16"``, or ``"float32"`` where
    the export found fp16 overflowing, with ``cuda_compute_dtype_reason``; see :func:`model_dtype`).
    Returns a dict with those keys plus ``template`` (TemplateConfig, at ``max_length`` when recorded) and
    ``scheme`` (the ``LabelScheme`` config.json records under ``kdq_scheme``: which classes the model predicts
    and how the submission is written); ``tta`` is a mode name.
    """
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if not config.get(TEMPLATE_KEY):
        raise ValueError(
            f"{model_dir / 'config.json'} has no {TEMPLATE_KEY!r} entry, so the row template used in "
            "training is unknown; re-export the model with kdq.export."
        )
    settings = {
        "tta": "full",
        "tta_fraction": DEFAULT_TTA_FRACTION,
        "batch_size": 8,
        "max_batch_tokens": None,
        "max_length": None,  # the inference max_length (ExportConfig.max_length); None: the training template's
        "backend_modules": [],
        "backend_packages": [],
        "load": {},
        "budget": None,  # the notebook's time limit and hidden test rows, recorded by the export from its profile
        "cuda_compute_dtype": "float16",
        "cuda_compute_dtype_reason": None,
    }
    settings.update(_export_settings(model_dir))
    model_dtype(settings, "cuda")  # an unknown cuda_compute_dtype fails here, before any loading
    settings["tta"] = tta_mode(settings["tta"])
    settings["template"] = at_max_length(
        TemplateConfig(**config[TEMPLATE_KEY]), settings["max_length"], f"{SETTINGS_FILE} max_length"
    )
    settings["scheme"] = scheme_of_config(config)
    return settings


def at_max_length(template: TemplateConfig, max_length, where: str) -> TemplateConfig:
    """``template`` rendering rows at ``max_length`` (``None``: ``template`` as it is). Raises ``ValueError``
    naming ``where`` the value came from when it is not an int >= the template's minimum."""
    if max_length is None:
        return template
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < MIN_MAX_LENGTH:
        raise ValueError(
            f"{where}: {max_length!r} is not a max_length; give an int >= {MIN_MAX_LENGTH} (tokens per row, markers "
            f"included; without it rows are rendered at {template.max_length})."
        )
    return template.replace(max_length=max_length)


def _export_settings(model_dir) -> dict:
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        return {}
    settings = _read_json(path)
    check_format(settings, SETTINGS_FORMAT, str(path), "re-export the model with the kdq that reads it")
    settings.pop(FORMAT_KEY, None)
    return settings


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; the exported folder is incomplete.") from None


def read_rows(csv_path, scheme=LMSYS):
    """Read the competition's test CSV, its cells written the way ``scheme`` writes them (LMSYS: JSON
    lists of turns; WSDM: plain strings, one turn each).

    Returns ``(ids, rows)``: ``ids`` is ``list[str]``; ``rows[i]`` is the tuple of turn lists
    ``(prompt, response_a, response_b)``. The file is read by the CSV rule kdq reads with too
    (:mod:`.csvfile`: a BOM, CRLF line ends, quoted line breaks, spaces around header names).
    Raises ``ValueError`` naming the row and column for a missing column (the names found shown
    with ``repr``), a duplicate id or a cell that is not a JSON list of strings (LMSYS); naming the
    line for an empty file, text that is not UTF-8 or a row of another width than the header; and for
    a parquet file, with the line that converts it (this runtime reads CSV with the standard library).
    """
    if str(csv_path).lower().endswith((".parquet", ".pq")):
        out = "/kaggle/working/test.csv"
        raise ValueError(
            f"{csv_path} is parquet; predict.py reads CSV (it imports no parquet reader). Convert it first: "
            f"python -c \"import pandas as pd; pd.read_parquet('{csv_path}').to_csv('{out}', index=False)\" "
            f"and pass --test-csv {out}."
        )
    ids, rows, seen = [], [], {}
    lines = iter_rows(csv_path)  # the CSV rule kdq reads with too: BOM, line ends, header names (csvfile.py)
    _, header = next(lines)
    wrong = missing_columns(
        csv_path,
        header,
        ("id",) + TEXT_COLUMNS,
        expected="the competition's test CSV has columns id, prompt, response_a, response_b",
        fix="rename the columns in the file's first line, or pass the competition's own test file.",
    )
    if wrong:
        raise wrong
    where = {c: header.index(c) for c in ("id",) + TEXT_COLUMNS}
    for n, (_, cells) in enumerate(lines):
        rid = cells[where["id"]]
        if rid in seen:
            raise ValueError(f"{csv_path}: duplicate id {rid!r} in data rows {seen[rid]} and {n}; ids must be unique.")
        seen[rid] = n
        ids.append(rid)
        rows.append(tuple(parse_cell(cells[where[c]], scheme, row=rid, column=c) for c in TEXT_COLUMNS))
    if not ids:
        raise ValueError(f"{csv_path} has a header but no rows.")
    return ids, rows


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from transformers.utils.logging import tqdm
    except ImportError:  # progress is a nicety, never a reason to fail
        return None
    return tqdm(total=total, desc=desc, unit="row")


def render_rows(tokenizer, rows, template, *, swap: bool = False, progress: bool = False):
    """:func:`~.template.render` with a progress bar when ``progress``."""
    bar = _progress(len(rows), "render rows (A/B swapped)" if swap else "render rows", progress)
    try:
        return render(tokenizer, rows, template, swap=swap, bar=bar)
    finally:
        if bar is not None:
            bar.close()


def pick_devices(spec: str = "auto"):
    """``"auto"``: every CUDA GPU (``cuda:0``, ``cuda:1``), else ``["cpu"]``; or a comma list."""
    if spec == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    if not devices:
        raise ValueError(f"--devices {spec!r} names no device; use 'auto', 'cpu' or e.g. 'cuda:0,cuda:1'.")
    for d in devices:
        torch.device(d)  # raises on a malformed name
    return devices


def install_line(model_dir, packages) -> str:
    """The offline install command for ``packages`` from the folder's wheels."""
    return f"pip install --no-index --find-links {Path(model_dir) / WHEELS_DIR} {' '.join(packages)}"


def check_backend(model_dir) -> str | None:
    """The quantization method in config.json (or None); raises if a package it needs is missing.

    The packages come from ``kdq-predict.json`` (``backend_modules``), written at export.
    """
    qc = _read_json(Path(model_dir) / "config.json").get("quantization_config") or {}
    method = qc.get("quant_method")
    modules = (_export_settings(model_dir).get("backend_modules") or []) if method else []
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(
            f"this model is quantized with {method!r} and needs {missing}, which this Python lacks. "
            f"Install them offline first: {install_line(model_dir, missing)}"
        )
    return method


def _major_minor(version: str) -> tuple:
    parts = []
    for p in version.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_versions(model_dir, method=None) -> list:
    """Compare the installed torch/transformers (and the backend) with those that exported the folder.

    Returns one-line warnings for differences that may change the numbers (another minor
    version). Raises ``RuntimeError`` for one that breaks loading: a transformers older than the
    major version that wrote ``config.json`` (transformers 5 writes ``rope_parameters`` and
    reads ``dtype=``). Each line carries the exact offline install command.
    """
    manifest_path = Path(model_dir) / MANIFEST_FILE
    exported = (_read_json(manifest_path).get("versions") or {}) if manifest_path.is_file() else {}
    # the quantization backend's pip packages, as the export recorded them (kdq-predict.json)
    backend = (_export_settings(model_dir).get("backend_packages") or []) if method else []
    names = list(dict.fromkeys(["torch", "transformers", *backend]))
    lines = []
    for name in names:
        want, have = exported.get(name), installed_version(name)
        if not want or not have or _major_minor(want) == _major_minor(have):
            continue
        fix = install_line(model_dir, [f"{name}=={want}"])
        if name == "torch":
            fix = f"torch {want} is not in the wheels (the image provides torch); expect small numeric differences"
        if name == "transformers" and _major_minor(have)[0] < _major_minor(want)[0]:
            raise RuntimeError(
                f"transformers {have} is installed but this folder was exported with transformers {want} "
                f"(its config.json needs transformers >= {_major_minor(want)[0]}): {fix}"
            )
        lines.append(f"{name} {have} is installed; the folder was exported and verified with {want}: {fix}")
    return lines


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def pick_kernel(kernels, capability, compute_dtype: str):
    """The first of an export's recorded ``cuda_kernels`` (best first: ``{"kernel", "min_capability",
    "quantization_config", "compute_dtypes"}``, written by kdq's method registry) that runs on a card of
    ``capability`` (``(major, minor)``) computing in ``compute_dtype`` (``"float16"``); ``None`` when none does."""
    for k in kernels:
        if tuple(capability) >= tuple(k["min_capability"]) and compute_dtype in k.get(
            "compute_dtypes", [compute_dtype]
        ):
            return k
    return None


def cuda_kernel(model_dir, device):
    """The recorded kernel :func:`pick_kernel` chooses for ``device`` (a CUDA device), or ``None`` for a folder
    exported before kdq recorded kernels. Raises ``RuntimeError`` naming the card when the folder's weight
    format has no kernel there (e.g. a GPTQ folder pinned to an sm_90-only backend, on a T4)."""
    settings = _export_settings(model_dir)
    kernels = settings.get("cuda_kernels")
    if not kernels:
        return None
    dev = torch.device(device)
    capability = torch.cuda.get_device_capability(dev)
    dtype = str(model_dtype(settings, dev)).replace("torch.", "")
    chosen = pick_kernel(kernels, capability, dtype)
    if chosen is None:
        raise RuntimeError(
            f"{model_dir}: none of the kernels recorded for this folder ({[k['kernel'] for k in kernels]}) runs on "
            f"{torch.cuda.get_device_name(dev)} (sm_{capability[0]}{capability[1]}) in {dtype}; re-quantize with a "
            "method that has a kernel on this card (docs/quantize.md, 'Kernels on a T4')."
        )
    return chosen


def load_overrides(model_dir, device) -> dict:
    """The ``quantization_config`` entries to override when loading on ``device``'s kind of device,
    as the export recorded them (``kdq-predict.json`` ``load``; e.g. a faster GPU kernel), then, on CUDA,
    those of the kernel :func:`cuda_kernel` chooses for the card's compute capability."""
    load = _export_settings(model_dir).get("load") or {}
    overrides = dict((load.get(torch.device(device).type) or {}).get("quantization_config") or {})
    if torch.device(device).type == "cuda" and torch.cuda.is_available():  # the card decides; none: no choice
        overrides.update((cuda_kernel(model_dir, device) or {}).get("quantization_config") or {})
    return overrides


def model_dtype(settings: dict, device) -> torch.dtype:
    """The dtype the model is loaded and computed in on ``device``: fp32 on CPU; on CUDA fp16 (a T4 has
    no bf16), or fp32 where the export recorded that this model's fp16 activations overflow on some
    inputs (``settings["cuda_compute_dtype"] == "float32"``, from ``kdq-predict.json``; folders exported
    before the record compute in fp16)."""
    name = settings.get("cuda_compute_dtype") or "float16"
    if name not in CUDA_COMPUTE_DTYPES:
        raise ValueError(
            f"{SETTINGS_FILE}: cuda_compute_dtype {name!r} is not one of {sorted(CUDA_COMPUTE_DTYPES)}; "
            "re-export the model with kdq.export."
        )
    dev = torch.device(device)
    return CUDA_COMPUTE_DTYPES[name] if dev.type == "cuda" else compute_dtype(dev)


def compute_note(settings: dict, devices) -> str | None:
    """The line predict.py prints when it computes in fp32 on CUDA because the export recorded it
    (:func:`model_dtype`); ``None`` otherwise."""
    cuda = [d for d in devices if torch.device(d).type == "cuda"]
    if not cuda or model_dtype(settings, cuda[0]) != torch.float32:
        return None
    reason = settings.get("cuda_compute_dtype_reason") or "recorded at export"
    return (
        f"computing in fp32 on {','.join(cuda)}, not fp16, as {SETTINGS_FILE} records (cuda_compute_dtype=float32: "
        f"{reason}); expect several times fewer rows/s than an fp16 model, and watch the ETA below"
    )


def load_kwargs(model_dir, device) -> dict:
    """``from_pretrained`` arguments for ``device``: the :func:`model_dtype` (fp16 on CUDA unless the export
    recorded fp32, fp32 on CPU), weights placed at load time on CUDA, and the folder's recorded
    :func:`load_overrides`.

    The overrides are merged into ``config.json``'s ``quantization_config`` and passed as
    ``config=``: transformers (5.x) ignores a ``quantization_config=`` argument for a pre-quantized
    folder except for a few "loading attributes" of some methods (GPTQ's ``backend``), so e.g.
    bitsandbytes' compute dtype could not be changed that way.
    """
    dev = torch.device(device)
    kwargs = {"dtype": model_dtype(_export_settings(model_dir), dev)}
    if dev.type == "cuda":
        # Place the weights at load time, straight from the files to the GPU (host RAM holds no copy);
        # quantized layers cannot always be moved afterwards.
        kwargs["device_map"] = {"": str(dev)}
    elif not is_quantized(model_dir):
        # Keep the stored fp16/bf16 weights; load_model computes them in fp32 one module at a time
        # (an fp32 copy of a 4B model is 16 GB of host RAM, twice its fp16 weights).
        kwargs["dtype"] = "auto"
    overrides = load_overrides(model_dir, device)
    if overrides:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model_dir))
        qc = config.quantization_config
        config.quantization_config = {**(qc if isinstance(qc, dict) else qc.to_dict()), **overrides}
        kwargs["config"] = config
    return kwargs


def is_quantized(model_dir) -> bool:
    """Whether the folder's ``config.json`` records a ``quantization_config``."""
    return bool(_read_json(Path(model_dir) / "config.json").get("quantization_config"))


def load_model(model_dir, device):
    """The classifier on ``device`` (see :func:`load_kwargs`); on CPU an unquantized folder keeps its stored
    weights and computes in fp32 module by module (:func:`~.dtypes.compute_in`): host RAM about 1x the
    weights, not the 2x of an fp32 copy of fp16 weights."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), **load_kwargs(model_dir, device))
    if torch.device(device).type != "cuda" and not is_quantized(model_dir):
        compute_in(model, model_dtype(_export_settings(model_dir), device))
    elif torch.device(device).type == "cuda":
        chosen = cuda_kernel(model_dir, device)
        if chosen is not None:
            cc = "".join(map(str, torch.cuda.get_device_capability(device)))
            print(f"{device}: the {chosen['kernel']} kernel (sm_{cc}, chosen from {SETTINGS_FILE})", file=sys.stderr)
    if model.config.pad_token_id is None:
        raise ValueError(
            f"{model_dir}/config.json has no pad_token_id: the classifier could not find each row's "
            "last token. Re-export the model with kdq.export."
        )
    return model.eval()


def shard_bounds(lengths, n_shards: int):
    """Cut rows ``0..N-1`` into at most ``n_shards`` contiguous, non-empty ranges of similar token count.

    Returns ``[(start, end), ...]`` in row order, covering every row once; concatenating the
    shards' outputs therefore restores the original order.
    """
    total = sum(lengths)
    bounds, start, acc, k = [], 0, 0, 1
    for i, n in enumerate(lengths):
        acc += n
        if k < n_shards and acc >= total * k / n_shards and i + 1 < len(lengths):
            bounds.append((start, i + 1))
            start, k = i + 1, k + 1
    bounds.append((start, len(lengths)))
    return [(a, b) for a, b in bounds if b > a]


class Throughput:
    """Progress sink for every device's thread: forwards to a tqdm bar (if any) and, once the
    first batches are done, prints rows/s and the ETA of the whole job (and of the budget's hidden
    test rows), saying early when the notebook would not finish in the budget's time limit
    (``budget``: ``time_limit_hours`` and ``rows``, as :func:`read_settings` returns it).

    Batches run longest first, so the first rate is pessimistic: the ETA is an upper bound.
    """

    def __init__(
        self,
        total_sequences: int,
        rows: int,
        *,
        bar=None,
        budget=None,
        report_after_s: float = 60.0,
        report_after_frac: float = 0.05,
        stream=sys.stderr,
    ):
        self.total, self.rows, self._bar, self._stream = total_sequences, rows, bar, stream
        self.budget = budget  # None (a folder exported before kdq recorded one): the ETA is given without a verdict
        self.after_s, self.after_frac = report_after_s, report_after_frac
        self.done, self.start, self.reported = 0, time.perf_counter(), None
        self._lock = threading.Lock()

    def update(self, n):
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            elapsed = time.perf_counter() - self.start
            if (
                self.reported is None
                and self.done < self.total
                and (elapsed >= self.after_s or self.done >= self.after_frac * self.total)
            ):
                self.reported = self.message(elapsed)
                print(self.reported, file=self._stream, flush=True)

    def set_postfix(self, **kwargs):
        if self._bar is not None:
            with self._lock:
                self._bar.set_postfix(**kwargs)

    def message(self, elapsed: float) -> str:
        rate = self.done / max(elapsed, 1e-9)  # scored sequences per second
        per_row = self.total / max(self.rows, 1)  # sequences per row (TTA scores some twice)
        eta_h = (self.total - self.done) / max(rate, 1e-9) / 3600
        head = (
            f"predict.py: {self.done}/{self.total} sequences in {elapsed:.0f} s, {rate:.1f} sequences/s "
            f"({rate / per_row:.1f} rows/s); ETA {eta_h:.2f} h for these {self.rows} rows"
        )
        if not self.budget:
            return f"{head} (no notebook budget recorded in {SETTINGS_FILE}; re-export to check against one)"
        limit, test_rows = float(self.budget["time_limit_hours"]), int(self.budget["rows"])
        kaggle_h = test_rows * per_row / max(rate, 1e-9) / 3600
        verdict = (
            f"WILL NOT FINISH in the {limit:g} h notebook limit: use fewer TTA rows "
            "(--tta gated / none), a smaller or quantized model, or more GPUs"
            if (elapsed / 3600 + eta_h) > limit
            else f"within the {limit:g} h limit"
        )
        return (
            f"{head}, {verdict} (longest rows go first, so this is an upper bound; {test_rows} rows: ~{kaggle_h:.1f} h)"
        )


def _score_on(
    device, model, sequences, pad_id, batch_size, max_batch_tokens, progress, stats=None, return_pooled=False
):
    # Quantized kernels (bitsandbytes, gptqmodel) may use the *current* CUDA device, which is per
    # thread: make it this shard's GPU.
    dev = torch.device(device)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        return predict_logits(
            model,
            sequences,
            pad_id,
            batch_size=batch_size,
            device=device,
            max_batch_tokens=max_batch_tokens,
            progress=progress,
            stats=stats,
            return_pooled=return_pooled,
        )


def score_sharded(
    models, sequences, pad_id: int, batch_size: int, max_batch_tokens=None, progress=None, *, stats=None, pooled=False
):
    """Logits ``(N, num_labels)`` fp32 for ``sequences``, in their order.

    ``models`` is a list of ``(device, model)``, one per GPU. Rows are cut into contiguous,
    token-balanced shards, one thread per device (the GPU work releases the GIL), each
    running the length-sorted batching of :func:`predict_logits` on its shard. With one device
    the batches are exactly those of kdq's own scoring at the same batch size.

    ``stats``: a dict filled as :func:`predict_logits` fills it, summed over the shards except
    ``seconds``, the longest shard's (they run at the same time). ``pooled``: also return the pooled
    final hidden states, as ``(logits, pooled)``.
    """
    bounds = shard_bounds([len(s) for s in sequences], len(models))
    if len(bounds) <= 1:
        device, model = models[0]
        return _score_on(device, model, sequences, pad_id, batch_size, max_batch_tokens, progress, stats, pooled)
    parts_stats = [{} for _ in bounds]
    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
        futures = [
            pool.submit(
                _score_on, device, model, sequences[a:b], pad_id, batch_size, max_batch_tokens, progress, st, pooled
            )
            for (device, model), (a, b), st in zip(models, bounds, parts_stats)
        ]
        parts = [f.result() for f in futures]  # re-raises a worker's exception here
    if stats is not None:
        for key in ("rows", "real_tokens", "padded_tokens"):
            stats[key] = sum(st.get(key, 0) for st in parts_stats)
        stats["seconds"] = max(st.get("seconds", 0.0) for st in parts_stats)
        stats["padding_efficiency"] = stats["real_tokens"] / max(stats["padded_tokens"], 1)
    if pooled:
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return torch.cat(parts)


def predict_probs(
    model_dir,
    rows,
    *,
    tta,
    batch_size: int,
    devices=("cpu",),
    max_batch_tokens=None,
    progress: bool = False,
    tta_fraction: float | None = None,
    report=None,
    max_length: int | None = None,
):
    """Class probabilities ``(N, C)`` float64 for ``rows`` (see :func:`read_rows`), rows summing to 1.

    ``tta``: ``"none"``, ``"full"``, ``"gated"`` (or ``True``/``False``), through
    :func:`kdq_runtime.tta.score_tta`, the same code kdq evaluates with. ``tta_fraction``
    (gated only): default as exported. ``report``: print rows/s and the ETA (default: with ``progress``).
    ``max_length``: render rows at this many tokens (default: as exported, :func:`read_settings`).
    """
    mode = tta_mode(tta)
    settings = read_settings(model_dir)
    fraction = settings["tta_fraction"] if tta_fraction is None else tta_fraction
    tokenizer = load_tokenizer(model_dir)
    template = at_max_length(settings["template"], max_length, "--max-length")
    sequences = render_rows(tokenizer, rows, template, progress=progress)
    models = [(d, load_model(model_dir, d)) for d in devices]
    pad_id = models[0][1].config.pad_token_id
    n_seq = {"none": len(rows), "full": 2 * len(rows), "gated": len(rows) + gated_count(len(rows), fraction)}[mode]
    bar = _progress(n_seq, "score", progress)
    report = progress if report is None else report
    sink = Throughput(n_seq, len(rows), bar=bar, budget=settings["budget"]) if report else bar

    def swapped(idx):
        return render(tokenizer, [rows[i] for i in idx], template, swap=True)

    result = score_tta(
        lambda s: score_sharded(models, s, pad_id, batch_size, max_batch_tokens, sink),
        sequences,
        swapped,
        mode=mode,
        fraction=fraction,
    )
    if bar is not None:
        bar.close()
    return torch.softmax(result.log_probs.double(), dim=-1)


def check_finite(ids, probs) -> None:
    """Raise ``ValueError`` naming the first row whose probabilities are NaN or infinite."""
    bad = (~torch.isfinite(torch.as_tensor(probs))).any(-1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{len(bad)} row(s) have non-finite probabilities, the first is id {ids[bad[0]]!r}; "
            "submission.csv was not written. An fp16 overflow is the usual cause: rerun with "
            "--devices cpu on a few rows to confirm, then re-export with kdq's ExportConfig(check_rows=[rows like "
            "this one], fp16_fallback='fp32-compute'), which records that this folder computes in fp32 on CUDA."
        )


def write_submission(path, ids, probs, scheme=LMSYS):
    """Write the submission ``scheme`` asks for; written whole or not at all.

    LMSYS: ``id, winner_model_a, winner_model_b, winner_tie``, the probabilities. WSDM: ``id, winner``,
    the most probable class's name (``model_a`` / ``model_b``). Refuses (``ValueError``) when any
    probability is NaN or infinite.
    """
    check_finite(ids, probs)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(list(scheme.submission_columns))
        for rid, p in zip(ids, probs.tolist()):
            writer.writerow(scheme.submission_row(rid, p))
    os.replace(tmp, path)
    return path


def _set_env(devices, load=None) -> dict:
    """Environment defaults (``os.environ.setdefault``: a value already set wins): offline Hub
    access, and the quantization backend's variables for the kinds of device in use, as the
    export recorded them (``kdq-predict.json`` ``load[device type]["env"]``; e.g. gptqmodel on
    CPU). Returns the variables this call set."""
    wanted = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # never let transformers wait on the Hub
    for kind in dict.fromkeys(torch.device(d).type for d in devices):
        wanted.update(((load or {}).get(kind) or {}).get("env") or {})
    applied = {k: str(v) for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


def build_parser(settings_hint: str = ""):
    p = argparse.ArgumentParser(
        description="Score the arena competition's test CSV with the classifier in this folder "
        "and write submission.csv (the columns its label scheme asks for)." + settings_hint
    )
    p.add_argument(
        "--test-csv",
        default=None,
        help=f"competition test CSV (default: the model's competition's, e.g. {DEFAULT_TEST_CSV} for LMSYS)",
    )
    p.add_argument("--out", default="submission.csv", help="output CSV (default: %(default)s)")
    p.add_argument("--model-dir", default=None, help="exported folder (default: the folder holding this script)")
    p.add_argument(
        "--tta",
        nargs="?",
        const="full",
        choices=TTA_MODES,
        default=None,
        help="swap TTA: none, full (every row also A/B-swapped) or gated (only the least confident "
        "--tta-fraction); bare --tta means full (default: as exported)",
    )
    p.add_argument("--no-tta", dest="tta", action="store_const", const="none", help="same as --tta none")
    p.add_argument("--tta-fraction", type=float, default=None, help="gated TTA: share of rows swap-scored")
    p.add_argument(
        "--batch-size", type=int, default=None, help="rows per forward pass per device (default: as exported)"
    )
    p.add_argument("--max-batch-tokens", type=int, default=None, help="cap rows x longest row per batch")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per row, markers included: longer rows are cut by the training template's rule; fewer "
        "tokens, fewer hours (default: as exported)",
    )
    p.add_argument("--devices", default="auto", help="'auto' (all GPUs, else CPU), 'cpu', or 'cuda:0,cuda:1'")
    p.add_argument("--skip-checksums", action="store_true", help="do not check the model files against the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None, *, default_model_dir=None) -> int:
    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_dir or default_model_dir or Path(__file__).resolve().parent.parent)
    try:
        devices = pick_devices(args.devices)
        settings = read_settings(model_dir)
        at_max_length(settings["template"], args.max_length, "--max-length")  # a bad value fails before loading
        _set_env(devices, settings["load"])
        note = compute_note(settings, devices)
        if note:
            print(f"predict.py: {note}", file=sys.stderr)
        tta = settings["tta"] if args.tta is None else args.tta
        fraction = settings["tta_fraction"] if args.tta_fraction is None else args.tta_fraction
        batch_size = args.batch_size or settings["batch_size"]
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        method = check_backend(model_dir)
        for line in check_versions(model_dir, method):
            print(f"predict.py: warning: {line}", file=sys.stderr)
        if not args.skip_checksums:
            n_files = check_files(model_dir)
            print(f"checked {n_files} model files against {MANIFEST_FILE}", file=sys.stderr)
        scheme = settings["scheme"]
        ids, rows = read_rows(args.test_csv or scheme.test_path, scheme)
        start = time.perf_counter()
        probs = predict_probs(
            model_dir,
            rows,
            tta=tta,
            batch_size=batch_size,
            devices=devices,
            max_batch_tokens=args.max_batch_tokens or settings.get("max_batch_tokens"),
            progress=not args.quiet,
            tta_fraction=fraction,
            report=True,
            max_length=args.max_length,
        )
        write_submission(args.out, ids, probs, scheme)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"predict.py: error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(
        f"wrote {args.out}: {len(ids)} rows in {seconds:.1f} s ({len(ids) / max(seconds, 1e-9):.1f} rows/s) on "
        f"{','.join(devices)}; tta={tta}"
        + (f" ({fraction:g})" if tta == "gated" else "")
        + f", batch_size={batch_size}, max_length={args.max_length or settings['template'].max_length}"
        + f", quantization={method or 'none'}",
        file=sys.stderr,
    )
    return 0
