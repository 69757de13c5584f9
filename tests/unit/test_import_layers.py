"""The core (`crosslogic`) depends on neither `billing` nor Ray's `deployments`: they build on it.

Two checks: statically, no module of crosslogic/ imports them outside a function body (so an
import cycle cannot come back through `if TYPE_CHECKING:` either); and at run time, importing every
crosslogic module in a fresh interpreter loads neither them nor Ray.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("billing", "deployments")
# Needs SkyPilot, installed in its own venv (`make cloud-env`); checked statically only.
NEEDS_OTHER_VENV = {"crosslogic.cloud.driver"}


def _module_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of imports not inside a function: run on import, or read by type checkers."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.lineno, child.module))
            visit(child)

    visit(tree)
    return found


def test_crosslogic_never_imports_billing_or_deployments_at_module_level() -> None:
    offenders = []
    files = sorted((REPO / "crosslogic").rglob("*.py"))
    assert len(files) > 100
    for path in files:
        for line, module in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


_IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import crosslogic
skip = set(sys.argv[1].split(","))
names = [m.name for m in pkgutil.walk_packages(crosslogic.__path__, "crosslogic.") if m.name not in skip]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": len(names), "loaded": sorted(sys.modules)}))
"""


def test_importing_all_of_crosslogic_loads_no_billing_no_deployments_no_ray() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING, ",".join(NEEDS_OTHER_VENV)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["imported"] > 100
    loaded = {name.split(".")[0] for name in result["loaded"]}
    assert not loaded & {*FORBIDDEN, "ray"}, sorted(loaded & {*FORBIDDEN, "ray"})
