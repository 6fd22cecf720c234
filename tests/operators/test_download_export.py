"""DownloadEventExportOperator over real sockets: Cometly simulator -> moto S3 / GCS emulator / local file.

Exports bigger than a part (5 MiB) come from the simulator's ``row_padding_bytes`` (22,000 rows with
600 padding bytes: ~12.8 MB of gzip), so the multipart path, cuts and resumes are exercised for real.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pendulum
import pytest
import requests

from cometly_provider.exceptions import (
    CometlyDownloadError,
    CometlyDownloadExpiredError,
    CometlyDownloadIntegrityError,
    CometlyExportFailedError,
    CometlyInputError,
    CometlyTaskKilled,
)
from cometly_provider.exports import ExportRef, completed_result
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.operators.download_export import (
    DownloadEventExportOperator,
    default_asset,
)
from cometly_provider.utils.storage import DestinationExistsError, S3MultipartWriter
from tests import event_exports as support
from tests.conftest import free_port

MiB = 1024 * 1024
BIG_ROWS, BIG_PADDING = 22_000, 600


class _Event:
    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}


class OutletEvents(dict[Any, _Event]):
    """Stand-in for ``context["outlet_events"]`` outside a DAG run."""

    def __missing__(self, key: Any) -> _Event:
        self[key] = event = _Event()
        return event


def _context() -> Any:
    return {"outlet_events": OutletEvents()}


def _completed(sim: Any, *, rows: int = 500, padding: int = 0) -> dict[str, Any]:
    """A completed export (the sensor's result) made through the real API."""
    sim.config.queued_seconds = 0
    sim.config.processing_seconds = 0
    sim.config.export_rows = rows
    sim.config.row_padding_bytes = padding
    hook = CometlyHook()
    fields = ["event_name", "amount", "event_url"]
    export_id = hook.create_event_export(date="2024-01-15", fields=fields)["export_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = hook.get_event_export(export_id)
        if status["status"] == "completed":
            return status
        time.sleep(0.05)
    raise AssertionError("export did not complete")


def _direct(sim: Any, export_id: int) -> bytes:
    """The export as a plain GET of a fresh presigned URL returns it (no provider code involved)."""
    url, _ = sim.presign(export_id)
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return response.content


def _signature(url: str) -> str:
    query = dict(parse_qsl(urlsplit(url).query))
    secret = next(v for k, v in query.items() if "signature" in k.lower())
    assert len(secret) >= 16
    return secret


def _operator(**kwargs: Any) -> DownloadEventExportOperator:
    kwargs.setdefault("task_id", "download_export")
    op = DownloadEventExportOperator(**kwargs)
    op.resume_wait_s = 0  # no back-off between resume attempts in tests
    return op


def _uploads(client: Any, name: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=name).get("Uploads", []))


def _keys(client: Any, name: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=name).get("Contents", [])]


# --- happy paths ----------------------------------------------------------------------------------


def test_s3_multipart_round_trip_is_byte_identical(cometly_conn: Any, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    status = _completed(cometly_conn, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = _direct(cometly_conn, status["export_id"])
    assert len(direct) > 12 * MiB  # more than two 5 MiB parts

    op = _operator(
        download_url=status,  # the sensor's XCom result, as is
        destination=f"s3://{name}/cometly/dt=2024-01-15/events.ndjson.gz",
        part_size=5 * MiB,
        max_concurrency=2,
    )
    result = op.execute(_context())

    obj = client.get_object(Bucket=name, Key="cometly/dt=2024-01-15/events.ndjson.gz")
    body = obj["Body"].read()
    assert body == direct
    assert result["sha256"] == hashlib.sha256(direct).hexdigest()
    assert obj["ETag"].endswith('-3"')  # really a 3-part multipart upload
    assert obj["ContentType"] == "application/gzip"
    assert "ContentEncoding" not in obj  # no transparent gunzip by clients: the bytes stay gzip
    assert _uploads(client, name) == []
    assert result["records"] == cometly_conn.exports[status["export_id"]].lines == BIG_ROWS
    assert result["bytes_written"] == result["bytes_downloaded"] == len(direct)
    assert result["compressed"] is True
    assert result["export_id"] == status["export_id"]
    assert result["destination"] == f"s3://{name}/cometly/dt=2024-01-15/events.ndjson.gz"
    assert result["resumes"] == 0
    assert result["duration_s"] > 0
    assert result["mb_per_s"] > 0
    assert json.loads(json.dumps(result)) == result  # XCom-safe


def test_decompress_to_local_file_is_line_identical(cometly_conn: Any, tmp_path: Path) -> None:
    status = _completed(cometly_conn, rows=3000)
    plain = gzip.decompress(_direct(cometly_conn, status["export_id"]))
    target = tmp_path / "lake" / "events.ndjson"

    result = _operator(
        download_url=status["download_url"], destination=f"file://{target}", decompress=True
    ).execute(_context())

    written = target.read_bytes()
    assert written.splitlines() == plain.splitlines()
    assert written == plain
    assert result["sha256"] == hashlib.sha256(written).hexdigest()
    assert result["records"] == 3000
    assert result["compressed"] is False
    assert result["bytes_written"] == len(plain)
    assert [p.name for p in target.parent.iterdir()] == ["events.ndjson"]  # no temp file left
    json.loads(target.read_bytes().splitlines()[0])


@pytest.mark.parametrize("form", ["result dict", "download_url string"])
def test_sensor_result_without_signature_gets_a_fresh_url(
    cometly_conn: Any, tmp_path: Path, form: str
) -> None:
    # What EventExportSensor stores in XCom: the URL without its signature, plus the export id.
    export = _completed(cometly_conn, rows=400)
    stored = completed_result(ExportRef.of("events", export["export_id"]), export)
    assert "X-Amz-Signature" not in stored["download_url"]
    direct = _direct(cometly_conn, stored["export_id"])
    polls = len(cometly_conn.requests_for("export_status"))

    value = stored if form == "result dict" else stored["download_url"]  # xcom_pull(...)["download_url"]
    result = _operator(download_url=value, destination=f"file://{tmp_path}/e.gz").execute(_context())

    assert (tmp_path / "e.gz").read_bytes() == direct
    assert result["export_id"] == stored["export_id"]
    assert len(cometly_conn.requests_for("export_status")) == polls + 1  # one status call signs a URL
    downloads = cometly_conn.requests_for("download")
    assert [r.status for r in downloads] == [200, 200]  # _direct's, then the operator's
    assert "X-Amz-Signature=" in downloads[-1].query  # a signed URL, not the redacted one


def test_redacted_url_without_export_id_fails_before_any_request(cometly_conn: Any, tmp_path: Path) -> None:
    with pytest.raises(
        CometlyInputError, match=r"download_url=.*signature redacted.*pass the sensor's whole result"
    ):
        _operator(
            download_url="https://exports.example.com/e.ndjson.gz?<redacted>",
            destination=f"file://{tmp_path}/e.gz",
        ).execute(_context())
    assert cometly_conn.requests == []
    assert list(tmp_path.iterdir()) == []


def test_gcs_round_trip_is_byte_identical(cometly_conn: Any, gcs_conn: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    name = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    status = _completed(cometly_conn, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = _direct(cometly_conn, status["export_id"])

    result = _operator(
        download_url=status, destination=f"gs://{name}/cometly/events.ndjson.gz", part_size=5 * MiB
    ).execute(_context())

    blob = client.bucket(name).get_blob("cometly/events.ndjson.gz")
    assert blob.download_as_bytes() == direct
    assert blob.content_type == "application/gzip"
    assert result["sha256"] == hashlib.sha256(direct).hexdigest()
    assert result["records"] == BIG_ROWS


def test_gcs_decompress(cometly_conn: Any, gcs_conn: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    name = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    status = _completed(cometly_conn, rows=2000)
    plain = gzip.decompress(_direct(cometly_conn, status["export_id"]))
    _operator(
        download_url=status, destination=f"gs://{name}/events.ndjson", decompress=True, part_size=256 * 1024
    ).execute(_context())
    blob = client.bucket(name).get_blob("events.ndjson")
    assert blob.download_as_bytes() == plain
    assert blob.content_type == "application/x-ndjson"


def test_export_id_alone_fetches_the_url(cometly_conn: Any, tmp_path: Path) -> None:
    status = _completed(cometly_conn, rows=100)
    before = len(cometly_conn.requests_for("export_status"))
    result = _operator(export_id=str(status["export_id"]), destination=f"file://{tmp_path}/e.gz").execute(
        _context()
    )
    assert len(cometly_conn.requests_for("export_status")) == before + 1
    assert result["records"] == 100
    assert result["export_id"] == status["export_id"]


def test_dict_rendered_as_text_is_understood(cometly_conn: Any, tmp_path: Path) -> None:
    # "{{ ti.xcom_pull('wait_for_export') }}" without native rendering gives the dict's repr.
    status = _completed(cometly_conn, rows=10)
    result = _operator(download_url=str(status), destination=f"file://{tmp_path}/e.gz").execute(_context())
    assert result["records"] == 10
    assert result["export_id"] == status["export_id"]


def test_export_id_of_an_unfinished_or_failed_export(cometly_conn: Any, tmp_path: Path) -> None:
    hook = CometlyHook()
    cometly_conn.config.queued_seconds = 60
    queued = hook.create_event_export(date="2024-01-15")["export_id"]
    with pytest.raises(CometlyInputError, match=r"is 'queued', not 'completed'"):
        _operator(export_id=queued, destination=f"file://{tmp_path}/a.gz").execute(_context())
    cometly_conn.config.queued_seconds = 0
    cometly_conn.config.processing_seconds = 0
    cometly_conn.next_exports_outcome("failed", message="boom")
    failed = hook.create_event_export(date="2024-01-16")["export_id"]
    time.sleep(0.1)
    with pytest.raises(CometlyExportFailedError, match="boom"):
        _operator(export_id=failed, destination=f"file://{tmp_path}/b.gz").execute(_context())
    assert list(tmp_path.iterdir()) == []


def test_empty_export_lands_as_valid_empty_files(
    cometly_conn: Any, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = bucket
    status = _completed(cometly_conn, rows=0)
    gz = _operator(download_url=status, destination=f"s3://{name}/empty.ndjson.gz").execute(_context())
    body = client.get_object(Bucket=name, Key="empty.ndjson.gz")["Body"].read()
    assert gzip.decompress(body) == b""  # a valid (empty) gzip file
    assert gz["records"] == 0
    assert gz["bytes_written"] == len(body) > 0

    plain = _operator(download_url=status, destination=f"s3://{name}/empty.ndjson", decompress=True).execute(
        _context()
    )
    assert client.get_object(Bucket=name, Key="empty.ndjson")["Body"].read() == b""
    assert plain["records"] == 0
    assert plain["bytes_written"] == 0
    assert plain["sha256"] == hashlib.sha256(b"").hexdigest()


# --- failures and recovery ------------------------------------------------------------------------


def test_cut_download_resumes_with_range(cometly_conn: Any, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    status = _completed(cometly_conn, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = _direct(cometly_conn, status["export_id"])
    cometly_conn.inject("download", "cut", at_byte=6_000_000)
    downloads_before = len(cometly_conn.requests_for("download"))

    result = _operator(download_url=status, destination=f"s3://{name}/e.gz", part_size=5 * MiB).execute(
        _context()
    )

    downloads = cometly_conn.requests_for("download")[downloads_before:]
    assert [d.fault for d in downloads] == ["cut", None]
    assert downloads[0].header("Range") is None
    ranged = downloads[1].header("Range")
    assert ranged is not None
    offset = int(ranged.removeprefix("bytes=").removesuffix("-"))
    assert 0 < offset <= 6_000_000  # resumed where it stopped, not restarted
    assert result["resumes"] == 1
    assert result["bytes_downloaded"] == len(direct)
    assert client.get_object(Bucket=name, Key="e.gz")["Body"].read() == direct
    assert result["sha256"] == hashlib.sha256(direct).hexdigest()
    assert _uploads(client, name) == []


def test_cut_without_resume_leaves_no_object_and_no_upload(
    cometly_conn: Any, bucket: tuple[Any, str], capfd: pytest.CaptureFixture[str]
) -> None:
    client, name = bucket
    status = _completed(cometly_conn, rows=BIG_ROWS, padding=BIG_PADDING)
    cometly_conn.inject("download", "cut", at_byte=11_000_000)  # after two 5 MiB parts went up
    op = _operator(
        download_url=status, destination=f"s3://{name}/e.gz", part_size=5 * MiB, max_resume_attempts=0
    )
    with pytest.raises(CometlyDownloadError, match="max_resume_attempts"):
        op.execute(_context())
    out = capfd.readouterr().out
    assert "Started S3 multipart upload" in out  # parts really were uploaded...
    assert "Aborted the S3 multipart upload" in out  # ...and thrown away
    assert _uploads(client, name) == []
    assert _keys(client, name) == []


def test_expired_url_is_refreshed_via_export_id(cometly_conn: Any, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    status = _completed(cometly_conn, rows=BIG_ROWS, padding=BIG_PADDING)
    direct = _direct(cometly_conn, status["export_id"])
    # First request cut mid-way, the resume finds the URL expired, the fresh URL resumes.
    cometly_conn.inject("download", "cut", at_byte=3_000_000)
    cometly_conn.inject("download", "expire", after=1)
    polls_before = len(cometly_conn.requests_for("export_status"))
    downloads_before = len(cometly_conn.requests_for("download"))

    result = _operator(
        download_url=status["download_url"],
        export_id=status["export_id"],
        destination=f"s3://{name}/e.gz",
        part_size=5 * MiB,
    ).execute(_context())

    downloads = cometly_conn.requests_for("download")[downloads_before:]
    assert [(d.fault, d.status) for d in downloads] == [("cut", 200), ("expire", 403), (None, 206)]
    assert downloads[1].query != downloads[2].query  # a fresh presigned URL
    assert downloads[2].header("Range") == downloads[1].header("Range")  # same offset kept
    assert len(cometly_conn.requests_for("export_status")) > polls_before
    assert result["resumes"] == 2
    assert client.get_object(Bucket=name, Key="e.gz")["Body"].read() == direct


def test_expired_url_without_export_id_fails_clearly(cometly_conn: Any, tmp_path: Path) -> None:
    status = _completed(cometly_conn, rows=50)
    cometly_conn.inject("download", "expire")
    with pytest.raises(CometlyDownloadExpiredError, match="pass the export") as excinfo:
        _operator(download_url=status["download_url"], destination=f"file://{tmp_path}/e.gz").execute(
            _context()
        )
    assert _signature(status["download_url"]) not in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_replace_false_on_existing_object_fails_before_any_request(
    cometly_conn: Any, bucket: tuple[Any, str]
) -> None:
    client, name = bucket
    status = _completed(cometly_conn, rows=10)
    client.put_object(Bucket=name, Key="taken.gz", Body=b"keep me")
    requests_before = len(cometly_conn.requests)
    op = _operator(download_url=status, destination=f"s3://{name}/taken.gz", replace=False)
    with pytest.raises(
        DestinationExistsError, match=rf"s3://{name}/taken.gz already exists and replace=False"
    ):
        op.execute(_context())
    assert len(cometly_conn.requests) == requests_before  # not even a download
    assert client.get_object(Bucket=name, Key="taken.gz")["Body"].read() == b"keep me"

    # replace=True (the default) overwrites it.
    _operator(download_url=status, destination=f"s3://{name}/taken.gz").execute(_context())
    assert client.get_object(Bucket=name, Key="taken.gz")["Body"].read() == _direct(
        cometly_conn, status["export_id"]
    )


SIGNED = "https://bucket.s3.amazonaws.com/exports/e.ndjson.gz?X-Amz-Signature=SECRETSIG0123456789"


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"download_url": SIGNED, "destination": "ftp://lake/e.gz"}, "destination", "s3://, gs://, file://"),
        ({"download_url": SIGNED, "destination": "/tmp/e.gz"}, "destination", "s3://, gs://, file://"),
        ({"download_url": SIGNED, "destination": "s3://lake"}, "destination", "object key"),
        ({"download_url": SIGNED, "destination": "gs:///e.gz"}, "destination", "no bucket"),
        ({"download_url": "file:///etc/passwd", "destination": "file:///tmp/e.gz"}, "download_url", "'file'"),
        ({"download_url": "", "destination": "file:///tmp/e.gz"}, "download_url", "empty"),
        (
            {"download_url": "not a url?X-Amz-Signature=SECRETSIG0123456789", "destination": "file:///tmp/e"},
            "download_url",
            "expected an http(s) presigned URL",
        ),
        (
            {
                "download_url": "ftp://x/e.gz?X-Amz-Signature=SECRETSIG0123456789",
                "destination": "file:///t/e",
            },
            "download_url",
            "scheme 'ftp'",
        ),
        ({"download_url": {"id": 7}, "destination": "file:///tmp/e"}, "download_url", "sensor's result"),
        ({"export": {"id": 7}, "destination": "file:///tmp/e"}, "export", "sensor's result"),
        ({"export_id": 7, "kind": "companies", "destination": "file:///tmp/e"}, "kind", "'contacts'"),
        ({"download_url": 42, "destination": "file:///tmp/e"}, "download_url", "got int"),
        ({"destination": "file:///tmp/e"}, "export", "expected the export to download"),
        ({"export_id": "abc", "destination": "file:///tmp/e"}, "export_id", "'abc'"),
        ({"export_id": -1, "destination": "file:///tmp/e"}, "export_id", "-1"),
        ({"export_id": True, "destination": "file:///tmp/e"}, "export_id", "True"),
        (
            {"download_url": {"download_url": SIGNED, "export_id": "x1"}, "destination": "file:///tmp/e"},
            "download_url",
            "'x1'",
        ),
        ({"download_url": SIGNED, "destination": "s3://lake/e.gz", "part_size": MiB}, "part_size", "5 MiB"),
    ],
)
def test_bad_inputs_are_rejected_before_any_request(
    cometly_conn: Any, kwargs: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(CometlyInputError) as excinfo:
        _operator(**kwargs).execute(_context())
    message = str(excinfo.value)
    assert excinfo.value.field == field
    assert fragment in message
    assert "SECRETSIG" not in message
    assert cometly_conn.requests == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_concurrency": 0}, "max_concurrency=0"),
        ({"max_concurrency": 65}, "from 1 to 64"),
        ({"max_resume_attempts": -1}, "max_resume_attempts=-1"),
        ({"part_size": 1000}, "multiple of 256 KiB"),
        ({"decompress": "yes"}, "decompress='yes'"),
        ({"replace": None}, "replace=None"),
    ],
)
def test_bad_settings_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CometlyInputError, match=fragment.replace("(", r"\(")):
        DownloadEventExportOperator(task_id="t", destination="s3://lake/e.gz", download_url=SIGNED, **kwargs)


def test_killed_task_aborts_the_upload(
    cometly_conn: Any, bucket: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, name = bucket
    status = _completed(cometly_conn, rows=BIG_ROWS, padding=BIG_PADDING)
    op = _operator(download_url=status, destination=f"s3://{name}/e.gz", part_size=5 * MiB)
    # What Airflow's task runner does on SIGTERM: call on_kill() from the signal handler (main thread).
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: op.on_kill())
    upload_part = S3MultipartWriter._upload_part

    def upload_then_get_killed(self: Any, number: int, offset: int, buffer: bytearray, last: bool) -> Any:
        result = upload_part(self, number, offset, buffer, last)
        if number == 1:  # a part is on the server, the download is still going
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    monkeypatch.setattr(S3MultipartWriter, "_upload_part", upload_then_get_killed)
    try:
        with pytest.raises(CometlyTaskKilled, match="killed"):
            op.execute(_context())
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert _uploads(client, name) == []
    assert _keys(client, name) == []
    op.on_kill()  # after the task: a no-op


# --- a server that misbehaves in ways the simulator does not ----------------------------------------


class _Payload(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, payload: bytes, *, ignore_range: bool, cut_first_at: int | None, no_length: bool = False
    ) -> None:
        super().__init__(("127.0.0.1", free_port()), _PayloadHandler)
        self.payload = payload
        self.ignore_range = ignore_range
        self.cut_first_at = cut_first_at
        self.no_length = no_length  # no Content-Length: the body ends when the connection closes
        self.ranges: list[str | None] = []


class _PayloadHandler(http.server.BaseHTTPRequestHandler):
    server: _Payload

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        server.ranges.append(self.headers.get("Range"))
        data, status = server.payload, 200
        ranged = self.headers.get("Range")
        if ranged and not server.ignore_range:
            start = int(ranged.removeprefix("bytes=").removesuffix("-"))
            data, status = data[start:], 206
        self.send_response(status)
        if server.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(data)))
        if status == 206:
            self.send_header(
                "Content-Range",
                f"bytes {len(server.payload) - len(data)}-{len(server.payload) - 1}/{len(server.payload)}",
            )
        self.end_headers()
        if server.cut_first_at is not None and len(server.ranges) == 1:
            self.wfile.write(data[: server.cut_first_at])
            self.close_connection = True
            return
        self.wfile.write(data)


@pytest.fixture
def payload_server() -> Iterator[Any]:
    servers: list[_Payload] = []

    def start(
        payload: bytes,
        *,
        ignore_range: bool = False,
        cut_first_at: int | None = None,
        no_length: bool = False,
    ) -> _Payload:
        server = _Payload(payload, ignore_range=ignore_range, cut_first_at=cut_first_at, no_length=no_length)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _url(server: _Payload) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/export.ndjson.gz?X-Amz-Signature=SECRETSIG0123456789"


@pytest.mark.usefixtures("cometly_conn")
def test_server_ignoring_range_restarts_the_upload_cleanly(
    payload_server: Any, bucket: tuple[Any, str], capfd: pytest.CaptureFixture[str]
) -> None:
    client, name = bucket
    payload = gzip.compress(_random_ndjson(11 * MiB), 1)  # ~8.5 MB: one 5 MiB part before the cut
    server = payload_server(payload, ignore_range=True, cut_first_at=7 * MiB)

    result = _operator(download_url=_url(server), destination=f"s3://{name}/e.gz", part_size=5 * MiB).execute(
        _context()
    )

    assert server.ranges[0] is None
    assert server.ranges[1] is not None  # asked to resume...
    assert server.ranges[2] is None  # ...got the whole file, so started over
    assert "restarting from byte 0" in capfd.readouterr().out
    assert client.get_object(Bucket=name, Key="e.gz")["Body"].read() == payload
    assert result["sha256"] == hashlib.sha256(payload).hexdigest()
    assert _uploads(client, name) == []


@pytest.mark.usefixtures("cometly_conn")
@pytest.mark.parametrize("damage", ["flip", "truncate", "trailing"])
def test_corrupt_download_never_becomes_an_object(
    payload_server: Any, bucket: tuple[Any, str], damage: str
) -> None:
    client, name = bucket
    good = gzip.compress(_random_ndjson(7 * MiB), 1)
    bad = {
        "flip": good[: len(good) // 2] + bytes([good[len(good) // 2] ^ 0xFF]) + good[len(good) // 2 + 1 :],
        "truncate": good[:-100],  # served with a matching Content-Length: only gzip can tell
        "trailing": good + b"<html>oops</html>",
    }[damage]
    server = payload_server(bad)
    with pytest.raises(CometlyDownloadIntegrityError):
        _operator(download_url=_url(server), destination=f"s3://{name}/e.gz", part_size=5 * MiB).execute(
            _context()
        )
    assert _keys(client, name) == []
    assert _uploads(client, name) == []


@pytest.mark.usefixtures("cometly_conn")
@pytest.mark.parametrize("no_length", [False, True], ids=["content_length_0", "closed_without_length"])
def test_empty_body_lands_a_valid_empty_export(
    payload_server: Any, bucket: tuple[Any, str], tmp_path: Path, no_length: bool
) -> None:
    client, name = bucket
    server = payload_server(b"", no_length=no_length)
    local = tmp_path / "empty.ndjson.gz"
    for destination in (f"s3://{name}/empty.ndjson.gz", f"file://{local}"):
        result = _operator(download_url=_url(server), destination=destination).execute(_context())
        assert result["records"] == 0
    body = client.get_object(Bucket=name, Key="empty.ndjson.gz")["Body"].read()
    assert body == local.read_bytes()
    assert gzip.decompress(body) == b""
    subprocess.run(["gzip", "-t", str(local)], check=True)  # what a user's own check would say

    plain = _operator(download_url=_url(server), destination=f"s3://{name}/empty.ndjson", decompress=True)
    assert plain.execute(_context())["bytes_written"] == 0
    assert client.get_object(Bucket=name, Key="empty.ndjson")["Body"].read() == b""
    assert _uploads(client, name) == []


@pytest.mark.usefixtures("cometly_conn")
def test_decompress_without_content_length_grows_parts_within_the_part_cap(
    payload_server: Any, bucket: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither the decompressed size (decompress=True) nor the download's (no Content-Length) is known
    # in advance: 21 MiB of NDJSON would take 5 parts of 5 MiB, the cap is lowered to 3.
    monkeypatch.setattr("cometly_provider.utils.storage.S3_MAX_PARTS", 3)
    client, name = bucket
    plain = _random_ndjson(21 * MiB)
    server = payload_server(gzip.compress(plain, 1), no_length=True)

    result = _operator(
        download_url=_url(server), destination=f"s3://{name}/e.ndjson", decompress=True, part_size=5 * MiB
    ).execute(_context())

    obj = client.get_object(Bucket=name, Key="e.ndjson")
    assert obj["Body"].read() == plain
    parts = int(obj["ETag"].strip('"').rsplit("-", 1)[1])
    assert parts <= 3
    assert result["records"] == plain.count(b"\n")
    assert _uploads(client, name) == []


def _random_ndjson(size: int) -> bytes:
    import base64
    import os

    line = 200
    raw = base64.b64encode(os.urandom(size * 3 // 4))
    return b"\n".join(b'{"r": "%s"}' % raw[i : i + line] for i in range(0, len(raw), line)) + b"\n"


# --- secrets, logs, assets -----------------------------------------------------------------------


def test_signature_never_logged_or_returned(
    cometly_conn: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    status = _completed(cometly_conn, rows=BIG_ROWS, padding=BIG_PADDING)
    secret = _signature(status["download_url"])
    cometly_conn.inject("download", "cut", at_byte=2_000_000)
    op = _operator(download_url=status, destination=f"file://{tmp_path}/e.gz")
    op.progress_interval_s = 0  # a progress line for every chunk
    result = op.execute(_context())
    out, err = capfd.readouterr()
    assert "MB/s" in out  # progress was logged...
    assert "resuming from byte" in out  # ...and so was the resume
    assert "?<redacted>" in out  # the URL appears only without its query string
    assert secret not in out + err
    assert secret not in json.dumps(result)


def test_default_assets() -> None:
    def static(destination: str) -> str | None:
        asset = default_asset(destination)
        return asset.name if asset is not None else None  # the name keeps the URI as written

    assert static("s3://lake/cometly/events.ndjson.gz") == "s3://lake/cometly/events.ndjson.gz"
    assert static("s3://lake/cometly/events/{{ ds }}.ndjson.gz") == "s3://lake/cometly/events/"
    assert static("gs://lake/x/{% if true %}a{% endif %}") == "gs://lake/x/"
    assert static("file:///data/{{ ds }}/e.gz") == "file:///data/"
    assert default_asset("s3://{{ params.bucket }}/e.gz") is None  # bucket unknown until run time
    assert default_asset("{{ var.value.dest }}") is None
    assert default_asset(None) is None

    op = DownloadEventExportOperator(task_id="a", download_url=SIGNED, destination="s3://lake/e/{{ ds }}.gz")
    assert [a.name for a in op.outlets] == ["s3://lake/e/"]
    from airflow.providers.common.compat.sdk import Asset

    mine = Asset("s3://elsewhere/x")
    op = DownloadEventExportOperator(
        task_id="b", download_url=SIGNED, destination="s3://lake/e.gz", outlets=[mine]
    )
    assert op.outlets == [mine]
    assert op.asset is None


def test_asset_event_extra_carries_the_rendered_uri(cometly_conn: Any, tmp_path: Path) -> None:
    status = _completed(cometly_conn, rows=20)
    op = _operator(download_url=status, destination=f"file://{tmp_path}/{{{{ ds }}}}/e.gz")
    op.destination = f"file://{tmp_path}/2024-01-15/e.gz"  # as rendered
    context = _context()
    result = op.execute(context)
    assert op.asset is not None
    extra = context["outlet_events"][op.asset].extra
    assert extra["destination"] == f"file://{tmp_path}/2024-01-15/e.gz"
    assert extra["records"] == 20
    assert extra["sha256"] == result["sha256"]


# --- a real Airflow run -------------------------------------------------------------------------------


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_end_to_end(
    cometly_conn: Any, bucket: tuple[Any, str], capfd: pytest.CaptureFixture[str]
) -> None:
    from airflow.sdk import DAG, task

    client, name = bucket
    export_id = _completed(cometly_conn, rows=BIG_ROWS, padding=BIG_PADDING)["export_id"]
    direct = _direct(cometly_conn, export_id)
    # A status fetched without the hook: its signature is unknown to Airflow's secret masker until
    # the operator registers it, which must happen before the rendered fields are stored.
    status = requests.get(
        f"{cometly_conn.api_base}/events/exports/{export_id}",
        headers={"Authorization": f"Bearer {cometly_conn.api_key}"},
        timeout=10,
    ).json()
    secret = _signature(status["download_url"])
    cometly_conn.inject("download", "cut", at_byte=4_000_000)

    dag_id = f"cometly_download_{uuid.uuid4().hex[:8]}"
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False) as dag:

        @task
        def wait_for_export() -> dict[str, Any]:
            return status  # what EventExportSensor pushes

        download = DownloadEventExportOperator(
            task_id="download_export",
            download_url="{{ ti.xcom_pull(task_ids='wait_for_export')['download_url'] }}",
            export_id="{{ ti.xcom_pull(task_ids='wait_for_export')['export_id'] }}",
            destination=f"s3://{name}/cometly/dt={{{{ ds }}}}/events.ndjson.gz",
            part_size=5 * MiB,
        )
        download.resume_wait_s = 0
        wait_for_export() >> download

    run = support.run_dag(dag, logical_date=pendulum.datetime(2024, 1, 15, tz="UTC"))
    assert run.state == "success"
    out, err = capfd.readouterr()
    assert "resuming from byte" in out
    # Only the stand-in upstream task prints it (returning it unmasked, unlike the real sensor).
    leaks = [line for line in (out + err).splitlines() if secret in line]
    assert all("_PythonDecoratedOperator" in line for line in leaks), leaks
    assert (
        client.get_object(Bucket=name, Key="cometly/dt=2024-01-15/events.ndjson.gz")["Body"].read() == direct
    )
    assert _uploads(client, name) == []

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcom = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, task_id="download_export", run_id=run.run_id, key="return_value")
            .one()
        )
        value = xcom.value if isinstance(xcom.value, dict) else json.loads(xcom.value)
        assert value["sha256"] == hashlib.sha256(direct).hexdigest()
        assert value["records"] == BIG_ROWS
        assert value["resumes"] == 1

        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == f"s3://{name}/cometly/dt=", AssetEvent.source_run_id == run.run_id)
            .all()
        )
        assert len(events) == 1
        assert events[0].extra["destination"] == f"s3://{name}/cometly/dt=2024-01-15/events.ndjson.gz"

        rendered = (
            session.query(RenderedTaskInstanceFields)
            .filter_by(dag_id=dag_id, task_id="download_export", run_id=run.run_id)
            .one()
        )
        assert secret not in json.dumps(rendered.rendered_fields)
        assert "***" in rendered.rendered_fields["download_url"]
        assert (
            rendered.rendered_fields["destination"] == f"s3://{name}/cometly/dt=2024-01-15/events.ndjson.gz"
        )
