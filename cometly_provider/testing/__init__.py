"""Test tooling for Cometly DAGs: a local simulator of the Cometly API (like moto for AWS).

>>> from cometly_provider.testing import run_simulator
>>> with run_simulator(export_rows=100) as sim:
...     ...  # point the Cometly connection at sim.api_base with sim.api_key

In pytest, use the ``cometly_simulator`` fixture (installed with the package). Everything here uses
the standard library only and never imports Airflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cometly_provider.testing._client import SimulatorClient, SimulatorError, spawn_simulator
from cometly_provider.testing._models import (
    DEFAULT_RATE_LIMITS,
    ENDPOINTS,
    EXPORT_OUTCOMES,
    FAULT_KINDS,
    ExportRecord,
    FaultRule,
    RequestRecord,
    SimulatorConfig,
)

if TYPE_CHECKING:
    from cometly_provider.testing.simulator import CometlySimulator, run_simulator

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "ENDPOINTS",
    "EXPORT_OUTCOMES",
    "FAULT_KINDS",
    "CometlySimulator",
    "ExportRecord",
    "FaultRule",
    "RequestRecord",
    "SimulatorClient",
    "SimulatorConfig",
    "SimulatorError",
    "run_simulator",
    "spawn_simulator",
]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m cometly_provider.testing.simulator`` does not find its own module
    # already imported by this package (runpy warns about that).
    if name in ("CometlySimulator", "run_simulator"):
        from cometly_provider.testing import simulator

        return getattr(simulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
