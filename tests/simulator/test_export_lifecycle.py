"""Export life cycle (README.md "GET /events/exports/{id}") and the presigned S3-style download."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

if TYPE_CHECKING:
    from tests.simulator.conftest import Api

DAY = {"date": "2024-01-15"}


def _parse(ts: str) -> dt.datetime:
    assert ts.endswith("Z"), ts
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _completed(api: Api, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return api.wait(api.export_id(body or DAY))


# --- life cycle --------------------------------------------------------------------------------


@pytest.mark.cometly_simulator(queued_seconds=0.4, processing_seconds=0.4)
def test_queued_then_processing_then_completed(api: Api) -> None:
    created = api.create_export(DAY).json()
    assert created == {"export_id": 1, "status": "queued"}
    queued = api.status(1).json()
    assert queued["status"] == "queued"
    assert queued["export_id"] == 1
    assert isinstance(queued["message"], str)
    _parse(queued["created_at"])
    time.sleep(0.45)
    processing = api.status(1).json()
    assert processing["status"] == "processing"
    assert isinstance(processing["message"], str)
    assert "download_url" not in processing
    time.sleep(0.45)
    completed = api.status(1).json()
    assert completed["status"] == "completed"
    assert set(completed) == {
        "export_id",
        "status",
        "created_at",
        "completed_at",
        "download_url",
        "expires_at",
    }
    assert _parse(completed["completed_at"]) >= _parse(completed["created_at"])
    assert [r.status for r in api.sim.requests_for("export_status")] == [200, 200, 200]


def test_completed_status_gives_a_fresh_url_every_poll(api: Api) -> None:
    first = _completed(api)
    second = api.status(first["export_id"]).json()
    assert second["download_url"] != first["download_url"]
    assert second["completed_at"] == first["completed_at"]
    for body in (first, second):
        expires = _parse(body["expires_at"])
        # README.md: valid 15 minutes from the time of *this* request.
        remaining = (expires - dt.datetime.now(dt.UTC)).total_seconds()
        assert 880 <= remaining <= 902
        assert api.download(body["download_url"]).status_code == 200


def test_download_url_looks_like_a_presigned_s3_url(api: Api) -> None:
    url = _completed(api)["download_url"]
    parts = urlsplit(url)
    assert parts.path.startswith("/_s3/exports/")
    assert parts.path.endswith(".ndjson.gz")
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["900"] or query["X-Amz-Expires"] == ["901"]
    assert {"X-Amz-Date", "X-Amz-Signature", "X-Amz-Credential"} <= set(query)


@pytest.mark.cometly_simulator(url_ttl_seconds=1)
def test_url_expires_with_403_and_polling_renews_it(api: Api) -> None:
    status = _completed(api)
    expires = _parse(status["expires_at"])
    time.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds()) + 0.05)
    expired = api.download(status["download_url"])
    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code>" in expired.text
    assert "<Message>Request has expired</Message>" in expired.text
    api.sim.config.url_ttl_seconds = 900
    renewed = api.status(status["export_id"]).json()
    assert api.download(renewed["download_url"]).status_code == 200


def test_tampered_urls_are_403(api: Api) -> None:
    url = _completed(api)["download_url"]
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    other_signature = ("0" if signature[0] != "0" else "1") + signature[1:]
    tampered = [
        url.replace(signature, other_signature),
        url.split("?")[0],  # no query string at all
        url.replace("X-Amz-Expires=90", "X-Amz-Expires=99"),  # stretching the expiry breaks the signature
        url.replace(urlsplit(url).path, "/_s3/exports/00000000-0000-4000-8000-000000000000.ndjson.gz"),
    ]
    for bad in tampered:
        response = api.download(bad)
        assert response.status_code == 403, bad
        assert "<Error><Code>" in response.text


def test_download_needs_no_auth_and_serves_gzip_with_s3_headers(api: Api) -> None:
    url = _completed(api)["download_url"]
    response = requests.get(url, timeout=10)  # no Authorization header at all
    assert response.status_code == 200
    assert response.headers["Content-Type"] in ("application/gzip", "application/x-ndjson")
    assert "Content-Encoding" not in response.headers  # the gzip bytes arrive as stored
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{hashlib.md5(response.content).hexdigest()}"'
    assert len(gzip.decompress(response.content).splitlines()) == 300


def test_range_requests(api: Api) -> None:
    url = _completed(api)["download_url"]
    whole = api.download(url).content
    size = len(whole)
    cases = {
        "bytes=0-9": (0, 9),
        "bytes=10-19": (10, 19),
        f"bytes=100-{size + 50}": (100, size - 1),  # end clipped to the object
        "bytes=100-": (100, size - 1),
        "bytes=-25": (size - 25, size - 1),
    }
    for header, (start, end) in cases.items():
        response = api.download(url, Range=header)
        assert response.status_code == 206, header
        assert response.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert response.headers["Content-Length"] == str(end - start + 1)
        assert response.content == whole[start : end + 1]
    unsatisfiable = api.download(url, Range=f"bytes={size}-")
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{size}"
    resumed = whole[:1000] + api.download(url, Range="bytes=1000-").content
    assert resumed == whole


def test_head_request_on_download(api: Api) -> None:
    url = _completed(api)["download_url"]
    response = requests.head(url, timeout=10)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) > 0


# --- outcomes ----------------------------------------------------------------------------------


@pytest.mark.cometly_simulator(export_outcome="failed")
def test_failed_outcome(api: Api) -> None:
    status = api.wait(api.export_id(DAY), until="failed")
    assert set(status) == {"export_id", "status", "created_at", "message"}
    assert status["message"]


def test_next_exports_outcome_overrides_then_falls_back(api: Api) -> None:
    api.sim.next_exports_outcome("failed", count=2, message="Export failed: warehouse timeout.")
    first, second, third = (api.export_id(DAY) for _ in range(3))
    assert api.wait(first, until="failed")["message"] == "Export failed: warehouse timeout."
    assert api.wait(second, until="failed")["message"] == "Export failed: warehouse timeout."
    assert api.wait(third)["status"] == "completed"
    assert api.sim.exports[first].outcome == "failed"


@pytest.mark.cometly_simulator(export_outcome="stuck")
def test_stuck_export_stays_processing(api: Api) -> None:
    export_id = api.export_id(DAY)
    time.sleep(0.5)  # several times queued_seconds + processing_seconds
    for _ in range(3):
        body = api.status(export_id).json()
        assert body["status"] == "processing"
        assert "download_url" not in body
    api.sim.next_exports_outcome("stuck")
    stuck = api.export_id(DAY)
    api.sim.config.export_outcome = "completed"
    assert api.wait(api.export_id(DAY))["status"] == "completed"
    assert api.status(stuck).json()["status"] in ("queued", "processing")


def test_export_record_inspection(api: Api) -> None:
    body = {"date": "2024-01-15", "event_names": ["purchase"], "fields": ["amount"]}
    status = api.wait(api.export_id(body))
    record = api.sim.exports[status["export_id"]]
    assert record.status == "completed"
    assert record.params["event_names"] == ["purchase"]
    assert record.params["query_mode"] == "profile"  # the documented default
    assert record.rows == 300
    assert record.lines == 300
    content = api.download(status["download_url"]).content
    assert record.size == len(content)
    assert record.etag == f'"{hashlib.md5(content).hexdigest()}"'


def test_identical_exports_share_one_file(api: Api) -> None:
    first, second = _completed(api), _completed(api)
    assert first["export_id"] != second["export_id"]
    assert urlsplit(first["download_url"]).path != urlsplit(second["download_url"]).path  # one key each
    a, b = api.download(first["download_url"]), api.download(second["download_url"])
    assert a.content == b.content
    assert a.headers["ETag"] == b.headers["ETag"]


@pytest.mark.cometly_simulator(export_rows=200_000, queued_seconds=0, processing_seconds=0)
def test_completed_only_once_the_file_is_written(api: Api) -> None:
    status = api.wait(api.export_id({"date": "2024-01-15", "fields": ["event_name", "amount"]}))
    response = api.download(status["download_url"])
    assert len(gzip.decompress(response.content).splitlines()) == 200_000


def test_reset_forgets_exports_and_restarts_ids(api: Api) -> None:
    status = _completed(api)
    api.sim.reset()
    assert api.sim.exports == {}
    assert api.status(status["export_id"]).status_code == 404
    assert api.download(status["download_url"]).status_code == 404
    assert api.export_id(DAY) == 1
