"""``kdq.quantize``: source model → quantized folder that reloads exactly and loads without kdq."""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data import carry_group_keys
from ..quant_methods import get_quantizer
from .config import QuantConfig

log = logging.getLogger("kdq.quantize")

_STAGES = ("load source", "render rows", "probe source", "quantize", "save", "verify reload")


def _resolve_device(config):
    import torch

    from ..models import default_device

    device = torch.device(config.device) if config.device else default_device()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _resolve_dtype(config, device):
    from ..runtime.dtypes import resolve_dtype

    return resolve_dtype(config.dtype, device)


def _release(device) -> None:
    """Free a dropped model's memory before the next one loads (a 4B source, then its quantized copy): a gc pass
    (a model caught in a reference cycle would otherwise wait for the next one, beside its successor), and on
    CUDA the cached blocks."""
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _refuse_quantized(model) -> None:
    """Quantizing twice compounds the error and no method supports it: refuse up front."""
    from ..quant_methods import quantization_config_of

    is_path = isinstance(model, (str, os.PathLike))
    qc = quantization_config_of(model if is_path else getattr(model, "config", None))
    if qc:
        raise ValueError(
            f"model is already quantized ({qc['quant_method']}); pass the unquantized (fp16/fp32) classifier "
            "or its PEFT adapter folder."
        )


def quantize(model, config: QuantConfig, *, calibration=None, out_dir, tokenizer=None, overwrite: bool = False) -> Path:
    """Quantize a sequence classifier into ``out_dir`` and prove the folder reloads to the same model.

    Args:
        model: a saved classifier folder, a PEFT/LoRA adapter folder (merged into its base
            first), or an in-memory ``PreTrainedModel`` / ``PeftModel``.
        config: :class:`QuantConfig` (e.g. ``QuantConfig.from_name("gptq-4")``).
        calibration: arena rows (CSV/parquet path, DataFrame, ``datasets.Dataset``, dict of
            competition columns) or a ``list[str]``. Rows are rendered with the model's
            template and ``max_length``. Required for GPTQ; for bitsandbytes only the probe
            uses it (synthetic arena rows otherwise).
        out_dir: output folder, written atomically; loads with stock
            ``AutoModelForSequenceClassification.from_pretrained`` and holds the tokenizer and
            ``kdq-quantize.json`` (the :class:`~kdq.quantize.QuantReport` plus the probe).
        tokenizer: tokenizer object or folder; defaults to the one saved with the model.
        overwrite: replace an existing ``out_dir`` (only once the new folder is verified).

    Returns:
        ``Path`` of ``out_dir``.

    Raises:
        ValueError: bad arguments or calibration rows. ImportError: missing extra (names it).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        QuantizationError / ReloadMismatchError: the head was quantized, the folder does not
        reload, or it reloads to different logits; nothing is written then.
    """
    from tqdm.auto import tqdm

    from ..utils.atomic import atomic_dir

    out_dir = Path(out_dir)
    method = _check_arguments(model, config, calibration, out_dir, overwrite)
    device = _resolve_device(config)
    dtype = _resolve_dtype(config, device)
    method.prepare(device)  # missing extras fail here, before any heavy work
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tqdm(total=len(_STAGES), desc=f"kdq.quantize {config.name}", unit="step") as bar,
        tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.src-", dir=out_dir.parent) as scratch,
    ):
        run = _Run(config, method, device, dtype, bar)
        run.stage(0)
        source = _load_source(model, tokenizer, dtype, device, Path(scratch))
        run.stage(1)  # calibration and probe rows, rendered with the same template as training
        rows = _render_rows(run, source, calibration)
        run.stage(2)  # reference logits; then free the source before quantizing (a 4B teacher)
        measured = _Measured(source_logits=_probe_source(run, source, rows))
        run.stage(3)
        qmodel = _quantize_model(run, source, rows, measured)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            run.stage(4)
            qmodel.save_pretrained(str(tmp))
            source.tokenizer.save_pretrained(str(tmp))
            carry_group_keys(model, tmp)  # the rows it learnt from, which kdq.evaluate checks held-out rows against
            run.stage(5)
            measured.verify_start = time.perf_counter()
            measured.memory_logits = _probe_quantized(qmodel, rows, source.tokenizer.pad_token_id)
            del qmodel
            _release(device)
            report = _verify(tmp, run, rows, source, measured)
            bar.update()
    log.info(
        "kdq.quantize %s -> %s: reload max|Δlogit| %.3g (tol %.3g), KL to source %.4g nats, %.1f MB",
        config.name,
        out_dir,
        report.reload_max_abs_delta,
        report.reload_tolerance,
        report.kl_to_source,
        report.weights_bytes / 1e6,
    )
    return out_dir


@dataclass
class _Run:
    """One :func:`quantize` call, resolved: its config and method, where it computes, and its progress bar."""

    config: QuantConfig
    method: object  # the registered QuantMethod
    device: object  # torch.device
    dtype: object  # torch.dtype of the layers left unquantized
    bar: object  # tqdm, one step per entry of _STAGES

    def stage(self, i: int) -> None:
        """Say that step ``i`` of :data:`_STAGES` starts (the bar counts the steps done)."""
        self.bar.update(1 if i else 0)
        self.bar.set_postfix_str(_STAGES[i])

    def template(self, source):
        """How rows are rendered: the config's template, else the source's (recorded, else the default)."""
        return self.config.template or source.template


@dataclass
class _Measured:
    """What a run measures on its way to the report."""

    source_logits: object  # (N, C): the source on the probe rows
    quantize_seconds: float = 0.0
    details: dict = field(default_factory=dict)  # the method's details for kdq-quantize.json
    memory_logits: object = None  # (N, C): the quantized model in memory, before it is dropped
    verify_start: float = 0.0  # time.perf_counter() when verification began


def _check_arguments(model, config, calibration, out_dir: Path, overwrite: bool):
    """The config's registered method, once the arguments are known to be usable (no model loaded yet)."""
    if not isinstance(config, QuantConfig):
        raise ValueError(
            f"config must be a kdq.QuantConfig, got {type(config).__name__}; e.g. QuantConfig.from_name('gptq-4')."
        )
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True or choose another output folder.")
    method = get_quantizer(config.method)
    if calibration is None and method.needs_calibration:
        raise ValueError(
            f"method {config.method!r} needs calibration data: pass calibration= arena rows (CSV/parquet "
            "path, DataFrame, Dataset) or a list of strings, ideally >= 128 training rows."
        )
    _refuse_quantized(model)
    return method


def _render_rows(run: _Run, source, calibration):
    """The calibration and probe rows (:class:`~kdq.quantize.calibration.CalibrationSet`), rendered as training did."""
    from .calibration import prepare_calibration

    config = run.config
    return prepare_calibration(
        calibration,
        source.tokenizer,
        run.template(source),
        num_samples=config.num_samples,
        probe_rows=config.probe_rows,
        seed=config.seed,
        needs_calibration=run.method.needs_calibration,
    )


def _probe_source(run: _Run, source, rows):
    """The source's logits on the probe rows; the source model is dropped afterwards (a 4B teacher)."""
    from .verify import probe_logits

    logits = probe_logits(source.model, rows.probe, source.tokenizer.pad_token_id)
    source.model = None
    _release(run.device)
    return logits


def _quantize_model(run: _Run, source, rows, measured: _Measured):
    """The quantized model, its head checked and its config finished for saving; never run forward.

    bitsandbytes 4-bit (AVX512-BF16 CPUs) and gptqmodel's CPU kernels repack weights in place on the first
    forward pass, and a folder saved afterwards reloads wrong or not at all. Records the time taken and the
    method's details in ``measured``."""
    from ..models import attach_template, prepare_classifier
    from .verify import check_head

    config, method, device = run.config, run.method, run.device
    t0 = time.perf_counter()
    qmodel = method.quantize(
        source.folder, config, calibration=rows.calibration, tokenizer=source.tokenizer, device=device, dtype=run.dtype
    )
    measured.quantize_seconds = time.perf_counter() - t0
    check_head(qmodel, config.name)
    method.finalize_config(qmodel, config, device)
    prepare_classifier(qmodel, source.tokenizer)
    attach_template(qmodel, run.template(source))
    measured.details = method.describe(qmodel, config, device)
    measured.details.update(_cuda_kernel(qmodel, device, config.name))
    return qmodel


def _probe_quantized(qmodel, rows, pad_id: int):
    """The saved model's logits on the probe rows, computed in memory (after saving: see :func:`_quantize_model`)."""
    from .verify import probe_logits

    qmodel.eval()  # optimum leaves the new quantized linears in training mode
    return probe_logits(qmodel, rows.probe, pad_id)


def _cuda_kernel(qmodel, device, name: str) -> dict:
    """On CUDA: the kernel the method registry picks for this card's compute capability (recorded in
    ``kdq-quantize.json`` ``details``, and said); nothing on CPU."""
    if device.type != "cuda":
        return {}
    import torch

    from ..quant_methods import choose_cuda_kernel, quantization_config_of

    capability = torch.cuda.get_device_capability(device)
    choice = choose_cuda_kernel(quantization_config_of(qmodel.config), capability)
    sm = f"sm_{capability[0]}{capability[1]}"
    from tqdm.auto import tqdm

    tqdm.write(f"kdq.quantize {name}: the {choice.kernel if choice else 'no'} kernel on {device} ({sm})")
    return {"cuda_kernel": choice.kernel if choice else None, "cuda_capability": sm}


@dataclass
class _Source:
    model: object  # the unquantized classifier (dropped after the probe)
    tokenizer: object
    folder: Path  # a saved full-precision folder for from_pretrained(quantization_config=...)
    template: object
    name: str | None  # the folder it came from, for the report
    weights_bytes: int


def _load_source(model, tokenizer, dtype, device, scratch: Path) -> _Source:
    """Load (and merge) the source; a folder to quantize from: the input folder, or a saved copy."""
    from ..models import is_adapter_dir, load_classifier, template_of
    from ..runtime.template import TemplateConfig
    from ..utils.weight_files import folder_weight_bytes

    is_path = isinstance(model, (str, os.PathLike))
    loaded = load_classifier(
        model,
        tokenizer=tokenizer,
        dtype=dtype if is_path else None,
        device=device if is_path else None,
        frozen=True,  # only the probe runs it: a bf16 folder stays bf16 in host RAM, computed in fp32
    )
    if is_path and not is_adapter_dir(model):
        folder = Path(model)
    else:  # transformers quantizes while loading, so adapters and objects become plain folders first
        folder = scratch / "source"
        loaded.model.save_pretrained(str(folder))
        loaded.tokenizer.save_pretrained(str(folder))
    template = template_of(loaded.model) or template_of(folder) or TemplateConfig()
    return _Source(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        folder=folder,
        template=template,
        name=loaded.source,
        weights_bytes=folder_weight_bytes(folder),
    )


def _verify(folder, run: _Run, rows, source, measured: _Measured):
    """Reload ``folder``, compare with the in-memory logits, gate on KL, write ``kdq-quantize.json``."""
    from ..utils.versions import library_versions
    from ..utils.weight_files import folder_weight_bytes
    from .verify import (
        QuantizationError,
        QuantReport,
        compare_reload,
        cpu_has_avx512_bf16,
        kl_divergence,
        max_abs_delta,
        write_report,
    )

    config, name = run.config, run.config.name
    source_logits, memory_logits = measured.source_logits, measured.memory_logits
    reloaded = compare_reload(
        name,
        folder,
        probe=rows.probe,
        pad_id=source.tokenizer.pad_token_id,
        memory_logits=memory_logits,
        tolerance=config.reload_tolerance,
        device=run.device,
        dtype=run.dtype,
    )
    kl = kl_divergence(source_logits, memory_logits)
    if config.max_kl is not None and not kl <= config.max_kl:
        raise QuantizationError(
            f"{name}: mean KL(source || quantized) = {kl:.4g} nats on {len(rows.probe)} "
            f"probe rows exceeds max_kl={config.max_kl:g}; try more bits, a smaller "
            "group_size or more calibration rows."
        )
    report = QuantReport(
        variant=name,
        method=config.method,
        bits=config.bits,
        device=str(run.device),
        dtype=str(run.dtype).replace("torch.", ""),
        calibration_rows=len(rows.calibration),
        probe_rows=len(rows.probe),
        probe_source=rows.probe_source,
        reload_max_abs_delta=max_abs_delta(reloaded, memory_logits),
        reload_tolerance=float(config.reload_tolerance),
        kl_to_source=kl,
        source_max_abs_delta=max_abs_delta(source_logits, memory_logits),
        argmax_agreement=float((source_logits.argmax(-1) == memory_logits.argmax(-1)).float().mean()),
        weights_bytes=folder_weight_bytes(folder),
        source_weights_bytes=source.weights_bytes,
        quantize_seconds=measured.quantize_seconds,
        verify_seconds=time.perf_counter() - measured.verify_start,
        cpu_avx512_bf16=cpu_has_avx512_bf16(),
        details=measured.details,
        config=config.to_dict(),
        versions=library_versions(),
        source=source.name,
    )
    write_report(folder, report, probe=rows.probe, memory_logits=memory_logits, source_logits=source_logits)
    return report
