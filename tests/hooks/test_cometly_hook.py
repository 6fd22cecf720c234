"""CometlyHook over real sockets against the simulator: auth, errors, retries, rate limits, secrets."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest
import requests

from cometly_provider import __version__
from cometly_provider.exceptions import (
    CometlyAuthError,
    CometlyConnectionError,
    CometlyDownloadExpiredError,
    CometlyInputError,
    CometlyNotFoundError,
    CometlyRateLimitError,
    CometlyServerError,
    CometlyValidationError,
)
from cometly_provider.hooks.cometly import DEFAULT_HOST, CometlyHook, error_for_status
from cometly_provider.utils.redaction import redact_url
from tests.conftest import cometly_conn_uri, free_port

PURCHASE = {"event_name": "purchase", "email": "jane@example.com", "amount": 99.99}


def _requests(sim: Any, endpoint: str) -> list[Any]:
    return [r for r in sim.requests if r.endpoint == endpoint]


def _hook(**kwargs: Any) -> CometlyHook:
    kwargs.setdefault("retry_min_wait", 0.05)
    return CometlyHook(**kwargs)


# --- connection -----------------------------------------------------------------------------------


def test_connection_defaults_and_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT",
        json.dumps(
            {"conn_type": "cometly", "password": "k", "extra": {"timeout": 7, "rate_limits": {"track": 9}}}
        ),
    )
    hook = CometlyHook()
    assert hook.host == DEFAULT_HOST
    assert hook.api_base == "https://app.cometly.com/public-api/v1"
    assert hook.timeout == (7.0, 7.0)
    assert hook.rate_limit_policy.limit_for("track") == 9
    assert hook.rate_limit_policy.limit_for("export_create") == 5


def test_bad_rate_limit_extra_names_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT",
        json.dumps({"conn_type": "cometly", "password": "k", "extra": {"rate_limits": {"trak": 9}}}),
    )
    with pytest.raises(CometlyInputError, match="trak"):
        _ = CometlyHook().rate_limit_policy


def test_missing_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", json.dumps({"conn_type": "cometly"}))
    with pytest.raises(CometlyInputError, match="password"):
        CometlyHook().track_event(PURCHASE)


def test_ui_field_behaviour_relabels_password() -> None:
    behaviour = CometlyHook.get_ui_field_behaviour()
    assert behaviour["relabeling"]["password"] == "API key"
    assert {"schema", "login"} <= set(behaviour["hidden_fields"])
    assert "port" not in behaviour["hidden_fields"]  # see connection_fields: Test needs a stored port


def test_error_mapping() -> None:
    assert isinstance(error_for_status(401, "x", "m"), CometlyAuthError)
    assert isinstance(error_for_status(403, "x", "m"), CometlyAuthError)
    assert isinstance(error_for_status(404, "x", "m"), CometlyNotFoundError)
    assert isinstance(error_for_status(422, "x", "m"), CometlyValidationError)
    err = error_for_status(429, "x", "m", retry_after=3)
    assert isinstance(err, CometlyRateLimitError)
    assert err.retry_after == 3
    assert isinstance(error_for_status(502, "x", "m"), CometlyServerError)


def test_redact_url_drops_the_signature() -> None:
    url = "https://b.s3.amazonaws.com/exports/u.ndjson.gz?X-Amz-Signature=abcdef0123456789&X-Amz-Expires=900"
    assert redact_url(url) == "https://b.s3.amazonaws.com/exports/u.ndjson.gz?<redacted>"


# --- over real sockets ----------------------------------------------------------------------------


def test_auth_headers_and_user_agent(cometly_conn: Any) -> None:
    result = _hook().track_event(PURCHASE)
    assert result["status"] == 202
    (request,) = _requests(cometly_conn, "track")
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["authorization"] == f"Bearer {cometly_conn.api_key}"
    assert headers["accept"] == "application/json"
    assert headers["content-type"] == "application/json"
    assert f"airflow-provider-cometly/{__version__}" in headers["user-agent"]
    assert "apache-airflow/3." in headers["user-agent"]


def test_401_raises_auth_error_without_retry(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri(cometly_simulator.base_url, "wrong-key")
    )
    with pytest.raises(CometlyAuthError) as excinfo:
        _hook().track_event({**PURCHASE, "idempotency_key": "k-401"})
    assert excinfo.value.status_code == 401
    assert "wrong-key" not in str(excinfo.value)
    assert len(_requests(cometly_simulator, "track")) == 1


def test_422_raises_validation_error_with_api_message(cometly_conn: Any) -> None:
    with pytest.raises(CometlyValidationError) as excinfo:
        # validate=False lets the bad payload reach the API, as a newer API rule would.
        _hook().track_event({"event_name": "purchase", "email": "a@b.c", "amount": "12,50"}, validate=False)
    assert excinfo.value.status_code == 422
    assert excinfo.value.api_message
    assert "amount" in str(excinfo.value)
    assert len(_requests(cometly_conn, "track")) == 1


def test_429_waits_for_retry_after_then_succeeds(cometly_conn: Any) -> None:
    cometly_conn.inject("track", "status", code=429, retry_after=2, times=1)
    started = time.monotonic()
    result = _hook().track_event({**PURCHASE, "idempotency_key": "k-429"})
    assert time.monotonic() - started >= 2.0
    assert result["status"] == 202
    assert [r.status for r in _requests(cometly_conn, "track")] == [429, 202]
    assert len(cometly_conn.events) == 1


def test_503_twice_then_success_after_three_attempts(cometly_conn: Any) -> None:
    cometly_conn.inject("track", "status", code=503, times=2)
    result = _hook().track_event({**PURCHASE, "idempotency_key": "k-503"})
    assert result["status"] == 202
    assert [r.status for r in _requests(cometly_conn, "track")] == [503, 503, 202]


def test_track_without_idempotency_key_is_not_retried_after_5xx(cometly_conn: Any) -> None:
    cometly_conn.inject("track", "status", code=503, times=1)
    with pytest.raises(CometlyServerError):
        _hook().track_event(PURCHASE)
    assert len(_requests(cometly_conn, "track")) == 1


def test_track_without_idempotency_key_is_retried_after_429(cometly_conn: Any) -> None:
    # A 429 proves the request was not processed, so repeating it cannot double-count.
    cometly_conn.inject("track", "status", code=429, retry_after=1, times=1)
    assert _hook().track_event(PURCHASE)["status"] == 202
    assert len(cometly_conn.events) == 1


def test_connection_reset_is_retried_for_idempotent_requests(cometly_conn: Any) -> None:
    cometly_conn.inject("track", "reset", times=2)
    assert _hook().track_event({**PURCHASE, "idempotency_key": "k-reset"})["status"] == 202
    assert len(cometly_conn.events) == 1


def test_read_timeout_is_retried_and_dedupes(cometly_conn: Any) -> None:
    # The first request is processed but answers too late: the retry carries the same key.
    cometly_conn.inject("track", "delay", seconds=1.5, times=1)
    assert _hook(timeout=0.5).track_event({**PURCHASE, "idempotency_key": "k-slow"})["status"] == 202
    time.sleep(1.2)  # let the slow first request finish on the server
    assert len(cometly_conn.events) == 1


def test_retries_give_up_with_typed_error(cometly_conn: Any) -> None:
    cometly_conn.inject("export_status", "status", code=500, times=None)
    with pytest.raises(CometlyServerError) as excinfo:
        _hook(max_attempts=3).get_event_export(1)
    assert excinfo.value.status_code == 500
    assert len(_requests(cometly_conn, "export_status")) == 3


def test_client_limiter_keeps_a_burst_under_the_server_limit(cometly_conn: Any) -> None:
    cometly_conn.config.window_seconds = 1.0
    export_id = _hook().create_event_export(date="2024-01-15")["export_id"]
    hook = _hook(rate_limit_window=1.0)

    errors: list[BaseException] = []

    def poll() -> None:
        for _ in range(10):
            try:
                hook.get_event_export(export_id)
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

    threads = [threading.Thread(target=poll) for _ in range(5)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    statuses = [r.status for r in _requests(cometly_conn, "export_status")]
    assert len(statuses) == 50
    assert 429 not in statuses
    # 50 calls at 30 per window need a second window.
    assert time.monotonic() - started >= 1.0


def test_limiter_backs_off_when_another_process_spends_the_budget(cometly_conn: Any) -> None:
    cometly_conn.config.window_seconds = 2.0
    export_id = _hook().create_event_export(date="2024-01-15")["export_id"]
    # "Another process" spends most of the Space's 30 status calls behind our back.
    url = f"{cometly_conn.api_base}/events/exports/{export_id}"
    auth = {"Authorization": f"Bearer {cometly_conn.api_key}"}
    for _ in range(28):
        assert requests.get(url, headers=auth, timeout=5).status_code == 200
    hook = _hook(rate_limit_window=2.0)
    for _ in range(6):
        hook.get_event_export(export_id)
    ours = _requests(cometly_conn, "export_status")[29:]
    assert [r.status for r in ours].count(429) <= 1


def test_get_event_export_404(cometly_conn: Any) -> None:
    with pytest.raises(CometlyNotFoundError):
        _hook().get_event_export(987654)


def test_invalid_export_id_rejected_before_request(cometly_conn: Any) -> None:
    with pytest.raises(CometlyInputError, match="export_id"):
        _hook().get_event_export("abc")
    assert cometly_conn.requests == []


def test_create_export_validates_before_request(cometly_conn: Any) -> None:
    with pytest.raises(CometlyInputError, match="attribution_model is required"):
        _hook().create_event_export(date="2024-01-15", sources=["facebook_ads"])
    assert cometly_conn.requests == []


def test_test_connection_good_bad_unreachable(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT",
        cometly_conn_uri(cometly_simulator.base_url, cometly_simulator.api_key),
    )
    ok, message = CometlyHook().test_connection()
    assert ok, message
    assert cometly_simulator.exports == {}  # nothing was created

    monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri(cometly_simulator.base_url, "nope"))
    ok, message = CometlyHook().test_connection()
    assert not ok
    assert "401" in message

    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT",
        cometly_conn_uri(f"http://127.0.0.1:{free_port()}", "k", max_attempts=1),
    )
    ok, message = CometlyHook().test_connection()
    assert not ok
    assert "Cannot reach" in message


def test_unreachable_host_raises_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri(f"http://127.0.0.1:{free_port()}", "k")
    )
    with pytest.raises(CometlyConnectionError):
        _hook(max_attempts=2).get_event_export(1)


def test_download_has_no_auth_header_and_keeps_gzip_bytes(cometly_conn: Any) -> None:
    cometly_conn.config.queued_seconds = 0
    cometly_conn.config.processing_seconds = 0
    hook = _hook()
    export_id = hook.create_event_export(date="2024-01-15")["export_id"]
    export = _wait_completed(hook, export_id)
    with hook.open_download(export["download_url"]) as stream:
        body = b"".join(stream.iter_chunks(65536))
    assert body[:2] == b"\x1f\x8b"  # still gzip: not decoded on the way
    direct = requests.get(export["download_url"], timeout=10)
    assert body == direct.content
    with hook.open_download(export["download_url"], offset=10) as stream:
        assert stream.status_code == 206
        assert b"".join(stream.iter_chunks()) == body[10:]


def test_expired_download_url_raises_typed_error(cometly_conn: Any) -> None:
    cometly_conn.config.queued_seconds = 0
    cometly_conn.config.processing_seconds = 0
    hook = _hook()
    export = _wait_completed(hook, hook.create_event_export(date="2024-01-15")["export_id"])
    cometly_conn.inject("download", "expire", times=1)
    with pytest.raises(CometlyDownloadExpiredError) as excinfo, hook.open_download(export["download_url"]):
        pass
    assert "Signature" not in str(excinfo.value)


def test_api_key_never_in_logs(
    cometly_conn: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # Airflow 3 task logging (structlog) writes to stdout; stdlib records land in caplog.
    caplog.set_level(logging.DEBUG)
    api_key = cometly_conn.api_key
    cometly_conn.inject("track", "status", code=503, times=1)
    hook = _hook()
    hook.track_event({**PURCHASE, "idempotency_key": "k-log"})
    with pytest.raises(CometlyNotFoundError) as not_found:
        hook.get_event_export(424242)
    cometly_conn.update_config(api_key="another-key")  # ours is now rejected: 401
    with pytest.raises(CometlyAuthError) as rejected:
        hook.get_event_export(1)
    out, err = capfd.readouterr()
    logs = caplog.text + out + err
    assert "retrying" in logs
    assert rejected.value.status_code == 401
    for text in (logs, str(not_found.value), str(rejected.value), repr(rejected.value)):
        assert api_key not in text


def _wait_completed(hook: CometlyHook, export_id: int, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export = hook.get_event_export(export_id)
        if export["status"] == "completed":
            return export
        time.sleep(0.1)
    raise AssertionError(f"export {export_id} did not complete")


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("kind", ["events", "contacts"])
def test_a_body_that_is_not_json_is_one_typed_error_on_both_paths(
    cometly_conn: Any, path: str, kind: str
) -> None:
    """The sync and async calls share one response path: a 200 with an HTML body is a CometlyError
    naming the call, not a JSONDecodeError (0.1.0's async path parsed it unguarded)."""
    import asyncio

    from cometly_provider.exceptions import CometlyError

    endpoint = "export_status" if kind == "events" else "contacts_export_status"
    cometly_conn.inject(endpoint, "status", code=200, body="<html>maintenance</html>", times=1)
    hook = CometlyHook()

    def call() -> Any:
        return hook.get_export(kind, 1) if path == "sync" else asyncio.run(hook.aget_export(kind, 1))

    with pytest.raises(
        CometlyError, match=f"GET /{kind}/exports/1 returned HTTP 200 with a body that is not JSON"
    ):
        call()
