"""The documentation keeps up with the code: every setting and check id, every page in the nav.

``scripts/test.sh`` also builds the site with ``mkdocs build --strict`` (broken links fail).
"""

from __future__ import annotations

import re
from pathlib import Path

from reversehttp_gateway import checks
from reversehttp_gateway.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SETTINGS_DOC = DOCS / "settings.md"


def nav_pages() -> list[str]:
    """The pages named in ``mkdocs.yml``'s nav (``- Title: page.md``)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text.split("\nnav:\n", 1)[1]
    return re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", nav, re.MULTILINE)


def test_every_setting_is_documented() -> None:
    text = SETTINGS_DOC.read_text()
    missing = [name for name in DEFAULTS if f"`{name}`" not in text]
    assert not missing, f"Add these settings to the table in docs/settings.md: {missing}"


def test_every_check_id_is_documented() -> None:
    source = Path(checks.__file__).read_text()
    ids = sorted(set(re.findall(r"reversehttp_gateway\.([EW]\d{3})", source)))
    assert ids, "no check ids found in checks.py"
    text = SETTINGS_DOC.read_text()
    missing = [i for i in ids if f"`reversehttp_gateway.{i}`" not in text]
    assert not missing, f"Add these ids to 'System checks' in docs/settings.md: {missing}"


def test_nav_pages_exist_and_every_page_is_in_the_nav() -> None:
    pages = nav_pages()
    assert "index.md" in pages and "settings.md" in pages
    assert len(pages) == len(set(pages)), "a page appears twice in the nav"
    absent = [page for page in pages if not (DOCS / page).is_file()]
    assert not absent, f"mkdocs.yml names pages that do not exist: {absent}"
    orphans = sorted(p.name for p in DOCS.glob("*.md") if p.name not in pages)
    assert not orphans, f"Add these pages to the nav in mkdocs.yml: {orphans}"
