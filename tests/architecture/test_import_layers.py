"""The package's import rules (docs/architecture.md): a lower layer never imports a higher one,
and faces never import each other. Read from the source with ``ast``, so a new import that breaks
the layering fails here before it turns into a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "webhook"

# Lower numbers sit lower. A module may import its own package and anything of a lower rank.
RANK: dict[str, int] = {
    "errors": 0,
    "files": 0,
    "shapes": 0,
    "listening": 1,
    "output": 1,
    "core": 1,
    "config": 2,
    "kube": 3,
    "signatures": 4,
    "quota": 4,
    "policy": 4,
    "audit": 4,
    "checks": 5,
    "admission": 6,
    "ci": 6,
    "runtime": 6,
    "scan": 6,
    "replay": 6,
    "cli": 7,
    "__main__": 8,
}


def _is_command_module(path: Path) -> bool:
    """Sub-command modules are the CLI layer: they may wire any packages together."""
    return path.name == "commands.py" or path.name.endswith("_commands.py")


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "webhook":
                found += [(node.lineno, f"webhook.{alias.name}") for alias in node.names]
            elif node.module.startswith("webhook."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("webhook.")]
    return found


def _top(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _top(p) != "__init__")


def test_every_package_has_a_rank() -> None:
    tops = {_top(p) for p in MODULES}
    assert tops <= set(RANK), f"give these packages a rank in RANK and docs/architecture.md: {tops - set(RANK)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_upward_or_across_faces(path: Path) -> None:
    if _is_command_module(path):
        return
    own = _top(path)
    bad = []
    for line, module in _imports(path):
        target = module.split(".")[1]
        if target in ("__version__", own):
            continue
        if RANK.get(target, 99) >= RANK[own]:
            bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {module} ({own} may not import {target})")
    assert not bad, "\n".join(bad)


def test_core_imports_nothing_but_errors() -> None:
    for path in (PACKAGE / "core").rglob("*.py"):
        for line, module in _imports(path):
            assert module in ("webhook.errors", "webhook.core") or module.startswith("webhook.core."), (
                f"core/{path.name}:{line} imports {module}"
            )
