"""The client package works without Django and imports nothing of the gateway but protocol/."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reversehttp_gateway.client as client_package

PACKAGE = Path(client_package.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_django_and_no_gateway_modules(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # inside the client package
                continue
            prefix = "reversehttp_gateway." if node.level == 2 else ""
            names = [prefix + (node.module or "")]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in ("django", "channels", "daphne", "redis"), name
            if name.startswith("reversehttp_gateway"):
                allowed = ("reversehttp_gateway.protocol", "reversehttp_gateway.client")
                assert name.startswith(allowed), name


def test_importable_without_django_settings() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import sys, reversehttp_gateway.client, reversehttp_gateway.client.cli\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'django'], 'django imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
