"""The package's layers import one way only: lower layers never import higher ones.

Order, lowest first: the core modules (errors, secrets), providers, config,
federation, sync. Imports inside functions count too, because a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pkifed"

LAYERS = {
    "pkifed": 0,
    "pkifed.errors": 0,
    "pkifed.secrets": 0,
    "pkifed.loopback": 0,
    "pkifed.providers": 1,
    "pkifed.config": 2,
    "pkifed.federation": 3,
    "pkifed.sync": 4,
    "pkifed.__main__": 4,
}


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside pkifed: its longest listed prefix."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(f"{module} is in no layer; add it to LAYERS")


def module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, current: str, is_package: bool) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = current.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            found.append(module)
    return [m for m in found if m == "pkifed" or m.startswith("pkifed.")]


def find_violations(root: Path) -> list[str]:
    """Every import in ``root`` that reaches up to a higher layer."""
    violations = []
    for path in sorted(root.rglob("*.py")):
        current = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for imported in imported_modules(tree, current, path.name == "__init__.py"):
            if layer_of(imported) > layer_of(current):
                violations.append(f"{current} imports {imported}")
    return violations


def test_layers_one_way() -> None:
    assert find_violations(PACKAGE) == []


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from pkifed.sync import cli\n", "federation/bad.py"),
        ("import pkifed.federation.store\n", "providers/bad.py"),
        ("def f():\n    from pkifed.config import loader\n", "providers/bad.py"),
        ("from ..federation import store\n", "config/bad.py"),
    ],
)
def test_violation_detected(tmp_path: Path, source: str, module: str) -> None:
    root = tmp_path / "pkifed"
    path = root / module
    path.parent.mkdir(parents=True)
    path.write_text(source, encoding="utf-8")

    assert len(find_violations(root)) == 1


def test_every_module_in_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path, PACKAGE))
