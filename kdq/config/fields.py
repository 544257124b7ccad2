"""What a config's fields are, read from the dataclass without building one: declared types, defaults
and one-line help (``field(..., metadata={"help": ...})``, as peft's configs do).

Two uses, one reading of the fields:

* :func:`coerce_text`: a value given as text (``--set``, a ``--config`` YAML/JSON file, a dict read
  from a file) becomes the field's declared type. YAML 1.1 reads ``2e-5`` (no decimal point) as a
  string, so without this every numeric field reached from a file or the command line refused
  scientific notation;
* :func:`describe`: the fields ``--set`` accepts, dotted for nested configs, with defaults and help
  (what ``kdq COMMAND --help`` lists).

Standard library only (PyYAML on use): ``kdq --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import textwrap
import types
import typing

# YAML 1.1's booleans and null, as PyYAML's safe loader reads them.
_TRUE = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"}
_FALSE = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"}
_NULL = {"", "~", "null", "Null", "NULL"}
_EXAMPLES = {int: "8", float: "2e-5", bool: "true"}  # when the field's default is no example
REQUIRED = "(required)"  # a field without a default, in field_rows


@functools.cache
def declared_types(cls) -> dict:
    """``{field name: type hint}`` of dataclass ``cls`` (string annotations resolved)."""
    return typing.get_type_hints(cls)


def _members(hint) -> tuple:
    """The types a hint admits: ``int | None`` -> ``(int, NoneType)``; ``X`` -> ``(X,)``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (typing.get_origin(hint) or hint,)


def field_help(f: dataclasses.Field) -> str:
    """The one-line help in a field's metadata (``""`` when there is none)."""
    return str(f.metadata.get("help", ""))


def set_text(value) -> str:
    """``value`` as one writes it after ``--set field=`` (YAML): ``true``, ``null``, ``[a, b]``, ``5e-05``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(set_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {set_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value or '""'
    return repr(value)


def _example(name: str, kind, default) -> str:
    good = isinstance(default, kind) and not (kind is not bool and isinstance(default, bool))
    return f"{name}={set_text(default) if good else _EXAMPLES[kind]}"


def _number(text: str):
    """``text`` as an int (``"500"``) or a float (``"2e-5"``, ``"1E-3"``, ``"5e2"``); ``None`` if it is no number."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


class YamlText(str):
    """A scalar read from ``--set`` or a config file, still as its text (:func:`kdq.config.io.parse_value`)."""


def yaml_text(value):
    """``value`` (YAML structure) with every string scalar marked :class:`YamlText`."""
    if isinstance(value, str):
        return YamlText(value)
    if isinstance(value, list):
        return [yaml_text(v) for v in value]
    if isinstance(value, dict):
        return {k: yaml_text(v) for k, v in value.items()}
    return value


def _yaml_typed(value):
    """Text read from ``--set`` or a file (and lists / mappings of it) typed as YAML 1.1 would type it, for
    fields that take any type. A string given in Python stays as it is."""
    import yaml

    if isinstance(value, YamlText):
        return yaml.safe_load(value) if value.strip() else str(value)
    if isinstance(value, (list, tuple)):
        typed = [_yaml_typed(v) for v in value]
        changed = any(t is not v for t, v in zip(typed, value))
        return type(value)(typed) if changed else value  # the caller's own object when nothing was text
    if isinstance(value, dict):
        typed = {k: _yaml_typed(v) for k, v in value.items()}
        changed = any(typed[k] is not v for k, v in value.items())
        return typed if changed else value
    return value


def coerce_text(cls, name: str, value, default=None):
    """``value`` converted to field ``name``'s declared type when it is text; other values pass unchanged.

    ``"2e-5"`` for a float field is 2e-05; ``"5e2"`` for an int field is 500 (a non-integral number
    is an error); ``"true"``/``"no"`` for a bool field follow YAML's booleans; ``"null"`` for an
    optional field is ``None``; text for a tuple field is a one-entry tuple. Fields that take text
    (``str``, ``object``) keep it, except that a ``bool | str`` field reads YAML booleans. A value
    that does not convert raises ``ValueError`` naming ``Class.field``, the expected kind and an
    example (from the default when it is one).

    The same holds for a plain ``str`` given in Python (a dict a user read with ``yaml.safe_load``,
    where ``2e-5`` stays text), except in fields of any type, where only :class:`YamlText` is typed:
    a Python value there (rows, a template) is never rewritten or copied.
    """
    hint = declared_types(cls).get(name)
    if hint is None:
        return value
    kinds = _members(hint)
    if object in kinds or typing.Any in kinds:  # any type: text, and text inside lists/mappings, typed as YAML
        return _yaml_typed(value)
    if not isinstance(value, str):
        return value
    where = f"{cls.__name__}.{name}"
    if bool in kinds and (value in _TRUE or value in _FALSE):
        return value in _TRUE
    if str in kinds:
        return str(value)
    if type(None) in kinds and value.strip() in _NULL:
        return None
    if bool in kinds:
        kind = "true, false or null" if type(None) in kinds else "true or false"
        raise ValueError(f"{where} must be {kind}, e.g. {_example(name, bool, default)}; got {value!r}")
    if int in kinds or float in kinds:
        number = _number(value)
        if float in kinds:
            if number is None:
                raise ValueError(f"{where} must be a number, e.g. {_example(name, float, default)}; got {value!r}")
            return float(number)
        if isinstance(number, float) and math.isfinite(number) and number.is_integer():
            number = int(number)
        if not isinstance(number, int):
            raise ValueError(
                f"{where} must be an integer (5e2 is 500, 2.5 is not one), e.g. {_example(name, int, default)}; "
                f"got {value!r}"
            )
        return number
    if tuple in kinds or list in kinds:
        return (value,)
    return value


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return dataclasses.MISSING  # a factory's value is not built here: a nested config would validate


def coerce_fields(cls, data: dict) -> dict:
    """A copy of the field dict ``data`` with every text value coerced (:func:`coerce_text`)."""
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
    return {k: coerce_text(cls, k, v, defaults.get(k)) for k, v in data.items()}


def moved_error(cls, names) -> ValueError:
    """The error for field ``names`` that config ``cls`` no longer has because they moved into a nested
    section (``cls.MOVED``: old name -> dotted new name). It gives each one's new spelling in Python, on the
    command line and in a config file::

        DistillConfig(temperature=...) moved to DistillConfig(loss=LossSettings(temperature=...)); on the
        command line --set loss.temperature=...; in a config file loss: {temperature: ...}
    """
    hints = declared_types(cls)
    parts = []
    for old in names:
        new = cls.MOVED[old]
        section, _, leaf = new.partition(".")
        nested = dataclass_in(hints.get(section))
        inner = f"{nested.__name__}({leaf}=...)" if nested is not None else "{" + f"{leaf!r}: ...}}"
        parts.append(
            f"{cls.__name__}({old}=...) moved to {cls.__name__}({section}={inner}); on the command line "
            f"--set {new}=...; in a config file {section}: {{{leaf}: ...}}"
        )
    return ValueError(". ".join(parts) + f". ({cls.__name__}.MOVED lists every moved name.)")


def dataclass_in(hint):
    """The dataclass in a type hint (``X``, ``X | None``), or ``None``: a nested config field."""
    return next((a for a in _members(hint) if dataclasses.is_dataclass(a)), None)


def field_rows(cls, prefix: str = "") -> list:
    """``(dotted name, default as --set text, help)`` for every field ``--set`` reaches, nested ones dotted.

    A nested config contributes its own fields under ``name.``; an optional one (``lora: LoraSettings |
    None = None``) is listed with its default too, since ``null`` is a value it takes.
    """
    rows = []
    hints = declared_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        nested = dataclass_in(hints.get(f.name))
        name = prefix + f.name
        default = _default(f)
        if nested is None or default is not dataclasses.MISSING:
            shown = REQUIRED if default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING else ""
            if not shown:
                value = default if default is not dataclasses.MISSING else f.default_factory()
                shown = set_text(value)
            rows.append((name, shown, field_help(f)))
        else:
            rows.append((name + ".*", "", field_help(f)))
        if nested is not None:
            rows += field_rows(nested, name + ".")
    return rows


def describe(cls, *, width: int = 100) -> str:
    """The text ``kdq COMMAND --help`` shows for ``cls``: every field, its default and its help."""
    rows = field_rows(cls)
    left = [f"{n} {d}" if d == REQUIRED else f"{n}={d}" if d else n for n, d, _ in rows]
    col = min(max(len(s) for s in left) + 2, 32)
    lines = textwrap.wrap(
        f"config fields of {cls.__name__}, with their defaults (--set FIELD=VALUE, or FIELD: VALUE in "
        "--config; dotted for nested configs):",
        width,
    )
    for head, (_, _, text) in zip(left, rows):
        wrapped = textwrap.wrap(text, max(width - col - 2, 30)) or [""]
        if len(head) + 2 > col:
            lines.append(f"  {head}")
            lines += [" " * (col + 2) + w for w in wrapped]
        else:
            lines.append(f"  {head.ljust(col)}{wrapped[0]}")
            lines += [" " * (col + 2) + w for w in wrapped[1:]]
    return "\n".join(lines)
