"""``kdq.evaluate``: score one variant on held-out rows and measure what it costs."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils.weight_files import folder_weight_bytes
from .config import EvalConfig, Metrics
from .metrics import accuracy, ece, log_loss, softmax


# --------------------------------------------------------------------------- peak memory
def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory while the ``with`` block runs.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors
    only; the CUDA context is not counted). CPU: the process's peak resident set. On Linux
    the kernel's high-water mark ``VmHWM`` is reset on entry (``/proc/self/clear_refs``) so
    earlier work does not count; a 10 ms sampling thread of ``VmRSS`` backs it up where the
    reset is not allowed. ``kind`` says which was used.
    """

    def __init__(self, device):
        import torch

        devices = list(device) if isinstance(device, (list, tuple)) else [device]
        self.devices = [torch.device(d) for d in devices]
        self.device = self.devices[0]
        self.peak = 0
        self.kind = ""
        self._stop = threading.Event()
        self._thread = None
        self._hwm_reset = False

    def _sample(self):
        while not self._stop.wait(0.01):
            rss = _read_status_kb("VmRSS")
            if rss is not None:
                self.peak = max(self.peak, rss)

    def __enter__(self):
        import torch

        if self.device.type == "cuda":  # the highest of the GPUs' peaks: the budget's memory is per GPU
            for d in self.devices:
                torch.cuda.synchronize(d)
                torch.cuda.reset_peak_memory_stats(d)
            self.kind = "cuda-max-allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # 5 = reset the peak RSS (Linux >= 4.0)
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.peak = _read_status_kb("VmRSS") or 0
        self._thread = threading.Thread(target=self._sample, name="kdq-rss-sampler", daemon=True)
        self._thread.start()
        self.kind = "rss-peak" if self._hwm_reset else "rss-sampled"
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            for d in self.devices:
                torch.cuda.synchronize(d)
            self.peak = max(int(torch.cuda.max_memory_allocated(d)) for d in self.devices)
            return False
        self._stop.set()
        self._thread.join()
        rss = _read_status_kb("VmRSS") or 0
        hwm = _read_status_kb("VmHWM") if self._hwm_reset else None
        self.peak = int(max(self.peak, rss, hwm or 0))
        if not self.peak:  # no /proc (macOS...): lifetime peak from getrusage
            import resource
            import sys

            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak = int(maxrss if sys.platform == "darwin" else maxrss * 1024)
            self.kind = "rss-lifetime"
        return False


# --------------------------------------------------------------------------- helpers
def device_name(device) -> str:
    """``"cuda:0 (Tesla T4)"`` or ``"cpu (<cpu model>, N threads)"``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"cpu ({model + ', ' if model else ''}{torch.get_num_threads()} threads)"


def module_bytes(model) -> int:
    """Bytes of a model's parameters and buffers in memory (packed quantized tensors as stored)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def rows_fingerprint(rows) -> str:
    """Identity of an evaluation set: a hash of its ids and labels, in order."""
    h = hashlib.sha256()
    for i, lab in zip(rows["id"], rows["label"]):
        h.update(f"{i}\t{lab}\n".encode())
    return "rows:" + h.hexdigest()[:16]


def _resolve(model, config: EvalConfig, device):
    """Load or adopt the model; return ``(LoadedModel, size_bytes, size_source)``."""

    from ..models import LoadedModel, adapter_base, is_adapter_dir, load_classifier
    from ..quant_methods import quantization_config_of
    from ..runtime.dtypes import resolve_dtype

    if isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, (str, os.PathLike)):
        quantized = Path(model).is_dir() and quantization_config_of(model) is not None
        dtype = None
        if not quantized:  # quantized folders bring their own compute dtype
            dtype = resolve_dtype(config.dtype, device)
        loaded = load_classifier(
            model,
            dtype=dtype,
            device=None if quantized else device,
            head="require",
            role="the model to evaluate",
            frozen=True,
        )
    else:
        loaded = load_classifier(model)
    current = next(loaded.model.parameters()).device
    if current != device and not (current.type == device.type and device.index is None):
        try:
            loaded.model.to(device)
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"cannot move the model from {current} to {device} ({err}); load it on "
                f"{device} yourself or set EvalConfig.device={str(current)!r}."
            ) from None
    if loaded.source is not None:
        src = Path(loaded.source)
        size = folder_weight_bytes(src)
        if is_adapter_dir(src):  # an adapter alone is not what ships: add its base's weights
            base = adapter_base(src)
            if Path(base).is_dir():
                size += folder_weight_bytes(base)
        return loaded, size, "disk"
    return loaded, module_bytes(loaded.model), "memory"


def _score(loaded, sequences, config: EvalConfig, desc: str):
    """Logits ``(N, C)`` and timing stats for token sequences, on the loaded model's device alone."""
    from tqdm.auto import tqdm

    from ..runtime.batching import predict_logits

    pad_id = loaded.tokenizer.pad_token_id
    with tqdm(total=len(sequences), desc=desc, unit="row", disable=not config.progress, leave=False) as bar:
        stats = {}
        logits = predict_logits(
            loaded.model,
            sequences,
            pad_id,
            batch_size=config.batch_size,
            max_batch_tokens=config.max_batch_tokens,
            progress=bar,
            stats=stats,
        )
    return logits, stats


def eval_devices(config: EvalConfig) -> list:
    """Where this process scores: ``config.device`` (a comma list splits rows over several), else its own
    GPU under a launcher, else every CUDA GPU (one thread each, as predict.py), else the CPU."""
    import torch

    from ..utils.distributed import training_device, world_size

    if config.device:
        return [torch.device(d.strip()) for d in config.device.split(",") if d.strip()]
    if world_size() > 1:
        return [training_device()]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [torch.device("cuda", i) for i in range(n)] or [torch.device("cpu")]


def sync_dir() -> Path:
    """Where the processes of a launch exchange their shares of an evaluation: ``<kdq cache>/sync`` (on a
    filesystem every node shares when the launch spans several)."""
    from ..utils.cachedir import cache_root

    return cache_root() / "sync"


def _score_everywhere(models, sequences, pad_id, config: EvalConfig, desc: str):
    """Logits ``(N, C)`` and timing stats for token sequences, scored on every device of every process.

    Under a launcher the rows are cut into one contiguous, token-balanced range per process (predict.py's
    :func:`~kdq.runtime.predict.shard_bounds`, the split ``score_sharded`` makes over GPUs); each process splits
    its range over its own devices, one thread each; the processes exchange their logits through files (no
    collective) and every one returns all of them, in row order. Stats: summed, but ``seconds`` is the longest
    share's (they run at the same time).
    """
    import torch
    from tqdm.auto import tqdm

    from ..runtime.predict import score_sharded, shard_bounds
    from ..utils.distributed import exchange, rank, world_size

    world, me = world_size(), rank()
    lo, hi = 0, len(sequences)
    if world > 1:
        bounds = shard_bounds([len(s) for s in sequences], world)
        lo, hi = bounds[me] if me < len(bounds) else (len(sequences), len(sequences))
    part = list(sequences[lo:hi])
    stats = {}
    with tqdm(total=len(part), desc=desc, unit="row", disable=not config.progress or me != 0, leave=False) as bar:
        logits = score_sharded(
            models, part, pad_id, config.batch_size, config.max_batch_tokens, progress=bar, stats=stats
        )
    if world == 1:
        return logits, stats
    records = exchange(sync_dir(), "evaluate-score", (logits.numpy(), stats))
    merged = {k: sum(r[1].get(k, 0) for r in records) for k in ("rows", "real_tokens", "padded_tokens")}
    merged["seconds"] = max(r[1].get("seconds", 0.0) for r in records)
    merged["padding_efficiency"] = merged["real_tokens"] / max(merged["padded_tokens"], 1)
    return torch.cat([torch.from_numpy(r[0]) for r in records]), merged


def _score_tta(loaded, rendered, config: EvalConfig, models=None):
    """:func:`kdq.runtime.tta.score_tta` with ``config.tta_mode``, the same call predict.py makes, on every device
    (``models``: ``[(device, model)]``; default the loaded model alone) and every process.

    ``rendered``: :func:`~kdq.evaluate.render.render_rows`' rows (``input_ids``, and ``input_ids_swap`` with TTA).
    Returns ``(TTAResult, stats, swap_logits)``: stats summed over every forward pass; ``swap_logits``
    ``(len(result.swapped_rows), C)`` the B/A-order logits of ``result.swapped_rows`` in that order, as scored
    (classes not yet mapped back), or ``None`` when no row was scored swapped.
    """
    from ..runtime.batching import add_stats
    from ..runtime.tta import score_tta
    from .render import SWAP_COLUMN

    totals, last = {}, []
    models = models or [(next(loaded.model.parameters()).device, loaded.model)]

    def score(seqs):
        logits, st = _score_everywhere(models, seqs, loaded.tokenizer.pad_token_id, config, "score")
        add_stats(totals, st)
        last[:] = [logits]
        return logits

    def swapped(idx):
        return rendered.select(idx)[SWAP_COLUMN]

    result = score_tta(score, rendered["input_ids"], swapped, mode=config.tta_mode, fraction=config.tta_fraction)
    # score_tta scores the swapped rows last: full TTA after the A/B rows in its one call, gated TTA in a call
    # of their own; the test of the swapped probabilities checks they average into result.log_probs
    k = len(result.swapped_rows)
    return result, totals, (last[0][-k:] if k else None)


def _copies(model, loaded, config: EvalConfig, devices) -> list:
    """``[(device, model)]``: ``loaded`` on the first device, a copy on each of the others (a folder is loaded
    there, as predict.py loads one per GPU; a model object is copied, unless quantized: then it is the only one)."""
    import copy

    import torch

    from ..models import load_classifier
    from ..quant_methods import quantization_config_of
    from ..runtime.dtypes import resolve_dtype

    out = [(devices[0], loaded.model)]
    if loaded.source is None and getattr(loaded.model.config, "quantization_config", None) is not None:
        return out  # a quantized model object cannot be copied across devices: it scores on its own device
    for d in devices[1:]:
        if loaded.source is not None and quantization_config_of(loaded.source) is not None:
            from ..runtime.predict import load_model

            out.append((d, load_model(loaded.source, d)))  # quantized weights are placed at load time
        elif loaded.source is not None:
            dtype = resolve_dtype(config.dtype, d)
            copy_ = load_classifier(loaded.source, tokenizer=loaded.tokenizer, dtype=dtype, device=d, frozen=True)
            out.append((d, copy_.model))
        else:
            copy_ = copy.deepcopy(loaded.model)
            out.append((d, copy_.to(torch.device(d))))
    return out


def _check_finite(ids, result, loaded, device) -> None:
    """Raise ``ValueError`` naming the first row **id** whose probabilities are NaN or infinite, in the
    plain pass or with TTA (``result``: :class:`kdq.runtime.tta.TTAResult`), as predict.py does."""
    import torch

    bad = ~torch.isfinite(result.logits).all(dim=-1) | ~torch.isfinite(result.log_probs).all(dim=-1)
    rows = bad.nonzero().flatten().tolist()
    if not rows:
        return
    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    raise ValueError(
        f"kdq.evaluate: {len(rows)} of {len(ids)} row(s) have non-finite probabilities, the first is id "
        f"{ids[rows[0]]!r} (computed in {dtype} on {device}). An fp16 overflow is the usual cause: evaluate in "
        "fp32 (EvalConfig(dtype='float32')) to confirm; kdq.export's fp16 check names such rows too "
        "(ExportConfig.check_rows, fp16_fallback)."
    )


def _stored_format(loaded, fmt):
    """The format name as stored on disk: ``fp32``/``bf16`` for an unquantized folder saved so."""
    import json

    if fmt.name != "fp16" or loaded.source is None:
        return fmt.name
    files = sorted(Path(loaded.source).glob("*.safetensors"))
    if not files:
        return fmt.name
    with open(files[0], "rb") as fh:  # safetensors: 8-byte little-endian header length, then JSON
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    size = {}  # bytes per dtype: the dominant one is the format
    for key, v in header.items():
        if key != "__metadata__":
            size[v["dtype"]] = size.get(v["dtype"], 0) + v["data_offsets"][1] - v["data_offsets"][0]
    return {"F32": "fp32", "BF16": "bf16"}.get(max(size, key=size.get) if size else "F16", "fp16")


@dataclass
class _Scoring:
    """What scoring one variant on the rows produced (:func:`_score_variant`), before any metric."""

    loaded: object  # kdq.models.LoadedModel
    device: object  # torch.device: the first one scored on
    n_devices: int  # every device of every process the rows were split over
    template: object  # TemplateConfig the rows were rendered with
    rendered: object  # datasets.Dataset: render_rows' columns
    result: object  # kdq.runtime.tta.TTAResult
    swap_logits: object  # torch.Tensor (len(result.swapped_rows), C) or None
    stats: dict  # summed timing stats of every forward pass
    size_bytes: int
    size_source: str
    peak_bytes: int
    peak_kind: str


def _labelled_rows(rows):
    """``(rows, labels, scheme)`` of :func:`kdq.load_arena`'s rows; ``ValueError`` naming the first row without a
    label."""
    from ..data import labels_of, load_arena, scheme_of_rows

    rows = load_arena(rows)
    labels = labels_of(rows)
    scheme = scheme_of_rows(rows)
    if (labels < 0).any():
        r = int(np.flatnonzero(labels < 0)[0])
        need = (
            f"the {scheme.winner_column!r} column"
            if scheme.winner_column
            else f"the one-hot {' / '.join(scheme.labels)} columns"
        )
        raise ValueError(
            f"row {rows[r]['id']!r} has no label; evaluate needs labelled rows ({need}). Drop unlabelled rows first."
        )
    return rows, labels, scheme


def _check_scheme(loaded, scheme) -> None:
    from ..runtime.constants import scheme_of_config

    if scheme_of_config(loaded.model.config) != scheme:
        raise ValueError(
            f"the model is a classifier for {scheme_of_config(loaded.model.config).describe()}, but the rows "
            f"are {scheme.describe()}; evaluate it on rows of its own layout."
        )


def warm_up(models, tokenizer, sequences) -> None:
    """One untimed pass per model on the shortest row: lazy initialisation (kernels, allocator) is not throughput."""
    from ..models import LoadedModel

    shortest = min(range(len(sequences)), key=lambda i: len(sequences[i]))
    for _, m in models:
        warm = LoadedModel(model=m, tokenizer=tokenizer, source=None, fingerprint="")
        _score(warm, [sequences[shortest]], EvalConfig(progress=False, budget=None), "warm-up")


@dataclass
class LoadedVariant:
    """A variant loaded for scoring (:func:`load_variant`): the model on every evaluation device and the template
    its rows are rendered with."""

    loaded: object  # kdq.models.LoadedModel, on devices[0]
    models: list  # [(device, model)]: the loaded model and a copy on each other device
    devices: list
    template: object  # TemplateConfig: config.template, else the model's recorded one, else the default
    size_bytes: int
    size_source: str

    def release(self) -> None:
        """Drop the models (before the next variant loads)."""
        import gc

        self.models, self.loaded = [], None
        gc.collect()


def _exported_template(source):
    """The template an exported folder's predict.py renders rows with (its ``kdq-predict.json`` may set another
    ``max_length`` than training's: ``ExportConfig.max_length``), or ``None`` for a folder that is no export."""
    from ..runtime.constants import SETTINGS_FILE

    if not isinstance(source, (str, os.PathLike)) or not Path(source, SETTINGS_FILE).is_file():
        return None
    from ..runtime.predict import read_settings

    return read_settings(source)["template"]


def load_variant(model, scheme, config: EvalConfig) -> LoadedVariant:
    """Load ``model`` on every device of ``config`` (:func:`eval_devices`); ``ValueError`` when it is a classifier
    for another label ``scheme`` than the rows'. Rows are rendered with ``config.template``, else an exported
    folder's (what its predict.py renders), else the model's recorded one, else the default."""
    from ..models import template_of
    from ..runtime.template import TemplateConfig

    devices = eval_devices(config)
    loaded, size_bytes, size_source = _resolve(model, config, devices[0])
    _check_scheme(loaded, scheme)
    return LoadedVariant(
        loaded=loaded,
        models=_copies(model, loaded, config, devices),
        devices=devices,
        template=config.template or _exported_template(loaded.source) or template_of(loaded.model) or TemplateConfig(),
        size_bytes=int(size_bytes),
        size_source=size_source,
    )


def score_rendered(variant: LoadedVariant, rendered, config: EvalConfig) -> tuple:
    """Score ``rendered`` rows (:mod:`kdq.evaluate.render`'s columns) with ``config``'s TTA on every device of
    ``variant``: :func:`_score_tta`'s ``(TTAResult, stats, swap_logits)``. Non-finite logits raise, naming the
    row (:func:`_check_finite`)."""
    scored = _score_tta(variant.loaded, rendered, config, variant.models)
    _check_finite(rendered["id"], scored[0], variant.loaded, variant.devices[0])
    return scored


def scoring_of(variant: LoadedVariant, rendered, template, scored: tuple, peak) -> _Scoring:
    """The :class:`_Scoring` of ``rendered`` rows (rendered with ``template``) that :func:`score_rendered` scored
    (``scored``) while ``peak`` (a :class:`PeakMemory`, already left) measured."""
    from ..utils.distributed import exchange, world_size

    result, stats, swap_logits = scored
    peak_bytes = peak.peak
    if world_size() > 1:  # every process reports the same figures: the highest peak of any of them
        peak_bytes = max(exchange(sync_dir(), "evaluate-peak", int(peak.peak)))
    return _Scoring(
        loaded=variant.loaded,
        device=variant.devices[0],
        n_devices=len(variant.models) * world_size(),
        template=template,
        rendered=rendered,
        result=result,
        swap_logits=swap_logits,
        stats=stats,
        size_bytes=variant.size_bytes,
        size_source=variant.size_source,
        peak_bytes=int(peak_bytes),
        peak_kind=peak.kind,
    )


def _score_variant(model, rows, scheme, config: EvalConfig) -> _Scoring:
    """Load the variant on every device, render the rows once and score them with ``config``'s TTA, measuring
    the peak memory of it all."""
    from .render import render_rows

    with PeakMemory(eval_devices(config)) as peak:
        variant = load_variant(model, scheme, config)
        rendered = render_rows(rows, variant.loaded.tokenizer, variant.template, both_orders=config.tta_mode != "none")
        warm_up(variant.models, variant.loaded.tokenizer, rendered["input_ids"])
        scored = score_rendered(variant, rendered, config)
    return scoring_of(variant, rendered, variant.template, scored, peak)


def _probabilities(scoring: _Scoring, tta_mode: str) -> tuple:
    """``(probs, probs_tta, probs_swap)``, each ``(N, C)`` float64 in row order (the last two ``None`` without TTA):
    the A/B order, the swap-TTA prediction, and the B/A order mapped back to the original classes (NaN on rows
    gated TTA did not swap)."""
    from ..runtime.constants import swap_permutation

    result = scoring.result
    probs = softmax(result.logits.numpy())
    if tta_mode == "none":
        return probs, None, None
    probs_tta = softmax(result.log_probs.double().numpy())
    probs_swap = np.full_like(probs, np.nan)
    if scoring.swap_logits is not None:
        perm = list(swap_permutation(probs.shape[1]))
        probs_swap[result.swapped_rows] = softmax(scoring.swap_logits.numpy())[:, perm]
    return probs, probs_tta, probs_swap


def _quality(probs, probs_tta, labels, ece_bins: int) -> dict:
    """The quality fields of :class:`Metrics`, without and with TTA."""
    tta = probs_tta is not None
    return {
        "log_loss": log_loss(probs, labels),
        "accuracy": accuracy(probs, labels),
        "ece": ece(probs, labels, ece_bins),
        "log_loss_tta": log_loss(probs_tta, labels) if tta else None,
        "accuracy_tta": accuracy(probs_tta, labels) if tta else None,
        "ece_tta": ece(probs_tta, labels, ece_bins) if tta else None,
    }


def _cost(scoring: _Scoring) -> dict:
    """The cost fields of :class:`Metrics`: size, peak memory, throughput, and what was measured."""
    from ..costs.modelspec import ModelSpec, param_counts, weight_format_of

    st = scoring.stats
    seconds = st["seconds"]
    spec = ModelSpec.from_config(scoring.loaded.model.config)
    fmt = weight_format_of(scoring.loaded.model.config)
    n = scoring.n_devices
    return {
        "size_bytes": scoring.size_bytes,
        "size_source": scoring.size_source,
        "peak_memory_bytes": scoring.peak_bytes,
        "peak_memory_kind": scoring.peak_kind,
        "rows_per_s": st["rows"] / max(seconds, 1e-9),
        "tokens_per_s": st["real_tokens"] / max(seconds, 1e-9),
        "seconds": seconds,
        "device": device_name(scoring.device) + (f" x{n}" if n > 1 else ""),
        "n_params": int(param_counts(spec)["total"]),
        "weight_format": _stored_format(scoring.loaded, fmt),
        "weight_format_spec": dataclasses.asdict(fmt),
        "padding_efficiency": st["real_tokens"] / max(st["padded_tokens"], 1),
        "spec": spec.to_dict(),
        "n_devices": n,
    }


def _diagnostics(scoring: _Scoring, probs, probs_swap, labels, headline, config: EvalConfig, groups) -> dict:
    """Truncation and position-bias fields of :class:`Metrics` (:mod:`kdq.evaluate.diagnostics`), with the
    per-row arrays behind them."""
    from .diagnostics import position_bias, truncation_summary
    from .render import LOST_COLUMNS

    rendered = scoring.rendered
    lost = np.stack([np.asarray(rendered[c], dtype=np.int64) for c in LOST_COLUMNS], axis=1)
    dropped = np.asarray(rendered["dropped_turns"], dtype=np.int64)
    truncation = truncation_summary(
        lost,
        dropped,
        headline.row_costs(probs, labels),
        headline,
        max_length=scoring.template.max_length,
        n_resamples=config.bootstrap_samples,
        seed=config.bootstrap_seed,
        groups=groups,
    )
    return {
        "truncation": truncation,
        "position_bias": position_bias(probs, probs_swap, config.tta_mode),
        "lost": lost,
        "dropped_turns": dropped,
        "probs_swap": probs_swap,
    }


def _metrics_of(scoring: _Scoring, rows, labels, scheme, config: EvalConfig) -> Metrics:
    """:class:`Metrics` of a scored variant, without its budget verdict."""
    from ..data import group_ids
    from .metrics import headline_of

    probs, probs_tta, probs_swap = _probabilities(scoring, config.tta_mode)
    lengths = np.asarray(scoring.rendered["length"], dtype=np.int64)
    return Metrics(
        n_rows=len(rows),
        **_quality(probs, probs_tta, labels, config.ece_bins),
        tta_mode=config.tta_mode,
        tta_fraction=config.tta_fraction,
        **_cost(scoring),
        mean_tokens=float(lengths.mean()),
        max_length=scoring.template.max_length,
        rows_fingerprint=rows_fingerprint(rows),
        model_fingerprint=scoring.loaded.fingerprint,
        source=scoring.loaded.source,
        budget=None,
        probs=probs,
        probs_tta=probs_tta,
        lengths=lengths,
        scheme=scheme.name,
        **_diagnostics(scoring, probs, probs_swap, labels, headline_of(scheme), config, group_ids(rows)),
    )


def _verdict(metrics: Metrics, profile, loaded) -> dict | None:
    """:func:`project_metrics`, noting when an fp16 format was measured in another dtype on CUDA."""
    import torch

    from ..costs.modelspec import FP16, weight_format_of

    verdict = project_metrics(metrics, profile)
    dtype = next(loaded.model.parameters()).dtype
    fp16 = weight_format_of(loaded.model.config) is FP16
    if verdict is not None and verdict["basis"] == "measured-cuda" and fp16 and dtype != torch.float16:
        verdict["notes"].append(
            f"measured in {str(dtype).replace('torch.', '')}, not fp16: the scaled "
            "throughput is pessimistic for a fp16 T4 run"
        )
    return verdict


def evaluate(model, rows, config: EvalConfig | None = None) -> Metrics:
    """Score a variant on labelled arena rows and measure its cost.

    Args:
        model: a model folder (full or PEFT adapter; GPTQ and bitsandbytes folders load
            through transformers), a ``PreTrainedModel``, or a ``kdq.models.LoadedModel``.
        rows: anything :func:`kdq.load_arena` accepts; every row needs a label.
        config: :class:`EvalConfig`.
    Returns:
        :class:`Metrics`; ``probs`` is ``(N, C)`` in row order, ``C`` the classes of the model's label
        scheme, which the rows' must be (a WSDM model on WSDM rows: accuracy is its headline). Its
        ``truncation`` says what ``max_length`` cut and how the cut rows scored; its ``position_bias`` how
        often the swapped order changes the answer (with TTA).

    Steps: check the rows (:func:`_labelled_rows`) and the budget, load and score the variant
    (:func:`_score_variant`), refuse non-finite probabilities, then compute the metrics and the verdict.
    """
    from ..costs.budget import load_budget

    config = EvalConfig() if config is None else config
    if not isinstance(config, EvalConfig):
        raise ValueError(f"config must be a kdq.EvalConfig, got {type(config).__name__}")
    rows, labels, scheme = _labelled_rows(rows)
    profile = load_budget(config.budget) if config.budget is not None else None  # fail before the long part
    overlap = _check_overlap(model, rows, config)  # before the long part: strict refuses here
    scoring = _score_variant(model, rows, scheme, config)
    metrics = _metrics_of(scoring, rows, labels, scheme, config)
    return dataclasses.replace(metrics, budget=_verdict(metrics, profile, scoring.loaded), overlap=overlap)


def _check_overlap(model, rows, config: EvalConfig) -> dict | None:
    """Held-out ``rows`` against the rows the model was trained on, when its folder records them
    (:data:`~kdq.runtime.constants.TRAIN_GROUPS_FILE`, written by :func:`kdq.distill`): the
    :class:`~kdq.data.OverlapReport` as a dict (``None`` without a record). A leak warns
    (:class:`~kdq.data.LeakWarning`), or raises ``ValueError`` with ``config.strict_overlap``."""
    from ..data import check_overlap, recorded_group_keys
    from ..models import LoadedModel

    source = model.source if isinstance(model, LoadedModel) else model
    trained = recorded_group_keys(source)
    if trained is None:
        return None
    report = check_overlap(trained, rows, strict=config.strict_overlap, what=f"held-out rows of {source}")
    return report.to_dict()


def project_metrics(metrics: Metrics, profile) -> dict | None:
    """The budget verdict of a scored variant on ``profile`` (``None`` without a profile).

    The one place that turns what a variant was scored with into the projection, for
    :func:`evaluate` and for the :class:`Metrics` :func:`kdq.compare` is handed: passes per row
    from its TTA (full: ``profile.tta_factor``; gated: about ``1 + tta_fraction``; none: 1), and a
    CUDA measurement as the throughput basis (``budget.project``'s ``measured``).
    """
    from ..costs.budget import project
    from ..costs.modelspec import ModelSpec, WeightFormat

    if profile is None:
        return None
    if metrics.tta_mode == "gated":  # every row once, the least confident fraction twice
        profile = dataclasses.replace(profile, tta_factor=1.0 + metrics.tta_fraction)
    measured = None
    if metrics.device.startswith("cuda"):  # one GPU's rate: the rows were split over n_devices of them
        measured = {"device": metrics.device, "tokens_per_s": metrics.tokens_per_s / max(metrics.n_devices, 1)}
    return project(
        ModelSpec(**metrics.spec),
        WeightFormat(**metrics.weight_format_spec),
        metrics.lengths,
        profile,
        max_length=metrics.max_length,
        tta=metrics.tta_mode != "none",
        measured=measured,
    )
