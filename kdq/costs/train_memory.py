"""Will a training run fit the GPU? Peak training memory from a model's config, before loading it.

Arithmetic on a :class:`~kdq.costs.modelspec.ModelSpec` (never on weights), like
:mod:`kdq.costs.budget` for inference. Devices are data (``kdq/budgets/_train_devices.json``),
and so are the published Danube3 configs (``kdq/budgets/_models.json``).

Peak = weights + Adam states + max(activations, gradients), per GPU (or CPU process):

* **weights** — ``full``: every parameter as an fp32 master copy (plus, under fp16/bf16 AMP,
  autocast's half-precision copy of the linear weights); ``lora``: the frozen base in its
  load dtype (2 bytes on a half-precision base, 4 in fp32) plus the fp32 adapters and peft's
  trainable copy of the ``score`` head; ``qlora``: decoder matrices in nf4 with double
  quantization (0.5 + 1/64 + 4/(64*256) bytes per weight), the rest in fp32 (peft's
  ``prepare_model_for_kbit_training`` upcasts embedding, norms and head), plus the adapters.
* **Adam states** — two fp32 moments per trainable parameter (8 bytes).
* **activations** — tensors autograd keeps for the backward pass, at the end of the forward
  pass, per token and decoder layer (``a`` = 2 bytes under AMP, 4 in fp32; ``H`` hidden, ``I``
  intermediate, ``n``/``k`` query/KV heads of ``d`` dims): each RMSNorm keeps its fp32 upcast
  input and its normed output (``4H + aH``; full fine-tuning also the pre-weight product,
  ``aH``); attention keeps q, the KV heads repeated to ``n`` (a padding mask rules out SDPA's
  GQA path), the SDPA output and its contiguous copy (``5nd·a``) and the fp32 log-sum-exp
  (``4n``); the SwiGLU MLP keeps gate, SiLU(gate), up and their product (``4I·a``); LoRA keeps
  each adapter's rank-``r`` intermediate, and LoRA dropout > 0 each adapted matrix's dropped-out
  input and boolean mask (``(a+1)·in_features``, peft draws one per matrix). Per layer, SDPA's
  backward keeps the 4-D padding mask (``L²`` per row, model dtype). The KV cache that
  ``use_cache=True`` fills (``2kd·a``) lives until the loss is computed. With gradient
  checkpointing only every layer's input (``aH``) is kept, plus one layer recomputed in backward.
* **gradients** — fp32, one per trainable parameter, plus one fp32 copy of the largest trainable
  matrix while backward writes it; they fill as backward frees activations, hence the ``max``.
  A fused AdamW step (the default on CUDA) adds next to nothing.

Checked against the live tensor bytes of CPU training steps on tiny models in
``tests/test_train_memory.py`` (within 20%; measured -12%..+2%).

``python -m kdq.costs.train_memory`` prints the Danube3 table in ``docs/distill.md``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from ..config.validate import check_choice, check_range
from .budget import BUDGET_DIR, GB  # GB: decimal gigabytes, as datasheets say
from .modelspec import LLAMA_LINEAR as LORA_TARGETS  # the Llama linear layers LoRA can target
from .modelspec import ModelSpec, param_counts

DEVICES_FILE = BUDGET_DIR / "_train_devices.json"
MODELS_FILE = BUDGET_DIR / "_models.json"
METHODS = ("full", "lora", "qlora")
# bytes per decoder weight of a live (frozen) teacher: "full" fp32 (CPU), "half" fp16/bf16, bitsandbytes int8
# (one fp32 scale per output row, negligible) and nf4 with double quantization; its other weights stay fp16/fp32
TEACHER_WEIGHTS = ("full", "half", "int8", "nf4")
NF4_DQ_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit code + int8 absmax per 64 + fp32 per 256 absmax blocks


@dataclass(frozen=True)
class TrainDevice:
    """A GPU to plan a training run for (decimal GB, as datasheets say)."""

    name: str
    memory_gb: float
    reserved_gb: float = 1.0
    bf16: bool = False
    gpu_name: str = ""

    def __post_init__(self):
        check_range("TrainDevice", "memory_gb", self.memory_gb, 0, lo_open=True)
        check_range("TrainDevice", "reserved_gb", self.reserved_gb, 0, self.memory_gb, hi_open=True)

    @property
    def usable_gb(self) -> float:
        return self.memory_gb - self.reserved_gb


def train_devices() -> dict:
    """``{name: TrainDevice}`` from ``kdq/budgets/_train_devices.json``."""
    raw = json.loads(DEVICES_FILE.read_text())["devices"]
    return {k: TrainDevice(name=k, **v) for k, v in raw.items()}


def train_device(name) -> TrainDevice:
    """A shipped device by name (``"t4-16gb"``) or a :class:`TrainDevice` unchanged."""
    if isinstance(name, TrainDevice):
        return name
    devices = train_devices()
    if name not in devices:
        raise ValueError(f"unknown training device {name!r}; known: {sorted(devices)} (add yours to {DEVICES_FILE}).")
    return devices[name]


def cuda_train_device(index: int = 0) -> TrainDevice:
    """The CUDA device this process trains on, with its real memory; reserve as the shipped twin (or 1.5 GB)."""
    import torch

    props = torch.cuda.get_device_properties(index)
    name = torch.cuda.get_device_name(index)
    reserved = next(
        (
            d.reserved_gb
            for d in train_devices().values()
            if d.gpu_name and d.gpu_name.split()[0].lower() in name.lower()
        ),
        1.5,
    )
    return TrainDevice(
        name=f"cuda:{index} ({name})",
        memory_gb=props.total_memory / GB,
        reserved_gb=reserved,
        bf16=torch.cuda.is_bf16_supported(including_emulation=False),
        gpu_name=name,
    )


def known_models() -> dict:
    """``{name: {"hub_id": ..., "config": {...}}}`` from ``kdq/budgets/_models.json``."""
    return json.loads(MODELS_FILE.read_text())["models"]


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a shipped model config (``"danube3-4b"``, ``"danube3-500m"``) or its Hub id."""
    for key, entry in known_models().items():
        if name in (key, entry["hub_id"]):
            return ModelSpec.from_config(entry["config"])
    raise ValueError(f"no shipped config for {name!r}; known: {sorted(known_models())} (or pass a config).")


@dataclass(frozen=True)
class TrainSetup:
    """What a training step holds: method, per-device batch, padded length, checkpointing, precision.

    ``half``: compute in fp16/bf16 (CUDA AMP; with LoRA the frozen base is held in half
    precision too); ``False`` is fp32 throughout (CPU). ``padded``: batches carry a padding
    mask (real arena rows always do).
    """

    method: str = "lora"
    batch_size: int = 1
    seq_len: int = 1024
    checkpointing: bool = False
    half: bool = True
    lora_r: int = 16
    lora_targets: tuple = LORA_TARGETS
    lora_dropout: float = 0.05
    padded: bool = True
    teacher: ModelSpec | None = None
    teacher_weights: str = "half"
    teacher_states: bool = False
    projections: int = 0
    projection_width: int = 0
    feature_projection: bool = False

    def __post_init__(self):
        c = "TrainSetup"
        if isinstance(self.teacher, dict):  # from asdict(): a projection's "setup" read back
            object.__setattr__(self, "teacher", ModelSpec(**self.teacher))
        check_choice(c, "teacher_weights", self.teacher_weights, TEACHER_WEIGHTS)
        check_choice(c, "method", self.method, METHODS)
        check_range(c, "batch_size", self.batch_size, 1, kind=int)
        check_range(c, "seq_len", self.seq_len, 1, kind=int)
        check_range(c, "lora_r", self.lora_r, 1, kind=int)
        check_range(c, "lora_dropout", self.lora_dropout, 0.0, 1.0, hi_open=True)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"TrainSetup.lora_targets: {unknown} are not Llama linear layers {list(LORA_TARGETS)}")

    def describe(self) -> str:
        m = {"full": "full fine-tuning", "lora": f"LoRA r={self.lora_r}", "qlora": f"QLoRA (nf4) r={self.lora_r}"}
        prec = "fp16/bf16" if self.half else "fp32"
        extra = ""
        if self.teacher is not None:
            extra += f", live teacher ({self.teacher.num_layers} layers, {self.teacher_weights} weights)"
        if self.projections or self.feature_projection:
            extra += f", {self.projections + self.feature_projection} learned projection(s)"
        return (
            f"{m[self.method]}, {prec}, batch {self.batch_size} x {self.seq_len} tokens, "
            f"gradient checkpointing {'on' if self.checkpointing else 'off'}" + extra
        )


def linear_shapes(spec: ModelSpec) -> dict:
    """``{module: (in_features, out_features)}`` of one decoder layer's linear layers."""
    h, q, kv, i = (
        spec.hidden_size,
        spec.num_heads * spec.head_dim,
        spec.num_kv_heads * spec.head_dim,
        spec.intermediate_size,
    )
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def trainable_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """Parameters the optimizer updates: all (full), or LoRA A/B matrices plus the ``score`` head."""
    if setup.method == "full":
        return param_counts(spec)["total"]
    shapes = linear_shapes(spec)
    lora = spec.num_layers * sum(setup.lora_r * (shapes[m][0] + shapes[m][1]) for m in setup.lora_targets)
    return lora + spec.hidden_size * spec.num_labels


def _layer_activation_bytes(spec: ModelSpec, setup: TrainSetup) -> float:
    """Bytes autograd keeps per token for one decoder layer (module doc)."""
    a = 2 if setup.half else 4
    h, i, n, d = spec.hidden_size, spec.intermediate_size, spec.num_heads, spec.head_dim
    kv_heads = n if setup.padded else spec.num_kv_heads
    norms = 2 * (4 * h + a * h + (a * h if setup.method == "full" else 0))
    attn = a * (2 * n * d + 2 * kv_heads * d + n * d) + 4 * n
    mlp = a * 4 * i
    adapters = 0.0
    if setup.method != "full":
        shapes = linear_shapes(spec)
        adapters = a * setup.lora_r * len(setup.lora_targets)
        if setup.lora_dropout > 0:
            adapters += (a + 1) * sum(shapes[m][0] for m in setup.lora_targets)
    return norms + attn + mlp + adapters


def project_training(spec: ModelSpec, setup: TrainSetup) -> dict:
    """Peak training memory of one GPU (or the CPU process) for ``spec`` under ``setup``.

    Returns bytes by term — ``weights`` (with LoRA's fp32 adapter weights), ``optimizer_states``
    (Adam's two moments), ``activations`` (kept for backward, at the end of the forward pass),
    ``gradients`` (fp32, plus one fp32 copy of the largest trainable matrix while backward
    writes it) — and ``peak = weights + optimizer_states + max(activations, gradients)``:
    gradients are allocated as backward frees activations (``zero_grad`` sets them to None).
    Also ``trainable_params``; the module doc says what each term counts.
    """
    a = 2 if setup.half else 4
    counts = param_counts(spec)
    total, linear = counts["total"], counts["decoder_linear"]
    p = trainable_params(spec, setup)
    head = spec.hidden_size * spec.num_labels
    if setup.method == "full":
        weights = total * 4 + (linear * 2 if setup.half else 0)  # fp32 master (+ autocast's half copy)
        largest = spec.vocab_size * spec.hidden_size  # the embedding's gradient
    else:
        base = total * a if setup.method == "lora" else linear * NF4_DQ_BYTES + (total - linear) * 4
        weights = base + (p - head) * 4 + head * 4  # frozen base + fp32 adapters + peft's trainable head copy
        shapes = linear_shapes(spec)
        largest = max(setup.lora_r * shapes[m][0] for m in setup.lora_targets)
    tokens = setup.batch_size * setup.seq_len
    per_layer = _layer_activation_bytes(spec, setup)
    # SDPA's backward keeps its own copy of the 4-D padding mask per layer, in the model's dtype
    mask_bytes = 2 if (setup.half and setup.method == "lora") else 4
    mask = setup.batch_size * setup.seq_len**2 * mask_bytes if setup.padded else 0
    final_norm = 4 * spec.hidden_size + a * spec.hidden_size
    if setup.checkpointing:  # every layer's input, then one layer recomputed during backward
        kept = tokens * (spec.num_layers * a * spec.hidden_size + per_layer) + mask
        kv_cache = 0  # transformers turns use_cache off under checkpointing
    else:
        kept = spec.num_layers * (tokens * per_layer + mask)
        kv_cache = (tokens * spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * a) if spec.use_cache else 0
    activations = kept + tokens * final_norm + kv_cache
    gradients = p * 4 + largest * 4
    states = p * 8
    extra = _distillation_terms(spec, setup, tokens)
    weights += extra["projection_weights"]
    states += 2 * extra["projection_weights"]  # Adam's two moments
    activations += extra["projection_activations"]
    gradients += extra["projection_weights"]
    peak = weights + extra["teacher_weights"] + states + max(activations + extra["teacher_activations"], gradients)
    return {
        "weights": weights,
        "optimizer_states": states,
        "activations": activations,
        "gradients": gradients,
        "teacher_weights": extra["teacher_weights"],
        "teacher_activations": extra["teacher_activations"],
        "projection_params": extra["projection_weights"] // 4,
        "peak": peak,
        "trainable_params": p + extra["projection_weights"] // 4,
        "setup": asdict(setup),
    }


def _distillation_terms(spec: ModelSpec, setup: TrainSetup, tokens: int) -> dict:
    """Bytes a distillation step adds: the live teacher and the learned projections (module doc)."""
    out = {"teacher_weights": 0, "teacher_activations": 0, "projection_weights": 0, "projection_activations": 0}
    t = setup.teacher
    if t is not None:
        counts = param_counts(t)
        dense = 4 if setup.teacher_weights == "full" else 2
        per = {"full": 4.0, "half": 2.0, "int8": 1.0, "nf4": NF4_DQ_BYTES}[setup.teacher_weights]
        out["teacher_weights"] = counts["decoder_linear"] * per + (counts["total"] - counts["decoder_linear"]) * dense
        attn = 3 * (t.num_heads + t.num_kv_heads) * t.head_dim
        transient = tokens * dense * (3 * t.hidden_size + max(attn, 3 * t.intermediate_size))  # one layer, no grad
        kept = (t.num_layers + 1) * tokens * t.hidden_size * dense if setup.teacher_states else 0
        out["teacher_activations"] = transient + kept
    width = setup.projection_width
    n = setup.projections + (1 if setup.feature_projection else 0)
    out["projection_weights"] = n * spec.hidden_size * width * 4  # fp32
    # each learned projection keeps its fp32 input and output for backward (per token; pooled: per row)
    rows = setup.projections * tokens + (setup.batch_size if setup.feature_projection else 0)
    out["projection_activations"] = rows * (spec.hidden_size + width) * 4
    return out


def peak_fits(projection: dict, device: TrainDevice) -> bool:
    """Whether a :func:`project_training` result fits ``device``'s usable memory."""
    return projection["peak"] <= device.usable_gb * GB


def fits(spec: ModelSpec, setup: TrainSetup, device: TrainDevice) -> bool:
    return peak_fits(project_training(spec, setup), device)


def alternatives(spec: ModelSpec, setup: TrainSetup, device: TrainDevice) -> list:
    """Settings near ``setup`` that fit ``device``: at most one per kind of change, cheapest kind first.

    Kinds, in order: gradient checkpointing on; the largest smaller batch (raise ``grad_accum`` to
    keep the effective batch); LoRA instead of full fine-tuning; QLoRA; the longest shorter
    sequence length. Each is a :class:`TrainSetup`.
    """

    def batches(base):  # the same setup at halved batches, with and without checkpointing
        b, out = base.batch_size, [base, replace(base, checkpointing=True)]
        while b > 1:
            b //= 2
            out += [replace(base, batch_size=b), replace(base, batch_size=b, checkpointing=True)]
        return out

    kinds = [[replace(setup, checkpointing=True)], batches(setup)[2:]]
    if setup.teacher is not None:  # a smaller live teacher: bitsandbytes int8, then nf4
        kinds += [batches(replace(setup, teacher_weights=w)) for w in ("int8", "nf4")]
    for method in ("lora", "qlora"):
        if METHODS.index(method) > METHODS.index(setup.method):
            kinds.append(batches(replace(setup, method=method)))
    length, shorter = setup.seq_len, []
    while length > 128:
        length //= 2
        shorter += batches(replace(setup, seq_len=length))
    kinds.append(shorter)
    out = []
    for options in kinds:
        hit = next((o for o in options if o != setup and fits(spec, o, device)), None)
        if hit is not None and hit not in out:
            out.append(hit)
    return out


def format_projection(spec_name: str, proj: dict, device: TrainDevice | None) -> str:
    """One line for a log: the terms, the peak, and the verdict against ``device`` (if any)."""
    s = TrainSetup(**proj["setup"])
    teacher = proj.get("teacher_weights", 0)
    terms = (
        f"weights {proj['weights'] / GB:.2f} + "
        + (f"live teacher {teacher / GB:.2f} + " if teacher else "")
        + f"Adam states {proj['optimizer_states'] / GB:.2f} + max(activations "
        + (
            f"{proj['activations'] / GB:.2f} + teacher's {proj['teacher_activations'] / GB:.2f}"
            if teacher
            else f"{proj['activations'] / GB:.2f}"
        )
        + f", gradients {proj['gradients'] / GB:.2f})"
    )
    text = f"training memory ({spec_name}; {s.describe()}): {terms} = {proj['peak'] / GB:.2f} GB"
    if device is not None:
        ok = peak_fits(proj, device)
        text += (
            f" vs {device.usable_gb:.1f} GB usable on {device.name} "
            f"({device.memory_gb:g} GB - {device.reserved_gb:g} GB reserved): {'fits' if ok else 'does NOT fit'}"
        )
    return text


# --------------------------------------------------------------------------- measuring on CPU
class LiveTensorBytes:
    """Context manager: peak bytes of live CPU tensor storages while it is active (``.peak``).

    A ``TorchDispatchMode`` sees every op's outputs (forward, backward and optimizer step, which
    run on this thread on CPU); a storage counts from its first appearance until it is freed.
    This is what a caching allocator's "peak allocated" reports on CUDA, without allocator
    fragmentation or the process's libraries (which peak RSS would add). CPU only; slow
    (for tiny models).
    """

    def __init__(self):
        self.peak = 0
        self._mode = None

    def __enter__(self):
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        live: dict = {}

        class _Mode(TorchDispatchMode):
            current = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for key in [k for k, (ref, _) in live.items() if ref.expired()]:
                    _Mode.current -= live.pop(key)[1]
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                        st = t.untyped_storage()
                        key = st.data_ptr()
                        if key and key not in live:
                            live[key] = (StorageWeakRef(st), st.nbytes())
                            _Mode.current += st.nbytes()
                tracker.peak = max(tracker.peak, _Mode.current)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False


# --------------------------------------------------------------------------- the docs table
TABLE_MODELS = ("danube3-4b", "danube3-500m")
TABLE_ROWS = (  # (method, checkpointing): what the table shows per model
    ("full", False),
    ("full", True),
    ("lora", False),
    ("lora", True),
    ("qlora", False),
    ("qlora", True),
)


def table_markdown(batch_size: int = 4, seq_len: int = 1024, lora_r: int = 16) -> str:
    """The training-memory table of ``docs/distill.md`` (regenerate: ``python -m kdq.costs.train_memory``)."""
    devices = train_devices()
    head = (
        "| model | method | checkpointing | trainable M | weights GB | Adam GB | activations GB | peak GB | "
        + " | ".join(f"{d.name} ({d.usable_gb:g})" for d in devices.values())
        + " |"
    )
    lines = [head, "|" + "---|" * 4 + "---:|" * 4 + "---|" * len(devices)]
    for model in TABLE_MODELS:
        spec = model_spec(model)
        for method, ckpt in TABLE_ROWS:
            setup = TrainSetup(
                method=method, batch_size=batch_size, seq_len=seq_len, checkpointing=ckpt, lora_r=lora_r, half=True
            )
            p = project_training(spec, setup)
            marks = ["✓" if peak_fits(p, d) else "✗" for d in devices.values()]
            lines.append(
                f"| {model} | {method} | {'on' if ckpt else 'off'} | {p['trainable_params'] / 1e6:,.1f} | "
                f"{p['weights'] / GB:.2f} | {p['optimizer_states'] / GB:.2f} | {p['activations'] / GB:.2f} | "
                f"{p['peak'] / GB:.2f} | " + " | ".join(marks) + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Print the training-memory table for the shipped Danube3 configs.")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--lora-r", type=int, default=16)
    a = ap.parse_args()
    print(table_markdown(a.batch_size, a.seq_len, a.lora_r))
