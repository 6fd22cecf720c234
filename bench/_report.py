"""What the benchmarks share: printing and writing their results, and the simulator's windows."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
from collections.abc import Mapping, Sequence
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
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text)  # blank line before the next
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text.rstrip("\n") + "\n")


def print_results(rows: Sequence[tuple[str, str]], checks: Mapping[str, bool]) -> bool:
    """Print the figures and the pass / fail checks; True when every check passed."""
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print()
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    return all(checks.values())


def results_markdown(rows: Sequence[tuple[str, str]], checks: Mapping[str, bool]) -> str:
    """The figures as a two-column table, then one pass / FAIL line per check."""
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    verdict = "\n".join(f"- {'pass' if ok else 'FAIL'}: {name}" for name, ok in checks.items())
    return f"| metric | value |\n|---|---|\n{table}\n\n{verdict}\n"


def fixed_windows(timestamps: list[float], window: float) -> list[tuple[float, int]]:
    """(start, count) of the simulator's fixed windows, rebuilt from request arrival times.

    A window opens with the first request after the previous one ended, as in the simulator.
    """
    out: list[tuple[float, int]] = []
    for ts in sorted(timestamps):
        if out and ts < out[-1][0] + window:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((ts, 1))
    return out


def command_line(script: str, argv: Sequence[str]) -> str:
    """How to re-run a benchmark, from the repository root, with no machine's paths in it."""
    return shlex.join(["python", f"bench/{script}", *argv])
