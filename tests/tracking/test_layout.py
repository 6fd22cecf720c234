"""The tracking engine stands on its own: it imports no operator, sensor or trigger (no cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import cometly_provider.tracking
from cometly_provider.operators import track_event

FORBIDDEN = ("cometly_provider.operators", "cometly_provider.sensors", "cometly_provider.triggers")


def test_the_engine_imports_no_operator() -> None:
    modules = sorted(Path(cometly_provider.tracking.__file__).parent.glob("*.py"))
    assert len(modules) >= 6
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.startswith(FORBIDDEN)], f"{module.name} imports {names}"


def test_the_operator_module_is_thin() -> None:
    assert len(Path(track_event.__file__).read_text().splitlines()) < 300  # 856 in 0.1.0
