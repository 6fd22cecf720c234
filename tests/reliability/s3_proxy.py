"""A tiny HTTP proxy in front of the moto server that fails chosen S3 UploadPart requests with a 500.

moto in server mode has no fault injection, so the S3 connection's ``endpoint_url`` points here
instead: every request is forwarded to moto as is (the ``Host`` header kept, so signatures still
match), except the PUTs of part ``fail_part`` (``?partNumber=N&uploadId=...``), which are answered
``500 InternalError`` (the first ``fail_times`` of them, or all when ``fail_times`` is None).
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from tests.conftest import free_port

_INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message>"
    b"<RequestId>PROXY0000000000</RequestId></Error>"
)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}


@dataclass(frozen=True)
class Seen:
    method: str
    part: int | None
    status: int


class FlakyS3Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, upstream: str, *, fail_part: int, fail_times: int | None) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.fail_part = fail_part
        self.fail_times = fail_times
        self.failed = 0
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def part_puts(self, part: int) -> list[int]:
        """Statuses answered to the PUTs of one part, in order."""
        with self.lock:
            return [s.status for s in self.seen if s.method == "PUT" and s.part == part]

    def should_fail(self, method: str, part: int | None) -> bool:
        with self.lock:
            if method != "PUT" or part != self.fail_part:
                return False
            if self.fail_times is not None and self.failed >= self.fail_times:
                return False
            self.failed += 1
            return True


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FlakyS3Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        server = self.server
        body = self._body()
        query = parse_qs(urlsplit(self.path).query)
        part = int(query["partNumber"][0]) if "partNumber" in query else None
        if server.should_fail(self.command, part):
            self._reply(500, [("Content-Type", "application/xml")], _INTERNAL_ERROR)
            self._note(part, 500)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*server.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            kept = [(k, v) for k, v in kept if k.lower() != "content-length"]
            self._reply(response.status, kept, data)
            self._note(part, response.status)
        finally:
            upstream.close()

    def _note(self, part: int | None, status: int) -> None:
        with self.server.lock:
            self.server.seen.append(Seen(self.command, part, status))

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@contextmanager
def flaky_s3_proxy(upstream: str, *, fail_part: int, fail_times: int | None) -> Iterator[FlakyS3Proxy]:
    proxy = FlakyS3Proxy(upstream, fail_part=fail_part, fail_times=fail_times)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
