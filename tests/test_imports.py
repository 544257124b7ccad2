"""The package's import graph, read from the source (ast): no circle, and no upward imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from _launch import run_python

KDQ = Path(__file__).resolve().parents[1] / "kdq"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(KDQ.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(KDQ.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict, *, top_level_only: bool) -> set:
    """kdq modules that ``name`` imports (``from .x import y`` counts ``x.y`` when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        for t in targets:
            if t in modules and t != name:
                out.add(t)
    return out


def _graph(top_level_only: bool) -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules, top_level_only=top_level_only) for name, path in modules.items()}


def _cycle(graph: dict):
    """One import cycle as a list of modules, or ``None``."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_module_level_imports_form_no_circle():
    graph = _graph(top_level_only=True)
    assert len(graph) > 30 and "kdq.cli.main" in graph and "kdq.cli.commands" in graph["kdq.cli.main"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_deferred_imports_form_no_circle_either():
    # kdq/cli/main.py and kdq/cli/export.py once imported each other; both now read kdq.cli.commands
    graph = _graph(top_level_only=False)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert not any(m.startswith("kdq.export") for m in graph["kdq.cli.main"])
    assert "kdq.cli.main" not in graph["kdq.cli.export"]


def _documented_layers() -> tuple:
    """The layer list in kdq/__init__.py's docstring (the one place it is written): a tuple of
    layers, bottom up, each a tuple of packages that sit side by side."""
    import re

    doc = ast.get_docstring(ast.parse((KDQ / "__init__.py").read_text(encoding="utf-8")))
    layers = []
    for line in doc.split("The layers, bottom up", 1)[1].splitlines():
        if line.startswith("* "):
            names = re.findall(r"``(\w+)``", line.split(":", 1)[0])
            layers.append(tuple(f"kdq.{n}" for n in names))
    return tuple(layers)


LAYERS = _documented_layers()
PACKAGES = tuple(p for layer in LAYERS for p in layer)


def test_the_documented_layers_name_every_package_once():
    on_disk = {f"kdq.{p.name}" for p in KDQ.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    on_disk |= {f"kdq.{p.stem}" for p in KDQ.glob("*.py") if p.stem != "__init__"}
    assert len(PACKAGES) == len(set(PACKAGES)), PACKAGES
    assert set(PACKAGES) == on_disk, sorted(set(PACKAGES) ^ on_disk)
    assert ("kdq.distill", "kdq.quantize", "kdq.evaluate", "kdq.export") in LAYERS


def _layer(module: str):
    """The index in LAYERS of the layer ``module`` belongs to (None outside the listed packages)."""
    return next((i for i, layer in enumerate(LAYERS) for p in layer if module == p or module.startswith(p + ".")), None)


def _package(module: str):
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), None)


def test_packages_import_only_the_layers_below_them():
    graph = _graph(top_level_only=False)
    assert all(_layer(m) is not None for m in graph if m != "kdq") and _package("kdq.cli.main") == "kdq.cli"
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if "kdq" not in (m, t)
        and _package(m) != _package(t)
        and (_layer(t) > _layer(m) or _layer(t) == _layer(m))  # above it, or a neighbour on its own line
    )
    assert not upward, upward
    # the root package holds at most 8 modules besides its packages
    root = sorted(p.name for p in KDQ.glob("*.py"))
    assert len(root) <= 8, root


@pytest.mark.parametrize("module", ["kdq.models", "kdq.export", "kdq.distill", "kdq.costs"])
def test_nothing_but_the_pipeline_and_cli_imports_the_quantize_stage(module):
    graph = _graph(top_level_only=False)
    importers = [m for m in graph if m == module or m.startswith(module + ".")]
    assert importers
    for m in importers:
        upward = sorted(t for t in graph[m] if t == "kdq.quantize" or t.startswith("kdq.quantize."))
        assert not upward, f"{m} imports {upward}; ask kdq.quant_methods instead"


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom kdq.cli.main import build_parser\nbuild_parser().format_help()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'numpy', 'pandas') if m in sys.modules)\n"
        "print(heavy)"
    )
    assert run_python("-c", code, timeout=120).stdout.strip() == "[]"


def test_stage_verbs_stay_functions_after_their_subpackages_load():
    code = (
        "import kdq\nimport kdq.distill.cache, kdq.distill.shrink, kdq.quantize.api, kdq.evaluate.report, "
        "kdq.export.build\nfrom kdq.distill import shrink\n"
        "print(type(shrink).__name__ == 'function' and all(type(getattr(kdq, v)).__name__ == 'function' "
        "for v in ('distill', 'quantize', 'evaluate', 'export', 'verify', 'compare', 'shrink')))"
    )
    assert run_python("-c", code).stdout.strip() == "True"


@pytest.mark.parametrize(
    "module", ["kdq.distill.config", "kdq.quantize.config", "kdq.evaluate.config", "kdq.export.config"]
)
def test_stage_configs_import_without_torch(module):
    """A config module (what the CLI and a notebook's first cell read) loads no torch."""
    code = f"import sys, {module}\nprint(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert run_python("-c", code, timeout=120).stdout.strip() == "[]"
