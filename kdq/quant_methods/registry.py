"""Quantization methods, registered by name: ``QuantConfig.method`` selects one, no if/else chain.

Each :class:`QuantMethod` owns every fact about its method: its variant names (``gptq-8``,
``gptq-4``), its own config fields with their defaults and validation (a :class:`MethodSettings`
dataclass), the kdq pip extra, the modules transformers imports to load it, the pip packages an
offline notebook needs (and whose versions kdq records and ``predict.py`` checks), the
``config.json`` ``quant_method`` it writes, its on-disk weight format (budget arithmetic), and
what a process must do before loading it (environment defaults, ``quantization_config``
overrides per device type). Everything else asks this registry: :mod:`kdq.quantize.config`
(variants, fields), :mod:`kdq.models`, :mod:`kdq.export` (which never import
:mod:`kdq.quantize`; the export records what the standalone ``predict.py`` needs in
``kdq-predict.json``, see :func:`runtime_settings`), :mod:`kdq.evaluate.modelspec`, the CLI.
Standard library only at import time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..utils.versions import track_versions

# Sequence-classification heads (Llama: ``score``; BERT-like: ``classifier``). No method may
# quantize them: three logits carry the whole prediction, and they cost almost nothing to keep.
HEAD_MODULES = ("score", "classifier")

_REGISTRY: dict = {}


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
        if name in _REGISTRY:
            raise ValueError(f"quantization method {name!r} is already registered ({type(_REGISTRY[name]).__name__}).")
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
        taken = variants()
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
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"QuantConfig.method must be one of {registered_methods()}, got {name!r}.") from None


def registered_methods() -> list:
    return sorted(_REGISTRY)


# --------------------------------------------------------------- variant names and method fields
def variants() -> dict:
    """``{variant name: QuantConfig fields}`` of every registered method, in registration order
    (``{"gptq-4": {"method": "gptq", "bits": 4}, ...}``): what ``--method``, the pipeline's
    ``quant_methods`` and ``QuantConfig.from_name`` accept."""
    out: dict = {}
    for method in _REGISTRY.values():
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
    for name, method in _REGISTRY.items():
        for field in settings_fields(method.settings):
            out.setdefault(field, []).append(name)
    return out


def method_field_help(name: str) -> str:
    """The one-line help of a method's own field (its settings dataclass's metadata), naming its methods."""
    users = method_fields().get(name, [])
    for method in users:
        for f in dataclasses.fields(_REGISTRY[method].settings):
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
    found = next((m for _, m in sorted(_REGISTRY.items()) if m.owns(qc)), None)
    if found is None:
        raise ValueError(
            f"quantization_config.quant_method {qc.get('quant_method')!r} (load_in_8bit="
            f"{qc.get('load_in_8bit')}, load_in_4bit={qc.get('load_in_4bit')}) is not a method kdq "
            f"knows; registered: {registered_methods()} (config.json quant_method "
            f"{sorted({m.quant_method for m in _REGISTRY.values()})})."
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
    """
    method = method_for({"quantization_config": qc}) if qc else None
    if method is None:
        return {"backend_modules": [], "backend_packages": [], "load": {}}
    load: dict = {}
    for device_type, env in method.load_env.items():
        if env:
            load.setdefault(device_type, {})["env"] = {k: str(v) for k, v in env.items()}
    for device_type, overrides in method.load_overrides(qc).items():
        if overrides:
            load.setdefault(device_type, {})["quantization_config"] = dict(overrides)
    return {"backend_modules": list(method.runtime_modules), "backend_packages": list(method.wheels), "load": load}


def runtime_modules_by_quant_method() -> dict:
    """``{config.json quant_method: modules transformers imports to load it}``."""
    out: dict = {}
    for _, m in sorted(_REGISTRY.items()):
        out[m.quant_method] = tuple(dict.fromkeys(out.get(m.quant_method, ()) + m.runtime_modules))
    return out


def wheels_for(quant_method: str | None) -> tuple:
    """The pip packages an offline notebook needs for ``config.json`` ``quant_method`` (``()`` when ``None``)."""
    if quant_method is None:
        return ()
    wheels = [w for _, m in sorted(_REGISTRY.items()) if m.quant_method == quant_method for w in m.wheels]
    if not wheels:
        known = sorted({m.quant_method for m in _REGISTRY.values()})
        raise ValueError(
            f"no wheel list for quantization method {quant_method!r}; known: {known}. "
            "Pass ExportConfig(wheel_packages=...)."
        )
    return tuple(dict.fromkeys(wheels))
