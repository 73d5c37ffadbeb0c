"""The package's layers only look down: no module imports from a layer above its own (function-level imports
included), and ``import cambench`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cambench"
# lowest first: a module may import its own layer and the layers before it
LAYERS = [
    ("cambench.errors", "cambench.params", "cambench.device", "cambench.draws", "cambench.effects"),
    ("cambench.io",),
    ("cambench.data",),
    ("cambench.models",),
    ("cambench.methods",),
    ("cambench.metrics",),
    ("cambench.analysis",),
    ("cambench.evaluation",),
    ("cambench.api",),
    ("cambench.app",),
    ("cambench.cli",),
]
TOP = len(LAYERS)  # cambench/__init__.py, __main__.py and the python -m entry points


def layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return TOP


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in out if name == "cambench" or name.startswith("cambench.")}


def test_every_module_has_a_layer_and_none_imports_from_above():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        own = layer(name)
        assert name.count(".") == 0 or own < TOP or path.parent == PACKAGE, f"{name} is in no layer: add it to LAYERS"
        for target in imported(ast.parse(path.read_text())):
            if target != "cambench" and layer(target) > own:
                upward.append(f"{name} (layer {own}) imports {target} (layer {layer(target)})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_import_cambench_does_not_load_the_heavy_optional_libraries():
    """``import cambench`` (and the API modules) load matplotlib, zennit, captum and scipy.stats only when a feature
    needs them."""
    code = (
        "import sys, cambench, cambench.api, cambench.methods, cambench.metrics; "
        "print(' '.join(m for m in ('matplotlib', 'zennit', 'captum', 'scipy.stats', 'hydra') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
