"""pytest plugin (entry point ``cometly``): the ``cometly_simulator`` fixture.

Loaded by every pytest run once the provider is installed, so it stays import-light: it and the
simulator import only the standard library (and pytest), never Airflow.

Configure the simulator with ``cometly_simulator`` markers (on a test, class or module: the
closest wins per option), or by overriding the ``cometly_simulator_config`` fixture (markers win)::

    @pytest.mark.cometly_simulator(window_seconds=1.0, export_rows=50)
    def test_something(cometly_simulator, monkeypatch):
        conn = {"conn_type": "cometly", "host": cometly_simulator.base_url,
                "password": cometly_simulator.api_key}
        monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", json.dumps(conn))
        ...  # run the DAG or operator; then assert on cometly_simulator.events
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cometly_provider.testing.simulator import CometlySimulator


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cometly_simulator(**options): SimulatorConfig options for the cometly_simulator fixture",
    )


@pytest.fixture
def cometly_simulator_config() -> dict[str, Any]:
    """SimulatorConfig options for ``cometly_simulator``; override to configure a module or package."""
    return {}


@pytest.fixture
def cometly_simulator(
    request: pytest.FixtureRequest, cometly_simulator_config: dict[str, Any]
) -> Iterator[CometlySimulator]:
    """A fresh Cometly simulator on a free 127.0.0.1 port, stopped after the test."""
    from cometly_provider.testing.simulator import run_simulator

    options = dict(cometly_simulator_config)
    # Markers merge from the farthest (module / class) to the closest (the test itself).
    for marker in reversed(list(request.node.iter_markers("cometly_simulator"))):
        if marker.args:
            raise pytest.UsageError("@pytest.mark.cometly_simulator takes keyword options only")
        options.update(marker.kwargs)
    with run_simulator(**options) as sim:
        yield sim
