"""Fixtures of the reliability suite: a simulator with a scaled window (``bucket`` is in tests/conftest.py).

The invariant checkers are plain functions in :mod:`tests.reliability.invariants`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests import event_exports as support


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cometly_default`` -> a simulator with a 1.5 s window and short export timings, fast retries."""
    return support.configure(cometly_simulator, monkeypatch)
