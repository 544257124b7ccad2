"""Commands as data: each ``kdq`` subcommand's arguments, config class and code.

An :class:`Arg` with a ``field`` feeds that config field, so the precedence ``--config`` file <
command flags < ``--set`` (:func:`kdq.config.io.resolve_config`) holds for every command.
Standard library only at import time: the command's code and config class are imported when
it runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..config.io import merge, resolve_config

# Exit codes of every kdq command: 0 ok; 1 a check failed (verification, tolerance); 2 bad input or config
# (the message names the field or row, and the fix); 3 a missing optional dependency (the message names the
# pip extra); 130 interrupted.
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_MISSING_DEP, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


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
    nargs: str | None = None  # e.g. "+": a positional taking one or more values

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
        for key in ("metavar", "dest", "nargs"):
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
    Arg(
        ("--set",),
        "override one config field (repeatable; dotted for nested: template.max_length=512); "
        "wins over --config and the command's flags",
        repeat=True,
        dest="overrides",
        metavar="FIELD=VALUE",
    ),
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
        if self.config is None:
            p = subparsers.add_parser(self.name, help=self.help, description=self.help)
        else:  # -h lists the config's fields, read from the class only when asked
            p = subparsers.add_parser(
                self.name,
                help=self.help,
                description=self.help,
                add_help=False,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            p.add_argument(
                "-h",
                "--help",
                action=HelpWithFields,
                config=self.config,
                help="show this help, with every config field --set accepts and its default, and exit",
            )
        for arg in self.all_args():
            arg.add_to(p)
        p.set_defaults(command_spec=self)
        return p

    def config_from(self, args):
        """The command's config: file < flags < ``--set``."""
        flags: dict = {}
        for arg in self.args:
            flags = merge(flags, arg.fields(args))
        return resolve_config(
            load_object(self.config), getattr(args, "config", None), flags, getattr(args, "overrides", ()), self.hint
        )

    def invoke(self, args) -> int:
        fn = load_object(self.run)
        if self.config is None:
            return fn(args)
        return fn(args, self.config_from(args))


class HelpWithFields(argparse.Action):
    """``-h``/``--help`` that also lists the command's config fields, their defaults and help
    (:func:`kdq.config.fields.describe`). The config class is imported when help is asked for,
    not when the parser is built: ``kdq --help`` imports no config module, and none imports torch.
    """

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None, config=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)
        self.config = config

    def __call__(self, parser, namespace, values, option_string=None):
        import shutil

        from ..config.fields import describe

        width = min(max(shutil.get_terminal_size().columns - 2, 80), 120)
        parser.epilog = describe(load_object(self.config), width=width)
        parser.print_help()
        parser.exit()


def load_object(path: str):
    """``"package.module:name"`` → the object (imported now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
