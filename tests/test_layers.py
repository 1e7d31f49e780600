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
ALLOWED = {"measure": set(), "search": {"measure", "studies"}, "studies": {"measure", "search"}}


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
