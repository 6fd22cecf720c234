"""GzipVerifier and ExportTransfer: integrity, record counts, bounded output, resume and restart logic.

The end-to-end behaviour over real sockets is in ``tests/operators/test_download_export.py``; here the
source is an in-memory fake so every edge (a cut at any byte, a changed file, a lying server) is
cheap to reach.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import random
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cometly_provider.exceptions import (
    CometlyDownloadError,
    CometlyDownloadExpiredError,
    CometlyDownloadIntegrityError,
    CometlyDownloadRangeIgnoredError,
)
from cometly_provider.utils.transfer import (
    EMPTY_GZIP,
    INFLATER,
    ExportTransfer,
    GzipVerifier,
    count_newlines,
)

# Every verifier test runs with ISA-L (the default) and with stdlib zlib (the fallback without the wheel).
INFLATERS = ["isal", "zlib"]


@pytest.fixture(params=INFLATERS)
def inflater(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_isal_is_the_default_inflater() -> None:
    assert INFLATER == "isal"


def _feed_all(verifier: GzipVerifier, data: bytes, cuts: list[int]) -> bytes:
    out = bytearray()
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        for piece in verifier.feed(data[start:cut]):
            out += piece
        start = max(start, cut)
    for piece in verifier.finish():
        out += piece
    return bytes(out)


def _ndjson(rows: int, *, trailing_newline: bool = True) -> bytes:
    text = b"\n".join(b'{"id": %d, "event_time_utc": "2024-01-15T00:00:00Z"}' % i for i in range(rows))
    return text + (b"\n" if trailing_newline and rows else b"")


# --- GzipVerifier ------------------------------------------------------------------------------------


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],  # a plain str
)
@given(
    rows=st.integers(min_value=0, max_value=400),
    trailing=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=8),
    max_piece=st.integers(min_value=1, max_value=5000),
)
def test_verifier_round_trips_any_chunking(
    rows: int, trailing: bool, cuts: list[int], max_piece: int, inflater: str
) -> None:
    plain = _ndjson(rows, trailing_newline=trailing)
    data = gzip.compress(plain)
    verifier = GzipVerifier(max_piece=max_piece, inflater=inflater)
    assert _feed_all(verifier, data, [c % (len(data) + 1) for c in cuts]) == plain
    assert verifier.records == rows
    assert verifier.compressed_bytes == len(data)
    assert verifier.decompressed_bytes == len(plain)


@pytest.mark.parametrize(
    ("plain", "records"),
    [(b"", 0), (b"\n", 1), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"a\n\nb\n", 3)],
)
def test_record_count_rules(plain: bytes, records: int, inflater: str) -> None:
    verifier = GzipVerifier(inflater=inflater)
    assert _feed_all(verifier, gzip.compress(plain), []) == plain
    assert verifier.records == records


def test_truncated_stream_fails_at_every_cut_point(inflater: str) -> None:
    data = gzip.compress(_ndjson(50))
    for cut in range(1, len(data)):
        verifier = GzipVerifier(inflater=inflater)
        with pytest.raises(CometlyDownloadIntegrityError, match=r"truncated|not valid gzip"):
            _feed_all(verifier, data[:cut], [])


def test_empty_input_is_not_a_gzip_stream(inflater: str) -> None:
    with pytest.raises(CometlyDownloadIntegrityError, match="empty"):
        list(GzipVerifier(inflater=inflater).finish())


def test_corrupt_crc_fails(inflater: str) -> None:
    data = bytearray(gzip.compress(_ndjson(20)))
    data[-8] ^= 0xFF  # CRC-32 in the trailer
    with pytest.raises(CometlyDownloadIntegrityError, match="not valid gzip"):
        _feed_all(GzipVerifier(inflater=inflater), bytes(data), [])


def test_wrong_length_in_trailer_fails(inflater: str) -> None:
    data = bytearray(gzip.compress(_ndjson(20)))
    data[-1] ^= 0x01  # ISIZE
    with pytest.raises(CometlyDownloadIntegrityError):
        _feed_all(GzipVerifier(inflater=inflater), bytes(data), [])


def test_not_gzip_fails(inflater: str) -> None:
    with pytest.raises(CometlyDownloadIntegrityError, match="not valid gzip"):
        _feed_all(GzipVerifier(inflater=inflater), b'{"id": 1}\n' * 10, [])


def test_trailing_garbage_fails(inflater: str) -> None:
    data = gzip.compress(_ndjson(5)) + b"garbage after the end"
    with pytest.raises(CometlyDownloadIntegrityError, match="after the end of the gzip stream"):
        _feed_all(GzipVerifier(inflater=inflater), data, [])


def test_concatenated_members_are_one_valid_stream(inflater: str) -> None:
    first, second = _ndjson(3), b'{"id": 99}\n'
    data = gzip.compress(first) + gzip.compress(second)
    verifier = GzipVerifier(inflater=inflater)
    assert _feed_all(verifier, data, [len(data) // 2]) == first + second
    assert verifier.records == 4
    assert verifier.members == 2


def test_second_member_truncated_fails(inflater: str) -> None:
    second = gzip.compress(b"x\n" * 100)
    data = gzip.compress(b"a\n") + second[: len(second) // 2]
    with pytest.raises(CometlyDownloadIntegrityError, match="truncated"):
        _feed_all(GzipVerifier(inflater=inflater), data, [])


def test_gzip_bomb_output_is_bounded_per_piece(inflater: str) -> None:
    # 64 MiB of newlines compress to ~64 KiB: no piece may exceed max_piece.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\n" * (1 << 20)
    data = b"".join(compressor.compress(block) for _ in range(64)) + compressor.flush()
    assert len(data) < 1 << 20
    verifier = GzipVerifier(max_piece=256 * 1024, inflater=inflater)
    biggest = 0
    for piece in verifier.feed(data):
        biggest = max(biggest, len(piece))
    for piece in verifier.finish():
        biggest = max(biggest, len(piece))
    assert biggest <= 256 * 1024
    assert verifier.records == 64 << 20
    assert verifier.decompressed_bytes == 64 << 20


# --- ExportTransfer with a fake source -----------------------------------------------------------


class FakeStream:
    def __init__(self, data: bytes, offset: int, *, cut_at: int | None, etag: str, total: int | None):
        self._data, self._offset, self._cut_at = data, offset, cut_at
        self.total_size = total
        self.etag = etag

    def iter_chunks(self, chunk_size: int = 1024) -> Iterator[bytes]:
        end = len(self._data) if self._cut_at is None else self._offset + self._cut_at
        position = self._offset
        while position < min(end, len(self._data)):
            chunk = self._data[position : min(position + chunk_size, end)]
            position += len(chunk)
            yield chunk
        if self._cut_at is not None:
            raise CometlyDownloadError("connection broke mid-download (fake)")


class FakeSource:
    """Serves ``data``; ``script`` lists what each request does: ok, cut:N, expire, full (ignore Range),
    short:N (close cleanly after N bytes), changed (new ETag)."""

    def __init__(self, data: bytes, script: list[str] | None = None, *, report_total: bool = True):
        self.data = data
        self.script = list(script or [])
        self.calls: list[tuple[str, int]] = []
        self.report_total = report_total

    @contextmanager
    def open(self, url: str, offset: int) -> Iterator[FakeStream]:
        self.calls.append((url, offset))
        action = self.script.pop(0) if self.script else "ok"
        total = len(self.data) if self.report_total else None
        if action == "expire":
            raise CometlyDownloadExpiredError(
                "Cometly export download answered HTTP 403 (fake)", status_code=403
            )
        if action == "full" and offset:
            raise CometlyDownloadRangeIgnoredError("server ignored Range (fake)")
        if action == "gone":
            raise CometlyDownloadError("Cometly download failed with HTTP 404 (fake)", status_code=404)
        etag = '"v2"' if action == "changed" else '"v1"'
        cut = int(action.split(":")[1]) if action.startswith("cut:") else None
        if action.startswith("short:"):
            yield FakeStream(
                self.data[: offset + int(action.split(":")[1])], offset, cut_at=None, etag=etag, total=total
            )
            return
        yield FakeStream(self.data, offset, cut_at=cut, etag=etag, total=total)


class MemoryWriter:
    def __init__(self) -> None:
        self.data = bytearray()
        self.bytes_written = 0
        self.committed: bytes | None = None
        self.aborted = 0
        self.restarts = 0
        self.size_hint: int | None = None

    def set_size_hint(self, size: int | None) -> None:
        self.size_hint = size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.committed is None
        self.data += data
        self.bytes_written += len(data)

    def restart(self) -> None:
        self.restarts += 1
        self.data = bytearray()
        self.bytes_written = 0

    def commit(self) -> None:
        self.committed = bytes(self.data)

    def abort(self) -> None:
        self.aborted += 1


class UrlSource:
    """A DownloadSource over a FakeSource: the first URL given, then ``refresh_url()`` if any."""

    def __init__(self, fake: FakeSource, url: str, refresh_url: Callable[[], str] | None) -> None:
        self.fake, self.url, self.refresh_url = fake, url, refresh_url
        self.can_refresh = refresh_url is not None
        self.asked = 0

    def fresh_url(self) -> str:
        self.asked += 1
        if self.asked == 1 or self.refresh_url is None:
            return self.url
        return self.refresh_url()

    def open(self, url: str, offset: int) -> Any:
        return self.fake.open(url, offset)


class _Transfer:
    def __init__(self, source: FakeSource, writer: MemoryWriter, **kwargs: Any) -> None:
        self.source, self.writer = source, writer
        self.refresh_url = kwargs.pop("refresh_url", None)
        kwargs.setdefault("resume_wait", 0)
        self.kwargs = kwargs

    def run(self, url: str) -> Any:
        source = UrlSource(self.source, url, self.refresh_url)
        return ExportTransfer(source=source, writer=self.writer, chunk_size=1000, **self.kwargs).run()


def _transfer(source: FakeSource, writer: MemoryWriter, **kwargs: Any) -> _Transfer:
    return _Transfer(source, writer, **kwargs)


PLAIN = _ndjson(3000)
GZ = gzip.compress(PLAIN)


def test_plain_transfer_keeps_gzip_bytes_and_hashes_them() -> None:
    writer = MemoryWriter()
    result = _transfer(FakeSource(GZ), writer).run("https://x/e.gz?sig=1")
    assert writer.committed == GZ
    assert writer.size_hint == len(GZ)
    assert result.sha256 == hashlib.sha256(GZ).hexdigest()
    assert (result.records, result.bytes_written, result.bytes_downloaded) == (3000, len(GZ), len(GZ))
    assert result.resumes == 0


def test_decompress_writes_ndjson_and_hashes_it() -> None:
    writer = MemoryWriter()
    result = _transfer(FakeSource(GZ), writer, decompress=True, max_piece=4096).run("u")
    assert writer.committed == PLAIN
    assert result.sha256 == hashlib.sha256(PLAIN).hexdigest()
    assert result.bytes_written == len(PLAIN)


@pytest.mark.parametrize("cut", [1, 999, 1000, 1001, len(GZ) // 2, len(GZ) - 1])
def test_cut_resumes_from_the_exact_offset(cut: int) -> None:
    source, writer = FakeSource(GZ, [f"cut:{cut}"]), MemoryWriter()
    result = _transfer(source, writer).run("u")
    assert writer.committed == GZ
    # Every byte delivered before the cut was consumed: the resume asks for exactly the rest.
    assert source.calls == [("u", 0), ("u", cut)]
    assert result.resumes == 1


def test_cut_refreshes_the_url_when_it_can() -> None:
    source, writer = FakeSource(GZ, ["cut:5000"]), MemoryWriter()
    _transfer(source, writer, refresh_url=lambda: "fresh").run("old")
    assert source.calls == [("old", 0), ("fresh", 5000)]
    assert writer.committed == GZ


def test_clean_close_before_the_end_is_resumed() -> None:
    source, writer = FakeSource(GZ, ["short:3000"]), MemoryWriter()
    result = _transfer(source, writer).run("u")
    assert source.calls == [("u", 0), ("u", 3000)]
    assert writer.committed == GZ
    assert result.resumes == 1


def test_expired_url_is_refreshed_and_resumed() -> None:
    source, writer = FakeSource(GZ, ["cut:4000", "expire"]), MemoryWriter()
    urls = iter(["fresh-1", "fresh-2"])
    result = _transfer(source, writer, refresh_url=lambda: next(urls)).run("old")
    assert source.calls == [("old", 0), ("fresh-1", 4000), ("fresh-2", 4000)]
    assert writer.committed == GZ
    assert result.resumes == 2


def test_expired_url_without_export_id_fails_clearly() -> None:
    source, writer = FakeSource(GZ, ["expire"]), MemoryWriter()
    with pytest.raises(CometlyDownloadExpiredError, match="pass the export"):
        _transfer(source, writer).run("u")
    assert writer.committed is None
    assert writer.aborted


def test_ignored_range_restarts_cleanly() -> None:
    source, writer = FakeSource(GZ, ["cut:5500", "full"]), MemoryWriter()
    result = _transfer(source, writer).run("u")
    assert source.calls == [("u", 0), ("u", 5500), ("u", 0)]
    assert writer.restarts == 1
    assert writer.committed == GZ
    assert result.sha256 == hashlib.sha256(GZ).hexdigest()  # state reset, not double-counted
    assert result.records == 3000
    assert result.restarts == 1


def test_changed_file_restarts_cleanly() -> None:
    source, writer = FakeSource(GZ, ["cut:5500", "changed"]), MemoryWriter()
    _transfer(source, writer).run("u")
    assert writer.restarts == 1
    assert source.calls[-1] == ("u", 0)
    assert writer.committed == GZ


def test_resume_attempts_are_bounded() -> None:
    source, writer = FakeSource(GZ, ["cut:1000"] * 3), MemoryWriter()
    with pytest.raises(CometlyDownloadError, match=r"2 resume attempt\(s\) allowed"):
        _transfer(source, writer, max_resume_attempts=2).run("u")
    assert len(source.calls) == 3
    assert writer.committed is None
    assert writer.aborted


def test_no_resume_when_max_resume_attempts_is_zero() -> None:
    source, writer = FakeSource(GZ, ["cut:1000"]), MemoryWriter()
    with pytest.raises(CometlyDownloadError, match="max_resume_attempts"):
        _transfer(source, writer, max_resume_attempts=0).run("u")
    assert writer.committed is None
    assert writer.aborted


def test_refused_before_any_byte_is_not_resumed() -> None:
    source, writer = FakeSource(GZ, ["gone"]), MemoryWriter()
    with pytest.raises(CometlyDownloadError, match="404"):
        _transfer(source, writer).run("u")
    assert len(source.calls) == 1
    assert writer.aborted


def test_truncated_file_served_as_complete_is_never_committed() -> None:
    # The server itself serves a truncated file with a matching length: only the gzip check can tell.
    source, writer = FakeSource(GZ[:-10]), MemoryWriter()
    with pytest.raises(CometlyDownloadIntegrityError, match="truncated"):
        _transfer(source, writer).run("u")
    assert writer.committed is None
    assert writer.aborted


def test_unknown_size_and_no_cut_still_checked() -> None:
    source, writer = FakeSource(GZ, report_total=False), MemoryWriter()
    assert _transfer(source, writer).run("u").records == 3000


def test_progress_is_logged_with_rate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = logging.getLogger("test.transfer")
    _transfer(FakeSource(GZ), MemoryWriter(), progress_interval=0, log=log).run("u")
    lines = [r.getMessage() for r in caplog.records if "MB/s" in r.getMessage()]
    assert lines
    assert "downloaded" in lines[0]
    assert "%" in lines[0]


def test_resume_is_logged_with_offset(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = logging.getLogger("test.transfer")
    _transfer(FakeSource(GZ, ["cut:2500"]), MemoryWriter(), log=log).run("u")
    assert any("resuming from byte 2500" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("report_total", [True, False], ids=["content_length_0", "no_length"])
@pytest.mark.parametrize("decompress", [False, True])
def test_empty_download_lands_a_valid_empty_export(report_total: bool, decompress: bool) -> None:
    source, writer = FakeSource(b"", report_total=report_total), MemoryWriter()
    result = _transfer(source, writer, decompress=decompress).run("u")
    assert writer.committed is not None
    if decompress:
        assert writer.committed == b""
    else:
        assert writer.committed == EMPTY_GZIP
        assert gzip.decompress(writer.committed) == b""
    assert result.records == 0
    assert result.sha256 == hashlib.sha256(writer.committed).hexdigest()


def test_verification_runs_on_its_own_thread_and_its_failure_aborts() -> None:
    # The check sees a corrupt byte only after the writer took the chunk: nothing may be committed.
    corrupt = bytearray(GZ)
    corrupt[len(corrupt) // 2] ^= 0xFF
    threads: set[str] = set()
    verifier_feed = GzipVerifier.feed

    def feed(self: GzipVerifier, data: Any) -> Iterator[bytes]:
        threads.add(threading.current_thread().name)
        yield from verifier_feed(self, data)

    source, writer = FakeSource(bytes(corrupt)), MemoryWriter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GzipVerifier, "feed", feed)
        with pytest.raises(CometlyDownloadIntegrityError, match="not valid gzip"):
            _transfer(source, writer).run("u")
    assert threads == {"cometly-verify"}
    assert writer.committed is None
    assert writer.aborted


@pytest.mark.parametrize("inflater", INFLATERS)
def test_transfer_with_each_inflater(inflater: str) -> None:
    for decompress in (False, True):
        writer = MemoryWriter()
        result = _transfer(
            FakeSource(GZ, ["cut:7777"]), writer, decompress=decompress, inflater=inflater
        ).run("u")
        assert writer.committed == (PLAIN if decompress else GZ)
        assert result.records == 3000


@pytest.mark.parametrize("with_numpy", [True, False])
def test_count_newlines_with_and_without_numpy(monkeypatch: pytest.MonkeyPatch, with_numpy: bool) -> None:
    if not with_numpy:
        monkeypatch.setattr("cometly_provider.utils.transfer._numpy", None)
    data = bytes(random.Random(7).choice(b"ab\n") for _ in range(100_000))
    for piece in (data, data[:4095], data[:4096], b"", b"\n" * 5000):
        assert count_newlines(piece) == piece.count(b"\n")
