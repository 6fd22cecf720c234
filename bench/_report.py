"""What every benchmark writes: its section of docs/benchmarks.md, and the machine it ran on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def measured_on() -> str:
    """E.g. ``Measured 2026-11-22 on Linux 6.1, 2 CPUs, Python 3.11.7``."""
    return (
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d} on {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


def write_section(title: str, section: str) -> None:
    """Replace the ``## {title}`` section of docs/benchmarks.md (or append it)."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text.rstrip("\n") + "\n")
