"""The connection as a user fills it in: form fields, host/port forms, and the Test button's answers.

Everything Test does goes over real sockets: the simulator, a closed port, a server that accepts
connections and never answers, and a plain-HTTP server reached as https://.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.get_provider_info import get_provider_info
from cometly_provider.hooks.cometly import TEST_CONNECTION_TIMEOUT, CometlyHook
from cometly_provider.hooks.connection_fields import EXTRA_FIELDS, provider_info_conn_fields
from tests.conftest import cometly_conn_uri, free_port

# A policy that would take minutes to give up: Test must not use it.
SLOW_RETRIES = {"max_attempts": 10, "retry_min_wait": 5, "connect_timeout": 30, "timeout": 30}


def _set_conn(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", value)


def _timed_test() -> tuple[bool, str, float]:
    started = time.monotonic()
    ok, message = CometlyHook().test_connection()
    return ok, message, time.monotonic() - started


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


# --- the form --------------------------------------------------------------------------------------


def test_every_documented_extra_is_a_typed_labelled_field() -> None:
    info = get_provider_info()["connection-types"][0]
    fields = info["conn-fields"]
    assert list(fields) == [f.name for f in EXTRA_FIELDS]
    documented = {"timeout", "connect_timeout", "max_attempts", "retry_min_wait", "retry_max_wait"}
    documented |= {"rate_limits", "rate_limit_window_seconds", "rate_limiting", "timezone"}
    assert documented <= set(fields)
    for name, field in fields.items():
        assert field["label"], name
        assert field["description"], name
        assert field["schema"]["type"][1] == "null", name  # every extra may stay empty
    assert fields["max_attempts"]["schema"]["type"][0] == "integer"
    assert fields["rate_limiting"]["schema"] == {"type": ["boolean", "null"], "default": True}
    # Validates against the provider.yaml schema of the installed Airflow, where it has conn-fields.
    from importlib.resources import files

    import jsonschema

    schema_file = files("airflow") / "provider.yaml.schema.json"
    if schema_file.is_file():
        schema = json.loads(schema_file.read_text())
        if "conn-fields" in json.dumps(schema):
            conn_schema = schema["properties"]["connection-types"]["items"]
            jsonschema.validate(info, conn_schema)


def test_widgets_before_airflow_3_2_come_from_the_same_list() -> None:
    pytest.importorskip("wtforms")
    widgets = CometlyHook.get_connection_form_widgets()
    assert list(widgets) == list(provider_info_conn_fields())
    assert [w.args[0] for w in widgets.values()] == [f.label for f in EXTRA_FIELDS]


def test_form_values_are_read_like_json_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the UI stores: emptied fields as null, numbers from text fields (Airflow < 3.2) as text.
    extra = {f.name: None for f in EXTRA_FIELDS} | {"timeout": "12", "rate_limits": '{"track": 7}'}
    _set_conn(monkeypatch, json.dumps({"conn_type": "cometly", "password": "k", "extra": extra}))
    hook = CometlyHook()
    assert hook.timeout == (10.0, 12.0)
    assert hook.retry_policy.max_attempts == 5
    assert hook.rate_limit_policy.limit_for("track") == 7
    assert hook.rate_limit_policy.enabled is True

    extra["rate_limits"] = "{track: 7"
    _set_conn(monkeypatch, json.dumps({"conn_type": "cometly", "password": "k", "extra": extra}))
    with pytest.raises(CometlyInputError, match=r"rate_limits='\{track: 7' is not JSON"):
        CometlyHook().rate_limit_policy  # noqa: B018


# --- host and port ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connection", "expected"),
    [
        ("cometly://:KEY@127.0.0.1:18765", "https://127.0.0.1:18765"),
        ("cometly://http://:KEY@127.0.0.1:18765", "http://127.0.0.1:18765"),
        ('{"conn_type": "cometly", "host": "http://h", "port": 8080}', "http://h:8080"),
        ('{"conn_type": "cometly", "host": "http://h:81", "port": 8080}', "http://h:81"),
        ('{"conn_type": "cometly", "host": "eu.cometly.test", "port": 0}', "https://eu.cometly.test"),
        ('{"conn_type": "cometly", "host": "https://h/public-api/v1/"}', "https://h"),
        ('{"conn_type": "cometly", "port": 443}', "https://app.cometly.com"),
    ],
)
def test_host_keeps_its_port(monkeypatch: pytest.MonkeyPatch, connection: str, expected: str) -> None:
    _set_conn(monkeypatch, connection)
    assert CometlyHook().host == expected


def test_uri_form_connection_reaches_the_simulator_on_its_port(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = cometly_simulator
    _set_conn(monkeypatch, f"cometly://http://:{sim.api_key}@127.0.0.1:{sim.port}")
    ok, message = CometlyHook().test_connection()
    assert ok, message
    assert f"http://127.0.0.1:{sim.port}" in message


# --- Test: bounded, and says what to fix -----------------------------------------------------------


def test_refused_port_answers_at_once_without_the_retry_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, cometly_conn_uri(f"http://127.0.0.1:{free_port()}", "k", **SLOW_RETRIES))
    ok, message, took = _timed_test()
    assert not ok
    assert took < 5
    assert message.startswith("Cannot reach Cometly at http://127.0.0.1:")
    assert "ConnectionError" in message
    assert "check the API host and port" in message


def test_host_that_never_answers_reports_within_5_s(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_conn(monkeypatch, cometly_conn_uri(f"http://127.0.0.1:{silent_server}", "k", **SLOW_RETRIES))
    ok, message, took = _timed_test()
    assert not ok
    assert TEST_CONNECTION_TIMEOUT - 0.5 < took < 5  # one bounded attempt, not ten
    assert "ReadTimeout" in message


def test_host_without_scheme_explains_the_assumed_https(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = cometly_simulator  # plain HTTP, reached as https:// because the host has no scheme
    _set_conn(
        monkeypatch,
        json.dumps({"conn_type": "cometly", "host": "127.0.0.1", "port": sim.port, "password": sim.api_key}),
    )
    ok, message, took = _timed_test()
    assert not ok
    assert took < 5
    assert f"Cannot reach Cometly at https://127.0.0.1:{sim.port}" in message
    assert "The host has no scheme, so https:// was assumed" in message
    assert "write http://127.0.0.1" in message


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_is_named_and_never_echoed(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    sim = cometly_simulator
    key = "wrong-key-123" if status == 401 else sim.api_key
    if status == 403:
        sim.inject("export_status", "status", code=403)
    _set_conn(monkeypatch, cometly_conn_uri(sim.base_url, key, **SLOW_RETRIES))
    ok, message, took = _timed_test()
    assert not ok
    assert took < 5
    assert f"rejected the API key (HTTP {status})" in message
    assert "API key field" in message
    assert "wrong-key-123" not in message
    assert sim.exports == {}


def test_missing_key_is_reported_before_any_request(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_conn(monkeypatch, json.dumps({"conn_type": "cometly", "host": cometly_simulator.base_url}))
    ok, message = CometlyHook().test_connection()
    assert not ok
    assert "has no API key" in message
    assert cometly_simulator.requests == []
