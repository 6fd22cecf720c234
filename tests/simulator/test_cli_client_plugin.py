"""The CLI, the subprocess client (spawn_simulator, SimulatorClient), start helpers, the pytest fixture."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests

from cometly_provider.testing import (
    CometlySimulator,
    SimulatorClient,
    SimulatorConfig,
    SimulatorError,
    run_simulator,
    spawn_simulator,
)

if TYPE_CHECKING:
    from pathlib import Path

MODULE = "cometly_provider.testing.simulator"
EVENT = {"event_name": "purchase", "email": "customer@example.com"}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Accept": "application/json"}


# --- CLI -------------------------------------------------------------------------------------------


def test_help_documents_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", MODULE, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    for option in [
        "--host",
        "--port",
        "--api-key",
        "--inactive-api-key",
        "--window-seconds",
        "--rate-limit",
        "--no-rate-limiting",
        "--queued-seconds",
        "--processing-seconds",
        "--export-outcome",
        "--export-failure-message",
        "--export-rows",
        "--export-rows-for",
        "--row-padding-bytes",
        "--gzip-level",
        "--gzip-workers",
        "--seed",
        "--url-ttl-seconds",
        "--export-id-start",
        "--work-dir",
        "--access-log",
        "--config-json",
    ]:
        assert option in result.stdout, option


def test_bad_option_values_fail_with_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", MODULE, "--gzip-level", "12"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "gzip_level" in result.stderr


def test_cli_serves_in_the_foreground_and_never_prints_the_key(tmp_path: Path) -> None:
    key = "cli-secret-key-4242"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            MODULE,
            "--port",
            "0",
            "--api-key",
            key,
            "--export-rows",
            "7",
            "--queued-seconds",
            "0",
            "--processing-seconds",
            "0",
            "--access-log",
            "--work-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"Cometly simulator listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        base = match.group(1) + "/public-api/v1"
        assert int(match.group(2)) > 0
        assert (
            requests.post(f"{base}/events/track", json=EVENT, headers=_auth(key), timeout=5).status_code
            == 202
        )
        assert requests.post(f"{base}/events/track", json=EVENT, timeout=5).status_code == 401
        export_id = requests.post(
            f"{base}/events/exports", json={"date": "2024-01-15"}, headers=_auth(key), timeout=5
        ).json()["export_id"]
        time.sleep(0.2)
        status = requests.get(f"{base}/events/exports/{export_id}", headers=_auth(key), timeout=5).json()
        assert status["status"] == "completed"
        assert requests.get(status["download_url"], timeout=5).status_code == 200
        assert os.listdir(tmp_path)  # generated into --work-dir
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert key not in line + stdout + stderr
    assert "X-Amz-Signature" not in stderr  # the access log drops query strings
    assert "POST /public-api/v1/events/track 202" in stderr
    assert "POST /public-api/v1/events/track 401" in stderr
    assert os.listdir(tmp_path) == []  # generated files removed on shutdown


def test_cli_config_json_and_explicit_options_override_it() -> None:
    from cometly_provider.testing.simulator import config_from_args

    config = config_from_args(
        [
            "--config-json",
            '{"export_rows": 5, "seed": 3, "window_seconds": 2.0}',
            "--seed",
            "9",
            "--rate-limit",
            "track=7",
        ]
    )
    assert config.export_rows == 5
    assert config.seed == 9
    assert config.window_seconds == 2.0
    assert config.rate_limits["track"] == 7
    assert config.rate_limits["export_create"] == 5


# --- subprocess client -----------------------------------------------------------------------------


def test_spawn_simulator_and_client_mirror_the_handle() -> None:
    with spawn_simulator(
        api_key="spawned-key", export_rows=4, queued_seconds=0, processing_seconds=0
    ) as client:
        assert isinstance(client, SimulatorClient)
        assert client.health()
        assert client.api_key == "spawned-key"
        assert client.api_base == client.base_url + "/public-api/v1"
        assert client.pid is not None
        with open(f"/proc/{client.pid}/status") as status:
            assert "VmHWM" in status.read()
        track = f"{client.api_base}/events/track"
        for _ in range(2):
            requests.post(
                track, json={**EVENT, "idempotency_key": "k"}, headers=_auth("spawned-key"), timeout=5
            )
        assert client.events == [{**EVENT, "idempotency_key": "k"}]
        assert client.duplicates == 1
        assert [r.status for r in client.requests_for("track")] == [202, 202]
        assert client.requests[0].header("authorization") == "Bearer spawned-key"
        assert client.status_counts("track") == {202: 2}

        rule = client.inject("track", "status", code=503, times=None)
        assert rule.kind == "status"
        assert requests.post(track, json=EVENT, headers=_auth("spawned-key"), timeout=5).status_code == 503
        assert client.faults[0].applied == 1
        client.clear_faults()
        client.inject("track", "reset")
        with pytest.raises(requests.ConnectionError):
            requests.post(track, json=EVENT, headers=_auth("spawned-key"), timeout=5)
        with pytest.raises(SimulatorError):
            client.inject("track", "cut", at_byte=1)

        client.next_exports_outcome("failed", message="nope")
        export = requests.post(
            f"{client.api_base}/events/exports",
            json={"date": "2024-01-15"},
            headers=_auth("spawned-key"),
            timeout=5,
        ).json()
        time.sleep(0.1)
        assert client.exports[export["export_id"]].status == "failed"
        assert client.exports[export["export_id"]].message == "nope"

        client.update_config(export_rows=3, window_seconds=1.5)
        assert client.config.export_rows == 3
        assert client.config.window_seconds == 1.5
        with pytest.raises(SimulatorError):
            client.update_config(no_such_option=1)
        client.reset()
        assert client.events == []
        assert client.requests == []
        assert client.exports == {}
        process = client.process
    assert process is not None
    assert process.poll() is not None


def test_admin_http_api_is_plain_json(sim: CometlySimulator) -> None:
    base = sim.base_url + "/_simulator"
    assert requests.get(f"{base}/health", timeout=5).json()["status"] == "ok"
    fault = requests.post(
        f"{base}/faults", json={"endpoint": "track", "kind": "status", "code": 500}, timeout=5
    )
    assert fault.status_code == 201
    assert fault.json()["fault"]["kind"] == "status"
    assert (
        requests.post(f"{base}/faults", json={"endpoint": "track", "kind": "nope"}, timeout=5).status_code
        == 400
    )
    assert requests.delete(f"{base}/faults", timeout=5).status_code == 200
    assert requests.patch(f"{base}/config", json={"export_rows": 9}, timeout=5).json()["export_rows"] == 9
    assert sim.config.export_rows == 9
    assert requests.patch(f"{base}/config", json={"gzip_level": 99}, timeout=5).status_code == 400
    assert requests.post(f"{base}/reset", timeout=5).status_code == 200
    assert requests.get(f"{base}/nope", timeout=5).status_code == 404
    assert sim.requests == []  # admin requests are not recorded


# --- start helpers ---------------------------------------------------------------------------------


def test_run_simulator_binds_loopback_and_closes_the_socket_on_exit() -> None:
    with run_simulator() as sim:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.base_url)
        assert sim.api_base == sim.base_url + "/public-api/v1"
        assert sim.api_key == "test-api-key"
        port = sim.port
        session = requests.Session()  # an idle keep-alive connection must not block shutdown
        assert session.post(sim.api_base + "/events/track", json=EVENT, headers=_auth(sim.api_key)).ok
        workdir = sim._workdir
        assert workdir is not None
        assert os.path.isdir(workdir)
        started = time.monotonic()
    assert time.monotonic() - started < 2
    assert not os.path.exists(workdir)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_handle_start_stop_and_config_object() -> None:
    config = SimulatorConfig(api_key="k", export_rows=1)
    sim = CometlySimulator(config)
    assert not sim.running
    sim.start()
    try:
        assert sim.running
        assert sim.config is config
        assert requests.post(sim.api_base + "/events/track", json=EVENT, headers=_auth("k"), timeout=5).ok
    finally:
        sim.stop()
    assert not sim.running
    sim.stop()  # idempotent


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown simulator option"):
        SimulatorConfig().update(export_rowz=1)
    with pytest.raises(ValueError, match="export_outcome"):
        CometlySimulator(export_outcome="exploded")
    with pytest.raises(TypeError):
        CometlySimulator(window_seconds="fast")
    with pytest.raises(ValueError, match="rate_limits"):
        CometlySimulator(rate_limits={"trak": 1})


# --- pytest plugin ---------------------------------------------------------------------------------


@pytest.fixture
def cometly_simulator_config() -> dict[str, Any]:
    return {"export_rows": 11, "seed": 5}


def test_fixture_yields_a_running_simulator(cometly_simulator: CometlySimulator) -> None:
    assert cometly_simulator.running
    assert cometly_simulator.config.export_rows == 11  # from the overridden config fixture
    response = requests.post(
        cometly_simulator.api_base + "/events/track",
        json=EVENT,
        headers=_auth(cometly_simulator.api_key),
        timeout=5,
    )
    assert response.status_code == 202


@pytest.mark.cometly_simulator(export_rows=12, window_seconds=2.0)
def test_marker_configures_the_fixture(cometly_simulator: CometlySimulator) -> None:
    assert cometly_simulator.config.export_rows == 12
    assert cometly_simulator.config.window_seconds == 2.0
    assert cometly_simulator.config.seed == 5  # the config fixture still applies where the marker is silent


def test_plugin_is_import_light() -> None:
    code = (
        "import sys, cometly_provider.testing.pytest_plugin, cometly_provider.testing; "
        "bad = [m for m in ('airflow', 'requests') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_plugin_is_registered_for_users(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import pytest, urllib.request

            @pytest.mark.cometly_simulator(export_rows=3)
            def test_it(cometly_simulator):
                assert cometly_simulator.config.export_rows == 3
                with urllib.request.urlopen(cometly_simulator.base_url + "/_simulator/health") as r:
                    assert r.status == 200
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--strict-markers", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
