"""The protocol package stays pure: no Django, no I/O, only the stdlib and h11."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import reversehttp_gateway.protocol as protocol

PACKAGE = Path(protocol.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
STDLIB = set(sys.stdlib_module_names)
ALLOWED_THIRD_PARTY = {"h11"}
FORBIDDEN_STDLIB = {"asyncio", "io", "os", "socket", "subprocess", "threading", "time", "urllib"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_import_only_stdlib_and_h11(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                continue
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in ALLOWED_THIRD_PARTY or root in STDLIB, f"{path.name} imports {root}"
            assert root not in FORBIDDEN_STDLIB, f"{path.name} imports {root}"


def test_package_docstring_is_kept() -> None:
    assert protocol.__doc__ is not None
    assert "no Django" in protocol.__doc__
