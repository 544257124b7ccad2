"""Will a variant fit the notebook? Budget profiles and the runtime/memory verdict.

Budget profiles are data: JSON files in ``kdq/budgets/`` (or any path a user passes), loaded
into a frozen :class:`BudgetProfile`. :func:`project` turns a model's shape, weight format and
the token lengths measured on real rows into a fits / does-not-fit verdict with margins.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..config.validate import check_range
from ..runtime.constants import DEFAULT_BUDGET_NAME
from .modelspec import FP16, ModelSpec, WeightFormat, activation_bytes, batch_flops, weight_bytes

BUDGET_DIR = Path(__file__).resolve().parent.parent / "budgets"
GPU_PEAKS_FILE = BUDGET_DIR / "_gpu_peaks.json"
GB = 1e9  # budgets speak decimal gigabytes, as GPU datasheets do


# --------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class BudgetProfile:
    """A notebook's hardware and limits. Ship as JSON in ``kdq/budgets/`` or pass a path.

    Units: GB are 10^9 bytes, TFLOP/s dense fp16 tensor-core peak, GB/s memory bandwidth.
    ``compute_efficiency``: the fraction of ``peak_tflops`` a forward pass reaches;
    ``compute_slowdown``: per weight format (``fp16``, ``gptq-8``, ``bnb-nf4``...), how much
    slower its kernels are than fp16 (dequantization); a format missing from it is an error,
    never a silent 1.0 (``fp16`` is the reference, 1.0 unless stated). Both are stated
    assumptions; a throughput measured on CUDA replaces them.
    ``host_load_factor``: the notebook's peak host RAM while ``predict.py`` loads a model, over the
    model's weight bytes (``bench/rehearsal.py`` measures it at full size); ``dataset_limit_gb`` and
    ``working_disk_gb``: the largest dataset the platform takes, and the writable disk of a notebook
    that builds the export itself (``None``: not checked).
    """

    name: str
    description: str
    gpus: int
    gpu_name: str
    gpu_memory_gb: float
    reserved_gb_per_gpu: float
    peak_tflops: float
    bandwidth_gbs: float
    compute_efficiency: float
    bandwidth_efficiency: float
    time_limit_hours: float
    overhead_hours: float
    rows: int
    ram_gb: float
    host_overhead_gb: float
    batch_size: int
    tta_factor: float
    compute_capability: str = ""
    host_load_factor: float = 1.2
    dataset_limit_gb: float | None = None
    working_disk_gb: float | None = None
    bf16: bool = True
    offline: bool = False
    compute_slowdown: dict = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self):
        c = "BudgetProfile"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{c}.name must be a non-empty string, got {self.name!r}")
        for f in ("gpus", "rows", "batch_size"):
            check_range(c, f, getattr(self, f), 1, kind=int)
        for f in ("gpu_memory_gb", "peak_tflops", "bandwidth_gbs", "time_limit_hours", "ram_gb"):
            check_range(c, f, getattr(self, f), 0, lo_open=True)
        for f in ("reserved_gb_per_gpu", "overhead_hours", "host_overhead_gb"):
            check_range(c, f, getattr(self, f), 0)
        check_range(c, "host_load_factor", self.host_load_factor, 1)
        for f in ("dataset_limit_gb", "working_disk_gb"):
            if getattr(self, f) is not None:
                check_range(c, f, getattr(self, f), 0, lo_open=True)
        for f in ("compute_efficiency", "bandwidth_efficiency"):
            check_range(c, f, getattr(self, f), 0, 1, lo_open=True)
        check_range(c, "tta_factor", self.tta_factor, 1)
        if not isinstance(self.compute_slowdown, dict):
            raise ValueError(
                f"{c}.compute_slowdown must be a dict of weight format -> factor >= 1, "
                f"got {type(self.compute_slowdown).__name__}"
            )
        for k, v in self.compute_slowdown.items():
            check_range(c, f"compute_slowdown[{k!r}]", v, 1)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "budget profile") -> BudgetProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; BudgetProfile fields are {sorted(known)}.")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:  # a required field is missing
            raise ValueError(
                f"{source}: {err}; see {BUDGET_DIR / DEFAULT_BUDGET_NAME}.json for a complete profile."
            ) from None

    def to_dict(self) -> dict:
        return asdict(self)

    def slowdown(self, fmt: WeightFormat) -> float:
        """How much slower ``fmt``'s kernels are than fp16 on this profile's GPU.

        Raises ``ValueError`` (naming the format, the profile's file and the fix) for a format the
        profile does not list: assuming fp16 speed would give an unknown method an optimistic verdict.
        """
        if fmt.name in self.compute_slowdown:
            return float(self.compute_slowdown[fmt.name])
        if fmt.name == FP16.name:
            return 1.0
        raise ValueError(
            f"budget profile {self.name!r} ({profile_file(self.name)}) has no compute_slowdown entry for "
            f"weight format {fmt.name!r}, so how fast its kernels run on {self.gpu_name} is unknown "
            f'(listed: {sorted(self.compute_slowdown)}). Add "{fmt.name}": <factor >= 1, its kernels\' '
            "time / fp16's> to compute_slowdown in that file (bench/gpu_check.py measures it on a GPU)."
        )


def profile_file(name: str) -> str:
    """The shipped JSON file of profile ``name`` (``kdq/budgets/<name>.json``; a profile adjusted by
    :func:`measured_profile` is named ``<name>+measured``), else where a user profile comes from."""
    path = BUDGET_DIR / f"{name.split('+')[0]}.json"
    return str(path) if path.is_file() else "the JSON file it was loaded from"


def available_budgets() -> list:
    """Names of the profiles shipped in ``kdq/budgets/`` (files starting with ``_`` are not profiles)."""
    return sorted(p.stem for p in BUDGET_DIR.glob("*.json") if not p.name.startswith("_"))


def load_budget(name_or_path) -> BudgetProfile:
    """A :class:`BudgetProfile` from a shipped name (``"lmsys-2xt4"``), a JSON path, or a profile."""
    if isinstance(name_or_path, BudgetProfile):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(
            f"budget must be a profile name, a JSON path or a BudgetProfile, got {type(name_or_path).__name__}"
        )
    path = Path(name_or_path)
    if not path.is_file():
        if str(name_or_path) not in available_budgets():
            raise ValueError(
                f"budget {str(name_or_path)!r} is neither a shipped profile {available_budgets()} "
                "nor an existing JSON file; pass one of those names or the path of your own profile."
            )
        path = BUDGET_DIR / f"{name_or_path}.json"
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"budget file {str(path)!r} is not valid JSON: {err}") from None
    return BudgetProfile.from_dict(data, source=f"budget file {str(path)!r}")


def gpu_peak_tflops(device_name: str) -> tuple:
    """``(key, peak fp16 TFLOP/s)`` for a CUDA device name, from ``kdq/budgets/_gpu_peaks.json``.

    A key matches as a whole word of the name, case-insensitively ("L4" does not match
    "L40S", nor "A10" "A10G"); the longest match wins (so "H100 PCIe" beats "H100").
    Returns ``(None, None)`` for an unknown GPU.
    """
    table = json.loads(GPU_PEAKS_FILE.read_text())["gpus"]
    hits = sorted(
        (k for k in table if re.search(rf"(?<![a-z0-9]){re.escape(k.lower())}(?![a-z0-9])", device_name.lower())),
        key=len,
        reverse=True,
    )
    return (hits[0], float(table[hits[0]]["fp16_tflops"])) if hits else (None, None)


# --------------------------------------------------------------------------- verdict
def _padded_batches(lengths, batch_size: int):
    """``(rows, longest)`` per batch, as length-sorted batching (longest first) would form them."""
    ordered = sorted((int(x) for x in lengths), reverse=True)
    return [(len(ordered[s : s + batch_size]), ordered[s]) for s in range(0, len(ordered), batch_size)]


def project(
    spec: ModelSpec,
    fmt: WeightFormat,
    lengths,
    profile: BudgetProfile,
    *,
    max_length: int | None = None,
    tta: bool = True,
    measured: dict | None = None,
) -> dict:
    """Project a variant onto a budget profile; return the verdict dict.

    Args:
        spec, fmt: the model's shape and weight format.
        lengths: token lengths of the evaluated rows (``(n,)``): they stand in for the
            notebook's rows, scaled to ``profile.rows``.
        max_length: the template's row budget, for the worst-case memory batch
            (default: the longest measured row).
        tta: the notebook scores every row twice (``profile.tta_factor``).
        measured: ``{"device": "cuda:0 (NVIDIA ...)", "tokens_per_s": float}`` from a CUDA
            run; when given (and the GPU's peak is known), it replaces the FLOP estimate.
    Returns:
        dict with ``fits`` (bool), ``fits_time``, ``fits_gpu_memory``, ``fits_ram``,
        ``projected_hours``, ``margin_hours``, ``gpu_memory_gb`` (need per GPU),
        ``margin_gb``, ``basis`` (``"flops-estimate"`` or ``"measured-cuda"``) and the terms.
    """
    lengths = [int(x) for x in lengths]
    if not lengths:
        raise ValueError("budget projection needs the token lengths of at least one row.")
    p = profile
    scale = p.rows / len(lengths)
    tta_factor = p.tta_factor if tta else 1.0
    notes = []

    # ---- time: FLOP estimate, roofline per padded batch
    w_bytes = weight_bytes(spec, fmt)
    compute_s = bandwidth_s = est_s = 0.0
    slow = p.slowdown(fmt)
    # a format with no kernel on the profile's GPU is flagged, never projected at fp16 speed
    kernel = kernel_verdict(fmt, p)
    if not kernel["has_kernel"]:
        notes.append(kernel["reason"])
    for b, longest in _padded_batches(lengths, p.batch_size):
        c = batch_flops(spec, b, longest) / (p.peak_tflops * 1e12 * p.compute_efficiency) * slow
        m = w_bytes / (p.bandwidth_gbs * GB * p.bandwidth_efficiency)  # every batch streams all weights once
        compute_s += c
        bandwidth_s += m
        est_s += max(c, m)
    est_hours = est_s * scale * tta_factor / p.gpus / 3600
    basis, run_hours, ratio = "flops-estimate", est_hours, None
    if measured is not None and str(measured.get("device", "")).startswith("cuda"):
        key, peak = gpu_peak_tflops(measured["device"])
        if peak is None:
            notes.append(
                f"measured on {measured['device']} but its peak is not in _gpu_peaks.json: "
                "used the FLOP estimate (add the GPU to use the measurement)"
            )
        else:
            ratio = p.peak_tflops / peak
            t4_tok_s = float(measured["tokens_per_s"]) * ratio
            run_hours = sum(lengths) * scale * tta_factor / (t4_tok_s * p.gpus) / 3600
            basis = "measured-cuda"
            notes.append(f"throughput measured on {key} scaled by peak ratio {p.peak_tflops:g}/{peak:g}")
    projected = run_hours + p.overhead_hours

    # ---- memory per GPU: every GPU holds a full copy (data parallel over rows)
    L = int(max_length or max(lengths))
    act = activation_bytes(spec, p.batch_size, L)
    need = w_bytes + act["total"] + p.reserved_gb_per_gpu * GB
    # weights pass through host RAM while loading: predict.py's measured peak over its weights
    ram_need = w_bytes * p.host_load_factor + p.host_overhead_gb * GB
    fits_time = projected <= p.time_limit_hours and kernel["has_kernel"]
    fits_gpu = need <= p.gpu_memory_gb * GB
    fits_ram = ram_need <= p.ram_gb * GB
    disk = disk_verdict(w_bytes, p)
    notes += disk["notes"]
    if fmt.needs and p.offline:
        notes.append(
            f"offline notebook: bring a {fmt.needs} wheel built for sm_{p.compute_capability.replace('.', '')}"
        )
    if not fits_gpu:
        notes.append("a full copy does not fit one GPU; splitting layers over the GPUs is not modelled")
    return {
        "profile": p.name,
        "fits": bool(fits_time and fits_gpu and fits_ram and disk["fits_dataset"]),
        "fits_time": bool(fits_time),
        "has_kernel": kernel["has_kernel"],
        "kernel": kernel["kernel"],
        "fits_dataset": disk["fits_dataset"],
        "fits_working_disk": disk["fits_working_disk"],
        "export_gb": disk["export_gb"],
        "fits_gpu_memory": bool(fits_gpu),
        "fits_ram": bool(fits_ram),
        "basis": basis,
        "projected_hours": projected,
        "estimate_hours": est_hours + p.overhead_hours,
        "limit_hours": p.time_limit_hours,
        "margin_hours": p.time_limit_hours - projected,
        "gpu_memory_gb": need / GB,
        "gpu_limit_gb": p.gpu_memory_gb,
        "margin_gb": p.gpu_memory_gb - need / GB,
        "ram_gb": ram_need / GB,
        "ram_limit_gb": p.ram_gb,
        "ram_margin_gb": p.ram_gb - ram_need / GB,
        "weights_gb": w_bytes / GB,
        "activations_gb": act["activations"] / GB,
        "mask_gb": act["mask"] / GB,
        "kv_cache_gb": act["kv_cache"] / GB,
        "weight_format": fmt.name,
        "bound": "compute" if compute_s >= bandwidth_s else "bandwidth",
        "compute_slowdown": slow,
        "peak_ratio": ratio,
        "tta_factor": tta_factor,
        "rows": p.rows,
        "batch_size": p.batch_size,
        "max_length": L,
        "mean_tokens": sum(lengths) / len(lengths),
        "notes": notes,
    }


def kernel_verdict(fmt: WeightFormat, profile: BudgetProfile) -> dict:
    """``{"has_kernel", "kernel", "reason"}``: whether ``fmt`` has a CUDA kernel on the profile's GPU
    (its ``compute_capability``), asked of the method registry (:func:`kdq.quant_methods.choose_cuda_kernel`:
    kernel facts read from the backends' sources, docs/quantize.md). A profile without a capability is
    not checked."""
    from ..quant_methods import choose_cuda_kernel, cuda_kernel_reason, has_cuda_kernel

    if not profile.compute_capability:
        return {"has_kernel": True, "kernel": None, "reason": "no compute capability in the profile: not checked"}
    cc = profile.compute_capability
    ok = has_cuda_kernel(fmt, cc)
    choice = choose_cuda_kernel(fmt, cc) if ok else None
    reason = cuda_kernel_reason(fmt, cc)
    if not ok:
        reason = f"{reason}: no projection at fp16 speed, the variant does not fit {profile.gpu_name}"
    return {"has_kernel": ok, "kernel": choice.kernel if choice else None, "reason": reason}


def disk_verdict(export_bytes: float, profile: BudgetProfile) -> dict:
    """Whether an export of ``export_bytes`` (its weights: the rest of the folder is a few MB) fits the
    platform's dataset limit and, when a notebook builds it, its writable disk."""
    gb = export_bytes / GB
    notes = []
    fits_dataset = profile.dataset_limit_gb is None or gb <= profile.dataset_limit_gb
    fits_working = profile.working_disk_gb is None or gb <= profile.working_disk_gb
    if not fits_dataset:
        notes.append(f"the export ({gb:.1f} GB) exceeds the {profile.dataset_limit_gb:g} GB dataset limit")
    if not fits_working:
        notes.append(
            f"the export ({gb:.1f} GB) does not fit the notebook's {profile.working_disk_gb:g} GB working disk: "
            "build it elsewhere and upload it"
        )
    return {"fits_dataset": fits_dataset, "fits_working_disk": fits_working, "export_gb": gb, "notes": notes}


# --------------------------------------------------------------------------- measured efficiencies
def measured_profile(profile, gpu_check_json) -> tuple:
    """``(profile with measured efficiencies, sources)`` from ``bench/gpu_check.py``'s JSON.

    * ``compute_efficiency``: FLOPs of the measured fp16 no-TTA run (the large shape, its
      length-sorted padded batches, :func:`batch_flops`) / seconds / the measuring GPU's peak
      (``_gpu_peaks.json``). The T4 projection applies it to the T4's peak, i.e. it scales the
      measured time by the FLOP ratio; the bandwidth term keeps the bandwidth ratio.
    * ``compute_slowdown``: per quantized format, fp16 tokens/s / that format's tokens/s, on the
      same shape and GPU.

    ``sources`` maps each replaced field to a sentence saying where its number came from
    (print it). Raises ``ValueError`` naming what is missing from the JSON.
    """
    import dataclasses

    from .modelspec import ModelSpec

    profile = load_budget(profile)
    path = Path(gpu_check_json)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"gpu check file {str(path)!r} is not readable JSON ({err}); run bench/gpu_check.py."
        ) from None
    inputs = data.get("budget_inputs")
    if not inputs or not inputs.get("seconds"):
        raise ValueError(
            f"{path.name} has no budget_inputs (its scoring check did not run); rerun bench/gpu_check.py on a GPU."
        )
    device = inputs["device"]
    key, peak = gpu_peak_tflops(device)
    if peak is None:
        raise ValueError(
            f"{path.name} was measured on {device!r}, which kdq/budgets/_gpu_peaks.json does not list; "
            "add its fp16 peak there."
        )
    spec = ModelSpec.from_config(dict(inputs["config"], num_labels=3))
    flops = sum(
        batch_flops(spec, b, longest) for b, longest in _padded_batches(inputs["lengths"], inputs["batch_size"])
    )
    achieved = flops / float(inputs["seconds"]) / 1e12
    efficiency = min(1.0, achieved / peak)
    where = f"{path.name}, {inputs['shape']} fp16, batch {inputs['batch_size']}, {len(inputs['lengths'])} rows"
    sources = {
        "compute_efficiency": f"{efficiency:.3f} = {achieved:.1f} TFLOP/s achieved / {peak:g} peak on {key} "
        f"({where}); applied to {profile.gpu_name}'s {profile.peak_tflops:g} TFLOP/s"
    }
    slowdown = dict(profile.compute_slowdown)
    for fmt, factor in (inputs.get("slowdown") or {}).items():
        slowdown[fmt] = max(1.0, float(factor))
        sources[f"compute_slowdown[{fmt}]"] = (
            f"{slowdown[fmt]:.2f} = fp16 / {fmt} tokens/s on {key} ({path.name}, {inputs.get('slowdown_shape')})"
        )
    notes = (profile.notes + " " if profile.notes else "") + f"Efficiencies measured by bench/gpu_check.py on {key}."
    return dataclasses.replace(
        profile, name=f"{profile.name}+measured", compute_efficiency=efficiency, compute_slowdown=slowdown, notes=notes
    ), sources
