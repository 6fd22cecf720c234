"""Benchmark: a 1,000,000-row export from the Cometly simulator, generated, served and checked.

Runs the simulator as a subprocess (its CLI, through ``spawn_simulator``), creates one export,
waits for it, downloads it several times over loopback (timed, median kept), then once more to
disk, and checks that file is one valid gzip whose line count matches. Reports the generation
rate, the serve rate (MB/s of gzip received by a plain socket reader) and the simulator's peak
RSS (``VmHWM`` in ``/proc/<pid>/status``).

Pass / fail: peak RSS < 200 MB and serve rate >= 200 MB/s (exit code 1 otherwise). The figures go
into the "Simulator" section of ``docs/benchmarks.md`` unless ``--no-write-docs``.

    python bench/simulator_export.py [--rows N] [--padding-bytes N] [--downloads N]

MB = 10**6 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlsplit

from _report import (  # bench/ is sys.path[0] when run as a script
    command_line,
    measured_on,
    print_results,
    results_markdown,
    write_section,
)

from cometly_provider.testing import spawn_simulator

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
RSS_LIMIT_MB = 200.0
SERVE_MIN_MB_S = 200.0
DEFAULT_FIELDS = "event_name,amount,profile_id,order_id,event_url"
MB = 1_000_000


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _api(base: str, key: str, method: str, path: str, body: object = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def _download(url: str, sink: Path | None) -> tuple[int, float]:
    """(bytes received, seconds) for one GET, read with large ``readinto`` calls."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    buffer = bytearray(4 << 20)
    view = memoryview(buffer)
    received = 0
    started = time.perf_counter()
    conn.request("GET", f"{parts.path}?{parts.query}")
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"download failed: HTTP {response.status} {response.read()[:200]!r}")
    out = open(sink, "wb") if sink is not None else None  # noqa: SIM115 - closed below
    try:
        while True:
            n = response.readinto(buffer)
            if not n:
                break
            received += n
            if out is not None:
                out.write(view[:n])
    finally:
        if out is not None:
            out.close()
        conn.close()
    return received, time.perf_counter() - started


def _check_gzip(path: Path) -> tuple[int, str, dict[str, object], dict[str, object]]:
    """(lines, md5 of the file, first row, last row); raises if the gzip is invalid or has trailing data."""
    md5 = hashlib.md5(usedforsecurity=False)
    inflater = zlib.decompressobj(wbits=31)  # exactly one gzip member, as served
    lines = 0
    first = last = b""
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            md5.update(chunk)
            data = inflater.decompress(chunk)
            if data:
                lines += data.count(b"\n")
                if not first:
                    first = data[: data.index(b"\n")] if b"\n" in data else data
                tail = (tail + data)[-65536:]
    data = inflater.flush()
    lines += data.count(b"\n")
    tail = (tail + data)[-65536:]
    if not inflater.eof or inflater.unused_data:
        raise RuntimeError("not exactly one complete gzip member")
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return lines, md5.hexdigest(), json.loads(first), json.loads(last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="events in the export (default 1,000,000)"
    )
    parser.add_argument("--fields", default=DEFAULT_FIELDS, help=f"export fields (default {DEFAULT_FIELDS})")
    parser.add_argument(
        "--padding-bytes",
        type=int,
        default=256,
        help="simulator row_padding_bytes: incompressible bytes per row in event_url (default 256)",
    )
    parser.add_argument("--gzip-level", type=int, default=6, help="simulator gzip level (default 6)")
    parser.add_argument(
        "--downloads", type=int, default=5, help="timed downloads; the median is reported (default 5)"
    )
    parser.add_argument(
        "--no-write-docs", action="store_true", help=f"do not update {DOCS.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)
    command = command_line(Path(__file__).name, sys.argv[1:])
    fields = [f for f in args.fields.split(",") if f]

    with (
        tempfile.TemporaryDirectory(prefix="cometly-bench-") as tmp,
        spawn_simulator(
            export_rows=args.rows,
            row_padding_bytes=args.padding_bytes,
            gzip_level=args.gzip_level,
            queued_seconds=0,
            processing_seconds=0,
            rate_limiting_enabled=False,
            url_ttl_seconds=3600,
        ) as sim,
    ):
        assert sim.pid is not None
        key = sim.api_key
        idle_rss_kb = _status_kb(sim.pid, "VmRSS")
        created = time.perf_counter()
        export = _api(sim.api_base, key, "POST", "/events/exports", {"date": "2024-01-15", "fields": fields})
        export_id = export["export_id"]
        while True:
            status = _api(sim.api_base, key, "GET", f"/events/exports/{export_id}")
            if status["status"] == "completed":
                break
            if status["status"] == "failed":
                raise RuntimeError(f"export failed: {status}")
            time.sleep(0.05)
        generation_s = time.perf_counter() - created
        record = sim.exports[int(str(export_id))]
        assert record.size is not None
        size = record.size

        file = Path(tmp) / "export.ndjson.gz"
        timings = []
        # Timed downloads go to no file (disk speed is not the simulator's); one more lands on disk.
        for attempt in range(max(1, args.downloads) + 1):
            url = str(_api(sim.api_base, key, "GET", f"/events/exports/{export_id}")["download_url"])
            to_disk = attempt == args.downloads
            received, seconds = _download(url, file if to_disk else None)
            if received != size:
                raise RuntimeError(f"received {received} bytes, expected {size}")
            if not to_disk:
                timings.append(seconds)
        peak_rss_kb = _status_kb(sim.pid, "VmHWM")
        lines, md5, first, last = _check_gzip(file)

    serve_rate = size / statistics.median(timings) / MB
    peak_rss_mb = peak_rss_kb * 1024 / MB
    checks = {
        "valid single-member gzip": True,
        f"line count == {args.rows:,}": lines == args.rows == record.lines,
        "ETag == MD5 of the bytes": record.etag == f'"{md5}"',
        "rows have id and event_time_utc": all("id" in r and "event_time_utc" in r for r in (first, last)),
        f"peak RSS < {RSS_LIMIT_MB:.0f} MB": peak_rss_mb < RSS_LIMIT_MB,
        f"serve rate >= {SERVE_MIN_MB_S:.0f} MB/s": serve_rate >= SERVE_MIN_MB_S,
    }
    rows = [
        ("rows (lines in the file)", f"{lines:,}"),
        ("fields", ", ".join(fields) + f" (+ {args.padding_bytes} B padding in event_url)"),
        ("gzip size", f"{size / MB:,.1f} MB (level {args.gzip_level})"),
        (
            "create -> completed",
            f"{generation_s:.2f} s ({size / generation_s / MB:.0f} MB/s of gzip generated)",
        ),
        (
            "serve rate, loopback",
            f"{serve_rate:,.0f} MB/s (median of {len(timings)}: "
            + ", ".join(f"{size / t / MB:,.0f}" for t in timings)
            + ")",
        ),
        ("simulator peak RSS (VmHWM)", f"{peak_rss_mb:.1f} MB (idle {idle_rss_kb * 1024 / MB:.1f} MB)"),
    ]
    passed = print_results(rows, checks)

    if not args.no_write_docs:
        section = (
            "## Simulator\n\n"
            "A 1,000,000-row export from the Cometly simulator (`cometly_provider.testing`), run as a\n"
            "subprocess through its CLI: generated (gzip streamed to a temp file), served over loopback\n"
            "with `sendfile`, downloaded, and checked (one valid gzip member, line count, ETag). The serve\n"
            "rate is gzip bytes per second received by a plain socket reader; RSS is the simulator\n"
            "process's peak (`VmHWM`). The rows carry incompressible padding (`row_padding_bytes`) so\n"
            "the file is large enough to time; padded exports use zlib's `Z_RLE` strategy.\n"
            "MB = 10^6 bytes.\n\n"
            f"Command (from the repository root):\n\n```\n{command}\n```\n\n"
            f"{measured_on()}.\n\n" + results_markdown(rows, checks)
        )
        write_section("Simulator", section)
        print(f"\n  wrote the Simulator section of {DOCS.relative_to(ROOT)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
