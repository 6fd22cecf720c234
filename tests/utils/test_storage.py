"""Destination writers against real servers: moto S3, the GCS emulator and the local file system.

What matters for each: the bytes land exactly, nothing is visible before ``commit``, and ``abort``
leaves nothing behind (no object, no pending multipart upload, no temp file).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.utils.storage import (
    DestinationExistsError,
    GCSResumableWriter,
    LocalFileWriter,
    ObjectWriter,
    S3MultipartWriter,
    UploadError,
    check_part_size,
    open_writer,
    parse_destination,
)

MiB = 1024 * 1024
LOG = logging.getLogger("test.storage")


def _writer(uri: str, **kwargs: Any) -> ObjectWriter:
    kwargs.setdefault("conn_id", None)
    kwargs.setdefault("replace", True)
    kwargs.setdefault("part_size", 5 * MiB)
    kwargs.setdefault("max_concurrency", 3)
    kwargs.setdefault("content_type", "application/gzip")
    return open_writer(parse_destination(uri), log=LOG, **kwargs)


def _write_in_pieces(writer: ObjectWriter, data: bytes, piece: int = 777_777) -> None:
    for start in range(0, len(data), piece):
        writer.write(data[start : start + piece])


def _write_and_commit(writer: ObjectWriter, data: bytes) -> None:
    _write_in_pieces(writer, data)
    writer.commit()


def _payload(size: int) -> bytes:
    # Incompressible, and different per call so a stale object cannot pass for a new one.
    return os.urandom(size)


# --- parse_destination / check_part_size ----------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://lake/cometly/events.ndjson.gz", ("s3", "lake", "cometly/events.ndjson.gz")),
        ("gs://lake/a/b.gz", ("gs", "lake", "a/b.gz")),
        ("file:///tmp/x/events.gz", ("file", "", "/tmp/x/events.gz")),
        ("file://localhost/tmp/e.gz", ("file", "", "/tmp/e.gz")),
        ("  S3://lake/k  ", ("s3", "lake", "k")),
    ],
)
def test_parse_destination(uri: str, expected: tuple[str, str, str]) -> None:
    dest = parse_destination(uri)
    assert (dest.scheme, dest.bucket, dest.key) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "s3://, gs://, file://"),
        (None, "s3://, gs://, file://"),
        (42, "s3://, gs://, file://"),
        ("/tmp/events.gz", "scheme must be one of s3://, gs://, file://"),
        ("http://host/events.gz", "scheme must be one of s3://, gs://, file://"),
        ("ftp://host/events.gz", "scheme must be one of"),
        ("s3:/lake/key", "scheme must be one of"),
        ("s3://lake", "expected an object key"),
        ("s3://lake/prefix/", "not a prefix"),
        ("s3:///key", "no bucket"),
        ("gs://lake/", "expected an object key"),
        ("s3://lake/k?versionId=1", "no query string"),
        ("file://otherhost/tmp/x", "local absolute paths (file:///path/to/file), not on host 'otherhost'"),
        ("file:///tmp/dir/", "not a directory"),
    ],
)
def test_parse_destination_rejects(value: object, fragment: str) -> None:
    with pytest.raises(CometlyInputError, match="destination=") as excinfo:
        parse_destination(value)
    assert fragment in str(excinfo.value)
    assert repr(value) in str(excinfo.value)
    assert excinfo.value.field == "destination"


def test_check_part_size() -> None:
    assert check_part_size(5 * MiB, "s3") == 5 * MiB
    assert check_part_size(256 * 1024, "gs") == 256 * 1024
    with pytest.raises(CometlyInputError, match="at least 5 MiB"):
        check_part_size(4 * MiB, "s3")
    with pytest.raises(CometlyInputError, match="multiple of 256 KiB"):
        check_part_size(5 * MiB + 1, "s3")
    with pytest.raises(CometlyInputError, match="expected an integer"):
        check_part_size(True)
    with pytest.raises(CometlyInputError, match="expected an integer"):
        check_part_size("16MiB")


# --- S3 (moto server) --------------------------------------------------------------------------------


def _uploads(client: Any, name: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=name).get("Uploads", []))


def _exists(client: Any, name: str, key: str) -> bool:
    return bool(client.list_objects_v2(Bucket=name, Prefix=key).get("KeyCount"))


def test_s3_multipart_with_parallel_parts(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    data = _payload(17 * MiB + 12345)
    writer = _writer(f"s3://{name}/cometly/events.ndjson.gz", max_concurrency=3)
    assert isinstance(writer, S3MultipartWriter)

    # Two parts must be uploading at the same moment: a barrier that only opens when they are.
    barrier = threading.Barrier(2, timeout=20)
    upload_part = writer.client.upload_part
    concurrent: list[int] = []

    def upload_part_in_parallel(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] <= 2:
            concurrent.append(barrier.wait())
        return upload_part(**kwargs)

    writer.client.upload_part = upload_part_in_parallel
    writer.begin()
    _write_in_pieces(writer, data)
    assert not _exists(client, name, "cometly/events.ndjson.gz")  # nothing visible before commit
    writer.commit()

    assert sorted(concurrent) == [0, 1]
    obj = client.get_object(Bucket=name, Key="cometly/events.ndjson.gz")
    assert obj["Body"].read() == data
    assert obj["ETag"].endswith('-4"')  # 3 full parts of 5 MiB + the rest
    assert obj["ContentType"] == "application/gzip"
    assert _uploads(client, name) == []
    assert writer.buffers_allocated <= 3 + 1  # part buffers bounded by max_concurrency + 1


def _composite_crc32(data: bytes, part_size: int) -> str:
    """S3's composite checksum of a multipart object: the CRC32 of the parts' CRC32s (base64)."""
    import base64
    import zlib

    crcs = [zlib.crc32(data[i : i + part_size]).to_bytes(4, "big") for i in range(0, len(data), part_size)]
    return base64.b64encode(zlib.crc32(b"".join(crcs)).to_bytes(4, "big")).decode()


def test_s3_parts_carry_crc32_checksums_like_upload_fileobj(bucket: tuple[Any, str]) -> None:
    """By botocore's default, each part carries a CRC32 the server checks; the object keeps them."""
    client, name = bucket
    data = _payload(11 * MiB)
    writer = _writer(f"s3://{name}/checked.gz", max_concurrency=2)
    writer.begin()
    _write_and_commit(writer, data)
    attributes = client.get_object_attributes(Bucket=name, Key="checked.gz", ObjectAttributes=["Checksum"])
    assert attributes["Checksum"]["ChecksumCRC32"] == _composite_crc32(data, 5 * MiB)


def test_s3_no_checksum_when_the_connection_asks_only_for_required_ones(
    bucket: tuple[Any, str], s3_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``request_checksum_calculation: when_required`` (stores without checksum support) is obeyed."""
    client, name = bucket
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_PLAIN",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {
                    "endpoint_url": s3_conn,
                    "region_name": "us-east-1",
                    "config_kwargs": {"request_checksum_calculation": "when_required"},
                },
            }
        ),
    )
    data = _payload(11 * MiB)
    writer = _writer(f"s3://{name}/plain.gz", conn_id="aws_plain", max_concurrency=2)
    writer.begin()
    _write_and_commit(writer, data)
    assert client.get_object(Bucket=name, Key="plain.gz")["Body"].read() == data
    attributes = client.get_object_attributes(Bucket=name, Key="plain.gz", ObjectAttributes=["Checksum"])
    assert "ChecksumCRC32" not in attributes.get("Checksum", {})


def test_s3_exact_multiple_of_part_size(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    data = _payload(10 * MiB)
    writer = _writer(f"s3://{name}/k.gz", max_concurrency=1)
    writer.begin()
    _write_in_pieces(writer, data, piece=MiB)
    writer.commit()
    obj = client.get_object(Bucket=name, Key="k.gz")
    assert obj["Body"].read() == data
    assert obj["ETag"].endswith('-2"')


def test_s3_small_object_is_a_single_put(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    data = _payload(100_000)
    writer = _writer(f"s3://{name}/small.gz")
    assert isinstance(writer, S3MultipartWriter)
    writer.begin()
    writer.write(data)
    writer.commit()
    assert writer.upload_id is None
    obj = client.get_object(Bucket=name, Key="small.gz")
    assert obj["Body"].read() == data
    assert "-" not in obj["ETag"]  # not a multipart object


def test_s3_empty_object(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    writer = _writer(f"s3://{name}/empty.ndjson", content_type="application/x-ndjson")
    writer.begin()
    writer.commit()
    obj = client.get_object(Bucket=name, Key="empty.ndjson")
    assert obj["Body"].read() == b""
    assert obj["ContentType"] == "application/x-ndjson"


def test_s3_abort_leaves_no_object_and_no_upload(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    writer = _writer(f"s3://{name}/partial.gz")
    writer.begin()
    _write_in_pieces(writer, _payload(12 * MiB))
    assert len(_uploads(client, name)) == 1  # parts are really on the server
    writer.abort()
    assert _uploads(client, name) == []
    assert not _exists(client, name, "partial.gz")


def test_s3_failed_part_surfaces_and_abort_cleans_up(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    writer = _writer(f"s3://{name}/failing.gz", max_concurrency=2)
    assert isinstance(writer, S3MultipartWriter)
    upload_part = writer.client.upload_part

    def failing_upload_part(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            raise ConnectionError("injected part failure")
        return upload_part(**kwargs)

    writer.client.upload_part = failing_upload_part
    writer.begin()
    with pytest.raises(ConnectionError, match="injected"):
        _write_and_commit(writer, _payload(16 * MiB))
    writer.abort()
    assert _uploads(client, name) == []
    assert not _exists(client, name, "failing.gz")


def test_s3_restart_starts_a_new_upload(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    writer = _writer(f"s3://{name}/restarted.gz")
    writer.begin()
    _write_in_pieces(writer, _payload(11 * MiB))
    writer.restart()
    assert _uploads(client, name) == []
    data = _payload(6 * MiB)
    _write_in_pieces(writer, data)
    writer.commit()
    assert client.get_object(Bucket=name, Key="restarted.gz")["Body"].read() == data
    assert writer.bytes_written == len(data)


def test_s3_replace_false(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="taken.gz", Body=b"old")
    with pytest.raises(DestinationExistsError, match=r"already exists and replace=False"):
        _writer(f"s3://{name}/taken.gz", replace=False).begin()
    assert client.get_object(Bucket=name, Key="taken.gz")["Body"].read() == b"old"
    # Absent: written normally (with If-None-Match on the final request).
    for key, size in (("free-small.gz", 10), ("free-big.gz", 6 * MiB)):
        writer = _writer(f"s3://{name}/{key}", replace=False)
        writer.begin()
        writer.write(b"x" * size)
        writer.commit()
        assert client.head_object(Bucket=name, Key=key)["ContentLength"] == size


def test_s3_part_size_grows_past_10000_parts(bucket: tuple[Any, str]) -> None:
    _, name = bucket
    writer = _writer(f"s3://{name}/huge.gz")
    assert isinstance(writer, S3MultipartWriter)
    writer.set_size_hint(100 * 1024 * MiB)  # 100 GiB / 5 MiB = 20,480 parts
    assert writer.part_size == 11 * MiB
    writer.abort()


def _part_sizes(client: Any, name: str, key: str) -> list[int]:
    parts = int(client.head_object(Bucket=name, Key=key)["ETag"].strip('"').rsplit("-", 1)[1])
    return [
        client.head_object(Bucket=name, Key=key, PartNumber=n)["ContentLength"] for n in range(1, parts + 1)
    ]


@pytest.mark.parametrize("hint", [None, 12 * MiB], ids=["no_size", "size_exceeded"])
def test_s3_parts_grow_to_stay_within_the_part_cap(
    bucket: tuple[Any, str], monkeypatch: pytest.MonkeyPatch, hint: int | None
) -> None:
    # The cap lowered to 4 parts: 26 MiB of 5 MiB parts would need 6. Growing (doubling after each
    # tenth of the cap, here every part) fits them in 3 unequal parts of >= 5 MiB.
    monkeypatch.setattr("cometly_provider.utils.storage.S3_MAX_PARTS", 4)
    client, name = bucket
    data = _payload(26 * MiB)
    writer = _writer(f"s3://{name}/grown.gz", max_concurrency=2)
    writer.begin()
    writer.set_size_hint(hint)  # None: decompress=True or no Content-Length; else a size that lies
    _write_and_commit(writer, data)
    assert client.get_object(Bucket=name, Key="grown.gz")["Body"].read() == data
    sizes = _part_sizes(client, name, "grown.gz")
    assert len(sizes) <= 4
    assert all(size >= 5 * MiB for size in sizes[:-1])
    assert _uploads(client, name) == []


def test_s3_parts_keep_their_size_while_the_announced_size_fits(
    bucket: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cometly_provider.utils.storage.S3_MAX_PARTS", 6)
    client, name = bucket
    data = _payload(26 * MiB)
    writer = _writer(f"s3://{name}/fits.gz")
    writer.begin()
    writer.set_size_hint(len(data))  # 6 parts of 5 MiB hold it: no growth, no extra memory
    _write_and_commit(writer, data)
    assert _part_sizes(client, name, "fits.gz") == [5 * MiB] * 5 + [MiB]


# --- GCS (gcp-storage-emulator) ----------------------------------------------------------------------


@pytest.fixture
def gcs_bucket(gcs_conn: str) -> tuple[Any, str]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    name = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    return client, name


def test_gcs_resumable_upload_in_chunks(gcs_bucket: tuple[Any, str]) -> None:
    client, name = gcs_bucket
    data = _payload(3 * 512 * 1024 + 1000)
    writer = _writer(f"gs://{name}/cometly/events.ndjson.gz", part_size=512 * 1024)
    assert isinstance(writer, GCSResumableWriter)
    writer.begin()
    _write_in_pieces(writer, data, piece=100_000)
    assert client.bucket(name).get_blob("cometly/events.ndjson.gz") is None  # not before commit
    writer.commit()
    blob = client.bucket(name).get_blob("cometly/events.ndjson.gz")
    assert blob.download_as_bytes() == data
    assert blob.content_type == "application/gzip"


def test_gcs_exact_multiple_and_empty(gcs_bucket: tuple[Any, str]) -> None:
    client, name = gcs_bucket
    data = _payload(2 * 256 * 1024)
    writer = _writer(f"gs://{name}/exact.gz", part_size=256 * 1024)
    writer.begin()
    writer.write(data)
    writer.commit()
    assert client.bucket(name).get_blob("exact.gz").download_as_bytes() == data
    empty = _writer(f"gs://{name}/empty.ndjson", part_size=256 * 1024)
    empty.begin()
    empty.commit()
    assert client.bucket(name).get_blob("empty.ndjson").size == 0


def test_gcs_abort_leaves_no_object(gcs_bucket: tuple[Any, str]) -> None:
    client, name = gcs_bucket
    writer = _writer(f"gs://{name}/partial.gz", part_size=256 * 1024)
    writer.begin()
    writer.write(_payload(700_000))
    writer.abort()
    assert list(client.list_blobs(name)) == []


class _FlakySession:
    """Delegates to the real session, but answers 503 to the second chunk PUT (as GCS may).

    Not the first: with nothing stored yet the emulator answers a status query with
    ``Range: bytes=0-0`` where GCS sends no Range header.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self.chunks = 0
        self.failed = 0

    def put(self, url: str, **kwargs: Any) -> Any:
        if kwargs.get("data") is not None and len(kwargs["data"]):
            self.chunks += 1
        if self.chunks == 2 and not self.failed:
            self.failed += 1
            response = self._session.put(url, headers={"Content-Range": "bytes */*"}, timeout=10)
            response.status_code = 503
            return response
        return self._session.put(url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self._session.delete(url, **kwargs)


def test_gcs_retries_a_failed_chunk(gcs_bucket: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    client, name = gcs_bucket
    monkeypatch.setattr("cometly_provider.utils.storage.time.sleep", lambda s: None)
    data = _payload(600_000)
    writer = _writer(f"gs://{name}/flaky.gz", part_size=256 * 1024)
    assert isinstance(writer, GCSResumableWriter)
    writer.session = flaky = _FlakySession(writer.session)
    writer.begin()
    writer.write(data)
    writer.commit()
    assert flaky.failed == 1
    assert client.bucket(name).get_blob("flaky.gz").download_as_bytes() == data


@pytest.mark.usefixtures("gcs_bucket")
def test_gcs_hard_failure_raises() -> None:
    writer = _writer(f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/x.gz", part_size=256 * 1024)
    writer.begin()
    with pytest.raises(Exception, match=r"404|Not Found|not found"):
        _write_and_commit(writer, _payload(300_000))
    writer.abort()


def test_gcs_replace_false(gcs_bucket: tuple[Any, str]) -> None:
    client, name = gcs_bucket
    client.bucket(name).blob("taken.gz").upload_from_string(b"old")
    with pytest.raises(DestinationExistsError, match="already exists"):
        _writer(f"gs://{name}/taken.gz", replace=False, part_size=256 * 1024).begin()
    assert client.bucket(name).get_blob("taken.gz").download_as_bytes() == b"old"


# --- local files ----------------------------------------------------------------------------------


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_local_commit_is_atomic_and_creates_directories(tmp_path: Path) -> None:
    target = tmp_path / "lake" / "dt=2024-01-15" / "events.ndjson.gz"
    writer = _writer(f"file://{target}")
    assert isinstance(writer, LocalFileWriter)
    writer.begin()
    writer.write(b"abc")
    assert not target.exists()  # only the temp file so far
    assert writer.temp_path is not None
    assert writer.temp_path.parent == target.parent
    writer.write(memoryview(b"def"))
    writer.commit()
    assert target.read_bytes() == b"abcdef"
    assert writer.bytes_written == 6
    assert _leftovers(target.parent) == []


def test_local_abort_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "events.gz"
    target.write_bytes(b"previous")
    writer = _writer(f"file://{target}")
    writer.begin()
    writer.write(b"partial")
    writer.abort()
    assert target.read_bytes() == b"previous"  # replace=True never touches it before commit
    assert _leftovers(tmp_path) == []


def test_local_replace(tmp_path: Path) -> None:
    target = tmp_path / "events.gz"
    target.write_bytes(b"previous")
    with pytest.raises(DestinationExistsError, match="replace=False"):
        _writer(f"file://{target}", replace=False).begin()
    writer = _writer(f"file://{target}", replace=True)
    writer.begin()
    writer.write(b"new")
    writer.commit()
    assert target.read_bytes() == b"new"


def test_local_replace_false_never_overwrites_a_file_that_appears(tmp_path: Path) -> None:
    target = tmp_path / "events.gz"
    writer = _writer(f"file://{target}", replace=False)
    writer.begin()
    writer.write(b"mine")
    target.write_bytes(b"theirs")  # someone else won the race
    with pytest.raises(DestinationExistsError, match="appeared during the download"):
        writer.commit()
    writer.abort()
    assert target.read_bytes() == b"theirs"
    assert _leftovers(tmp_path) == []


def test_local_directory_destination_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(CometlyInputError, match="is a directory"):
        _writer(f"file://{tmp_path / 'dir'}").begin()


def test_upload_error_is_an_airflow_exception() -> None:
    from airflow.providers.common.compat.sdk import AirflowException

    assert issubclass(UploadError, AirflowException)
    assert issubclass(DestinationExistsError, AirflowException)


def test_s3_client_names_its_caller_without_searching_the_stack(
    s3_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AWS User-Agent keeps ``Caller/<operator>``, without the provider's ``inspect.stack()`` search."""
    import inspect

    def no_stack_search(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspect.stack() called while building the S3 client")

    monkeypatch.setattr(inspect, "stack", no_stack_search)
    writer = _writer("s3://lake/k.gz", conn_id="aws_default", caller="DownloadEventExportOperator")
    assert isinstance(writer, S3MultipartWriter)
    user_agent_extra = writer.client.meta.config.user_agent_extra
    assert "Caller/DownloadEventExportOperator" in user_agent_extra
