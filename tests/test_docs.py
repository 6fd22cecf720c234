"""The docs pages: excerpts identical to the example DAGs, a page per operator, no machine's paths."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from cometly_provider.get_provider_info import get_provider_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import doc_excerpts  # noqa: E402

PAGES = sorted((ROOT / "docs").rglob("*.md"))
# Paths that only exist on one machine: interpreters, home and work directories, scratch venvs.
MACHINE_PATH = re.compile(
    r"(?<![\w.])/(?:work|root|home|Users|opt)/|/tmp/[\w.-]*venv|(?<![\w.])/\S*/bin/python"
)


def test_excerpts_match_the_example_dags() -> None:
    stale = doc_excerpts.stale_pages(PAGES)
    assert stale == [], "run: python scripts/doc_excerpts.py"
    excerpts = [m for page in PAGES for m in doc_excerpts.EXCERPT.finditer(page.read_text())]
    assert len(excerpts) == 5
    assert all(m["code"].strip() for m in excerpts)


def test_every_operator_and_the_connection_have_a_page() -> None:
    info = get_provider_info()
    classes = {"CreateEventExportOperator", "DownloadExportOperator", "TrackEventOperator"}
    classes.add("ExportSensor")
    pages = {page: page.read_text() for page in (ROOT / "docs" / "operators").glob("*.md")}
    for name in classes:
        assert [p for p, text in pages.items() if text.startswith(f"# {name}")], name
    connection = (ROOT / "docs" / "connection.md").read_text()
    for field in info["connection-types"][0]["conn-fields"]:
        assert f"`{field}`" in connection, field


@pytest.mark.parametrize(
    "path", [*PAGES, ROOT / "README.md", *sorted((ROOT / "bench").glob("*.py"))], ids=str
)
def test_no_machine_paths(path: Path) -> None:
    assert MACHINE_PATH.findall(path.read_text()) == []


def test_relative_links_between_pages_resolve() -> None:
    for page in PAGES:
        for link in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not link.startswith(("http://", "https://")):
                assert (page.parent / link).exists(), f"{page.relative_to(ROOT)} -> {link}"
