"""Lazy package namespaces: a public name loads its module on first use (PEP 562).

``import kdq`` and ``import kdq.distill.config`` must not pay for torch. A package calls
:func:`lazy_package` at the end of its ``__init__`` with ``name -> relative module`` for each
public name; the module is imported when the name is first read, and the value is cached.

Some public names are also the names of submodules (``kdq.distill`` is a verb and a package;
``kdq.distill.shrink`` is a function and a module). Loading such a submodule makes the import
system bind it on its parent, which would shadow the public name; :class:`LazyPackage` ignores
that binding, so the name keeps resolving to the public object. Submodules stay importable by
their dotted path (``import kdq.distill.config`` / ``from kdq.distill.config import ...``).
Standard library only.
"""

from __future__ import annotations

import importlib
import sys
import types


class LazyPackage(types.ModuleType):
    """A package module whose ``_lazy_exports`` names load from their modules on first read."""

    def __getattr__(self, name):  # only called when normal lookup fails
        module = self.__dict__.get("_lazy_exports", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, self.__name__), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name, value):
        exports = self.__dict__.get("_lazy_exports", {})
        if name in exports and isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            return  # the import system binding a same-named submodule: keep the public name
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(self.__dict__) | set(self.__dict__.get("_lazy_exports", {})))


def lazy_package(module_name: str, exports: dict) -> None:
    """Make ``sys.modules[module_name]`` a :class:`LazyPackage` serving ``exports`` (name -> relative module)."""
    module = sys.modules[module_name]
    module.__dict__["_lazy_exports"] = dict(exports)
    module.__class__ = LazyPackage
