"""Every quantized folder proves itself: reload it, run a fixed probe batch, compare.

Two comparisons on the same probe rows (token ids rendered with the model's template):

* reloaded folder vs the quantized model still in memory: ``max |Δlogit|``. Same machine,
  same kernels, so anything above ``reload_tolerance`` means the folder is not the model
  (a repacked or half-restored layout, a corrupted file). This is the gate.
* quantized vs the unquantized source: mean KL(source || quantized) in nats, the cost of
  quantization. Reported, and a gate only when ``QuantConfig.max_kl`` is set.

The probe ids and both logit sets are stored in ``kdq-quantize.json`` so :func:`recheck`
can repeat the reload check later (after a copy, an upload, a download).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime.constants import FORMAT_KEY, check_format
from ..runtime.constants import QUANTIZE_REPORT_FILE as REPORT_FILE
from ..utils.errors import CheckFailed

REPORT_FORMAT = 1  # kdq-quantize.json's format version (under FORMAT_KEY), written by write_report


class QuantizationError(CheckFailed):
    """A quantized model failed a check (head quantized, reload failed, too far from the source)."""


class ReloadMismatchError(QuantizationError):
    """The saved folder reloads into a model whose logits differ from the one that was saved."""


@dataclass(frozen=True)
class QuantReport:
    """What :func:`kdq.quantize` measured; written to ``<out_dir>/kdq-quantize.json``."""

    variant: str
    method: str
    bits: int
    device: str
    dtype: str
    calibration_rows: int
    probe_rows: int
    probe_source: str
    reload_max_abs_delta: float
    reload_tolerance: float
    kl_to_source: float
    source_max_abs_delta: float
    argmax_agreement: float
    weights_bytes: int
    source_weights_bytes: int | None
    quantize_seconds: float
    verify_seconds: float
    cpu_avx512_bf16: bool
    details: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def probe_logits(model, probe, pad_id: int):
    """Logits for the probe rows, ``(N, num_labels)`` fp32 on CPU, in row order (one batch)."""
    from ..runtime.batching import predict_logits

    return predict_logits(model, probe, pad_id, batch_size=max(len(probe), 1))


def kl_divergence(p_logits, q_logits) -> float:
    """Mean over rows of KL(softmax(p) || softmax(q)), in nats, computed in float64."""
    import torch

    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def max_abs_delta(a, b) -> float:
    d = (a.double() - b.double()).abs().max()
    return float(d) if d.numel() else 0.0


def is_quantized_layer(layer) -> bool:
    """Whether a leaf module with a ``weight`` holds quantized weights, whichever way a method does it.

    Some methods swap the module class (bitsandbytes' ``Linear8bitLt`` / ``Linear4bit`` subclass
    ``nn.Linear``, so the exact type is checked; gptqmodel's kernels), some store integer weights,
    and tensor-subclass methods (torchao) keep a plain ``nn.Linear`` whose weight reports a
    floating dtype but is not a plain tensor: each case counts.
    """
    import torch

    weight = getattr(layer, "weight", None)
    if type(layer) is not torch.nn.Linear:
        return True
    return weight is not None and (
        not weight.dtype.is_floating_point or type(weight) not in (torch.Tensor, torch.nn.Parameter)
    )


def check_head(model, where: str) -> str:
    """Raise :class:`QuantizationError` unless the classification head is a plain floating-point Linear.

    Returns the head's module name.
    """
    from ..quant_methods import HEAD_MODULES

    for name in HEAD_MODULES:
        head = getattr(model, name, None)
        if head is None:
            continue
        for layer in head.modules():
            weight = getattr(layer, "weight", None)
            if list(layer.children()) or weight is None:
                continue
            if is_quantized_layer(layer):
                raise QuantizationError(
                    f"{where}: the classification head {name!r} was quantized "
                    f"({type(layer).__name__}, {type(weight).__name__} {weight.dtype}); it must stay a "
                    "floating-point nn.Linear. Exclude it from quantization."
                )
        return name
    raise QuantizationError(
        f"{where}: no classification head ({' / '.join(HEAD_MODULES)}) found on "
        f"{type(model).__name__}; kdq quantizes *ForSequenceClassification models."
    )


def reload_folder(folder, device, dtype):
    """Load a saved folder the stock way: ``AutoModelForSequenceClassification.from_pretrained``."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype, device_map={"": str(device)})
    model.eval()
    return model


def compare_reload(method_name: str, folder, *, probe, pad_id: int, memory_logits, tolerance: float, device, dtype):
    """Reload ``folder`` into a fresh model, run ``probe`` and compare with ``memory_logits``.

    Returns the reloaded logits ``(N, C)``. Raises :class:`QuantizationError` when the folder
    does not load or loses its head, :class:`ReloadMismatchError` beyond ``tolerance``.
    """
    import gc

    try:
        model = reload_folder(folder, device, dtype)
    except Exception as err:  # any failure to reload is a failed artifact, whatever its type
        raise QuantizationError(
            f"{method_name}: the saved folder does not reload with "
            f"AutoModelForSequenceClassification.from_pretrained: {type(err).__name__}: "
            f"{str(err)[:500]}"
        ) from err
    check_head(model, f"{method_name} (reloaded)")
    logits = probe_logits(model, probe, pad_id)
    del model
    gc.collect()
    delta = max_abs_delta(logits, memory_logits)
    if not math.isfinite(delta) or delta > tolerance:
        raise ReloadMismatchError(
            f"{method_name}: the reloaded folder does not reproduce the quantized model: max |Δlogit| = "
            f"{delta:.4g} > reload_tolerance={tolerance:g} on {len(probe)} probe rows "
            f"(reloaded logits span [{float(logits.min()):.3g}, {float(logits.max()):.3g}]). "
            "The artifact was not written. Reloading on other hardware or kernels may need a larger "
            "reload_tolerance; a large delta on the same machine means the saved layout is wrong."
        )
    return logits


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU advertises AVX512-BF16 (bitsandbytes' repacking CPU 4-bit path)."""
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def write_report(folder, report: QuantReport, *, probe, memory_logits, source_logits) -> Path:
    path = Path(folder, REPORT_FILE)
    payload = {
        FORMAT_KEY: REPORT_FORMAT,
        **report.to_dict(),
        "probe": {
            "input_ids": [list(map(int, ids)) for ids in probe],
            "logits_memory": memory_logits.tolist(),
            "logits_source": source_logits.tolist(),
        },
    }
    path.write_text(json.dumps(payload, indent=1))
    return path


def _read_raw(folder) -> dict:
    """``kdq-quantize.json`` as stored (``ValueError`` when absent or of a format this kdq does not read)."""
    path = Path(folder, REPORT_FILE)
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} has no {REPORT_FILE}; it was not written by kdq.quantize.")
    raw = json.loads(path.read_text())
    check_format(raw, REPORT_FORMAT, str(path), "it was written by a newer kdq; read it with that version")
    return raw


def read_report(folder) -> QuantReport:
    """The :class:`QuantReport` stored in a quantized folder."""
    raw = _read_raw(folder)
    raw.pop("probe", None)
    raw.pop(FORMAT_KEY, None)
    return QuantReport(**raw)


def recheck(folder, *, tolerance: float | None = None, device=None) -> float:
    """Reload a quantized folder and replay its stored probe; return ``max |Δlogit|``.

    Compares with the logits the model produced in memory when it was quantized, so use the
    same kind of machine (CPU vs GPU kernels differ). ``tolerance`` defaults to the one
    recorded at quantization time. Raises :class:`ReloadMismatchError` beyond it.
    """
    import torch

    from ..models import load_tokenizer
    from ..quant_methods import get_quantizer

    folder = Path(folder)
    raw = _read_raw(folder)
    device = torch.device(device or raw["device"])
    get_quantizer(raw["method"]).prepare_load(device)
    pad_id = load_tokenizer(folder).pad_token_id
    memory = torch.tensor(raw["probe"]["logits_memory"])
    tol = raw["reload_tolerance"] if tolerance is None else tolerance
    logits = compare_reload(
        raw["variant"],
        folder,
        probe=raw["probe"]["input_ids"],
        pad_id=pad_id,
        memory_logits=memory,
        tolerance=tol,
        device=device,
        dtype=getattr(torch, raw["dtype"]),
    )
    return max_abs_delta(logits, memory)
