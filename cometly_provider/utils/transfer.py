"""Stream an export from its presigned URL into a writer: gzip integrity, record count, sha256, resume.

The pieces, in the order the bytes flow through them::

    hook.open_download(url, offset)  ->  GzipVerifier (CRC/length, records)  ->  sha256  ->  writer

:class:`ExportTransfer` owns the loop. It never holds more than one download chunk and one bounded
piece of decompressed output at a time; the writer bounds its own part buffers (see
:mod:`cometly_provider.utils.storage`). A cut connection or an expired URL resumes with ``Range``
from the exact byte already consumed, so the verifier, hash and writer simply carry on.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, cast

from cometly_provider.exceptions import (
    CometlyDownloadError,
    CometlyDownloadExpiredError,
    CometlyDownloadIntegrityError,
    CometlyDownloadRangeIgnoredError,
)

MB = 1_000_000
MiB = 1024 * 1024
#: Bytes asked of the HTTP response per read.
DEFAULT_CHUNK_SIZE = 1 * MiB
#: Upper bound on one piece of decompressed output, whatever the compression ratio.
DEFAULT_MAX_PIECE = 1 * MiB
#: Downloaded chunks waiting for the verification thread (bounds memory; blocks the download when full).
DEFAULT_VERIFY_QUEUE = 8
#: What an empty export lands as (gzip as served): a valid gzip stream of no bytes, reproducible.
EMPTY_GZIP = gzip.compress(b"", mtime=0)

try:  # ISA-L inflates real exports with 1.6x less CPU than stdlib zlib (docs/benchmarks.md)
    from isal import igzip_lib as _igzip_lib
except ImportError:  # pragma: no cover - the wheel is a dependency, but may be missing on a platform
    _igzip_lib = None  # type: ignore[assignment]

#: The inflater used by default: ``"isal"`` when the ``isal`` wheel imports, else ``"zlib"``.
INFLATER = "isal" if _igzip_lib is not None else "zlib"
_INFLATE_ERRORS: tuple[type[Exception], ...] = (
    (zlib.error, cast("type[Exception]", _igzip_lib.IsalError)) if _igzip_lib is not None else (zlib.error,)
)


try:  # counting records with numpy is ~3x faster than bytes.count and leaves the GIL; optional
    import numpy as _numpy
except ImportError:  # pragma: no cover - numpy comes with the Google provider, not with this one
    _numpy = None  # type: ignore[assignment]


def count_newlines(data: bytes) -> int:
    """Newline bytes in ``data`` (numpy when installed: 0.09 vs 0.29 CPU s per 100 MB of gzip here)."""
    if _numpy is not None and len(data) >= 4096:
        return int(_numpy.count_nonzero(_numpy.frombuffer(data, dtype=_numpy.uint8) == 10))
    return data.count(b"\n")


class _ZlibInflater:
    """Stdlib zlib behind ISA-L's decompressor interface: the unconsumed input is kept here."""

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def eof(self) -> bool:
        return self._inflater.eof

    @property
    def needs_input(self) -> bool:
        return not self._inflater.unconsumed_tail

    @property
    def unused_data(self) -> bytes:
        return self._inflater.unused_data

    def decompress(self, data: bytes | bytearray | memoryview, max_length: int) -> bytes:
        tail = self._inflater.unconsumed_tail
        if tail:
            data = tail + bytes(data) if data else tail
        return self._inflater.decompress(data, max_length)

    def flush(self) -> bytes:
        return self._inflater.flush()


class _IsalInflater:
    """ISA-L's gzip decompressor (checks CRC-32 and length itself; releases the GIL while inflating)."""

    def __init__(self) -> None:
        assert _igzip_lib is not None
        self._inflater = _igzip_lib.IgzipDecompressor(flag=_igzip_lib.DECOMP_GZIP)

    @property
    def eof(self) -> bool:
        return bool(self._inflater.eof)

    @property
    def needs_input(self) -> bool:
        return bool(self._inflater.needs_input)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._inflater.unused_data)

    def decompress(self, data: bytes | bytearray | memoryview, max_length: int) -> bytes:
        return bytes(self._inflater.decompress(data, max_length))

    def flush(self) -> bytes:
        return b""  # everything was returned by decompress


_INFLATERS: dict[str, Callable[[], _ZlibInflater | _IsalInflater]] = {"zlib": _ZlibInflater}
if _igzip_lib is not None:
    _INFLATERS["isal"] = _IsalInflater


class GzipVerifier:
    """Check that raw bytes form a complete gzip stream and count its NDJSON records.

    :meth:`feed` yields the decompressed data in pieces of at most ``max_piece`` bytes, so a gzip
    bomb cannot blow memory. :meth:`finish` fails unless the stream reached its end marker, which
    is where the inflater checks the CRC-32 and length of each member. Concatenated members (valid
    gzip) are accepted; any other bytes after the end are not.

    Records are newlines, plus one for a last line without a trailing newline.

    :param inflater: ``"isal"`` or ``"zlib"``; default :data:`INFLATER`.
    """

    def __init__(self, *, max_piece: int = DEFAULT_MAX_PIECE, inflater: str | None = None) -> None:
        if max_piece < 1:
            raise ValueError(f"max_piece must be >= 1, got {max_piece!r}")
        name = inflater or INFLATER
        if name not in _INFLATERS:
            raise ValueError(f"inflater must be one of {sorted(_INFLATERS)}, got {name!r}")
        self.max_piece = max_piece
        self.inflater = name
        self._new_inflater = _INFLATERS[name]
        self._inflater = self._new_inflater()
        self.members = 0
        self.compressed_bytes = 0
        self.decompressed_bytes = 0
        self._newlines = 0
        self._open_line = False  # the data so far ends in the middle of a line

    @property
    def records(self) -> int:
        return self._newlines + (1 if self._open_line else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Decompress ``data``; yields bounded pieces of output (consume them before the next feed)."""
        position = self.compressed_bytes
        self.compressed_bytes += len(data)
        if not data:
            return
        if self._inflater.eof:
            position = self._next_member(position)
        pending: bytes | bytearray | memoryview = data
        while True:
            try:
                out = self._inflater.decompress(pending, self.max_piece)
            except _INFLATE_ERRORS as err:
                where = "after the end of the gzip stream" if self.members else "in the gzip stream"
                raise CometlyDownloadIntegrityError(
                    f"export download is not valid gzip: bad data {where} near byte {position} ({err})"
                ) from None
            if out:
                self._account(out)
                yield out
            if self._inflater.eof:
                pending = self._inflater.unused_data
                if not pending:
                    return
                # The member ended inside this chunk: what follows must be another complete member.
                position = self._next_member(self.compressed_bytes - len(pending))
            elif self._inflater.needs_input:
                return
            else:
                pending = b""  # more output from the input already taken

    def _next_member(self, position: int) -> int:
        self.members += 1
        self._inflater = self._new_inflater()
        return position

    def finish(self) -> Iterator[bytes]:
        """Flush the last output and check the stream is complete; raises if it is not."""
        if self.compressed_bytes == 0:
            raise CometlyDownloadIntegrityError("export download is empty: expected a gzip stream")
        # All input is consumed by now, so only a few bytes of output can still be pending.
        out = self._inflater.flush()
        if out:
            self._account(out)
            yield out
        if not self._inflater.eof:
            raise CometlyDownloadIntegrityError(
                f"export download is truncated: the gzip stream stops after {self.compressed_bytes} bytes, "
                "before its end marker (CRC and length unchecked)"
            )
        self.members += 1

    def _account(self, out: bytes) -> None:
        self.decompressed_bytes += len(out)
        self._newlines += count_newlines(out)
        self._open_line = out[-1:] != b"\n"


class _VerificationThread(threading.Thread):
    """Runs the gzip check on its own thread, so download, inflate and upload overlap.

    The inflaters release the GIL while inflating, so on two cores this check costs the download
    little wall-clock time. Chunks wait in a bounded queue; ``sink`` (decompress=True) receives
    every decompressed piece, on this thread. The first error is kept and re-raised by
    :meth:`put` / :meth:`close` in the downloading thread; later chunks are discarded.
    """

    def __init__(self, verifier: GzipVerifier, sink: Callable[[bytes], None] | None, depth: int) -> None:
        super().__init__(name="cometly-verify", daemon=True)
        self.verifier = verifier
        self._sink = sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._cancelled = False
        self.error: BaseException | None = None

    def run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self.error is not None or self._cancelled:
                continue
            try:
                for piece in self.verifier.feed(chunk):
                    if self._sink is not None:
                        self._sink(piece)
            except BaseException as err:  # re-raised in the downloading thread
                self.error = err

    def put(self, chunk: bytes) -> None:
        self._raise_error()
        self._queue.put(chunk)

    def close(self) -> None:
        """Wait until every queued chunk went through; re-raises the first failure."""
        if self.is_alive():
            self._queue.put(None)
            self.join()
        self._raise_error()

    def cancel(self) -> None:
        """Stop without checking the rest (the transfer failed or restarts)."""
        self._cancelled = True
        if self.is_alive():
            self._queue.put(None)  # the thread drains the queue, so this cannot block for long
            self.join()

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class Log(Protocol):
    """The logging calls used here: satisfied by ``logging.Logger`` and Airflow's task logger."""

    def info(self, msg: Any, /, *args: Any) -> Any: ...

    def warning(self, msg: Any, /, *args: Any) -> Any: ...

    def exception(self, msg: Any, /, *args: Any) -> Any: ...


class SourceStream(Protocol):
    """What :class:`ExportTransfer` needs of an open download (the hook's ``DownloadStream``)."""

    total_size: int | None
    etag: str | None

    def iter_chunks(self, chunk_size: int = ...) -> Iterator[bytes]: ...


class Writer(Protocol):
    """A destination object being written; see :mod:`cometly_provider.utils.storage`."""

    bytes_written: int

    def set_size_hint(self, size: int | None) -> None: ...

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def restart(self) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class DownloadSource(Protocol):
    """Where the bytes come from: an export asked for fresh presigned URLs, or one fixed URL.

    See :class:`cometly_provider.exports.ExportDownloadSource` and ``PresignedUrlSource``.
    """

    #: Whether :meth:`fresh_url` can give a new URL after one expired.
    can_refresh: bool

    def fresh_url(self) -> str: ...

    def open(self, url: str, offset: int) -> AbstractContextManager[SourceStream]: ...


@dataclass(frozen=True)
class TransferResult:
    bytes_downloaded: int
    bytes_written: int
    records: int
    sha256: str
    duration_s: float
    resumes: int
    restarts: int

    @property
    def mb_per_s(self) -> float:
        """MB (10**6 bytes) of destination object written per second."""
        return self.bytes_written / MB / self.duration_s if self.duration_s > 0 else 0.0


class _SourceChanged(Exception):
    """The resumed response belongs to a different file (ETag or size changed)."""


class ExportTransfer:
    """Copy one export from its presigned URL into ``writer``, verifying and hashing on the way.

    :param source: the export (asked for a URL at the start and a fresh one after an expiry or a cut)
        or a fixed presigned URL.
    :param writer: the destination; committed only after the gzip stream checked out complete.
    :param decompress: write the decompressed NDJSON instead of the gzip bytes as served.
    :param max_resume_attempts: resumptions allowed after cuts, expiries and restarts, in total.
    :param progress_interval: seconds between progress log lines.
    :param resume_wait: seconds before the first resumption; doubles each time, capped at 30 s.
    :param inflater: ``"isal"`` or ``"zlib"`` for the gzip check; default :data:`INFLATER`.

    The calling thread downloads, hashes and writes (gzip as served); a second thread inflates to
    check the stream (and, with ``decompress=True``, hashes and writes the output), so the two
    overlap. Nothing is committed before that thread has checked the last byte.
    """

    def __init__(
        self,
        *,
        source: DownloadSource,
        writer: Writer,
        decompress: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_piece: int = DEFAULT_MAX_PIECE,
        max_resume_attempts: int = 5,
        progress_interval: float = 10.0,
        resume_wait: float = 0.5,
        log: Log | None = None,
        inflater: str | None = None,
        verify_queue: int = DEFAULT_VERIFY_QUEUE,
    ) -> None:
        self._source = source
        self._writer = writer
        self.decompress = decompress
        self.chunk_size = chunk_size
        self.max_piece = max_piece
        self.max_resume_attempts = max_resume_attempts
        self.progress_interval = progress_interval
        self.resume_wait = resume_wait
        self.log: Log = log or logging.getLogger(__name__)
        self.inflater = inflater
        self.verify_queue = verify_queue
        self._started = self._next_progress = 0.0
        self._total: int | None = None
        self._verification: _VerificationThread | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._verifier = GzipVerifier(max_piece=self.max_piece, inflater=self.inflater)
        self._hash = hashlib.sha256()
        self._offset = 0

    def _start_verification(self) -> None:
        self._stop_verification()
        self._verification = _VerificationThread(
            self._verifier, self._write_piece if self.decompress else None, self.verify_queue
        )
        self._verification.start()

    def _stop_verification(self) -> None:
        if self._verification is not None:
            self._verification.cancel()
            self._verification = None

    def _write_piece(self, piece: bytes) -> None:
        self._hash.update(piece)
        self._writer.write(piece)

    def run(self) -> TransferResult:
        started = time.monotonic()
        self._next_progress = started + self.progress_interval
        self._started = started
        attempts = restarts = 0
        total: int | None = None
        etag: str | None = None
        try:
            url = self._source.fresh_url()
            self._start_verification()
            while True:
                phase = "open"
                try:
                    with self._source.open(url, self._offset) as stream:
                        phase = "stream"
                        if self._offset == 0:
                            total, etag = stream.total_size, stream.etag
                            # The decompressed size is unknown: the writer must not size parts by the gzip's.
                            self._writer.set_size_hint(None if self.decompress else total)
                        elif (stream.etag and etag and stream.etag != etag) or (
                            stream.total_size is not None and total is not None and stream.total_size != total
                        ):
                            raise _SourceChanged
                        self._total = total
                        for chunk in stream.iter_chunks(self.chunk_size):
                            self._consume(chunk)
                    if total is not None and self._offset < total:
                        raise CometlyDownloadError(
                            f"the connection closed after {self._offset} of {total} bytes"
                        )
                    if total is not None and self._offset > total:
                        raise CometlyDownloadIntegrityError(
                            f"export download sent {self._offset} bytes, more than its size {total}"
                        )
                    break
                except CometlyDownloadIntegrityError:
                    raise
                except CometlyDownloadExpiredError as err:
                    if not self._source.can_refresh:  # no wait: the same URL cannot come back to life
                        raise CometlyDownloadExpiredError(
                            f"{err} Only a presigned URL was given, so no fresh one can be requested: "
                            "pass the export (the sensor's result, or export_id and kind) instead.",
                            status_code=err.status_code,
                        ) from None
                    attempts = self._count_attempt(attempts, err, "the presigned URL expired")
                    url = self._source.fresh_url()
                except (CometlyDownloadRangeIgnoredError, _SourceChanged) as err:
                    why = (
                        "the file changed since the download started"
                        if isinstance(err, _SourceChanged)
                        else "the server ignored the Range header"
                    )
                    attempts = self._count_attempt(attempts, err, why, restart=True)
                    restarts += 1
                    self._stop_verification()  # it may be writing (decompress=True)
                    self._writer.restart()
                    self._reset_state()
                    self._start_verification()
                except CometlyDownloadError as err:
                    if phase != "stream":
                        raise  # refused before any byte came (404, 416...): resuming cannot help
                    attempts = self._count_attempt(attempts, err, "the download was cut")
                    if self._source.can_refresh:
                        url = self._source.fresh_url()  # the old URL may be about to expire
            assert self._verification is not None
            self._verification.close()  # raises if the check failed
            self._verification = None
            if self._verifier.compressed_bytes == 0:
                # Content-Length: 0, or closed with no length before any byte: an empty export.
                self.log.warning("The export download is empty (0 bytes): writing an empty export")
                if not self.decompress:
                    self._write_piece(EMPTY_GZIP)
            else:
                for piece in self._verifier.finish():
                    if self.decompress:
                        self._write_piece(piece)
            self._writer.commit()
        except BaseException:
            self._stop_verification()
            self._abort_quietly()
            raise
        duration = max(time.monotonic() - started, 1e-9)
        return TransferResult(
            bytes_downloaded=self._offset,
            bytes_written=self._writer.bytes_written,
            records=self._verifier.records,
            sha256=self._hash.hexdigest(),
            duration_s=duration,
            resumes=attempts,
            restarts=restarts,
        )

    def _consume(self, chunk: bytes) -> None:
        if not self.decompress:
            self._hash.update(chunk)
            self._writer.write(chunk)
        assert self._verification is not None
        self._verification.put(chunk)
        # Counted only once the whole chunk went through: a cut resumes exactly after it.
        self._offset += len(chunk)
        now = time.monotonic()
        if now >= self._next_progress:
            self._next_progress = now + self.progress_interval
            self._log_progress(now)

    def _log_progress(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        done = self._offset / MB
        total = self._total
        of = f" of {total / MB:.1f} MB ({100.0 * self._offset / total:.0f}%)" if total else ""
        self.log.info(
            "Export download: %.1f MB%s downloaded, %.1f MB written, %.1f MB/s, %d records so far",
            done,
            of,
            self._writer.bytes_written / MB,
            done / elapsed,
            self._verifier.records,
        )

    def _count_attempt(self, attempts: int, err: BaseException, why: str, *, restart: bool = False) -> int:
        attempts += 1
        if attempts > self.max_resume_attempts:
            raise CometlyDownloadError(
                f"export download failed at byte {self._offset}: {why} and the "
                f"{self.max_resume_attempts} resume attempt(s) allowed (max_resume_attempts) are used up"
            ) from err
        self.log.warning(
            "Export download interrupted at byte %d (%s: %s); attempt %d/%d: %s",
            self._offset,
            why,
            err,
            attempts,
            self.max_resume_attempts,
            "restarting from byte 0" if restart else f"resuming from byte {self._offset}",
        )
        wait = min(self.resume_wait * 2 ** (attempts - 1), 30.0)
        if wait > 0:
            time.sleep(wait)
        return attempts

    def _abort_quietly(self) -> None:
        try:
            self._writer.abort()
        except Exception:  # the original failure matters more; abort failures are logged
            self.log.exception("Could not clean up the partial destination object")
