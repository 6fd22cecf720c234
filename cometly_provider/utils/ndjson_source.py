"""Stream NDJSON (plain or gzip) from ``s3://``, ``gs://``, ``file://`` or a local path, line by line.

Nothing here loads a whole file: bytes flow through a 1 MiB buffer (and a gzip decoder when the
first two bytes are the gzip magic number; the name of the file does not matter), and lines are
parsed one at a time. A source can be opened several times (the track operator reads it once to
validate and once to send); every later open is pinned to the object version seen by the first one,
so a file replaced in between fails loudly instead of sending rows that were never validated.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from airflow.providers.common.compat.sdk import AirflowOptionalProviderFeatureException

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.utils.locations import ObjectLocation, parse_location

BUFFER_SIZE = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"


SourceLocation = ObjectLocation


@dataclass(frozen=True)
class BadLine:
    """A line that is not a JSON value."""

    reason: str


def looks_like_location(value: str) -> bool:
    """Whether ``value`` is meant as a file location (a URI with a scheme, or an absolute path)."""
    text = value.strip()
    return text.startswith("/") or "://" in text.split("\n", 1)[0][:16]


def parse_source(value: object, *, field: str = "events") -> SourceLocation:
    """Validate ``s3://bucket/key``, ``gs://bucket/key``, ``file:///path`` or ``/path``."""
    return parse_location(value, field=field, bare_paths=True)


class _RawAdapter(io.RawIOBase):
    """Gives any ``read(n)`` stream (botocore StreamingBody, GCS BlobReader) ``readinto`` for buffering."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            super().close()


class NdjsonSource:
    """An NDJSON file that can be read several times as a stream of ``(line_number, value)``.

    :param location: where the file is.
    :param conn_id: Airflow connection for ``s3://`` (default ``aws_default``) or ``gs://``
        (default ``google_cloud_default``); unused for local files.
    """

    def __init__(self, location: SourceLocation, *, conn_id: str | None = None) -> None:
        self.location = location
        self.conn_id = conn_id
        self.compressed: bool | None = None
        self._version: Any = None  # ETag / generation / (size, mtime) of the first open

    @property
    def uri(self) -> str:
        return self.location.uri

    def rows(self) -> Iterator[tuple[int, Any]]:
        """``(1-based line number, parsed JSON or BadLine)`` for every non-blank line."""
        with self._open_text() as lines:
            number = 0
            try:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield number, json.loads(line)
                    except ValueError as err:
                        yield number, BadLine(f"not valid JSON ({err})")
            except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                raise CometlyInputError(
                    f"events file {self.uri} is not a complete gzip stream (after line {number}): "
                    f"{type(err).__name__}: {err}",
                    field="events",
                ) from None

    @contextmanager
    def _open_text(self) -> Iterator[io.BufferedIOBase]:
        raw = self._open_binary()
        try:
            buffered: Any = raw
            if not isinstance(raw, io.BufferedReader):
                buffered = io.BufferedReader(cast("Any", raw), BUFFER_SIZE)
            compressed = buffered.peek(2)[:2] == GZIP_MAGIC
            self.compressed = compressed
            if compressed:
                # GzipFile reads lines through its own C-level buffer; multi-member files work.
                yield gzip.GzipFile(fileobj=buffered, mode="rb")
            else:
                yield buffered
        finally:
            raw.close()

    def _open_binary(self) -> io.RawIOBase | BinaryIO:
        scheme = self.location.scheme
        if scheme == "file":
            return self._open_file()
        if scheme == "s3":
            return self._open_s3()
        return self._open_gcs()

    def _open_file(self) -> BinaryIO:
        path = self.location.key
        try:
            handle = open(path, "rb", buffering=BUFFER_SIZE)  # noqa: SIM115 - closed by _open_text
        except FileNotFoundError:
            raise CometlyInputError(f"events file {self.uri} does not exist", field="events") from None
        except IsADirectoryError:
            raise CometlyInputError(
                f"events={self.uri} is a directory: name a file", field="events"
            ) from None
        stat = os.fstat(handle.fileno())
        version = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        self._check_version(version, handle.close)
        return handle

    def _check_version(self, version: Any, close: Any) -> None:
        if self._version is None:
            self._version = version
        elif version != self._version:
            close()
            raise CometlyInputError(
                f"events file {self.uri} changed after it was validated; nothing more was read from it. "
                "Run the task again to validate and send the new content.",
                field="events",
            )

    def _open_s3(self) -> io.RawIOBase:
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
            from botocore.exceptions import ClientError
        except ImportError as err:
            raise AirflowOptionalProviderFeatureException(
                "s3:// events files need the Amazon provider: pip install 'airflow-provider-cometly[amazon]'"
            ) from err
        client = S3Hook(aws_conn_id=self.conn_id or "aws_default").get_conn()
        pinned = {"IfMatch": self._version} if self._version is not None else {}
        try:
            response = client.get_object(Bucket=self.location.bucket, Key=self.location.key, **pinned)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise CometlyInputError(f"events file {self.uri} does not exist", field="events") from None
            if code in ("PreconditionFailed", "412"):
                self._check_version(object(), lambda: None)  # raises "changed after it was validated"
            raise
        if self._version is None:
            self._version = response.get("ETag")
        return _RawAdapter(response["Body"])

    def _open_gcs(self) -> io.RawIOBase:
        try:
            from airflow.providers.google.cloud.hooks.gcs import GCSHook
            from google.api_core.exceptions import NotFound
        except ImportError as err:
            raise AirflowOptionalProviderFeatureException(
                "gs:// events files need the Google provider: pip install 'airflow-provider-cometly[google]'"
            ) from err
        client = GCSHook(gcp_conn_id=self.conn_id or "google_cloud_default").get_conn()
        bucket = client.bucket(self.location.bucket)
        first_open = self._version is None
        # Later opens are pinned to the generation validated first: a replaced object is not read.
        blob = bucket.blob(self.location.key, generation=self._version)
        try:
            blob.reload()  # fails here (not mid-stream) when the object or that generation is gone
        except NotFound:
            if not first_open:
                self._check_version(object(), lambda: None)  # raises "changed after it was validated"
            raise CometlyInputError(f"events file {self.uri} does not exist", field="events") from None
        if first_open:
            self._version = blob.generation
        return _RawAdapter(blob.open("rb", chunk_size=8 * BUFFER_SIZE))
