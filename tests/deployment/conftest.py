"""The ``deployment`` fixture: one real local Airflow deployment per test session.

``airflow api-server``, ``airflow scheduler`` (LocalExecutor, 8 parallel task processes),
``airflow dag-processor`` and ``airflow triggerer`` on loopback ports in a temporary
``AIRFLOW_HOME`` (SQLite), beside the Cometly simulator and a moto S3 server; see
:class:`tests.deployment.harness.Deployment` for the client API. Every test using it is marked
``deployment`` (skip them with ``-m "not deployment"``). When such a test fails, the tail of each
component's log and of the latest task logs is attached to its report.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deployment.harness import Deployment, running_deployment

_ACTIVE: list[Deployment] = []
_KEPT: list[Path] = []


@pytest.fixture(scope="session")
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    # Not under pytest's basetemp, which keeps only the last three sessions of every pytest run on
    # the machine: when a test failed, the whole AIRFLOW_HOME (logs, DB) stays for a post-mortem.
    home = Path(tempfile.mkdtemp(prefix="cometly-deployment-"))
    failed_before = request.session.testsfailed
    with running_deployment(home) as running:
        _ACTIVE.append(running)
        try:
            yield running
        finally:
            _ACTIVE.remove(running)
    if request.session.testsfailed == failed_before:
        shutil.rmtree(home, ignore_errors=True)
    else:
        _KEPT.append(home)


@pytest.fixture(autouse=True)
def _restore_simulator(request: pytest.FixtureRequest) -> Iterator[None]:
    """Scenarios change the shared simulator (faults, timings, limits): undo that after each test."""
    if "deployment" not in request.fixturenames:
        yield
        return
    sim = request.getfixturevalue("deployment").simulator
    saved = sim.config.to_dict()
    yield
    sim.clear_faults()
    sim.update_config(**{k: v for k, v in saved.items() if k not in ("host", "port", "work_dir")})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for home in _KEPT:
        terminalreporter.write_line(f"deployment AIRFLOW_HOME (DB and logs) kept for a post-mortem: {home}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "deployment" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.deployment)
            # The first one also pays for starting the deployment (a minute or two on busy cores).
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(600))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and _ACTIVE and "deployment" in getattr(item, "fixturenames", ()):
        running = _ACTIVE[-1]
        report.sections.append(("deployment", f"AIRFLOW_HOME {running.home}; logs in {running.logs_dir}"))
        for component in running.component_pids():
            report.sections.append((f"deployment {component} log (tail)", running.log_tail(component)))
        for path in running.task_log_files()[-4:]:
            text = "\n".join(path.read_text(errors="replace").splitlines()[-40:])
            report.sections.append((f"task log {path.relative_to(running.logs_dir)} (tail)", text))
    return report
