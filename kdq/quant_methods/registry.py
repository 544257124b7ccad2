"""Quantization methods, registered by name: ``QuantConfig.method`` selects one, no if/else chain.

Each :class:`QuantMethod` owns every fact about its method: its variant names (``gptq-8``,
``gptq-4``), its own config fields with their defaults and validation (a :class:`MethodSettings`
dataclass), the kdq pip extra, the modules transformers imports to load it, the pip packages an
offline notebook needs (and whose versions kdq records and ``predict.py`` checks), the
``config.json`` ``quant_method`` it writes, its on-disk weight format (budget arithmetic), the
CUDA kernels that run it and from which compute capability (:class:`CudaKernel`; docs/quantize.md,
"Kernels on a T4 (sm_75)"), and what a process must do before loading it (environment defaults,
``quantization_config`` overrides per device type). Everything else asks this registry:
:mod:`kdq.quantize.config` (variants, fields), :mod:`kdq.models`, :mod:`kdq.export` (which never import
:mod:`kdq.quantize`; the export records what the standalone ``predict.py`` needs in
``kdq-predict.json``, see :func:`runtime_settings`), :mod:`kdq.costs.modelspec`, the CLI.
Standard library only at import time.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from ..utils.versions import track_versions

# Sequence-classification heads (Llama: ``score``; BERT-like: ``classifier``). No method may
# quantize them: three logits carry the whole prediction, and they cost almost nothing to keep.
HEAD_MODULES = ("score", "classifier")

_REGISTRY: dict = {}  # name -> QuantMethod, in registration order; read through _methods()

#: the modules of this package that define methods: every module but this one and private ``_*`` ones
METHOD_MODULES = tuple(
    info.name
    for info in pkgutil.iter_modules([str(Path(__file__).parent)])
    if info.name != "registry" and not info.name.startswith("_")
)


def _methods() -> dict:
    """Every registered method by name: the built-in ones in :data:`METHOD_MODULES` order (registration
    order within a module), then those registered from outside this package, in registration order.

    A method registers itself by existing: each module of this package is imported here, on the first
    question asked of the registry (later calls find them in ``sys.modules``), so no list of methods is
    kept anywhere and ``import kdq.quant_methods`` imports nothing."""
    for module in METHOD_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    rank = {f"{__package__}.{m}": i for i, m in enumerate(METHOD_MODULES)}
    return dict(sorted(_REGISTRY.items(), key=lambda item: rank.get(type(item[1]).__module__, len(rank))))


@dataclass(frozen=True)
class WeightFormat:
    """How a variant stores its decoder matrices on the GPU.

    ``bits``: bits per quantized weight (16 when unquantized); ``group_size``: weights that
    share one scale; ``scale_bytes``: bytes of scale/zero-point metadata per group.
    Embedding, norms and the ``score`` head stay fp16 in every format.
    """

    name: str
    bits: int
    group_size: int = 0
    scale_bytes: float = 0.0
    needs: str | None = None  # the pip package the notebook must bring offline

    @property
    def bytes_per_weight(self) -> float:
        extra = self.scale_bytes / self.group_size if self.group_size > 0 else 0.0
        return self.bits / 8 + extra


FP16 = WeightFormat("fp16", 16)

#: ``CudaKernel.min_capability`` of a kernel whose backend checks no compute capability: it runs
#: wherever the backend's CUDA build runs
ANY_CAPABILITY = (0, 0)
#: bf16 tensor cores start at sm_80 (a T4, sm_75, computes in fp16 or fp32); gptqmodel's marlin
#: refuses bf16 on sm_75 explicitly (nn_modules/qlinear/marlin.py:274-287)
BF16_CAPABILITY = (8, 0)


def parse_capability(capability) -> tuple:
    """``(major, minor)`` from ``(7, 5)``, ``[7, 5]``, ``"7.5"`` (a budget profile's
    ``compute_capability``) or ``"sm_75"``; ``ValueError`` otherwise."""
    value = capability
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("sm_")
        if "." in text:
            value = text.split(".", 1)
        elif text.isdigit() and len(text) >= 2:
            value = (text[:-1], text[-1])
    try:
        major, minor = (int(part) for part in value)
    except (TypeError, ValueError):
        raise ValueError(f"a compute capability is (major, minor), '7.5' or 'sm_75', got {capability!r}") from None
    if major < 0 or minor < 0:
        raise ValueError(f"a compute capability is (major, minor), '7.5' or 'sm_75', got {capability!r}")
    return (major, minor)


def _sm(capability) -> str:
    return f"sm_{capability[0]}{capability[1]}"


@dataclass(frozen=True)
class CudaKernel:
    """One CUDA kernel that runs a format's decoder matrices, as its installed backend declares it.

    A method lists its kernels in preference order (:attr:`QuantMethod.cuda_kernels`); the first
    that fits the folder's format, the card's compute capability and the compute dtype is the one
    kdq picks (:func:`choose_cuda_kernel`). Facts read from the backend's source, not measured.

    ``min_capability``: the lowest ``(major, minor)`` the backend lets it run on
    (:data:`ANY_CAPABILITY`: it checks none); ``bits``: weight widths it runs (16: unquantized);
    ``source``: where the installed backend says so (file:line); ``overrides``: the
    ``quantization_config`` entries that select it at load time (``{}``: the backend has one
    path); ``group_sizes``: the group sizes it accepts (``()``: any); ``sym_only``: symmetric
    quantization only; ``compute_dtypes``: activation dtypes it computes in; ``note``: what it does.
    """

    name: str
    min_capability: tuple
    bits: tuple
    source: str
    overrides: dict = dataclasses.field(default_factory=dict)
    group_sizes: tuple = ()
    sym_only: bool = False
    compute_dtypes: tuple = ("float16", "bfloat16", "float32")
    note: str = ""

    def misfit(self, *, bits: int, group_size: int | None = None, sym: bool = True) -> str | None:
        """Why this kernel cannot run such weights on any card (``None``: it can)."""
        if bits not in self.bits:
            return f"runs {'/'.join(map(str, self.bits))}-bit weights, not {bits}-bit"
        if self.group_sizes and group_size is not None and group_size not in self.group_sizes:
            return f"runs group_size {list(self.group_sizes)}, not {group_size}"
        if self.sym_only and not sym:
            return "runs symmetric quantization only (sym=True)"
        return None

    def card_misfit(self, capability, compute_dtype: str | None = None) -> str | None:
        """Why this kernel cannot run on a card of ``capability`` computing in ``compute_dtype``."""
        capability = parse_capability(capability)
        if capability < tuple(self.min_capability):
            return f"needs compute capability >= {self.min_capability[0]}.{self.min_capability[1]}"
        if compute_dtype is not None and compute_dtype not in self.compute_dtypes:
            return f"computes in {'/'.join(self.compute_dtypes)}, not {compute_dtype}"
        if compute_dtype == "bfloat16" and capability < BF16_CAPABILITY:
            return "cannot compute in bfloat16 below compute capability 8.0 (no bf16 tensor cores)"
        return None

    def record(self) -> dict:
        """The JSON entry ``kdq-predict.json`` ``cuda_kernels`` holds for it (see :func:`runtime_settings`)."""
        return {
            "kernel": self.name,
            "min_capability": [int(x) for x in self.min_capability],
            "quantization_config": dict(self.overrides),
            "compute_dtypes": list(self.compute_dtypes),
        }


#: unquantized linears: ``F.linear``, a cuBLAS GEMM in the compute dtype (fp16 tensor cores from sm_70)
FP16_KERNEL = CudaKernel(
    "torch-fp16",
    ANY_CAPABILITY,
    (16,),
    source="torch 2.13 torch/nn/modules/linear.py:130-134 (Linear.forward -> F.linear, a cuBLAS GEMM)",
    note="plain nn.Linear: one cuBLAS GEMM per layer in the compute dtype",
)


@dataclass(frozen=True)
class KernelChoice:
    """The CUDA kernel :func:`choose_cuda_kernel` picked for a folder on a card.

    ``kernel``: its name; ``overrides``: the ``quantization_config`` entries to merge before
    loading (``{}``: nothing to change); ``min_capability``: its floor; ``reason``: one line saying
    what runs and why (for logs and the budget verdict); ``source``: the backend's file:line.
    """

    kernel: str
    overrides: dict
    min_capability: tuple
    reason: str
    source: str


@dataclass(frozen=True)
class MethodSettings:
    """A method's own ``QuantConfig`` fields: subclass it (a frozen dataclass) in the method's file.

    Field defaults are the method's defaults; ``__post_init__`` validates them and raises
    ``ValueError`` naming ``QuantConfig.<field>``. ``QuantConfig`` accepts each field as a keyword
    (``QuantConfig(method="gptq", bits=4, group_size=64)``, ``--set group_size=64``) or in its
    ``options`` dict, and rejects the fields of other methods. A method without fields of its
    own keeps this empty base.
    """

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def settings_fields(settings_cls) -> dict:
    """``{field name: default}`` of a :class:`MethodSettings` dataclass."""
    return {
        f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(settings_cls)
    }


class QuantMethod:
    """One quantization method. Subclasses are registered with :func:`register_quantizer`.

    A method turns a saved full-precision classifier folder into a quantized model object
    that has never run a forward pass (:meth:`quantize`), and cleans that model's
    ``config.json`` before it is saved (:meth:`finalize_config`). Rendering calibration rows,
    saving, reloading and verifying are shared and live in :mod:`kdq.quantize.api`.
    """

    name: str = ""
    #: the method's own QuantConfig fields, defaults and validation (a MethodSettings dataclass)
    settings: type = MethodSettings
    #: ``{variant name: QuantConfig fields}`` for the short names the CLI, the pipeline and
    #: ``QuantConfig.from_name`` accept; ``None``: one variant named like the method, no fields
    variants: dict | None = None
    #: the kdq pip extra that installs the backend: ``pip install 'kdq[<extra>]'``
    extra: str | None = None
    #: modules transformers imports to load a folder of this method; checked before loading
    #: (here, and in the exported predict.py, which reads them from ``kdq-predict.json``)
    runtime_modules: tuple = ()
    #: pip packages an offline notebook needs for this method: shipped in the export's wheels/,
    #: their versions recorded (kdq-quantize.json, the manifest) and compared by predict.py
    wheels: tuple = ()
    #: ``quantization_config["quant_method"]`` in the ``config.json`` this method saves
    quant_method: str = ""
    #: allowed ``QuantConfig.bits``; the first is the default when ``bits`` is ``None``
    allowed_bits: tuple = ()
    bits_required: bool = False
    needs_calibration: bool = False
    #: |Δ probability| ``kdq.verify`` allows when the probe is re-scored at another batch size
    #: than the export's: dequantize-then-matmul kernels reduce in a batch-shape-dependent order
    #: (unquantized folders: 1e-4, only the summation order differs; docs/export.md)
    batch_size_atol: float = 1e-3
    #: ``{device type: {environment variable: value}}`` set (where unset) before loading or
    #: quantizing on that kind of device, by kdq and by the exported predict.py
    load_env: dict = {}
    #: the CUDA kernels that run this method's folders, best first (:class:`CudaKernel`), as the
    #: installed backends declare them; empty: none known, so a folder of it has no CUDA kernel
    cuda_kernels: tuple = ()

    def variant_fields(self) -> dict:
        """``{variant name: QuantConfig fields}`` (``method`` included)."""
        variants = self.variants if self.variants is not None else {self.name: {}}
        return {v: {"method": self.name, **fields} for v, fields in variants.items()}

    def validate(self, config) -> int:
        """Check ``config.bits`` (and any rule across fields); return the resolved ``bits``.

        The method's own fields are validated by its :attr:`settings` dataclass already."""
        bits = config.bits
        if bits is None:
            if self.bits_required:
                raise ValueError(
                    f"QuantConfig.bits is required for method {self.name!r}: choose one of {list(self.allowed_bits)}."
                )
            return self.allowed_bits[0]
        if bits not in self.allowed_bits or isinstance(bits, bool):
            raise ValueError(
                f"QuantConfig.bits must be one of {list(self.allowed_bits)} for method {self.name!r}, got {bits!r}."
            )
        return bits

    def variant_name(self, config) -> str:
        return self.name

    # ---- facts read from a saved folder's quantization_config (a dict)
    def owns(self, qc: dict) -> bool:
        """Whether a ``quantization_config`` was written by this method."""
        return qc.get("quant_method") == self.quant_method

    def weight_format(self, qc: dict) -> WeightFormat:
        """The on-disk weight format of a folder this method saved (budget arithmetic)."""
        raise NotImplementedError

    def quantization_config_for(self, config) -> dict:
        """The ``quantization_config`` entries a folder saved with ``config`` holds, as far as this
        method's facts read them (:meth:`owns`, :meth:`weight_format`, :meth:`load_overrides`).

        The quantize tests check it against every saved ``config.json``, so the other tests ask
        about a variant (its budget entry, what predict.py does with it) without quantizing it."""
        return {"quant_method": self.quant_method}

    def load_overrides(self, qc: dict) -> dict:
        """``{device type: {key: value}}`` merged into ``config.json``'s ``quantization_config``
        when predict.py loads the folder on that kind of device (default: none). Recorded in
        ``kdq-predict.json`` at export, so predict.py applies them without knowing the method."""
        return {}

    def kernel_misfit(self, kernel: CudaKernel, qc: dict) -> str | None:
        """Why ``kernel`` cannot run a folder whose ``config.json`` holds ``qc``, on any card
        (``None``: it can). Default: the format's bits; a method whose kernels also depend on
        its own fields (group size, a backend pinned in ``qc``) says so."""
        return kernel.misfit(bits=self.weight_format(qc).bits)

    # ---- process set-up
    def prepare_load(self, device) -> None:
        """Before loading a folder of this method on ``device`` (``"cpu"``, ``"cuda:0"``...):
        set :attr:`load_env` where unset, import the backend (an error names the pip extra)."""
        from ..utils.imports import require

        for key, value in self.load_env.get(str(device).split(":")[0], {}).items():
            os.environ.setdefault(key, str(value))
        for module in self.runtime_modules:
            require(module, purpose=f"quantization method {self.name!r}", extra=self.extra)

    def prepare(self, device) -> None:
        """Before quantizing on ``device``: the same as before loading, unless a method says otherwise."""
        self.prepare_load(device)

    def quantize(self, source_dir: Path, config, *, calibration: list, tokenizer, device, dtype):
        """Return the quantized ``*ForSequenceClassification`` (never run forward).

        Args:
            source_dir: a saved full-precision classifier folder.
            config: the ``QuantConfig``; ``config.settings`` holds this method's own fields.
            calibration: ``list[list[int]]`` rendered rows (empty for methods without calibration).
            device: ``torch.device``; dtype: ``torch.dtype`` of the unquantized layers.
        """
        raise NotImplementedError

    def finalize_config(self, model, config, device) -> None:
        """Adjust ``model.config.quantization_config`` before saving (default: nothing)."""

    def describe(self, model, config, device) -> dict:
        """Method details recorded in ``kdq-quantize.json``."""
        return {}


def register_quantizer(name: str):
    """Class decorator: register a :class:`QuantMethod` subclass under ``name``."""

    def deco(cls):
        # a method defined outside this package meets the built-in ones; a built-in one is being discovered
        registry = _REGISTRY if cls.__module__.startswith(f"{__package__}.") else _methods()
        if name in registry:
            raise ValueError(f"quantization method {name!r} is already registered ({type(registry[name]).__name__}).")
        if not (isinstance(cls, type) and issubclass(cls, QuantMethod)):
            raise ValueError(f"register_quantizer({name!r}) decorates QuantMethod subclasses, got {cls!r}.")
        settings = cls.settings
        params = getattr(settings, "__dict__", {}).get("__dataclass_params__")  # its own, not inherited
        if not (isinstance(settings, type) and issubclass(settings, MethodSettings) and params and params.frozen):
            raise ValueError(
                f"{cls.__name__}.settings must be a MethodSettings subclass decorated with "
                f"@dataclass(frozen=True), got {settings!r}."
            )
        method = cls()
        method.name = name
        taken = _variant_table(registry.values())
        clash = sorted(v for v in method.variant_fields() if v in taken)
        if clash:
            raise ValueError(f"quantization method {name!r}: variant name(s) {clash} are taken by {taken[clash[0]]}.")
        _REGISTRY[name] = method
        track_versions(*method.wheels)
        return cls

    return deco


def get_quantizer(name) -> QuantMethod:
    """The registered method called ``name``; ``ValueError`` lists the registered ones."""
    try:
        return _methods()[name]
    except (KeyError, TypeError):
        raise ValueError(f"QuantConfig.method must be one of {registered_methods()}, got {name!r}.") from None


def registered_methods() -> list:
    return sorted(_methods())


# --------------------------------------------------------------- variant names and method fields
def variants() -> dict:
    """``{variant name: QuantConfig fields}`` of every registered method, in registration order
    (``{"gptq-4": {"method": "gptq", "bits": 4}, ...}``): what ``--method``, the pipeline's
    ``quant_methods`` and ``QuantConfig.from_name`` accept."""
    return _variant_table(_methods().values())


def _variant_table(methods) -> dict:
    out: dict = {}
    for method in methods:
        out.update(method.variant_fields())
    return out


def variant_names() -> list:
    return list(variants())


def variant_fields(name) -> dict:
    """The ``QuantConfig`` fields of variant ``name``; ``ValueError`` lists the variants."""
    table = variants()
    if name not in table:
        raise ValueError(
            f"unknown quantization variant {name!r}; choose one of {list(table)} "
            "or build QuantConfig(method=..., bits=...) directly."
        )
    return dict(table[name])


def method_fields() -> dict:
    """``{field: [methods that have it]}``: every registered method's own ``QuantConfig`` fields."""
    out: dict = {}
    for name, method in _methods().items():
        for field in settings_fields(method.settings):
            out.setdefault(field, []).append(name)
    return out


def method_field_help(name: str) -> str:
    """The one-line help of a method's own field (its settings dataclass's metadata), naming its methods."""
    users = method_fields().get(name, [])
    for method in users:
        for f in dataclasses.fields(_methods()[method].settings):
            if f.name == name and f.metadata.get("help"):
                return f"{f.metadata['help']} ({', '.join(sorted(users))} only)"
    return f"a field of {', '.join(sorted(users))}"


# --------------------------------------------------------------- questions about saved folders
def quantization_config_of(config) -> dict | None:
    """``quantization_config`` as a dict (``None`` when absent) from a ``PretrainedConfig``, a
    config dict, a model folder or a ``config.json`` path. Reads only ``config.json``."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    qc = config.get("quantization_config") if isinstance(config, dict) else getattr(config, "quantization_config", None)
    if qc is None:
        return None
    if not isinstance(qc, dict):
        qc = qc.to_dict()
    method = qc.get("quant_method", "")
    return {**qc, "quant_method": str(getattr(method, "value", method)).lower()}  # in memory: an enum


def method_for(config) -> QuantMethod | None:
    """The registered method that saved ``config`` (see :func:`quantization_config_of`);
    ``None`` when it is not quantized. ``ValueError`` names the known methods otherwise."""
    qc = quantization_config_of(config)
    if qc is None:
        return None
    found = next((m for _, m in sorted(_methods().items()) if m.owns(qc)), None)
    if found is None:
        raise ValueError(
            f"quantization_config.quant_method {qc.get('quant_method')!r} (load_in_8bit="
            f"{qc.get('load_in_8bit')}, load_in_4bit={qc.get('load_in_4bit')}) is not a method kdq "
            f"knows; registered: {registered_methods()} (config.json quant_method "
            f"{sorted({m.quant_method for m in _methods().values()})})."
        )
    return found


def prepare_to_load(folder, device=None) -> None:
    """Before loading ``folder`` in this process: its method's load-time preparation (nothing when
    the folder is not quantized). Reads only ``config.json``."""
    method = method_for(folder)
    if method is not None:
        method.prepare_load(device if device is not None else "cpu")


def runtime_settings(qc: dict | None) -> dict:
    """What the standalone ``predict.py`` needs to load a folder whose ``config.json`` holds ``qc``
    (``None``: not quantized), for ``kdq-predict.json``; predict.py cannot import this registry.

    ``backend_modules``: modules to check before loading (a missing one fails with the offline
    install line); ``backend_packages``: pip packages whose installed versions predict.py
    compares with the manifest's; ``load``: ``{device type: {"env": {variable: default},
    "quantization_config": {key: value}}}``, the environment defaults to set and the entries to
    override in ``quantization_config`` when loading on that kind of device.

    ``cuda_kernels``: the CUDA kernels that can run this folder's format, best first, each
    ``{"kernel": name, "min_capability": [major, minor], "quantization_config": {key: value},
    "compute_dtypes": [dtype, ...]}``: on a CUDA card predict.py takes the first whose
    ``min_capability`` is at most the card's (``torch.cuda.get_device_capability``) and whose
    ``compute_dtypes`` holds the dtype it computes in, and merges its ``quantization_config``
    over the ``load["cuda"]`` one; none: the folder has no kernel on that card
    (:func:`choose_cuda_kernel` is the same rule, for kdq).
    """
    kernels = [k.record() for k in cuda_kernels_for(qc)]
    method = method_for({"quantization_config": qc}) if qc else None
    if method is None:
        return {"backend_modules": [], "backend_packages": [], "load": {}, "cuda_kernels": kernels}
    load: dict = {}
    for device_type, env in method.load_env.items():
        if env:
            load.setdefault(device_type, {})["env"] = {k: str(v) for k, v in env.items()}
    for device_type, overrides in method.load_overrides(qc).items():
        if overrides:
            load.setdefault(device_type, {})["quantization_config"] = dict(overrides)
    return {
        "backend_modules": list(method.runtime_modules),
        "backend_packages": list(method.wheels),
        "load": load,
        "cuda_kernels": kernels,
    }


# --------------------------------------------------------------- CUDA kernels by compute capability
def _kernel_table(qc: dict | None) -> tuple:
    """``(label, [(kernel, why it cannot run this format or None), ...])`` for a folder's
    ``quantization_config`` (``None``: unquantized), in the method's preference order."""
    method = method_for({"quantization_config": qc}) if qc else None
    if method is None:
        return FP16.name, [(FP16_KERNEL, None)]
    return method.weight_format(qc).name, [(k, method.kernel_misfit(k, qc)) for k in method.cuda_kernels]


def cuda_kernels_for(quantization_config: dict | None) -> list:
    """The :class:`CudaKernel` s that can run a folder whose ``config.json`` holds
    ``quantization_config`` (``None``: unquantized), best first, whatever the card."""
    return [k for k, why in _kernel_table(quantization_config)[1] if why is None]


def _choose(qc: dict | None, capability, compute_dtype: str | None) -> tuple:
    """``(KernelChoice or None, why none)``: the first kernel that fits, else every refusal."""
    capability = parse_capability(capability)
    label, table = _kernel_table(qc)
    refused: dict = {}  # why -> kernel names, in preference order
    for kernel, why in table:
        why = why or kernel.card_misfit(capability, compute_dtype)
        if why is None:
            over = f" (quantization_config {kernel.overrides})" if kernel.overrides else ""
            reason = (
                f"{label} on {_sm(capability)}: {kernel.name}{over}: {kernel.note} (read from source, not measured)"
            )
            choice = KernelChoice(
                kernel.name, dict(kernel.overrides), tuple(kernel.min_capability), reason, kernel.source
            )
            return choice, ""
        refused.setdefault(why, []).append(kernel.name)
    detail = "; ".join(f"{', '.join(names)} {why}" for why, names in refused.items())
    dtype = f" computing in {compute_dtype}" if compute_dtype else ""
    return None, f"{label} has no CUDA kernel on {_sm(capability)}{dtype}: {detail or 'kdq lists none for it'}"


def choose_cuda_kernel(quantization_config, capability, compute_dtype: str | None = "float16") -> KernelChoice | None:
    """The CUDA kernel that runs a folder whose ``config.json`` holds ``quantization_config``
    (``None``: unquantized, the plain fp16 kernel; a weight format's name or :class:`WeightFormat`
    stands for its defaults, as in :func:`has_cuda_kernel`) on a card of ``capability`` (``(7, 5)``,
    ``"7.5"``) computing in ``compute_dtype`` (``None``: any): the first of the method's
    :attr:`~QuantMethod.cuda_kernels` that fits all three, or ``None`` when none does.
    Pure logic: reads no GPU, imports no backend."""
    return _choose(_config_of(quantization_config), capability, compute_dtype)[0]


def _config_of(format_or_config) -> dict | None:
    """A ``quantization_config`` for a weight format (its name, e.g. ``"gptq-4"``, or a
    :class:`WeightFormat`), or the config itself (a dict, ``None``: unquantized)."""
    if format_or_config is None or isinstance(format_or_config, dict):
        return format_or_config
    name = getattr(format_or_config, "name", format_or_config)
    if name == FP16.name:
        return None
    seen = []
    for fields in variants().values():
        method = _methods()[fields["method"]]
        qc = method.quantization_config_for(_variant_stand_in(method, fields))
        fmt = method.weight_format(qc).name
        if fmt == name:
            return qc
        seen.append(fmt)
    raise ValueError(f"unknown weight format {name!r}; known: {[FP16.name, *dict.fromkeys(seen)]}")


def _variant_stand_in(method: QuantMethod, fields: dict):
    """What :meth:`QuantMethod.quantization_config_for` reads of a ``QuantConfig`` (``bits``,
    ``settings``), for a variant at its defaults; the registry never imports :mod:`kdq.quantize`."""
    from types import SimpleNamespace

    own = settings_fields(method.settings)
    bits = fields.get("bits") or (method.allowed_bits[0] if method.allowed_bits else None)
    settings = method.settings(**{k: v for k, v in fields.items() if k in own})
    return SimpleNamespace(method=method.name, bits=bits, settings=settings, options=None)


def load_time_config(name: str, dtype):
    """The transformers quantization config that loads a model as variant ``name`` at its defaults.

    For the methods that quantize at load time (bitsandbytes: ``"bnb-int8"``, ``"bnb-nf4"``), it is
    the config :func:`kdq.quantize` would write, so a live teacher or a QLoRA student loads in exactly
    that format (``dtype``: the compute dtype, a ``torch.dtype``). ``ValueError`` for a method that
    needs calibration (GPTQ) or an unknown name.
    """
    fields = variant_fields(name)
    method = get_quantizer(fields["method"])
    if not hasattr(method, "bnb_config"):
        raise ValueError(f"{name!r} is not quantized at load time; load_time_config serves bnb-int8 and bnb-nf4.")
    return method.bnb_config(_variant_stand_in(method, fields), dtype)


def cuda_kernel_reason(format_or_config, capability, compute_dtype: str | None = "float16") -> str:
    """One line: the kernel a weight format (``"gptq-4"``, a :class:`WeightFormat`) or a folder's
    ``quantization_config`` runs on a card of ``capability``, or why it has none."""
    choice, why = _choose(_config_of(format_or_config), capability, compute_dtype)
    return choice.reason if choice is not None else why


def has_cuda_kernel(format_or_config, capability, compute_dtype: str | None = "float16") -> bool:
    """Whether a weight format (``"gptq-4"``, a :class:`WeightFormat`) or a folder's
    ``quantization_config`` has a CUDA kernel on a card of ``capability`` (``(7, 5)``, ``"7.5"``):
    a budget verdict flags a format without one rather than projecting it at any speed
    (:func:`cuda_kernel_reason` says why)."""
    return _choose(_config_of(format_or_config), capability, compute_dtype)[0] is not None


def runtime_modules_by_quant_method() -> dict:
    """``{config.json quant_method: modules transformers imports to load it}``."""
    out: dict = {}
    for _, m in sorted(_methods().items()):
        out[m.quant_method] = tuple(dict.fromkeys(out.get(m.quant_method, ()) + m.runtime_modules))
    return out


def wheels_for(quant_method: str | None) -> tuple:
    """The pip packages an offline notebook needs for ``config.json`` ``quant_method`` (``()`` when ``None``)."""
    if quant_method is None:
        return ()
    wheels = [w for _, m in sorted(_methods().items()) if m.quant_method == quant_method for w in m.wheels]
    if not wheels:
        known = sorted({m.quant_method for m in _methods().values()})
        raise ValueError(
            f"no wheel list for quantization method {quant_method!r}; known: {known}. "
            "Pass ExportConfig(wheel_packages=...)."
        )
    return tuple(dict.fromkeys(wheels))
