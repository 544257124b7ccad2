"""Quantization methods, registered by name: ``QuantConfig.method`` selects one, no if/else chain."""
from __future__ import annotations

from pathlib import Path

# Sequence-classification heads (Llama: ``score``; BERT-like: ``classifier``). No method may
# quantize them: three logits carry the whole prediction, and they cost almost nothing to keep.
HEAD_MODULES = ("score", "classifier")

_REGISTRY: dict = {}


class QuantMethod:
    """One quantization method. Subclasses are registered with :func:`register_quantizer`.

    A method turns a saved full-precision classifier folder into a quantized model object
    that has never run a forward pass (:meth:`quantize`), and cleans that model's
    ``config.json`` before it is saved (:meth:`finalize_config`). Rendering calibration rows,
    saving, reloading and verifying are shared and live in :mod:`kdq.quantize.api`.
    """

    name: str = ""
    #: module imported (through ``kdq.import_utils.require``) before the method runs
    requires: tuple = ()
    #: allowed ``QuantConfig.bits``; the first is the default when ``bits`` is ``None``
    allowed_bits: tuple = ()
    bits_required: bool = False
    needs_calibration: bool = False
    #: QuantConfig fields this method reads; any other method-specific field must stay default
    uses_fields: frozenset = frozenset()

    _METHOD_FIELDS = {"group_size": 128, "desc_act": False, "double_quant": True, "backend": None}

    def validate(self, config) -> int:
        """Check the method-specific fields of ``config``; return the resolved ``bits``."""
        for field, default in self._METHOD_FIELDS.items():
            if field not in self.uses_fields and getattr(config, field) != default:
                users = sorted(n for n, m in _REGISTRY.items() if field in m.uses_fields)
                raise ValueError(f"QuantConfig.{field}={getattr(config, field)!r} does not apply to method "
                                 f"{self.name!r} (only to {users}); leave it at its default {default!r}.")
        bits = config.bits
        if bits is None:
            if self.bits_required:
                raise ValueError(f"QuantConfig.bits is required for method {self.name!r}: "
                                 f"choose one of {list(self.allowed_bits)}.")
            return self.allowed_bits[0]
        if bits not in self.allowed_bits or isinstance(bits, bool):
            raise ValueError(f"QuantConfig.bits must be one of {list(self.allowed_bits)} for method "
                             f"{self.name!r}, got {bits!r}.")
        return bits

    def variant_name(self, config) -> str:
        return self.name

    def prepare(self, device) -> None:
        """Import the optional backend (an error names the pip extra) and set up the process."""
        from ..import_utils import require

        for module in self.requires:
            require(module, purpose=f"quantization method {self.name!r}")

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
