"""Config I/O: one path from a config file, command flags and ``--set`` to a frozen config.

Every command reads its config the same way, in this order (later wins)::

    --config file.yaml   <   command flags (--output-dir, --method, --title ...)   <   --set field=value

:func:`resolve_config` implements that precedence once, for every command (the commands
themselves are declared in :mod:`kdq.cli.spec` / :mod:`kdq.cli.commands`). Standard library
(and PyYAML, on use) only: ``kdq --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .fields import coerce_fields, dataclass_in, declared_types, moved_error, yaml_text


# ---------------------------------------------------------------- files, flags and --set
def parse_value(text: str):
    """A ``--set`` value as YAML structure with every scalar kept as text (``[3.10, 2e-5]`` is
    ``["3.10", "2e-5"]``): the field's declared type converts it (:func:`kdq.config.fields.coerce_text`),
    so ``3.10`` stays ``"3.10"`` for a text field and ``2e-5`` is a number for a float field. YAML 1.1's
    own typing would read ``3.10`` as the float 3.1 and ``2e-5`` as text."""
    import yaml

    return yaml_text(yaml.load(text, Loader=yaml.BaseLoader))


def read_config_file(path) -> dict:
    """The mapping in a YAML or JSON file (``{}`` when ``path`` is ``None`` or the file is empty), its
    scalars kept as text for the fields' declared types to convert (see :func:`parse_value`)."""
    if not path:
        return {}
    import yaml

    data = yaml_text(yaml.load(Path(path).read_text(), Loader=yaml.BaseLoader) or {})
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of field: value, got {type(data).__name__}")
    return data


def merge(base: dict, changes: dict) -> dict:
    """A copy of ``base`` with ``changes`` merged in, nested mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = merge(out[key], value)
        out[key] = value
    return out


def apply_overrides(data: dict, overrides=()) -> dict:
    """``field=value`` strings (dotted names reach nested configs) applied to a copy of ``data``."""
    data = merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected field=value, e.g. --set training.epochs=2")
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):  # absent, or null in the file (e.g. lora: null)
                node[p] = {}
            else:
                node[p] = dict(node[p])
            node = node[p]
        node[leaf] = parse_value(value)
    return data


def load_config_dict(path=None, overrides=(), *, flags: dict | None = None) -> dict:
    """The merged field dict: file < ``flags`` < ``overrides`` (``--set``)."""
    return apply_overrides(merge(read_config_file(path), flags or {}), overrides)


def build_config(cls, data: dict, hint: str = ""):
    """Instantiate dataclass ``cls`` from a nested dict, converting nested dataclass fields.

    Values given as text take their field's declared type (:func:`kdq.config.fields.coerce_text`:
    ``"2e-5"`` is a float, ``"5e2"`` for an int field is 500). Unknown keys are an error that
    lists the valid field names; missing required fields are an error that names them (``hint``:
    how to give them, e.g. ``": pass --method"``).
    """
    hints = declared_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    moved = [k for k in unknown if k in getattr(cls, "MOVED", {})]
    if moved:  # a name from before the config had sections: say where it lives now
        raise moved_error(cls, moved)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(names)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in data
        and f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{cls.__name__} needs field(s) {missing}{hint}")
    kwargs = {}
    for key, value in coerce_fields(cls, data).items():
        target = dataclass_in(hints.get(key))
        if isinstance(value, dict) and target is not None:
            value = build_config(target, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def resolve_config(cls, path=None, flags: dict | None = None, overrides=(), hint: str = ""):
    """``cls`` built from file < flags < ``--set``: the one precedence rule of every command."""
    return build_config(cls, load_config_dict(path, overrides, flags=flags), hint)
