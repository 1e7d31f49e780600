"""The layers the layout shows: measuring imports neither searching nor studies, nor pandas."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autotune"
HEAVY = ("optuna", "pandas", "matplotlib", "plotly", "sqlalchemy", "scipy")
# What each layer may import from the package, besides itself and the light shared modules.
SHARED = {"autotune", "autotune.errors", "autotune.guide", "autotune.safe_text"}
ALLOWED = {"measure": set(), "search": {"measure", "studies"}, "studies": {"measure"}}


def package_imports(path: Path) -> set[str]:
    """Every `autotune...` module a source file imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "autotune"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    for path in sorted((PACKAGE / layer).glob("*.py")):
        for name in package_imports(path) - SHARED:
            other = name.split(".")[1]
            assert other == layer or other in ALLOWED[layer], f"{path.name} imports {name}"


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, `from autotune.search import drift` as
    autotune.search.drift (a name that is no module is dropped by the caller)."""
    found = set(package_imports(path))
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_itself_through_others() -> None:
    """No import circle, counting imports made only for type checking or inside a
    function: a circle of modules is one module in pieces."""
    graph = {module_name(path): imported_modules(path) for path in PACKAGE.rglob("*.py")}
    graph = {m: {n for n in names if n in graph and n != m} for m, names in graph.items()}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for name in sorted(graph[module]):
            if name in path:
                circles.append(" -> ".join([*path[path.index(name):], name]))
            elif name not in done:
                visit(name, [*path, name])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []


def test_the_worker_side_loads_nothing_heavy() -> None:
    code = ("import json, sys; import autotune.measure.worker, autotune.measure.trial; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == []


def test_no_private_attribute_of_another_object_is_read() -> None:
    """Optuna's `study._storage` or `trial._trial_id` change without notice between
    releases: autotune uses public APIs only (a subclass keeps its own attributes)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name)
                             and node.value.id in ("self", "cls", "os"))):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
    assert found == []
