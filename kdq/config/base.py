"""The one convention of kdq's configs: frozen dataclasses that accept dicts for nested configs
and have ``replace`` and ``to_dict``.

Every config class (``DistillConfig``, ``LoraSettings``, ``QuantConfig``, ``EvalConfig``,
``ExportConfig``, ``PipelineConfig``) derives from :class:`Config` and calls
``self._accept_dicts()`` first in ``__post_init__``. ``TemplateConfig`` follows the same
convention by hand: its source is pasted into the standalone ``predict.py``, so it imports
nothing from kdq. No config imports torch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from types import MappingProxyType

from .fields import coerce_fields, dataclass_in, declared_types, moved_error
from .io import build_config


class Config:
    """Mixin for a frozen config dataclass: ``replace``, ``to_dict``, dicts for nested configs.

    ``MOVED`` (a class attribute, not a field): old field name -> its dotted new name, for fields that moved
    into a nested section. Giving an old name (``DistillConfig(temperature=2.0)``, ``replace``, ``--set``, a
    config file) is a ``ValueError`` that names the new spelling (:func:`kdq.config.fields.moved_error`),
    not Python's "unexpected keyword argument".
    """

    MOVED = MappingProxyType({})

    def __new__(cls, *args, **kwargs):
        moved = [k for k in kwargs if k in cls.MOVED]
        if moved:
            raise moved_error(cls, moved)
        return super().__new__(cls)

    def replace(self, **changes):
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain data: nested configs as dicts (what :func:`kdq.config.io.build_config` reads back)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def _accept_dicts(self) -> None:
        """Turn a dict given for a nested config field into that config (unknown keys: ``ValueError``),
        and a value given as text into its field's declared type (``DistillConfig(**yaml_dict)``)."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in coerce_fields(type(self), given).items():
            if value is not given[name]:
                object.__setattr__(self, name, value)
        for name, cls in _nested_fields(type(self)).items():
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, build_config(cls, value))


def _plain(value):
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return value.to_dict()
    return copy.deepcopy(value)


@functools.cache
def _nested_fields(cls) -> dict:
    """``{field name: config class}`` for the fields of ``cls`` typed as a (possibly optional) dataclass."""
    hints = declared_types(cls)
    out = {}
    for f in dataclasses.fields(cls):
        target = dataclass_in(hints.get(f.name))
        if target is not None:
            out[f.name] = target
    return out
