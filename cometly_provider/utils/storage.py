"""Destination writers for export downloads: S3 multipart, GCS resumable, local file.

Every writer follows one life cycle: :meth:`~ObjectWriter.begin` (checks ``replace``), any number
of :meth:`~ObjectWriter.write` calls, then :meth:`~ObjectWriter.commit` or
:meth:`~ObjectWriter.abort`. Nothing is visible at the destination before ``commit``; ``abort``
leaves nothing behind (no object, no pending multipart upload, no temp file).

Memory: the S3 and GCS writers keep at most ``max_in_flight + 1`` part buffers of ``part_size``
bytes, reused from part to part; a write blocks while all of them are busy uploading.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowOptionalProviderFeatureException

# Re-exported: part sizes are checked in cometly_provider.checks, the one home of settings checks.
from cometly_provider.checks import GCS_CHUNK_MULTIPLE as GCS_CHUNK_MULTIPLE
from cometly_provider.checks import MIN_PART_SIZE as MIN_PART_SIZE
from cometly_provider.checks import S3_MIN_PART_SIZE as S3_MIN_PART_SIZE
from cometly_provider.checks import MiB as MiB
from cometly_provider.checks import check_part_size as check_part_size
from cometly_provider.exceptions import CometlyInputError
from cometly_provider.utils.locations import ObjectLocation, parse_location

if TYPE_CHECKING:
    from cometly_provider.utils.transfer import Log

#: S3 refuses parts larger than 5 GiB and more than 10,000 parts (the minimum sizes are checked in
#: :mod:`cometly_provider.checks`).
S3_MAX_PART_SIZE = 5 * 1024 * MiB
S3_MAX_PARTS = 10_000
#: Without a (trustworthy) size, the part size doubles after each tenth of S3_MAX_PARTS parts.
S3_PART_GROWTH_STEPS = 10
GZIP_CONTENT_TYPE = "application/gzip"
NDJSON_CONTENT_TYPE = "application/x-ndjson"


class DestinationExistsError(AirflowException):
    """``replace=False`` and the destination object already exists."""


class UploadError(AirflowException):
    """The destination refused the upload."""


Destination = ObjectLocation


#: scheme -> (the provider package it needs, its display name, the extra that installs it)
SCHEME_PROVIDERS = {
    "s3": ("airflow.providers.amazon", "Amazon", "amazon"),
    "gs": ("airflow.providers.google", "Google", "google"),
}


def missing_provider_error(
    scheme: str, value: object, *, field: str
) -> AirflowOptionalProviderFeatureException:
    package, name, extra = SCHEME_PROVIDERS[scheme]
    return AirflowOptionalProviderFeatureException(
        f"{field}={value!r}: {scheme}:// locations need the {name} provider ({package}), which is not "
        f"installed: pip install 'airflow-provider-cometly[{extra}]'"
    )


def check_scheme_available(scheme: str, value: object, *, field: str = "destination") -> None:
    """Fail when the provider that ``scheme`` needs is not installed.

    Cheap enough for DAG parsing: a module-spec lookup of the provider package, no hook import.
    """
    if scheme not in SCHEME_PROVIDERS:
        return
    try:
        found = importlib.util.find_spec(SCHEME_PROVIDERS[scheme][0]) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise missing_provider_error(scheme, value, field=field)


def static_scheme(value: object) -> str | None:
    """The scheme of a location whose scheme is not templated (``s3://{{ var }}/k`` -> ``s3``)."""
    if not isinstance(value, str):
        return None
    head = value.strip().split("{{", 1)[0].split("{%", 1)[0]
    if "://" not in head:
        return None
    return head.split("://", 1)[0].lower() or None


def parse_destination(value: object, *, field: str = "destination") -> Destination:
    """Validate and split a destination URI (``s3://bucket/key``, ``gs://bucket/key``, ``file:///path``)."""
    return parse_location(value, field=field)


class ObjectWriter(ABC):
    """Base class of the destination writers (see the module docstring for the life cycle)."""

    def __init__(self, destination: Destination, *, replace: bool, content_type: str, log: Log):
        self.destination = destination
        self.replace = replace
        self.content_type = content_type
        self.log = log
        self.bytes_written = 0
        self._size_hint: int | None = None

    @property
    def uri(self) -> str:
        return self.destination.uri

    def begin(self) -> None:
        """Check the destination (``replace=False``: it must not exist) and get ready to write."""
        if not self.replace and self._exists():
            raise DestinationExistsError(
                f"destination {self.uri} already exists and replace=False: delete it, choose another "
                "destination or set replace=True"
            )
        self._start()

    def set_size_hint(self, size: int | None) -> None:
        """Expected size of the source bytes (may help choose part sizes)."""
        self._size_hint = size

    def restart(self) -> None:
        """Throw away everything written so far and start again from byte 0."""
        self.abort()
        self.bytes_written = 0
        self._start()

    @abstractmethod
    def _exists(self) -> bool: ...

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    @abstractmethod
    def remove(self) -> bool:
        """Delete the destination if it exists (a stale one from an earlier try); ``True`` if it did."""


class _PartWriter(ObjectWriter):
    """Cuts the byte stream into ``part_size`` parts uploaded by a bounded thread pool.

    At most ``max_in_flight`` parts upload at once and one more is being filled, each in a
    ``bytearray`` that is reused once its upload is done. Upload errors surface on the next
    ``write`` or on ``commit``.
    """

    thread_name = "cometly-part"

    def __init__(
        self,
        destination: Destination,
        *,
        part_size: int,
        max_in_flight: int,
        replace: bool,
        content_type: str,
        log: Log,
    ) -> None:
        super().__init__(destination, replace=replace, content_type=content_type, log=log)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
        self.part_size = part_size
        self.max_in_flight = max_in_flight
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: set[Future[tuple[int, Any, bytearray]]] = set()
        self._free: list[bytearray] = []
        self._allocated = 0
        self._buffer: bytearray | None = None
        self._fill = 0
        self._parts: dict[int, Any] = {}
        self._next_part = 1
        self._dispatched_bytes = 0

    def _reset_parts(self) -> None:
        self._inflight = set()
        self._free = []
        self._allocated = 0
        self._buffer = None
        self._fill = 0
        self._parts = {}
        self._next_part = 1
        self._dispatched_bytes = 0

    @property
    def buffers_allocated(self) -> int:
        return self._allocated

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            if self._buffer is None:
                self._buffer = self._take_buffer()
                self._fill = 0
            n = min(len(view), self.part_size - self._fill)
            self._buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            self.bytes_written += n
            view = view[n:]
            if self._fill == self.part_size:
                self._dispatch(last=False)

    def _take_buffer(self) -> bytearray:
        self._harvest(block=False)
        while not self._free and self._allocated > self.max_in_flight:
            self._harvest(block=True)
        if self._free:
            return self._free.pop()
        self._allocated += 1
        return bytearray(self.part_size)

    def _harvest(self, *, block: bool) -> None:
        """Collect finished uploads (re-raising the first failure) and recycle their buffers."""
        if not self._inflight:
            return
        if block:
            done, _ = wait(self._inflight, return_when=FIRST_COMPLETED)
        else:
            done = {f for f in self._inflight if f.done()}
        for future in done:
            self._inflight.discard(future)
            number, result, buffer = future.result()  # raises the upload's error
            self._parts[number] = result
            if len(buffer) == self.part_size:
                self._free.append(buffer)
            else:
                self._allocated -= 1  # the shortened last part is not reused

    def _dispatch(self, *, last: bool) -> None:
        buffer, length = self._buffer, self._fill
        assert buffer is not None
        self._buffer, self._fill = None, 0
        if length < len(buffer):
            del buffer[length:]  # the last part: shrink in place (no copy of the data)
        number = self._next_part
        self._next_part += 1
        offset = self._dispatched_bytes
        self._dispatched_bytes += length
        self._before_dispatch(number, last=last)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._workers(), thread_name_prefix=f"{self.thread_name}-{id(self):x}"
            )
        future = self._executor.submit(self._upload, number, offset, buffer, last)
        self._inflight.add(future)

    def _upload(self, number: int, offset: int, buffer: bytearray, last: bool) -> tuple[int, Any, bytearray]:
        return number, self._upload_part(number, offset, buffer, last), buffer

    def _finish_uploads(self) -> None:
        while self._inflight:
            self._harvest(block=True)

    def _stop_uploads(self) -> None:
        """Cancel queued parts and wait for running ones (they cannot be interrupted)."""
        for future in self._inflight:
            future.cancel()
        if self._inflight:
            wait(self._inflight)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._inflight = set()

    def _shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _workers(self) -> int:
        return self.max_in_flight

    def _before_dispatch(self, number: int, *, last: bool) -> None:
        """Called in the writing thread before part ``number`` is queued."""

    @abstractmethod
    def _upload_part(self, number: int, offset: int, buffer: bytearray, last: bool) -> Any: ...


def _default_checksum_algorithm(client: Any) -> dict[str, str]:
    """``ChecksumAlgorithm`` for the multipart upload, as boto3's own ``upload_fileobj`` sets it.

    With botocore's default ``request_checksum_calculation="when_supported"`` every part carries a
    CRC32 that S3 checks, and the object keeps a composite checksum (``GetObjectAttributes``).
    A client configured ``"when_required"`` (S3-compatible stores without checksum support) gets
    none, as before. Declaring it also spares moto a full-object checksum at completion (1.7 s
    instead of 2.6 s for 500 MB: docs/benchmarks.md).
    """
    config = getattr(getattr(client, "meta", None), "config", None)
    if getattr(config, "request_checksum_calculation", None) != "when_supported":
        return {}
    return {"ChecksumAlgorithm": "CRC32"}


class S3MultipartWriter(_PartWriter):
    """S3 (or any S3 API) object through a multipart upload with parallel parts.

    Files smaller than one part go in a single ``put_object``. With ``replace=False`` the object is
    checked with ``head_object`` before anything is downloaded.
    """

    thread_name = "cometly-s3-part"

    def __init__(
        self,
        client: Any,
        destination: Destination,
        *,
        part_size: int,
        max_concurrency: int,
        replace: bool,
        content_type: str,
        log: Log,
    ) -> None:
        super().__init__(
            destination,
            part_size=part_size,
            max_in_flight=max_concurrency,
            replace=replace,
            content_type=content_type,
            log=log,
        )
        self.client = client
        self.upload_id: str | None = None
        self._base_part_size = part_size
        self._checksum = _default_checksum_algorithm(client)

    @property
    def bucket(self) -> str:
        return self.destination.bucket

    @property
    def key(self) -> str:
        return self.destination.key

    def _exists(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def _start(self) -> None:
        self._reset_parts()
        self.upload_id = None
        self.part_size = self._base_part_size  # a restart starts again from the first part size

    def _take_buffer(self) -> bytearray:
        self._fit_part_cap()
        return super()._take_buffer()

    def _fit_part_cap(self) -> None:
        """Grow the part about to be filled so that S3's part cap is never reached, whatever the size.

        With a size known in advance the parts are sized once (:meth:`set_size_hint`). Otherwise
        (decompress=True, no Content-Length, or more bytes than announced) the part size doubles after
        each tenth of the cap: 10,000 parts of 8 MiB then hold 8 TiB, more than S3's 5 TiB per object,
        and memory only grows for objects past 8 GB. S3 accepts unequal parts of at least 5 MiB.
        """
        number = self._next_part
        hint = self._size_hint
        if (
            hint is not None
            and self._dispatched_bytes < hint
            and self._dispatched_bytes + (S3_MAX_PARTS - number + 1) * self.part_size >= hint
        ):
            return  # the announced size still fits at the current part size
        step = max(1, S3_MAX_PARTS // S3_PART_GROWTH_STEPS)
        wanted = min(self._base_part_size << ((number - 1) // step), S3_MAX_PART_SIZE)
        if wanted > self.part_size:
            self.log.info(
                "S3 part %d onwards: %d-byte parts (was %d) to stay within %d parts",
                number,
                wanted,
                self.part_size,
                S3_MAX_PARTS,
            )
            self.part_size = wanted

    def remove(self) -> bool:
        if not self._exists():
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key)
        return True

    def set_size_hint(self, size: int | None) -> None:
        super().set_size_hint(size)
        if size and self.upload_id is None and self._buffer is None and size > self.part_size * S3_MAX_PARTS:
            # S3 allows 10,000 parts: grow the part (in whole MiB) rather than fail at part 10,001.
            grown = math.ceil(size / S3_MAX_PARTS / MiB) * MiB
            self.log.warning(
                "Export of %d bytes needs more than %d parts of %d bytes: using %d-byte parts",
                size,
                S3_MAX_PARTS,
                self.part_size,
                grown,
            )
            self.part_size = self._base_part_size = grown

    def _before_dispatch(self, number: int, *, last: bool) -> None:
        if number > S3_MAX_PARTS:
            raise UploadError(
                f"{self.uri}: the object needs more than {S3_MAX_PARTS} parts of {self.part_size} bytes; "
                "raise part_size"
            )
        if self.upload_id is None:
            response = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type, **self._checksum
            )
            self.upload_id = str(response["UploadId"])
            self.log.info("Started S3 multipart upload to %s (%d-byte parts)", self.uri, self.part_size)

    def _upload_part(self, number: int, offset: int, buffer: bytearray, last: bool) -> Any:
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=buffer,
            **self._checksum,
        )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if self._checksum:
            member = "Checksum" + self._checksum["ChecksumAlgorithm"]
            if member in response:
                part[member] = response[member]
        return part

    def commit(self) -> None:
        conditional = {} if self.replace else {"IfNoneMatch": "*"}
        if self.upload_id is None:
            # Smaller than one part: one request, and no multipart upload to clean up.
            body = self._buffer if self._buffer is not None else bytearray()
            if len(body) > self._fill:
                del body[self._fill :]
            self._buffer, self._fill = None, 0
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, ContentType=self.content_type, **conditional
            )
            return
        if self._buffer is not None and self._fill:
            self._dispatch(last=True)
        self._finish_uploads()
        self._shutdown()
        stale = self._stale_uploads()
        parts = [self._parts[n] for n in sorted(self._parts)]
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
            **conditional,
        )
        self.upload_id = None
        self._abort_stale(stale)

    def _stale_uploads(self) -> list[str]:
        """Multipart uploads of this key started before ours: left by earlier tries that were killed.

        A SIGKILLed (e.g. OOM-killed) worker runs no clean-up, so its upload would stay, billed,
        until a bucket lifecycle rule removes it. Uploads started after ours are left alone.
        """
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            uploads = [
                upload
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key)
                for upload in page.get("Uploads", [])
                if upload.get("Key") == self.key
            ]
        except Exception as err:  # e.g. no s3:ListBucketMultipartUploads permission: not fatal
            self.log.warning(
                "Could not list the multipart uploads of %s to clean up stale ones: %s", self.uri, err
            )
            return []
        # S3 lists the uploads of one key in the order they were initiated: those before ours are older.
        ids = [str(u.get("UploadId")) for u in uploads]
        return ids[: ids.index(self.upload_id)] if self.upload_id in ids else []

    def _abort_stale(self, upload_ids: list[str]) -> None:
        for upload_id in upload_ids:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
                self.log.warning(
                    "Aborted multipart upload %s to %s, left unfinished by an earlier try (killed?)",
                    upload_id,
                    self.uri,
                )
            except Exception as err:  # the object landed; a leftover upload is only storage cost
                self.log.warning(
                    "Could not abort the stale multipart upload %s to %s: %s", upload_id, self.uri, err
                )

    def abort(self) -> None:
        self._stop_uploads()
        upload_id, self.upload_id = self.upload_id, None
        self._reset_parts()
        if upload_id is None:
            return
        last: Exception | None = None
        for attempt in range(3):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
                self.log.info("Aborted the S3 multipart upload to %s: nothing was written", self.uri)
                return
            except Exception as err:  # retried: an orphaned upload costs storage until a lifecycle rule
                last = err
                time.sleep(0.5 * (attempt + 1))
        raise UploadError(
            f"could not abort the multipart upload {upload_id} to {self.uri}; delete it with "
            f"abort-multipart-upload or a bucket lifecycle rule: {last}"
        ) from last


class GCSResumableWriter(_PartWriter):
    """Google Cloud Storage object through a resumable upload session.

    Chunks go up one after another (the protocol is sequential) on a background thread, while the
    next chunk is downloaded and verified. The session is finalized only by :meth:`commit`; on
    :meth:`abort` it is cancelled (an unfinalized session never becomes an object anyway).
    """

    thread_name = "cometly-gcs-chunk"
    #: Attempts per chunk for transient failures (5xx, 429, broken connections).
    chunk_attempts = 5
    timeout = (10.0, 120.0)

    def __init__(
        self,
        client: Any,
        session: Any,
        destination: Destination,
        *,
        part_size: int,
        replace: bool,
        content_type: str,
        log: Log,
    ) -> None:
        # Two buffers in flight are enough: one uploading, one queued behind it.
        super().__init__(
            destination,
            part_size=part_size,
            max_in_flight=2,
            replace=replace,
            content_type=content_type,
            log=log,
        )
        self.client = client
        self.session = session
        self.session_url: str | None = None
        self._lock = threading.Lock()

    def _blob(self) -> Any:
        return self.client.bucket(self.destination.bucket).blob(self.destination.key)

    def _exists(self) -> bool:
        return bool(self._blob().exists(client=self.client))

    def _start(self) -> None:
        self._reset_parts()
        self.session_url = None

    def remove(self) -> bool:
        from google.api_core.exceptions import NotFound

        try:
            self._blob().delete(client=self.client)
        except NotFound:
            return False
        return True

    def _workers(self) -> int:
        return 1  # chunks of one session must arrive in order

    def _ensure_session(self) -> str:
        if self.session_url is None:
            self.session_url = self._blob().create_resumable_upload_session(
                content_type=self.content_type,
                client=self.client,
                checksum=None,
                # Even if someone else creates the object meanwhile, never overwrite it.
                if_generation_match=None if self.replace else 0,
            )
            self.log.info("Started GCS resumable upload to %s (%d-byte chunks)", self.uri, self.part_size)
        return self.session_url

    def _before_dispatch(self, number: int, *, last: bool) -> None:
        self._ensure_session()

    def _upload_part(self, number: int, offset: int, buffer: bytearray, last: bool) -> Any:
        total = offset + len(buffer) if last else None
        self._put(offset, memoryview(buffer), total)
        return len(buffer)

    def _put(self, offset: int, view: memoryview, total: int | None) -> None:
        """Send bytes ``offset..`` of the object; ``total`` (known only for the last chunk) finalizes."""
        import requests

        url = self._ensure_session()
        end = offset + len(view)
        sent_from = offset
        for attempt in range(1, self.chunk_attempts + 1):
            size = "*" if total is None else str(total)
            content_range = f"bytes {sent_from}-{end - 1}/{size}" if end > sent_from else f"bytes */{size}"
            try:
                response = self.session.put(
                    url,
                    data=view[sent_from - offset :],
                    headers={"Content-Range": content_range, "Content-Type": self.content_type},
                    timeout=self.timeout,
                )
            except requests.RequestException as err:
                failure = type(err).__name__
            else:
                status = response.status_code
                if status in (200, 201) and total is not None:
                    return
                if status == 308:
                    committed = _committed(response.headers.get("Range"))
                    if committed >= end and total is None:
                        return
                    if committed < sent_from or committed > end:
                        raise UploadError(f"{self.uri}: GCS reports {committed} bytes stored, expected {end}")
                    sent_from = committed  # GCS kept only part of the chunk: send the rest
                    continue
                if status not in (408, 429, 500, 502, 503, 504):
                    raise UploadError(
                        f"GCS upload to {self.uri} failed with HTTP {status}: {response.text[:300]}"
                    )
                failure = f"HTTP {status}"
            if attempt == self.chunk_attempts:
                raise UploadError(f"GCS upload to {self.uri} failed after {attempt} attempts: {failure}")
            self.log.warning(
                "GCS chunk at byte %d of %s failed (%s); retry %d/%d",
                sent_from,
                self.uri,
                failure,
                attempt,
                self.chunk_attempts - 1,
            )
            time.sleep(min(2 ** (attempt - 1), 16) * 0.5)
            sent_from = max(sent_from, min(self._query_committed(url), end))

    def _query_committed(self, url: str) -> int:
        try:
            response = self.session.put(url, headers={"Content-Range": "bytes */*"}, timeout=self.timeout)
        except Exception:
            return 0
        if response.status_code == 308:
            return _committed(response.headers.get("Range"))
        return 0

    def commit(self) -> None:
        if self._buffer is not None and self._fill:
            self._dispatch(last=True)
            self._finish_uploads()
        else:
            self._finish_uploads()
            # Everything sent already (or nothing at all): finalize with an empty request.
            self._put(self._dispatched_bytes, memoryview(b""), self._dispatched_bytes)
        self._shutdown()
        self.session_url = None

    def abort(self) -> None:
        self._stop_uploads()
        url, self.session_url = self.session_url, None
        self._reset_parts()
        if url is None:
            return
        try:
            # GCS answers 499 to a cancelled session; any answer is fine, it is never finalized.
            self.session.delete(url, timeout=self.timeout)
        except Exception as err:
            self.log.warning(
                "Could not cancel the GCS upload session for %s (%s)", self.uri, type(err).__name__
            )
        self.log.info("Cancelled the GCS resumable upload to %s: nothing was written", self.uri)


def _committed(range_header: str | None) -> int:
    """Bytes persisted according to a 308's ``Range: bytes=0-N`` header (none: 0)."""
    if not range_header or "-" not in range_header:
        return 0
    try:
        return int(range_header.rsplit("-", 1)[1]) + 1
    except ValueError:
        return 0


class LocalFileWriter(ObjectWriter):
    """A local file written through a temp file in the same directory, renamed into place on commit.

    The temp file is fsynced before the rename and the directory after, so a crash leaves either the
    old file or the complete new one. ``replace=False`` uses a hard link, which fails atomically if
    the file appeared meanwhile.
    """

    def __init__(self, destination: Destination, *, replace: bool, content_type: str, log: Log):
        super().__init__(destination, replace=replace, content_type=content_type, log=log)
        self.path = Path(destination.key)
        self.temp_path: Path | None = None
        self._file: Any = None
        self._started = 0.0

    def _exists(self) -> bool:
        return self.path.exists()

    def remove(self) -> bool:
        if not self.path.is_file():
            return False
        self.path.unlink(missing_ok=True)
        return True

    def _start(self) -> None:
        if self.path.is_dir():
            raise CometlyInputError(
                f"destination {self.uri} is a directory: name a file", field="destination"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        self.temp_path = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.part")
        self._file = open(self.temp_path, "xb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)
        self.bytes_written += memoryview(data).nbytes

    def commit(self) -> None:
        assert self.temp_path is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        if self.replace:
            os.replace(self.temp_path, self.path)
        else:
            try:
                os.link(self.temp_path, self.path)
            except FileExistsError:
                raise DestinationExistsError(
                    f"destination {self.uri} appeared during the download and replace=False: not overwritten"
                ) from None
            os.unlink(self.temp_path)
        self.temp_path = None
        _fsync_dir(self.path.parent)
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        """Temp files of this destination left by earlier tries that were killed (SIGKILL runs no abort).

        Only those last written before this writer started: a temp file still growing belongs to a
        writer that is alive.
        """
        pattern = re.compile(rf"\.{re.escape(self.path.name)}\.[0-9a-f]{{12}}\.part")
        try:
            candidates = [p for p in self.path.parent.iterdir() if pattern.fullmatch(p.name)]
        except OSError:
            return
        for candidate in candidates:
            try:
                if candidate.stat().st_mtime >= self._started:
                    continue
                candidate.unlink()
                self.log.warning("Removed %s, left unfinished by an earlier try (killed?)", candidate)
            except OSError as err:  # the file landed; a leftover temp file is only disk space
                self.log.warning("Could not remove the stale temp file %s: %s", candidate, err)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.temp_path is not None:
            self.temp_path.unlink(missing_ok=True)
            self.temp_path = None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported on every file system; the data itself is already synced
    finally:
        os.close(fd)


@functools.cache
def _s3_hook_named(s3_hook_class: type[Any], caller: str) -> type[Any]:
    """``S3Hook`` that knows its caller instead of searching the stack for it.

    The Amazon provider finds the operator for its User-Agent with ``inspect.stack()``, which reads
    the source of every frame: ``execute`` reached the first byte after 0.25 s instead of 0.15 s in
    the download bench (docs/benchmarks.md), more with a task's deeper stack. The override only
    short-cuts that lookup; the User-Agent stays the same.
    """

    class CallerNamedS3Hook(s3_hook_class):  # type: ignore[misc]
        def _get_caller(self, target_function_name: str = "execute") -> str:
            return caller

    return CallerNamedS3Hook


def open_writer(
    destination: Destination,
    *,
    conn_id: str | None,
    replace: bool,
    part_size: int,
    max_concurrency: int,
    content_type: str,
    log: Log,
    caller: str = "DownloadExportOperator",
) -> ObjectWriter:
    """Build the writer for ``destination`` with the provider hook for its scheme (no request yet).

    ``caller`` names the operator in the AWS client's User-Agent (``Caller/...``).
    """
    if destination.scheme == "s3":
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
            from botocore.config import Config
        except ImportError as err:
            raise missing_provider_error("s3", destination.uri, field="destination") from err
        s3_hook = _s3_hook_named(S3Hook, caller)(aws_conn_id=conn_id or "aws_default")
        # One pooled connection per part thread, on top of whatever the connection configures.
        config = s3_hook.config.merge(Config(max_pool_connections=max(10, max_concurrency + 2)))
        client = s3_hook.get_client_type(config=config)
        return S3MultipartWriter(
            client,
            destination,
            part_size=part_size,
            max_concurrency=max_concurrency,
            replace=replace,
            content_type=content_type,
            log=log,
        )
    if destination.scheme == "gs":
        try:
            from airflow.providers.google.cloud.hooks.gcs import GCSHook
            from google.auth.transport.requests import AuthorizedSession
        except ImportError as err:
            raise missing_provider_error("gs", destination.uri, field="destination") from err
        gcs_hook = GCSHook(gcp_conn_id=conn_id or "google_cloud_default")
        client = gcs_hook.get_conn()
        session = AuthorizedSession(gcs_hook.get_credentials())  # type: ignore[no-untyped-call]
        return GCSResumableWriter(
            client,
            session,
            destination,
            part_size=part_size,
            replace=replace,
            content_type=content_type,
            log=log,
        )
    return LocalFileWriter(destination, replace=replace, content_type=content_type, log=log)
