"""Config I/O: one path from a config file, command flags and ``--set`` to a frozen config.

Every command reads its config the same way, in this order (later wins)::

    --config file.yaml   <   command flags (--output-dir, --method, --title ...)   <   --set field=value

Commands declare their arguments as data (:class:`Arg`, :class:`Command`); an ``Arg`` with a
``field`` feeds that config field, so the precedence above is implemented once, in
:func:`resolve_config`, for every command. Standard library only at import time (``kdq --help``
stays fast); the command's code and config class are imported when it runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


# ---------------------------------------------------------------- files, flags and --set
def parse_value(text: str):
    """``--set`` values are YAML scalars: ``2`` is an int, ``true`` a bool, ``null`` None, ``[a, b]`` a list."""
    import yaml

    return yaml.safe_load(text)


def read_config_file(path) -> dict:
    """The mapping in a YAML or JSON file (``{}`` when ``path`` is ``None`` or the file is empty)."""
    if not path:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
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
            raise ValueError(f"--set {item!r}: expected field=value, e.g. --set epochs=2")
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

    Unknown keys are an error that lists the valid field names; missing required fields are
    an error that names them (``hint``: how to give them, e.g. ``": pass --method"``).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{cls.__name__} needs field(s) {missing}{hint}")
    kwargs = {}
    for key, value in data.items():
        target = dataclass_in(hints.get(key))
        if isinstance(value, dict) and target is not None:
            value = build_config(target, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def dataclass_in(hint):
    """The dataclass in a type hint (``X``, ``X | None``), or ``None``."""
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def resolve_config(cls, path=None, flags: dict | None = None, overrides=(), hint: str = ""):
    """``cls`` built from file < flags < ``--set``: the one precedence rule of every command."""
    return build_config(cls, load_config_dict(path, overrides, flags=flags), hint)


# ---------------------------------------------------------------- commands as data
@dataclass(frozen=True)
class Arg:
    """One command-line argument.

    ``names``: ``("model",)`` for a positional, ``("--out",)`` for an option. ``field``: the
    config field the flag sets (dotted for nested); ``to_fields`` (a function or its
    ``"module:function"`` name) instead maps the flag's value to several fields
    (``--method gptq-4`` → ``{"method": "gptq", "bits": 4}``). Flags that are
    absent (``None``, ``False``, ``[]``) set nothing, so the file's value stands.
    """

    names: tuple
    help: str
    field: str | None = None
    to_fields: Callable | str | None = None
    required: bool = False
    type: Callable | None = None
    default: object = None
    switch: bool = False  # store_true
    repeat: bool = False  # append: the flag may be given several times
    metavar: str | None = None
    dest: str | None = None

    def add_to(self, parser) -> None:
        kw: dict = {"help": self.help}
        if self.switch:
            kw["action"] = "store_true"
        elif self.repeat:
            kw.update(action="append", default=[])
        else:
            if self.type is not None:
                kw["type"] = self.type
            if self.default is not None:
                kw["default"] = self.default
        if self.required and self.names[0].startswith("-"):
            kw["required"] = True
        for key in ("metavar", "dest"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        parser.add_argument(*self.names, **kw)

    def attr(self) -> str:
        return self.dest or self.names[-1].lstrip("-").replace("-", "_")

    def fields(self, args) -> dict:
        """The config fields this flag sets (nested dict), or ``{}`` when it is absent."""
        value = getattr(args, self.attr(), None)
        if value is None or value is False or value == []:
            return {}
        if self.to_fields is not None:
            convert = load_object(self.to_fields) if isinstance(self.to_fields, str) else self.to_fields
            return convert(value)
        if self.field is None:
            return {}
        node: dict = {}
        out = node
        *parents, leaf = self.field.split(".")
        for p in parents:
            node[p] = {}
            node = node[p]
        node[leaf] = value
        return out


CONFIG_ARGS = (
    Arg(("--config",), "YAML or JSON file with config fields"),
    Arg(("--set",), "override one config field (repeatable; dotted for nested: template.max_length=512); "
        "wins over --config and the command's flags", repeat=True, dest="overrides", metavar="FIELD=VALUE"),
)


@dataclass(frozen=True)
class Command:
    """A subcommand: its arguments as data, its code and its config class named lazily.

    ``run``: ``"module:function"``, called as ``fn(args, config)`` (or ``fn(args)`` when
    ``config`` is ``None``); ``config``: ``"module:Class"`` read with :func:`resolve_config`;
    ``hint``: how to give the config's required fields, appended when one is missing.
    """

    name: str
    help: str
    run: str
    args: tuple = ()
    config: str | None = None
    hint: str = ""

    def all_args(self) -> tuple:
        return self.args + (CONFIG_ARGS if self.config else ())

    def add_parser(self, subparsers) -> argparse.ArgumentParser:
        p = subparsers.add_parser(self.name, help=self.help, description=self.help)
        for arg in self.all_args():
            arg.add_to(p)
        p.set_defaults(command_spec=self)
        return p

    def config_from(self, args):
        """The command's config: file < flags < ``--set``."""
        flags: dict = {}
        for arg in self.args:
            flags = merge(flags, arg.fields(args))
        return resolve_config(load_object(self.config), getattr(args, "config", None), flags,
                              getattr(args, "overrides", ()), self.hint)

    def invoke(self, args) -> int:
        fn = load_object(self.run)
        if self.config is None:
            return fn(args)
        return fn(args, self.config_from(args))


def load_object(path: str):
    """``"package.module:name"`` → the object (imported now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
