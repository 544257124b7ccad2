"""Quantization methods, registered by name: ``QuantConfig.method`` selects one, no if/else chain.

Each :class:`QuantMethod` owns every fact about its method: the kdq pip extra, the modules
transformers imports to load it, the wheels an offline notebook needs, the ``config.json``
``quant_method`` it writes, its on-disk weight format (budget arithmetic) and what a process
must do before loading it. Everything else asks this registry: :mod:`kdq.models` and
:mod:`kdq.export` (which never import :mod:`kdq.quantize`), :mod:`kdq.evaluate.modelspec`.
Standard library only at import time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

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


class QuantMethod:
    """One quantization method. Subclasses are registered with :func:`register_quantizer`.

    A method turns a saved full-precision classifier folder into a quantized model object
    that has never run a forward pass (:meth:`quantize`), and cleans that model's
    ``config.json`` before it is saved (:meth:`finalize_config`). Rendering calibration rows,
    saving, reloading and verifying are shared and live in :mod:`kdq.quantize.api`.
    """

    name: str = ""
    #: the kdq pip extra that installs the backend: ``pip install 'kdq[<extra>]'``
    extra: str | None = None
    #: modules transformers imports to load a folder of this method; checked before loading
    #: (here, and in the exported predict.py, which reads them from ``kdq-predict.json``)
    runtime_modules: tuple = ()
    #: pip packages an offline notebook needs for this method (shipped in the export's wheels/)
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
    #: QuantConfig fields this method reads; any other method-specific field must stay default
    uses_fields: frozenset = frozenset()

    _METHOD_FIELDS = {"group_size": 128, "desc_act": False, "double_quant": True, "backend": None}

    def validate(self, config) -> int:
        """Check the method-specific fields of ``config``; return the resolved ``bits``."""
        for field, default in self._METHOD_FIELDS.items():
            if field not in self.uses_fields and getattr(config, field) != default:
                users = sorted(n for n, m in _REGISTRY.items() if field in m.uses_fields)
                raise ValueError(
                    f"QuantConfig.{field}={getattr(config, field)!r} does not apply to method "
                    f"{self.name!r} (only to {users}); leave it at its default {default!r}."
                )
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

    # ---- process set-up
    def prepare_load(self, device) -> None:
        """Before loading a folder of this method on ``device`` (``"cpu"``, ``"cuda:0"``...):
        import the backend (an error names the pip extra) and set up the process."""
        from ..utils.imports import require

        for module in self.runtime_modules:
            require(module, purpose=f"quantization method {self.name!r}", extra=self.extra)

    def prepare(self, device) -> None:
        """Before quantizing on ``device``: the same as before loading, unless a method says otherwise."""
        self.prepare_load(device)

    def quantize(self, source_dir: Path, config, *, calibration: list, tokenizer, device, dtype):
        """Return the quantized ``*ForSequenceClassification`` (never run forward).

        Args:
            source_dir: a saved full-precision classifier folder.
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
        method = cls()
        method.name = name
        _REGISTRY[name] = method
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


def runtime_modules_by_quant_method() -> dict:
    """``{config.json quant_method: modules transformers imports to load it}`` (for predict.py)."""
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
