"""Keep the docs' example-DAG excerpts identical to the example DAGs (like Sphinx's literalinclude).

In a docs page, an excerpt is a marker line followed by a fenced code block::

    <!-- excerpt: example_dags/cometly_daily_export.py howto_create_export -->
    ```python
    ...
    ```

and the DAG file marks the same lines with ``# [START howto_create_export]`` /
``# [END howto_create_export]``. ``python scripts/doc_excerpts.py`` rewrites every excerpt from its
source; ``--check`` only reports the stale ones (tests/test_docs.py runs that).
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXCERPT = re.compile(r"<!-- excerpt: (?P<path>\S+) (?P<name>\S+) -->\n```python\n(?P<code>.*?)```", re.S)


def snippet(path: str, name: str) -> str:
    source = (ROOT / path).read_text()
    match = re.search(rf"# \[START {name}\]\n(.*?)\n[ \t]*# \[END {name}\]", source, re.S)
    if match is None:
        raise ValueError(f"{path} has no [START {name}] ... [END {name}] block")
    return textwrap.dedent(match.group(1)) + "\n"


def synced(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        head = match.group(0)[: match.start("code") - match.start(0)]
        return f"{head}{snippet(match['path'], match['name'])}```"

    return EXCERPT.sub(replace, text)


def stale_pages(pages: list[Path]) -> list[Path]:
    return [page for page in pages if synced(page.read_text()) != page.read_text()]


def main(argv: list[str]) -> int:
    pages = sorted((ROOT / "docs").rglob("*.md"))
    if "--check" in argv:
        stale = stale_pages(pages)
        for page in stale:
            print(f"{page.relative_to(ROOT)}: excerpts differ from the example DAGs", file=sys.stderr)
        return 1 if stale else 0
    for page in pages:
        page.write_text(synced(page.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
